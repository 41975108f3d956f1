"""The CRDs on disk are exactly what the pydantic models generate."""

from opsconductor import crdgen
from opsconductor.api import KINDS


def test_crds_on_disk_match_the_models() -> None:
    diffs = crdgen.drift()
    assert not diffs, "CRDs are stale; run `make crds`:\n" + "\n".join(diffs)[:5000]


def test_chart_carries_the_same_crds() -> None:
    files = crdgen.expected_files()
    by_name: dict[str, set[str]] = {}
    for path, text in files.items():
        by_name.setdefault(path.name, set()).add(text)
    assert len(by_name) == len(KINDS)
    assert all(len(texts) == 1 for texts in by_name.values())
