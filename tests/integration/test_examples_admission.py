"""Every manifest under examples/ is accepted by the API server (server-side dry run, strict)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.kube import Kubectl

pytestmark = pytest.mark.cluster

EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "examples"
EXAMPLE_FILES = sorted(EXAMPLES_DIR.rglob("*.yaml"))


def test_there_are_examples() -> None:
    assert len(EXAMPLE_FILES) >= 10


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=[str(p.relative_to(EXAMPLES_DIR)) for p in EXAMPLE_FILES])
def test_example_is_accepted(path: Path, kubectl: Kubectl, namespace: str) -> None:
    documents = [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    result = kubectl.with_namespace(namespace).run("apply", "--dry-run=server", "-f", str(path), check=False)
    assert result.returncode == 0, f"{path.relative_to(EXAMPLES_DIR)} was rejected:\n{result.stderr}"
    accepted = [line for line in result.stdout.splitlines() if line.endswith("(server dry run)")]
    assert len(accepted) == len(documents), result.stdout
