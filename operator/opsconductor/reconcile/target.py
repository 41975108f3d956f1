"""What a Target's probe status should be: when to probe, and what a probe's report changes.

Pure functions of the Target manifest, a probe report and the time, so that the decisions (which
trigger wins, the backoff, when an Event is due) are unit-tested apart from kopf and the API.

What must stay true:

- At most one probe per Target is in flight (``status.activeProbe``); a new one starts only after
  the last one reported or was declared lost.
- An annotation value is acted on once (``status.handledProbeRequest``), whatever the outcome.
- Interval probes back off exponentially after consecutive failures (:func:`probe_delay`); an
  on-demand probe always runs at once.
- Events only when reachability changes (the first result counts as a change).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from opsconductor import conditions as c
from opsconductor.api.target import TargetFacts
from opsconductor.constants import ANNOTATION_PROBE
from opsconductor.probemodels import REASON_PROBE_FAILED, ProbeReport

Manifest = dict[str, Any]
REACHABLE = "Reachable"
REASON_PROBING = "Probing"
MAX_BACKOFF_FACTOR = 32
"""Interval probes of an unreachable Target wait at most this many intervals ..."""
MAX_BACKOFF_SECONDS = 6 * 3600
"""... and at most this long (unless the interval itself is longer)."""
LOST_GRACE_SECONDS = 90
"""A probe pod that has not reported this long after its timeout is declared lost."""


def stamp(value: datetime) -> str:
    """RFC 3339 as Kubernetes writes it (seconds, Z)."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: str | None) -> datetime | None:
    """Parse an RFC 3339 timestamp (None stays None)."""
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def probe_settings(target: Manifest) -> Manifest:
    """``spec.probe`` with its defaults (an empty dict when the Target sets none)."""
    return dict((target.get("spec") or {}).get("probe") or {})


def probe_delay(interval_seconds: int, consecutive_failures: int) -> int:
    """Seconds until the next interval probe: the interval, doubled per failure after the first.

    One failure keeps the interval (a blip); each further one doubles it, up to
    :data:`MAX_BACKOFF_FACTOR` intervals or :data:`MAX_BACKOFF_SECONDS`, whichever is shorter (but
    never less than the interval).
    """
    factor = min(2 ** max(consecutive_failures - 1, 0), MAX_BACKOFF_FACTOR)
    return int(max(interval_seconds, min(interval_seconds * factor, MAX_BACKOFF_SECONDS)))


