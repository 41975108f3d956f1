"""Session fixtures: one real local control plane (with CRDs installed) and one process kubelet."""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Iterator

import pytest

from opsconductor.localcluster.cluster import KubeletProcess, install_crds
from opsconductor.localcluster.controlplane import ControlPlane
from opsconductor.localcluster.operatorprocess import OperatorProcess
from tests.helm import Helm
from tests.kube import Kubectl

pytest_plugins = ["tests.fixtures.sshd", "tests.winrm.fixtures"]
E2E_PREFIX = "e2e-"
_namespace_counter = itertools.count()


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """etcd + kube-apiserver + kube-controller-manager + kube-scheduler, CRDs installed."""
    plane = ControlPlane(workdir=tmp_path_factory.mktemp("controlplane"))
    plane.start()
    try:
        install_crds(plane)
        timings = ", ".join(f"{name} {seconds:.1f}s" for name, seconds in plane.startup_seconds.items())
        _cluster_report.append(f"local control plane started: {timings}")
        yield plane
        memory = ", ".join(f"{name} {kib // 1024} MiB" for name, kib in plane.peak_memory_kib().items())
        _cluster_report.append(f"local control plane peak RSS: {memory}")
    finally:
        plane.stop()


@pytest.fixture(scope="session")
def kubelet(
    control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[KubeletProcess]:
    """The process kubelet, its Node Ready; pods scheduled to it run as local processes."""
    process = KubeletProcess(control_plane, tmp_path_factory.mktemp("kubelet"))
    process.start()
    try:
        yield process
    finally:
        process.stop()


@contextlib.contextmanager
def running_operator(
    plane: ControlPlane, name: str, namespaces: str, **env: str
) -> Iterator[OperatorProcess]:
    """``python -m opsconductor`` watching ``namespaces``, with short test waits, stopped afterwards."""
    process = OperatorProcess(
        plane,
        name=name,
        env={
            "OPSCONDUCTOR_NAMESPACES": namespaces,
            "OPSCONDUCTOR_DEPENDENCY_WAIT_SECONDS": "3",
            "OPSCONDUCTOR_RESYNC_SECONDS": "5",
            **env,
        },
    )
    process.start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="session")
def operator(control_plane: ControlPlane, kubelet: KubeletProcess) -> Iterator[OperatorProcess]:
    """The operator (``python -m opsconductor``) under its least-privilege ClusterRole."""
    # Only e2e-* namespaces: control-plane tests elsewhere see OpsJobs no operator touches.
    with running_operator(control_plane, "operator", f"{E2E_PREFIX}*") as process:
        yield process


@pytest.fixture(scope="session")
def kubectl(control_plane: ControlPlane) -> Kubectl:
    """kubectl as the cluster admin, in namespace default."""
    return Kubectl(control_plane.binary("kubectl"), control_plane.admin_kubeconfig)


@pytest.fixture(scope="session")
def helm(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Helm:
    """helm as the cluster admin."""
    return Helm(control_plane.binary("helm"), control_plane.admin_kubeconfig, tmp_path_factory.mktemp("helm"))


def fresh_namespace(kubectl: Kubectl, request: pytest.FixtureRequest, prefix: str) -> Iterator[str]:
    """Create a namespace named after the test, delete it afterwards (without waiting)."""
    name = f"{prefix}{os.getpid() % 1000}-{next(_namespace_counter)}-{request.node.name[:30]}".lower()
    name = "".join(c if c.isalnum() or c == "-" else "-" for c in name).strip("-")[:63].rstrip("-")
    kubectl.run("create", "namespace", name)
    yield name
    kubectl.run("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def namespace(kubectl: Kubectl, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace per test that the operator does not watch."""
    yield from fresh_namespace(kubectl, request, "t")


@pytest.fixture
def e2e_namespace(kubectl: Kubectl, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace per test that the operator watches."""
    yield from fresh_namespace(kubectl, request, E2E_PREFIX)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Report how long the control plane took to start and how much memory it used."""
    for line in _cluster_report:
        terminalreporter.write_line(line)


_cluster_report: list[str] = []
