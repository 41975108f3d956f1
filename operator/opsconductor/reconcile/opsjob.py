"""What an OpsJob's status should be, given its runner pod: phase, conditions, events to emit.

The runner writes ``status.startTime``, ``status.steps`` and ``status.progress``; the operator writes
everything else (phase, conditions, messages, times). This module decides the operator's part from
the job and its pod, so the decision is unit-tested apart from kopf and the API.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from opsconductor import conditions as c
from opsconductor.builders.runner import summary_from_termination_message
from opsconductor.constants import RUNNER_CONTAINER

Manifest = dict[str, Any]
TERMINAL_PHASES = frozenset({"Succeeded", "Failed", "Cancelled"})
# Container waiting reasons after which a runner will not start without a change.
STUCK_WAITING_REASONS = frozenset(
    {
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "CreateContainerConfigError",
        "CreateContainerError",
    }
)


@dataclass(frozen=True)
class Verdict:
    """The run's state as the operator sees it."""

    phase: str
    reason: str
    message: str = ""
    stalled: bool = False

    @property
    def terminal(self) -> bool:
        """Whether the run has ended."""
        return self.phase in TERMINAL_PHASES


@dataclass
class StatusUpdate:
    """A status patch plus the Events that go with the transition it makes."""

    patch: Manifest
    events: list[tuple[str, str, str]] = field(default_factory=list)
    """(type, reason, message) tuples: Normal/Warning."""


def _runner_container_status(pod: Manifest) -> Manifest:
    for status in pod.get("status", {}).get("containerStatuses") or []:
        if status.get("name") == RUNNER_CONTAINER:
            return dict(status)
    return {}


def judge_runner(pod: Manifest | None, *, runner_created: bool, cancel_requested: bool) -> Verdict:
    """Decide the run's phase from its runner pod.

    Args:
        pod: the runner pod, or None when it does not exist.
        runner_created: the operator created the runner before (``status.runnerPod`` is set).
        cancel_requested: ``spec.cancel`` is true.

    Returns:
        The verdict.
    """
    if pod is None:
        if cancel_requested:
            return Verdict("Cancelled", c.REASON_CANCELLED, "cancelled before the run finished")
        if runner_created:
            return Verdict(
                "Failed",
                c.REASON_RUNNER_LOST,
                "the runner pod disappeared before the run finished (deleted or evicted); "
                "steps that were running may have been interrupted",
            )
        return Verdict("Pending", c.REASON_RUNNER_STARTING, "creating the runner pod")

    status = pod.get("status", {})
    phase = status.get("phase", "Pending")
    container = _runner_container_status(pod)
    state = container.get("state", {})
    name = pod["metadata"]["name"]

    if phase in ("Succeeded", "Failed"):
        terminated = state.get("terminated") or {}
        summary = summary_from_termination_message(terminated.get("message"))
        if summary is not None:
            reason = {
                "Succeeded": c.REASON_SUCCEEDED,
                "Cancelled": c.REASON_CANCELLED,
            }.get(summary["phase"], summary.get("reason") or c.REASON_FAILED)
            return Verdict(summary["phase"], reason, str(summary.get("message", "")))
        if cancel_requested:
            return Verdict("Cancelled", c.REASON_CANCELLED, "cancelled; the runner was stopped")
        if status.get("reason") == "DeadlineExceeded":
            return Verdict(
                "Failed", c.REASON_DEADLINE_EXCEEDED, "the run exceeded spec.activeDeadlineSeconds"
            )
        if terminated.get("reason") == "OOMKilled":
            return Verdict(
                "Failed",
                c.REASON_RUNNER_LOST,
                f"runner pod {name} was OOM-killed; raise spec.runner.resources.limits.memory",
            )
        if status.get("reason") == "Evicted":
            return Verdict(
                "Failed", c.REASON_RUNNER_LOST, f"runner pod {name} was evicted: {status.get('message', '')}"
            )
        detail = (terminated.get("message") or "").strip().splitlines()[-3:]
        return Verdict(
            "Failed",
            c.REASON_RUNNER_LOST,
            f"runner pod {name} ended without a result (exit code {terminated.get('exitCode')}, "
            f"reason {terminated.get('reason') or status.get('reason') or 'unknown'})"
            + (": " + " | ".join(detail) if detail else ""),
        )

    if pod["metadata"].get("deletionTimestamp"):
        if cancel_requested:
            return Verdict("Running", c.REASON_CANCELLED, "cancelling: stopping remote commands")
        return Verdict("Running", c.REASON_RUNNING, f"runner pod {name} is being deleted")

    if phase == "Running":
        return Verdict("Running", c.REASON_RUNNING, "")

    # Pending: scheduled? image known? config resolvable?
    waiting = state.get("waiting") or {}
    if waiting.get("reason") in STUCK_WAITING_REASONS:
        return Verdict(
            "Pending",
            c.REASON_RUNNER_NOT_STARTING,
            f"runner pod {name}: {waiting['reason']}: {waiting.get('message', '')}".strip(),
            stalled=True,
        )
    for condition in status.get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("reason") == "Unschedulable":
            return Verdict(
                "Pending",
                c.REASON_RUNNER_UNSCHEDULABLE,
                f"runner pod {name} cannot be scheduled: {condition.get('message', '')} "
                "(check spec.runner.nodeSelector, tolerations and resources)",
                stalled=True,
            )
    return Verdict("Pending", c.REASON_RUNNER_STARTING, f"runner pod {name} is starting")