def probe_trigger(target: Manifest, now: datetime) -> str | None:
    """Why the Target should be probed now (``annotation``, ``created``, ``interval``), or None."""
    status = target.get("status") or {}
    if status.get("activeProbe"):
        return None
    requested = ((target.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_PROBE)
    if requested and requested != status.get("handledProbeRequest"):
        return "annotation"
    settings = probe_settings(target)
    if (target.get("spec") or {}).get("probe") is None:  # ``probe: {}`` means "with defaults"
        return None
    if not status.get("lastProbe"):
        return "created"
    due = parse_time(status.get("nextProbeTime"))
    if settings.get("intervalSeconds") and (due is None or now >= due):
        return "interval"
    return None


def seconds_until_due(target: Manifest, now: datetime) -> float | None:
    """Seconds until the next interval probe (<= 0: due), or None without an interval."""
    if not probe_settings(target).get("intervalSeconds"):
        return None
    due = parse_time((target.get("status") or {}).get("nextProbeTime"))
    return 0.0 if due is None else (due - now).total_seconds()


def start_patch(target: Manifest, trigger: str, pod_name: str, now: datetime) -> Manifest:
    """Return the status patch recording a probe as started (the lock against a second one)."""
    status = target.get("status") or {}
    generation = target["metadata"].get("generation")
    conditions = c.set_condition(
        list(status.get("conditions") or []),
        c.RECONCILING,
        "True",
        REASON_PROBING,
        f"probing ({trigger})",
        generation,
        stamp(now),
    )
    patch: Manifest = {
        "activeProbe": {"pod": pod_name, "started": stamp(now), "trigger": trigger},
        "conditions": conditions,
    }
    if trigger == "annotation":
        patch["handledProbeRequest"] = target["metadata"]["annotations"][ANNOTATION_PROBE]
    return {"status": patch}


def probe_is_lost(target: Manifest, pod_exists: bool, now: datetime) -> bool:
    """Whether the active probe's pod is gone (or silent) past its timeout plus a grace period."""
    active = (target.get("status") or {}).get("activeProbe")
    if not active:
        return False
    started = parse_time(active.get("started")) or now
    timeout = int(probe_settings(target).get("timeoutSeconds") or 15)
    overdue = now - started > timedelta(seconds=timeout + LOST_GRACE_SECONDS)
    return overdue or (not pod_exists and now - started > timedelta(seconds=10))


@dataclass
class ProbeUpdate:
    """A Target status patch and the Events of the transition."""

    patch: Manifest
    events: list[tuple[str, str, str]] = field(default_factory=list)


def _facts(report: ProbeReport) -> Manifest | None:
    known = {k: v for k, v in report.facts.items() if k in TargetFacts.model_fields}
    if not known:
        return None
    try:
        facts = TargetFacts.model_validate(known)
    except ValueError:
        return None
    return facts.model_dump(by_alias=True, exclude_none=True, mode="json")


def result_update(target: Manifest, report: ProbeReport, now: datetime) -> ProbeUpdate:
    """Compute the status after a probe reported: Reachable/Ready, lastProbe, facts, failures, next time.

    Args:
        target: the Target as last read.
        report: what the probe pod reported (or what the operator found instead of a pod).
        now: when the result arrived.

    Returns:
        The patch (clears ``activeProbe``) and an Event when reachability changed.
    """
    status = target.get("status") or {}
    generation = target["metadata"].get("generation")
    when = stamp(now)
    previous = list(status.get("conditions") or [])
    conditions = previous
    reachable: c.Status = "True" if report.reachable else "False"
    message = report.message or ("reachable" if report.reachable else "unreachable")

    def put(kind: str, value: c.Status, reason: str, text: str = "") -> None:
        nonlocal conditions
        conditions = c.set_condition(conditions, kind, value, reason, text, generation, when)

    put(REACHABLE, reachable, report.reason, message)
    put(c.READY, reachable, report.reason, message)
    put(c.RECONCILING, "False", report.reason)
    put(c.STALLED, "False", report.reason)
    failures = 0 if report.reachable else int(status.get("consecutiveProbeFailures") or 0) + 1
    interval = probe_settings(target).get("intervalSeconds")
    patch: Manifest = {
        "observedGeneration": generation,
        "conditions": conditions,
        "activeProbe": None,
        "consecutiveProbeFailures": failures,
        "lastProbe": {
            "time": when,
            "reachable": report.reachable,
            "latencyMilliseconds": report.latency_milliseconds,
            "message": message[:4096],
        },
        "nextProbeTime": stamp(now + timedelta(seconds=probe_delay(int(interval), failures)))
        if interval
        else None,
    }
    facts = _facts(report) if report.reachable else None
    if facts is not None:
        patch["facts"] = facts
    old = next((cond for cond in previous if cond.get("type") == REACHABLE), None)
    events: list[tuple[str, str, str]] = []
    if old is None or old.get("status") != reachable:
        if report.reachable:
            events.append(("Normal", "Reachable", message))
        else:
            events.append(("Warning", "Unreachable", f"{report.reason}: {message}"))
    return ProbeUpdate({"status": patch}, events)


def report_from_pod(pod: Manifest) -> ProbeReport | None:
    """Return the report of a finished probe pod (None while it runs); a pod without one is a failure."""
    phase = (pod.get("status") or {}).get("phase")
    if phase not in ("Succeeded", "Failed"):
        return None
    terminated: Manifest = {}
    for container in (pod.get("status") or {}).get("containerStatuses") or []:
        terminated = (container.get("state") or {}).get("terminated") or terminated
    text = terminated.get("message") or ""
    try:
        return ProbeReport.model_validate_json(text)
    except ValueError:
        pass
    detail = " | ".join(text.strip().splitlines()[-3:])
    reason = terminated.get("reason") or (pod.get("status") or {}).get("reason") or "unknown"
    return ProbeReport(
        reachable=False,
        reason=REASON_PROBE_FAILED,
        message=f"probe pod {pod['metadata']['name']} ended without a report (exit code "
        f"{terminated.get('exitCode')}, reason {reason})" + (f": {detail}" if detail else ""),
    )
