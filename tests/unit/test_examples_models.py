"""Every opsconductor.io object under examples/ validates against its kind's pydantic spec model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from opsconductor.api import API_VERSION, GROUP, KINDS

EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "examples"
EXAMPLE_FILES = sorted(EXAMPLES_DIR.rglob("*.yaml"))
KIND_BY_NAME = {kind.kind: kind for kind in KINDS}


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def ours(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in documents(path) if str(doc.get("apiVersion", "")).startswith(f"{GROUP}/")]


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=[str(p.relative_to(EXAMPLES_DIR)) for p in EXAMPLE_FILES])
def test_example_specs_validate(path: Path) -> None:
    assert path.read_text().startswith("# "), "an example starts with a comment saying what it shows"
    for doc in ours(path):
        assert doc["apiVersion"] == API_VERSION
        kind = KIND_BY_NAME[doc["kind"]]
        kind.spec.model_validate(doc["spec"])


def test_examples_show_every_kind() -> None:
    shown = {doc["kind"] for path in EXAMPLE_FILES for doc in ours(path)}
    assert shown == set(KIND_BY_NAME)
