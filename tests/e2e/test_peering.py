"""Two operator replicas with kopf peering: one works, the other stands by and takes over."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import pytest

from opsconductor.localcluster.cluster import KubeletProcess
from opsconductor.localcluster.controlplane import ControlPlane
from opsconductor.localcluster.operatorprocess import OperatorProcess
from tests.e2e.conftest import wait_phase
from tests.helm import CHART
from tests.kube import Kubectl, wait_until


def _job(name: str) -> str:
    return json.dumps(
        {
            "apiVersion": "opsconductor.io/v1alpha1",
            "kind": "OpsJob",
            "metadata": {"name": name},
            "spec": {"steps": [{"name": "pause", "type": "wait", "seconds": 1}]},
        }
    )


@pytest.fixture
def peered_namespace(kubectl: Kubectl) -> Iterator[str]:
    name = f"peers-{os.getpid() % 10000}"
    kubectl.run("apply", "-f", str(CHART / "crds" / "kopf.dev_peerings.yaml"))
    kubectl.run("create", "namespace", name)
    kubectl.with_namespace(name).apply(
        '{"apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": "opsconductor"}}'
    )
    yield name
    kubectl.run("delete", "namespace", name, "--wait=false")


def test_the_oldest_replica_works_and_the_other_takes_over(
    control_plane: ControlPlane, kubelet: KubeletProcess, kubectl: Kubectl, peered_namespace: str
) -> None:
    def replica(name: str) -> OperatorProcess:
        return OperatorProcess(
            control_plane,
            name=name,
            args=("--peering", "opsconductor"),
            env={"OPSCONDUCTOR_NAMESPACES": peered_namespace, "OPSCONDUCTOR_RESYNC_SECONDS": "5"},
        )

    first, second = replica("replica-a"), replica("replica-b")
    first.start()
    try:
        second.start()
        k = kubectl.with_namespace(peered_namespace)
        # Both replicas announce themselves in the peering object (kopf starts a peered operator
        # paused until it has seen the peers; the younger one then stays paused).
        wait_until(
            lambda: len(k.get("kopfpeering", "opsconductor").get("status") or {}) == 2,
            timeout=60,
            what="both replicas in the peering object",
        )
        k.apply(_job("while-both"))
        assert wait_phase(k, "while-both")["status"]["phase"] == "Succeeded"
        assert "Handler 'start' succeeded" in first.log.read_text()
        assert "Handler '" not in second.log.read_text()  # the paused replica ran no handler at all

        first.stop()  # graceful: kopf removes itself from the peering object
        wait_until(
            lambda: "Resuming operations after the pause" in second.log.read_text(),
            timeout=90,
            what="the standby replica to resume",
        )
        k.apply(_job("after-takeover"))
        assert wait_phase(k, "after-takeover")["status"]["phase"] == "Succeeded"
        assert "Handler 'start' succeeded" in second.log.read_text()
    finally:
        first.stop()
        second.stop()
