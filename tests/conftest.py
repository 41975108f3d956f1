"""Session fixtures: one real local control plane (with CRDs installed) and one process kubelet."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from opsconductor.api import KINDS
from opsconductor.localcluster.controlplane import ControlPlane
from tests.kube import Kubectl

REPO_ROOT = Path(__file__).resolve().parents[1]
CRDS_DIR = REPO_ROOT / "crds"
_namespace_counter = itertools.count()


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """etcd + kube-apiserver + kube-controller-manager + kube-scheduler, CRDs installed."""
    plane = ControlPlane(workdir=tmp_path_factory.mktemp("controlplane"))
    plane.start()
    try:
        admin = Kubectl(plane.binary("kubectl"), plane.admin_kubeconfig)
        admin.run("apply", "--server-side", "-f", str(CRDS_DIR))
        crds = [f"crd/{kind.plural}.{kind.group}" for kind in KINDS]
        admin.run("wait", "--for=condition=Established", "--timeout=60s", *crds)
        yield plane
    finally:
        plane.stop()


@pytest.fixture(scope="session")
def kubectl(control_plane: ControlPlane) -> Kubectl:
    """kubectl as the cluster admin, in namespace default."""
    return Kubectl(control_plane.binary("kubectl"), control_plane.admin_kubeconfig)


@pytest.fixture
def namespace(kubectl: Kubectl, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace per test, deleted afterwards (without waiting)."""
    name = f"t{os.getpid() % 1000}-{next(_namespace_counter)}-{request.node.name[:30]}".lower()
    name = "".join(c if c.isalnum() or c == "-" else "-" for c in name).strip("-")[:63]
    kubectl.run("create", "namespace", name)
    yield name
    kubectl.run("delete", "namespace", name, "--wait=false", check=False)
