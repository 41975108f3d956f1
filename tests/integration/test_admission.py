"""The admission corpus: every manifest in tests/admission/cases must be rejected by the API server.

Each case is applied like a user would (``kubectl apply -f -``: client-side apply with strict
server-side field validation); the error must name the field and carry the message fragment from
the case's header. CREATE cases share one fresh namespace (a rejected create stores nothing), UPDATE
cases get a fresh namespace each. The file format is described in tests/admission/README.md.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from opsconductor.api import KINDS
from tests.kube import Kubectl

CASES_DIR = Path(__file__).resolve().parents[1] / "admission" / "cases"
CASE_FILE = re.compile(r"^\d{2}-[a-z0-9]+(-[a-z0-9]+)*\.yaml$")
HEADER_LINE = re.compile(r"^#\s*(why|before|field|message):\s*(.*?)\s*$")
DOCUMENT_SEPARATOR = re.compile(r"^---[ \t]*$", re.MULTILINE)


@dataclass(frozen=True)
class Case:
    """One invalid manifest and what the API server must say about it."""

    path: Path
    why: str
    field: str
    message: str
    manifest: str
    """The document that must be rejected."""
    before: str | None = None
    """For UPDATE cases: the document applied first, which must be accepted."""
    before_why: str | None = None

    @property
    def kind(self) -> str:
        return str(yaml.safe_load(self.manifest)["kind"])


def load_case(path: Path) -> Case:
    """Parse a case file: header comments, then one document (or two for an UPDATE case)."""
    text = path.read_text()
    header: dict[str, str] = {}
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        match = HEADER_LINE.match(line)
        if match:
            header[match.group(1)] = match.group(2)
    missing = {"why", "field", "message"} - header.keys()
    assert not missing, f"{path.name}: header lacks {sorted(missing)}"
    documents = [doc for doc in DOCUMENT_SEPARATOR.split(text) if yaml.safe_load(doc) is not None]
    if "before" in header:
        assert len(documents) == 2, f"{path.name}: an UPDATE case (# before:) has exactly two documents"
        before, manifest = documents
    else:
        assert len(documents) == 1, f"{path.name}: a case is one object (add `# before:` for UPDATE cases)"
        before, manifest = None, documents[0]
    return Case(
        path, header["why"], header["field"], header["message"], manifest, before, header.get("before")
    )


CASE_PATHS = sorted(CASES_DIR.glob("*.yaml"))


@pytest.fixture(scope="module")
def shared_namespace(kubectl: Kubectl) -> Iterator[str]:
    """One namespace for the CREATE cases: they store nothing when rejected (and clean up if not)."""
    name = f"admission-{os.getpid()}"
    kubectl.run("create", "namespace", name)
    yield name
    kubectl.run("delete", "namespace", name, "--wait=false", check=False)


@pytest.mark.cluster
@pytest.mark.parametrize("path", CASE_PATHS, ids=[p.stem for p in CASE_PATHS])
def test_rejected(
    path: Path, kubectl: Kubectl, shared_namespace: str, request: pytest.FixtureRequest
) -> None:
    case = load_case(path)
    if case.before is None:
        kube = kubectl.with_namespace(shared_namespace)
    else:
        # UPDATE cases create objects: each gets a fresh namespace.
        kube = kubectl.with_namespace(request.getfixturevalue("namespace"))
        created = kube.apply(case.before, check=False)
        assert created.returncode == 0, f"{path.name}: the `before` document was rejected:\n{created.stderr}"
    result = kube.apply(case.manifest, check=False)
    if result.returncode == 0 and case.before is None:
        kube.run("delete", "-f", "-", "--ignore-not-found", "--wait=false", input=case.manifest, check=False)
    assert result.returncode != 0, f"{path.name} was accepted; it should fail: {case.why}"
    # The path as a whole: "spec.steps[0]" must not be satisfied by "spec.steps[0].name: ...".
    names_field = re.search(re.escape(case.field) + r'[:"]', result.stderr)
    assert names_field, f"{path.name}: error does not name {case.field!r}:\n{result.stderr}"
    assert case.message in result.stderr, f"{path.name}: error lacks {case.message!r}:\n{result.stderr}"


def test_corpus_covers_every_kind() -> None:
    assert all(CASE_FILE.match(p.name) for p in CASE_PATHS), "case files are named NN-short-name.yaml"
    numbers = [p.name[:2] for p in CASE_PATHS]
    assert len(numbers) == len(set(numbers)), "case numbers are unique"
    cases = [load_case(p) for p in CASE_PATHS]
    assert len(cases) >= 25
    kinds = {case.kind for case in cases}
    assert kinds == {kind.kind for kind in KINDS}, f"kinds covered: {sorted(kinds)}"
    assert any(case.before for case in cases), "at least one UPDATE case"
