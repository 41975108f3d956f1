"""GitOps health: kstatus (the Go library) and the chart's Argo CD Lua script agree with every run phase.

Both checkers run on the live objects the operator produced, not on hand-written fixtures.
"""

from __future__ import annotations

import json
from typing import Any

from tests.e2e.conftest import wait_phase
from tests.gitops import argocd_health, kstatus
from tests.kube import Kubectl, wait_until

# phase (and how we got there) -> (kstatus status, Argo CD health status)
EXPECTED = {
    "waiting": ("InProgress", "Progressing"),
    "unschedulable": ("Failed", "Degraded"),
    "running": ("InProgress", "Progressing"),
    "succeeded": ("Current", "Healthy"),
    "failed": ("Failed", "Degraded"),
    "cancelled": ("Failed", "Degraded"),
}


def _job(name: str, seconds: int, **spec: Any) -> str:
    return json.dumps(
        {
            "apiVersion": "opsconductor.io/v1alpha1",
            "kind": "OpsJob",
            "metadata": {"name": name},
            "spec": {"steps": [{"name": "pause", "type": "wait", "seconds": seconds}], **spec},
        }
    )


def _with_reason(k: Kubectl, name: str, reason: str) -> dict[str, Any]:
    def seen() -> dict[str, Any] | None:
        job = k.get("opsjob", name)
        ready = [c for c in (job.get("status") or {}).get("conditions", []) if c["type"] == "Ready"]
        return job if ready and ready[0]["reason"] == reason else None

    return wait_until(seen, timeout=60, interval=0.1, what=f"{name} with Ready reason {reason}")


def test_kstatus_and_argocd_agree_with_every_phase(k: Kubectl) -> None:
    live: dict[str, dict[str, Any]] = {}
    # Waiting for a Target that does not exist yet (Pending, Reconciling), then Failed when it never comes.
    k.apply(_job("waits", 1, target="not-there-yet"))
    live["waiting"] = _with_reason(k, "waits", "WaitingForDependencies")
    # A runner pod no node can take: Pending and Stalled.
    k.apply(_job("unschedulable", 1, runner={"nodeSelector": {"opsconductor.io/no-such-node": "x"}}))
    live["unschedulable"] = _with_reason(k, "unschedulable", "Unschedulable")
    k.apply(_job("long", 300))
    live["running"] = wait_phase(k, "long", phases=("Running",))
    k.apply(_job("short", 1))
    live["succeeded"] = wait_phase(k, "short")
    live["failed"] = wait_phase(k, "waits")
    k.run("patch", "opsjob", "long", "--type=merge", "-p", '{"spec": {"cancel": true}}')
    live["cancelled"] = wait_phase(k, "long")
    assert {name: job["status"]["phase"] for name, job in live.items()} == {
        "waiting": "Pending",
        "unschedulable": "Pending",
        "running": "Running",
        "succeeded": "Succeeded",
        "failed": "Failed",
        "cancelled": "Cancelled",
    }

    computed = dict(zip(live, kstatus(list(live.values())), strict=True))
    for name, job in live.items():
        argo_status, argo_message = argocd_health(job)
        assert (computed[name][0], argo_status) == EXPECTED[name], (name, computed[name], argo_message)
        assert argo_message  # always says why


def test_argocd_reads_a_new_generation_as_progressing_and_a_suspended_schedule_as_suspended() -> None:
    job = {
        "kind": "OpsJob",
        "metadata": {"name": "j", "generation": 2},
        "status": {"observedGeneration": 1, "phase": "Succeeded", "conditions": []},
    }
    assert argocd_health(job)[0] == "Progressing"
    assert kstatus([job])[0][0] == "InProgress"
    schedule = {"kind": "OpsSchedule", "metadata": {"name": "s", "generation": 1}, "spec": {"suspend": True}}
    assert argocd_health(schedule) == ("Suspended", "suspended: the schedule creates no runs")


def test_kstatus_and_argocd_agree_on_credentials_and_targets(k: Kubectl) -> None:
    k.apply(
        """apiVersion: v1
kind: Secret
metadata: {name: good}
stringData: {username: ops, password: not-a-real-one}
---
apiVersion: v1
kind: Secret
metadata: {name: bad}
stringData: {username: ops}
---
apiVersion: opsconductor.io/v1alpha1
kind: Credential
metadata: {name: good}
spec: {type: BasicAuth, secretRef: {name: good}}
---
apiVersion: opsconductor.io/v1alpha1
kind: Credential
metadata: {name: bad}
spec: {type: BasicAuth, secretRef: {name: bad}}
---
apiVersion: opsconductor.io/v1alpha1
kind: Target
metadata: {name: down}
spec: {address: 127.0.0.1, port: 9, protocol: http, http: {scheme: http}, probe: {}}
"""
    )

    def with_status(kind: str, name: str, condition: str) -> dict[str, Any] | None:
        obj = k.get(kind, name)
        types = {c["type"] for c in (obj.get("status") or {}).get("conditions", [])}
        return obj if condition in types else None

    good = wait_until(lambda: with_status("credential", "good", "Ready"), what="credential good validated")
    bad = wait_until(lambda: with_status("credential", "bad", "Ready"), what="credential bad validated")
    down = wait_until(
        lambda: with_status("target", "down", "Reachable"), timeout=90, what="target down probed"
    )
    objects = {"valid credential": good, "invalid credential": bad, "unreachable target": down}
    expected = {
        "valid credential": ("Current", "Healthy"),
        "invalid credential": ("Failed", "Degraded"),
        "unreachable target": ("InProgress", "Progressing"),
    }
    computed = dict(zip(objects, kstatus(list(objects.values())), strict=True))
    for name, obj in objects.items():
        argo_status, argo_message = argocd_health(obj)
        assert (computed[name][0], argo_status) == expected[name], (name, computed[name], argo_message)
    assert "password" in argocd_health(bad)[1]  # says which key is missing
