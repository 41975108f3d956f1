"""End-to-end fixtures: every test here runs with the operator and the process kubelet."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from opsconductor.localcluster.examplehosts import ExampleHosts
from opsconductor.localcluster.operatorprocess import OperatorProcess
from tests.kube import Kubectl, wait_until

TERMINAL = ("Succeeded", "Failed", "Cancelled")


@pytest.fixture(scope="module")
def example_hosts() -> Iterator[ExampleHosts]:
    """Local stand-ins for the example Targets' hosts (real sshd per Linux Target, an HTTP server)."""
    hosts = ExampleHosts()
    hosts.start()
    try:
        yield hosts
    finally:
        hosts.stop()


@pytest.fixture
def k(kubectl: Kubectl, e2e_namespace: str, operator: OperatorProcess) -> Kubectl:
    """kubectl in a fresh namespace the operator watches, with the operator running."""
    return kubectl.with_namespace(e2e_namespace)


def wait_phase(
    k: Kubectl, name: str, phases: tuple[str, ...] = TERMINAL, timeout: float = 90
) -> dict[str, Any]:
    """Wait until the OpsJob reaches one of ``phases``; return it."""

    def reached() -> dict[str, Any] | None:
        job = json.loads(k.run("get", "opsjob", name, "-o", "json").stdout)
        return job if (job.get("status") or {}).get("phase") in phases else None

    return wait_until(reached, timeout=timeout, what=f"OpsJob {name} to reach {phases}")


def conditions(job: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """type -> (status, reason)."""
    return {c["type"]: (c["status"], c["reason"]) for c in job["status"].get("conditions", [])}


def events_for(k: Kubectl, name: str) -> list[tuple[str, str]]:
    """(type, reason) of the Events about an object."""
    items = json.loads(
        k.run("get", "events", "--field-selector", f"involvedObject.name={name}", "-o", "json").stdout
    )
    return [(e["type"], e["reason"]) for e in items["items"]]
