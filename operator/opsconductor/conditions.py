"""Condition types and reasons (documented constants) and the pure helpers that set them.

kstatus semantics: ``Reconciling`` True while work is in progress, ``Stalled`` True when progress
is impossible without a change, ``Ready`` summarises. ``lastTransitionTime`` only changes when a
condition's status flips.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

READY = "Ready"
RECONCILING = "Reconciling"
STALLED = "Stalled"
SUCCEEDED = "Succeeded"

# Reasons.
REASON_PENDING = "Pending"
REASON_RUNNER_STARTING = "RunnerStarting"
REASON_RUNNING = "Running"
REASON_SUCCEEDED = "Succeeded"
REASON_FAILED = "StepsFailed"
REASON_CANCELLED = "Cancelled"
REASON_RUNNER_LOST = "RunnerLost"
REASON_DEADLINE_EXCEEDED = "DeadlineExceeded"
REASON_INVALID_SPEC = "InvalidSpec"
REASON_INVALID_TEMPLATE = "InvalidTemplate"
REASON_TARGET_NOT_FOUND = "TargetNotFound"
REASON_CREDENTIAL_NOT_FOUND = "CredentialNotFound"
REASON_SECRET_NOT_FOUND = "SecretNotFound"
REASON_INVALID_CREDENTIAL = "InvalidCredential"
REASON_WAITING_FOR_DEPENDENCIES = "WaitingForDependencies"
REASON_RUNNER_NOT_STARTING = "RunnerNotStarting"
REASON_RUNNER_UNSCHEDULABLE = "Unschedulable"

Status = Literal["True", "False", "Unknown"]


def now_rfc3339() -> str:
    """Return the current time as Kubernetes writes it (seconds precision, Z)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(
    conditions: list[dict[str, Any]],
    condition_type: str,
    status: Status,
    reason: str,
    message: str = "",
    observed_generation: int | None = None,
    now: str | None = None,
) -> list[dict[str, Any]]:
    """Return ``conditions`` with one condition set; keeps ``lastTransitionTime`` unless status flips.

    Args:
        conditions: the current list (not modified).
        condition_type: e.g. ``Ready``.
        status: True, False or Unknown.
        reason: a CamelCase reason constant.
        message: human-readable details.
        observed_generation: the generation the condition reflects.
        now: RFC 3339 time to use for a transition (default: now).

    Returns:
        A new list, sorted by type for stable output.
    """
    previous = next((c for c in conditions if c.get("type") == condition_type), None)
    transition = (
        previous["lastTransitionTime"]
        if previous and previous.get("status") == status and previous.get("lastTransitionTime")
        else (now or now_rfc3339())
    )
    updated = {
        "type": condition_type,
        "status": status,
        "reason": reason,
        "message": message[:32768],
        "lastTransitionTime": transition,
    }
    if observed_generation is not None:
        updated["observedGeneration"] = observed_generation
    others = [c for c in conditions if c.get("type") != condition_type]
    return sorted([*others, updated], key=lambda c: str(c["type"]))
