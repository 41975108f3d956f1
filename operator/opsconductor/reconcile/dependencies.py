"""OpsJob ``spec.after``: may the run start, must it keep waiting, or has it failed.

Each dependency resolves to one OpsJob (``handlers.opsjob`` finds it): an ``opsJob`` by name, an
``opsSchedule`` as that schedule's first run created at or after this job. The job starts when
every dependency ended with the wanted result; it fails as ``DependencyFailed`` when one ended
otherwise (or the dependencies form a cycle), and as ``DependencyTimeout`` when one has not ended
``timeoutSeconds`` after the job began waiting.

What must stay true: pure (``now`` and ``waiting_since`` are parameters, read by the caller from
``opsconductor.clock`` and the job's status), so the verdict is unit-tested without a cluster.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

Manifest = dict[str, Any]
TERMINAL = frozenset({"Succeeded", "Failed", "Cancelled"})
REASON_DEPENDENCY_FAILED = "DependencyFailed"
REASON_DEPENDENCY_TIMEOUT = "DependencyTimeout"
REASON_WAITING_FOR_RUN = "WaitingForRun"


@dataclass(frozen=True)
class Resolved:
    """One ``spec.after`` entry and the OpsJob it currently resolves to (None: not there yet)."""

    dependency: Manifest
    run: Manifest | None

    @property
    def label(self) -> str:
        """How messages name the dependency."""
        if self.dependency.get("opsJob"):
            return f"opsJob {self.dependency['opsJob']}"
        return f"the next run of opsSchedule {self.dependency.get('opsSchedule')}"


@dataclass(frozen=True)
class DependencyVerdict:
    """start, wait (with a message), or fail (with a reason and message)."""

    action: Literal["start", "wait", "fail"]
    reason: str = ""
    message: str = ""


def result_matches(wanted: str, phase: str) -> bool:
    """Whether a finished run's phase releases a dependent (Succeeded / Failed / Any)."""
    if wanted == "Any":
        return phase in TERMINAL
    if wanted == "Failed":
        return phase in ("Failed", "Cancelled")
    return phase == wanted


def judge_dependencies(
    job: Manifest, resolved: list[Resolved], now: datetime, waiting_since: datetime
) -> DependencyVerdict:
    """Decide whether ``job`` may start.

    Args:
        job: the OpsJob.
        resolved: its dependencies and the runs they resolve to.
        now: the current instant.
        waiting_since: when the job began waiting (its first WaitingForRun status).
    """
    name = job["metadata"]["name"]
    pending: list[tuple[Resolved, str]] = []
    for item in resolved:
        wanted = item.dependency.get("result", "Succeeded")
        run = item.run
        if run is None:
            pending.append((item, f"waiting for {item.label} (not created yet)"))
            continue
        phase = (run.get("status") or {}).get("phase") or "Pending"
        if phase in TERMINAL:
            if not result_matches(wanted, phase):
                return DependencyVerdict(
                    "fail",
                    REASON_DEPENDENCY_FAILED,
                    f"{item.label} (OpsJob {run['metadata']['name']}) ended {phase}; this run needs {wanted}",
                )
            continue
        upstream_after = (run.get("spec") or {}).get("after") or []
        if any(d.get("opsJob") == name for d in upstream_after):
            return DependencyVerdict(
                "fail",
                REASON_DEPENDENCY_FAILED,
                f"dependency cycle: {name} waits for {run['metadata']['name']}, which waits for {name}",
            )
        pending.append((item, f"waiting for {item.label} (OpsJob {run['metadata']['name']} is {phase})"))
    if not pending:
        return DependencyVerdict("start")
    waited = (now - waiting_since).total_seconds()
    for item, _ in pending:
        timeout = int(item.dependency.get("timeoutSeconds", 86400))
        if waited > timeout:
            return DependencyVerdict(
                "fail",
                REASON_DEPENDENCY_TIMEOUT,
                f"{item.label} did not end within timeoutSeconds {timeout}",
            )
    return DependencyVerdict("wait", REASON_WAITING_FOR_RUN, "; ".join(message for _, message in pending))