def _format_duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def _parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def status_update(job: Manifest, verdict: Verdict, now: datetime | None = None) -> StatusUpdate | None:
    """Compute the status patch that brings ``job`` to ``verdict``, or None when nothing changes.

    Args:
        job: the OpsJob as last read.
        verdict: the run's state.
        now: current time (injectable for tests).

    Returns:
        The patch (``{"status": {...}}``) and the Events of this transition.
    """
    now = now or datetime.now(UTC)
    stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    status = job.get("status") or {}
    previous_phase = status.get("phase") or "Pending"
    if previous_phase in TERMINAL_PHASES:
        return None  # a finished run never changes again
    generation = job["metadata"].get("generation")
    conditions: list[Manifest] = list(status.get("conditions") or [])

    def put(kind: str, value: c.Status, reason: str, message: str = "") -> None:
        nonlocal conditions
        conditions = c.set_condition(conditions, kind, value, reason, message, generation, stamp)

    if verdict.phase == "Succeeded":
        put(c.READY, "True", verdict.reason, verdict.message or "the run succeeded")
        put(c.RECONCILING, "False", verdict.reason)
        put(c.STALLED, "False", verdict.reason)
        put(c.SUCCEEDED, "True", verdict.reason, verdict.message)
    elif verdict.terminal:
        put(c.READY, "False", verdict.reason, verdict.message)
        put(c.RECONCILING, "False", verdict.reason)
        put(c.STALLED, "True", verdict.reason, verdict.message)
        put(c.SUCCEEDED, "False", verdict.reason, verdict.message)
    else:
        put(c.READY, "False", verdict.reason, verdict.message or f"the run is {verdict.phase.lower()}")
        put(c.RECONCILING, "False" if verdict.stalled else "True", verdict.reason, verdict.message)
        put(
            c.STALLED,
            "True" if verdict.stalled else "False",
            verdict.reason,
            verdict.message if verdict.stalled else "",
        )

    patch: Manifest = {"phase": verdict.phase, "observedGeneration": generation, "conditions": conditions}
    if verdict.terminal:
        patch["completionTime"] = stamp
        patch["message"] = verdict.message[:4096]
        began = _parse_time(status.get("startTime")) or _parse_time(job["metadata"].get("creationTimestamp"))
        if began is not None:
            patch["duration"] = _format_duration((now - began).total_seconds())
    elif verdict.stalled:
        patch["message"] = verdict.message[:4096]

    unchanged = (
        previous_phase == verdict.phase
        and _strip_times(status.get("conditions") or []) == _strip_times(conditions)
        and status.get("message", "") == patch.get("message", status.get("message", ""))
    )
    if unchanged:
        return None

    events: list[tuple[str, str, str]] = []
    if verdict.phase == "Running" and previous_phase == "Pending":
        events.append(("Normal", "Started", "the runner started"))
    if verdict.stalled and not verdict.terminal:
        events.append(("Warning", verdict.reason, verdict.message))
    if verdict.terminal:
        for step in status.get("steps") or []:
            if step.get("phase") == "Failed":
                failed = [t["target"] for t in step.get("targets") or [] if t.get("phase") == "Failed"]
                counts = step.get("counts") or {}
                events.append(
                    (
                        "Warning",
                        "StepFailed",
                        f"step {step['name']} failed on {counts.get('failed', len(failed))} target(s)"
                        + (f": {', '.join(failed[:5])}" if failed else ""),
                    )
                )
        kind = "Normal" if verdict.phase == "Succeeded" else "Warning"
        events.append((kind, verdict.phase, verdict.message or f"the run {verdict.phase.lower()}"))
    return StatusUpdate({"status": patch}, events)


def _strip_times(conditions: list[Manifest]) -> list[Manifest]:
    return [{k: v for k, v in cond.items() if k != "lastTransitionTime"} for cond in conditions]


def failure_update(job: Manifest, reason: str, message: str, now: datetime | None = None) -> StatusUpdate:
    """Return the update failing a run that cannot start (invalid spec, missing target, bad template)."""
    update = status_update(job, Verdict("Failed", reason, message), now)
    assert update is not None, "a non-terminal job always changes when it fails"
    return update


def waiting_update(
    job: Manifest, reason: str, message: str, now: datetime | None = None
) -> StatusUpdate | None:
    """Return the update for a run waiting for something it references (Target, Credential, Secret)."""
    return status_update(job, Verdict("Pending", reason, message), now)
