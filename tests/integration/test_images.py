"""The runner and operator images: built here with buildah from a bootstrapped Debian base, then checked.

Built from `runner-image/Dockerfile` and `operator/Dockerfile` exactly as documented
(hack/build-images.sh); nothing is pulled from an image registry. Checked: non-root user, the
entrypoints the process kubelet maps, the locked dependency versions, no build tools or pip, and
that each image's entrypoint starts.
"""

from __future__ import annotations

import json
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from opsconductor.localcluster.podspec import load_image_table

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "runner-image" / "requirements.lock"
BUILDAH = ["buildah", "--storage-driver", "vfs"]


def _locked() -> dict[str, str]:
    pins = [line.split("==") for line in LOCK.read_text().splitlines() if line and not line.startswith("#")]
    return {canonicalize_name(name): version for name, version in pins}


def test_lock_pins_every_runtime_dependency_within_pyproject() -> None:
    locked = _locked()
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for text in declared:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{name} is not in {LOCK.name}: run hack/lock_requirements.py"
        assert requirement.specifier.contains(locked[name], prereleases=True), (name, locked[name])


@pytest.fixture(scope="module")
def images() -> dict[str, str]:
    result = subprocess.run(
        ["bash", str(ROOT / "hack" / "build-images.sh")], capture_output=True, text=True, timeout=1500
    )
    assert result.returncode == 0, result.stderr[-4000:]
    names = result.stdout.split()
    return {"runner": names[-2], "operator": names[-1]}


@pytest.fixture
def container(request: pytest.FixtureRequest, images: dict[str, str]) -> Iterator[str]:
    name = subprocess.run(
        [*BUILDAH, "from", "--pull-never", images[request.param]], capture_output=True, text=True, check=True
    ).stdout.strip()
    yield name
    subprocess.run([*BUILDAH, "rm", name], capture_output=True, check=False)


def _run(container: str, *command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*BUILDAH, "run", "--isolation", "chroot", "--user", "65532:65532", container, "--", *command],
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize("image", ["runner", "operator"])
def test_image_config_matches_what_the_process_kubelet_maps(images: dict[str, str], image: str) -> None:
    inspected = json.loads(
        subprocess.run(
            [*BUILDAH, "inspect", "--type", "image", images[image]],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    config = inspected["OCIv1"]["config"]
    table = load_image_table(ROOT / "operator" / "opsconductor" / "localcluster" / "images.yaml")
    mapped = next(
        e for e in yaml.safe_load(table.source.read_text())["images"] if e["repository"].endswith(f"/{image}")
    )
    assert config["User"] == mapped["user"] == "65532:65532"
    assert config["Entrypoint"][1:] == mapped["entrypoint"][1:]  # same module; the interpreter differs
    assert config["Entrypoint"][0] == "/opt/opsconductor/bin/python"


@pytest.mark.parametrize("container", ["runner", "operator"], indirect=True)
def test_image_has_the_locked_packages_and_no_build_tools(container: str) -> None:
    listed = _run(
        container,
        "/opt/opsconductor/bin/python",
        "-c",
        "import json, importlib.metadata as m; "
        "print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()}))",
    )
    assert listed.returncode == 0, listed.stderr
    installed = {canonicalize_name(k): v for k, v in json.loads(listed.stdout).items()}
    locked = _locked()
    assert {k: installed.get(k) for k in locked} == locked
    assert "pip" not in installed and "setuptools" not in installed
    tools = _run(container, "sh", "-c", "for t in gcc cc make pip pip3 apt-get; do command -v $t; done; true")
    assert [line for line in tools.stdout.split() if not line.endswith("apt-get")] == []
    assert _run(container, "id", "-u").stdout.strip() == "65532"


@pytest.mark.parametrize("container", ["runner", "operator"], indirect=True)
def test_image_entrypoint_starts(container: str) -> None:
    module = "opsconductor.runner.probe" if "runner" in container else "opsconductor"
    started = _run(
        container,
        "/opt/opsconductor/bin/python",
        "-c",
        f"import importlib; importlib.import_module({module!r}); "
        "import opsconductor.runner.protocols.winrm, opsconductor.runner.protocols.ssh",
    )
    assert started.returncode == 0, started.stderr[-3000:]
    if "operator" in container:
        helped = _run(container, "/opt/opsconductor/bin/python", "-m", "opsconductor", "--help")
        assert helped.returncode == 0 and "--peering" in helped.stdout, helped.stderr[-3000:]
