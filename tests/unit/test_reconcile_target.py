"""When a Target is probed, what a report changes, backoff, Events on change; the probe pod's shape."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from opsconductor.builders.probe import build_probe_pod, probe_pod_name
from opsconductor.config import Config
from opsconductor.plan import PlanTarget
from opsconductor.probemodels import PROBE_REQUEST_ENV, ProbeReport, ProbeRequest
from opsconductor.reconcile.target import (
    probe_delay,
    probe_is_lost,
    probe_trigger,
    report_from_pod,
    result_update,
    start_patch,
)

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def target(
    spec_probe: dict[str, Any] | None = None,
    status: dict[str, Any] | None = None,
    annotation: str | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {"address": "10.0.0.1", "protocol": "ssh"}
    if spec_probe is not None:
        spec["probe"] = spec_probe
    meta: dict[str, Any] = {"name": "web-01", "namespace": "ops", "uid": "u-1", "generation": 1}
    if annotation:
        meta["annotations"] = {"opsconductor.io/probe": annotation}
    return {"metadata": meta, "spec": spec, "status": status or {}}


def test_backoff_doubles_after_the_first_failure_and_is_capped() -> None:
    assert [probe_delay(60, n) for n in range(6)] == [60, 60, 120, 240, 480, 960]
    assert probe_delay(60, 50) == 60 * 32
    assert probe_delay(3600, 50) == 6 * 3600
    assert probe_delay(86400, 3) == 86400  # never shorter than the interval


def test_triggers() -> None:
    assert probe_trigger(target(), NOW) is None
    assert probe_trigger(target({}), NOW) == "created"
    assert probe_trigger(target(annotation="r1"), NOW) == "annotation"
    assert probe_trigger(target(annotation="r1", status={"handledProbeRequest": "r1"}), NOW) is None
    busy = {"activeProbe": {"pod": "p", "started": "2026-11-23T12:00:00Z", "trigger": "annotation"}}
    assert probe_trigger(target({}, busy, annotation="r2"), NOW) is None
    probed = {"lastProbe": {"time": "2026-11-23T11:59:00Z", "reachable": True}}
    assert probe_trigger(target({}, probed), NOW) is None
    due = {**probed, "nextProbeTime": "2026-11-23T12:00:00Z"}
    assert probe_trigger(target({"intervalSeconds": 60}, due), NOW) == "interval"
    assert probe_trigger(target({"intervalSeconds": 60}, due), NOW - timedelta(seconds=1)) is None


def test_start_records_the_pod_and_the_handled_request() -> None:
    patch = start_patch(target(annotation="r1"), "annotation", "web-01-probe-abc123", NOW)["status"]
    assert patch["activeProbe"] == {
        "pod": "web-01-probe-abc123",
        "started": "2026-11-23T12:00:00Z",
        "trigger": "annotation",
    }
    assert patch["handledProbeRequest"] == "r1"
    assert {c["type"]: c["status"] for c in patch["conditions"]}["Reconciling"] == "True"


def test_results_backoff_and_events_only_on_change() -> None:
    down = ProbeReport(
        reachable=False, reason="ConnectionRefused", message="ssh 10.0.0.1:22: connection refused"
    )
    current = target({"intervalSeconds": 60})
    delays = []
    events = []
    for _ in range(3):
        update = result_update(current, down, NOW)
        status = update.patch["status"]
        delays.append(
            (datetime.fromisoformat(status["nextProbeTime"].replace("Z", "+00:00")) - NOW).total_seconds()
        )
        events.extend(update.events)
        current = target({"intervalSeconds": 60}, status)
    assert delays == [60, 120, 240]
    assert events == [("Warning", "Unreachable", "ConnectionRefused: ssh 10.0.0.1:22: connection refused")]
    assert current["status"]["consecutiveProbeFailures"] == 3
    conditions = {c["type"]: (c["status"], c["reason"]) for c in current["status"]["conditions"]}
    assert conditions["Reachable"] == ("False", "ConnectionRefused")
    assert conditions["Ready"] == ("False", "ConnectionRefused")

    up = ProbeReport(
        reachable=True,
        reason="Connected",
        latency_milliseconds=12,
        facts={"hostname": "web01", "os_name": "Linux", "uptime_seconds": 5, "unknown_fact": "x"},
    )
    update = result_update(current, up, NOW)
    status = update.patch["status"]
    assert update.events == [("Normal", "Reachable", "reachable")]
    assert status["facts"] == {"hostname": "web01", "osName": "Linux", "uptimeSeconds": 5}
    assert status["consecutiveProbeFailures"] == 0
    assert status["lastProbe"]["latencyMilliseconds"] == 12
    assert status["activeProbe"] is None
    again = result_update(target({"intervalSeconds": 60}, status), up, NOW)
    assert again.events == []
    # Without an interval there is no next probe time.
    assert result_update(target({}), up, NOW).patch["status"]["nextProbeTime"] is None


def test_report_from_pod_and_lost_probes() -> None:
    def pod(phase: str, message: str | None) -> dict[str, Any]:
        terminated = {"exitCode": 1, "reason": "Error", "message": message} if message is not None else None
        state = {"terminated": terminated} if terminated else {"running": {}}
        return {
            "metadata": {"name": "p"},
            "status": {"phase": phase, "containerStatuses": [{"state": state}]},
        }

    assert report_from_pod(pod("Running", None)) is None
    good = ProbeReport(reachable=True, reason="Connected").model_dump_json()
    assert report_from_pod(pod("Succeeded", good)) == ProbeReport(reachable=True, reason="Connected")
    broken = report_from_pod(pod("Failed", "Traceback\nboom"))
    assert broken is not None and broken.reason == "ProbeFailed" and "boom" in broken.message

    active = target({"timeoutSeconds": 10}, {"activeProbe": {"pod": "p", "started": "2026-11-23T12:00:00Z"}})
    assert not probe_is_lost(active, True, NOW + timedelta(seconds=60))
    assert probe_is_lost(active, True, NOW + timedelta(seconds=101))
    assert not probe_is_lost(active, False, NOW + timedelta(seconds=5))  # being created
    assert probe_is_lost(active, False, NOW + timedelta(seconds=11))


def test_probe_pod_is_restricted_and_has_no_api_access() -> None:
    name = probe_pod_name("a" * 60, NOW)
    assert len(name) <= 63 and name != probe_pod_name("a" * 60, NOW + timedelta(seconds=1))
    request = ProbeRequest(
        target=PlanTarget(name="web-01", address="10.0.0.1", port=22, protocol="ssh"), timeout_seconds=20
    )
    pod = build_probe_pod(target(), request, ["ops-ssh"], Config(), "web-01-probe-abc123")
    spec = pod["spec"]
    container = spec["containers"][0]
    assert spec["automountServiceAccountToken"] is False
    assert spec["activeDeadlineSeconds"] == 50
    assert container["args"] == ["probe"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert spec["securityContext"]["runAsNonRoot"] is True
    env = {e["name"]: e["value"] for e in container["env"]}
    assert ProbeRequest.model_validate_json(env[PROBE_REQUEST_ENV]) == request
    assert {"secretName": "ops-ssh", "defaultMode": 0o440} in [v.get("secret") for v in spec["volumes"]]
    assert pod["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    assert pod["metadata"]["labels"]["opsconductor.io/target"] == "web-01"
