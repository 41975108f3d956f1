"""What an OpsSchedule does now: which fires run, which are skipped and why, what each run looks like.

Pure decisions over (schedule spec, horizon, now, the schedule's runs), unit-tested apart from kopf
and the API; ``handlers.opsschedule`` applies them.

Vocabulary:
- a *fire* is an instant a cron expression names (``reconcile.cron`` maps wall clock to instants);
- a fire's *run time* is when it may run after the maintenance windows (the fire itself, the end of
  a blackout, the next allowed opening), or none when a window skips it;
- the *horizon* (``status.evaluatedTime``) is the last fire already decided: run, skipped, or
  superseded by an edit. Only fires after the horizon are ever considered, so an operator restart,
  an edit or a resync never decides a fire twice, and an OpsJob's name is derived from its fire
  (:func:`run_name`), so even a decision made twice creates one OpsJob (the second create gets 409).

What must stay true: no clock reads (``now`` is a parameter); run time is non-decreasing in fire
time (windows only move fires later), which lets :func:`plan_fires` stop at the first fire whose
run time is still ahead.
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo

from opsconductor.api import API_VERSION, OPSJOB, OPSSCHEDULE
from opsconductor.constants import (
    ANNOTATION_ATTEMPT,
    ANNOTATION_RETRY_OF,
    ANNOTATION_SCHEDULED_TIME,
    ANNOTATION_STARTED_BY,
    LABEL_SCHEDULE,
)
from opsconductor.reconcile import cron
from opsconductor.reconcile.windows import Window, WindowVerdict, judge_fire, parse_window

Manifest = dict[str, Any]
MAX_NAME = 63
MISSED_TOLERANCE = timedelta(seconds=60)
"""A fire whose run time passed longer ago than this counts as missed (operator down or busy)."""
LOOKBACK_FIRES = 200
"""How many past fires a scan considers at most (bounds the work after a long downtime)."""
TERMINAL = frozenset({"Succeeded", "Failed", "Cancelled"})


@dataclass(frozen=True)
class ParsedSchedule:
    """A schedule spec checked beyond what admission can check (zone exists, croniter reads the cron)."""

    expressions: tuple[str, ...]
    zone: ZoneInfo
    suspend: bool
    concurrency: Literal["Allow", "Forbid", "Replace"]
    starting_deadline: timedelta | None
    missed_runs: Literal["RunLatest", "RunAll", "Skip"]
    max_missed_runs: int
    blackout: tuple[Window, ...] = ()
    allowed: tuple[Window, ...] = ()
    defer: bool = False

    def judge(self, fire: datetime) -> WindowVerdict:
        """When ``fire`` may run after the windows."""
        if not self.blackout and not self.allowed:
            return WindowVerdict(fire)
        return judge_fire(fire, self.blackout, self.allowed, self.defer)


def parse_schedule(spec: Manifest, shared_windows: list[Manifest] | None = None) -> ParsedSchedule:
    """Check and parse a spec (camelCase dict); raise ``cron.InvalidSchedule`` with a clear message.

    Args:
        spec: the OpsSchedule spec.
        shared_windows: the ``spec`` of each MaintenanceWindow the schedule references (already resolved).
    """
    zone_name = spec.get("timeZone") or "UTC"
    zone = cron.load_zone(zone_name)
    expressions = tuple(spec.get("schedules") or [])
    for expression in expressions:
        cron.check_expression(expression)
    windows = spec.get("windows") or {}
    blackout = [parse_window(w, zone_name) for w in windows.get("blackout") or []]
    allowed = [parse_window(w, zone_name) for w in windows.get("allowed") or []]
    for shared in shared_windows or []:
        shared_zone = shared.get("timeZone") or zone_name
        blackout += [parse_window(w, shared_zone) for w in shared.get("blackout") or []]
        allowed += [parse_window(w, shared_zone) for w in shared.get("allowed") or []]
    for window in (*blackout, *allowed):
        if window.cron:
            cron.check_expression(window.cron)
    deadline = spec.get("startingDeadlineSeconds")
    return ParsedSchedule(
        expressions=expressions,
        zone=zone,
        suspend=bool(spec.get("suspend")),
        concurrency=spec.get("concurrencyPolicy") or "Forbid",
        starting_deadline=timedelta(seconds=deadline) if deadline is not None else None,
        missed_runs=spec.get("missedRuns") or "RunLatest",
        max_missed_runs=int(spec.get("maxMissedRuns") or 10),
        blackout=tuple(blackout),
        allowed=tuple(allowed),
        defer=windows.get("blackoutPolicy") == "Defer",
    )


@dataclass(frozen=True)
class Skip:
    """A fire that does not run, and why (becomes a Warning/Normal Event)."""

    fire: datetime
    reason: str
    message: str


@dataclass
class FirePlan:
    """The outcome of looking at the fires between the horizon and now."""

    run: list[datetime] = field(default_factory=list)
    """Fires to run now, oldest first (each becomes one OpsJob named after it)."""
    skipped: list[Skip] = field(default_factory=list)
    """Fires decided not to run."""
    horizon: datetime | None = None
    """The new horizon (last decided fire)."""
    next_wake: datetime | None = None
    """When to look again (the next fire's decision time); None: nothing ahead (suspended, no cron)."""


def _stamp(instant: datetime) -> str:
    return instant.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def plan_fires(schedule: ParsedSchedule, horizon: datetime, now: datetime) -> FirePlan:
    """Decide the fires after ``horizon`` whose decision time has come.

    Missed fires (run time more than :data:`MISSED_TOLERANCE` ago: the operator was down or busy) follow
    ``missedRuns``: RunLatest runs only the latest one, RunAll the latest ``maxMissedRuns`` (oldest
    first), Skip none. ``startingDeadlineSeconds`` skips any fire whose run time passed longer ago.
    A window's Defer moves a fire to the window's end; fires deferred to the same instant collapse
    into one run (the latest fire).

    Args:
        schedule: the parsed spec.
        horizon: the last decided fire (or the schedule's creation / last edit).
        now: the current instant.
    """
    plan = FirePlan(horizon=horizon)
    if schedule.suspend or not schedule.expressions:
        plan.horizon = max(horizon, now) if schedule.suspend else horizon
        return plan
    # Usually one or two fires since the horizon; after a long downtime only the latest ones count.
    candidates = cron.fires_between(schedule.expressions, schedule.zone, horizon, now, LOOKBACK_FIRES + 1)
    if len(candidates) > LOOKBACK_FIRES:
        recent = cron.latest_fires(schedule.expressions, schedule.zone, now, LOOKBACK_FIRES)
        candidates = sorted(recent)
        plan.skipped.append(
            Skip(
                recent[-1],
                "MissedRunsDropped",
                f"more than {LOOKBACK_FIRES} fires since {_stamp(horizon)} were missed; "
                f"only the last {LOOKBACK_FIRES} were considered",
            )
        )
    ready: dict[datetime, datetime] = {}  # run time -> latest fire deferred to it
    for fire in candidates:
        verdict = schedule.judge(fire)
        if verdict.run_at is None:
            if fire > now:
                break
            plan.skipped.append(Skip(fire, verdict.reason, verdict.message))
            plan.horizon = fire
            continue
        if verdict.run_at > now:
            break  # run times only grow: every later fire waits too
        ready[verdict.run_at] = fire
        plan.horizon = fire

    runnable = sorted(ready.items())  # (run time, fire), oldest first
    fresh = [(at, f) for at, f in runnable if now - at <= MISSED_TOLERANCE]
    missed = [(at, f) for at, f in runnable if now - at > MISSED_TOLERANCE]
    chosen: list[tuple[datetime, datetime]] = list(fresh)
    if missed:
        if schedule.missed_runs == "RunAll":
            budget = max(0, schedule.max_missed_runs - len(fresh))
            keep = missed[-budget:] if budget else []
        elif schedule.missed_runs == "RunLatest" and not fresh:
            keep = missed[-1:]
        else:
            keep = []
        dropped = [f for at, f in missed if (at, f) not in keep]
        if dropped:
            plan.skipped.append(
                Skip(
                    dropped[-1],
                    "MissedRunsSkipped",
                    f"{len(dropped)} missed fire(s) from {_stamp(dropped[0])} to {_stamp(dropped[-1])} "
                    f"not run (missedRuns {schedule.missed_runs})",
                )
            )
        chosen = sorted(keep + fresh)
    for at, fire in chosen:
        if schedule.starting_deadline is not None and now - at > schedule.starting_deadline:
            plan.skipped.append(
                Skip(
                    fire,
                    "DeadlinePassed",
                    f"fire at {_stamp(fire)} not started: {int((now - at).total_seconds())}s late, "
                    f"startingDeadlineSeconds is {int(schedule.starting_deadline.total_seconds())}",
                )
            )
        else:
            plan.run.append(fire)
    plan.next_wake = next_decision_time(schedule, plan.horizon or horizon)
    return plan


def next_decision_time(schedule: ParsedSchedule, horizon: datetime) -> datetime | None:
    """When the first fire after ``horizon`` is decided: its run time, or the fire itself if skipped."""
    if schedule.suspend or not schedule.expressions:
        return None
    fire = cron.next_fire(schedule.expressions, schedule.zone, horizon)
    verdict = schedule.judge(fire)
    return verdict.run_at or fire


def next_run_time(schedule: ParsedSchedule, after: datetime, look_ahead: int = 50) -> datetime | None:
    """Return the next instant a fire will actually run (after windows), within ``look_ahead`` fires."""
    if schedule.suspend or not schedule.expressions:
        return None
    for index, fire in enumerate(cron.fires_after(schedule.expressions, schedule.zone, after)):
        if index >= look_ahead:
            return None
        verdict = schedule.judge(fire)
        if verdict.run_at is not None:
            return verdict.run_at
    return None


# --- runs -----------------------------------------------------------------------------------
def _short_hash(text: str, length: int = 8) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def _fit(schedule_name: str, suffix: str) -> str:
    """``<schedule>-<suffix>``, the schedule part shortened with a hash when the whole exceeds 63."""
    name = f"{schedule_name}-{suffix}"
    if len(name) <= MAX_NAME:
        return name
    keep = MAX_NAME - len(suffix) - 10
    return f"{schedule_name[:keep].rstrip('-.')}-{_short_hash(schedule_name)}-{suffix}"


def fire_key(fire: datetime) -> str:
    """Return the part of a run's name naming a cron fire: minutes since the epoch (as CronJob does)."""
    return str(int(fire.timestamp()) // 60)


def run_name(schedule_name: str, key: str) -> str:
    """Name the first OpsJob of one fire: deterministic, at most 63 characters.

    Args:
        schedule_name: the OpsSchedule's name.
        key: :func:`fire_key` for cron fires, ``m<hash>`` for manual triggers, ``a<hash>`` for runs
            released by a dependency.
    """
    return _fit(schedule_name, key)


def attempt_name(first_run: str, attempt: int) -> str:
    """Name retry ``attempt`` (2, 3, …) of the fire whose first run is ``first_run``."""
    return _fit(first_run, f"r{attempt - 1}")


def manual_key(token: str) -> str:
    """Run key of a manual trigger (one run per distinct trigger token)."""
    return f"m{_short_hash(token)}"


def after_key(upstream_uid: str) -> str:
    """Run key of a run released by the end of an upstream run."""
    return f"a{_short_hash(upstream_uid)}"


def build_run(
    schedule: Manifest,
    name: str,
    fire: datetime,
    started_by: str,
    attempt: int = 1,
    retry_of: str | None = None,
    extra_after: list[Manifest] | None = None,
) -> Manifest:
    """Return the OpsJob for one fire of ``schedule``: template + links back to the schedule and the fire.

    Args:
        schedule: the OpsSchedule manifest.
        name: the run's name (:func:`run_name`).
        fire: the fire it belongs to (manual and dependency runs: when they were started).
        started_by: who started it, e.g. ``opsschedule/nightly`` or ``user:alice``.
        attempt: the attempt number.
        retry_of: for retries, the fire's first run (the attempts' common key).
        extra_after: dependencies added to the template's ``spec.after`` (schedules gated by ``after``).
    """
    meta = schedule["metadata"]
    template = schedule["spec"]["jobTemplate"]
    template_meta = template.get("metadata") or {}
    annotations = dict(template_meta.get("annotations") or {})
    annotations.update(
        {
            ANNOTATION_SCHEDULED_TIME: _stamp(fire),
            ANNOTATION_STARTED_BY: started_by,
            ANNOTATION_ATTEMPT: str(attempt),
        }
    )
    if retry_of:
        annotations[ANNOTATION_RETRY_OF] = retry_of
    spec = copy.deepcopy(template["spec"])
    if extra_after:
        spec["after"] = [*(spec.get("after") or []), *extra_after]
    return {
        "apiVersion": API_VERSION,
        "kind": OPSJOB.kind,
        "metadata": {
            "name": name,
            "namespace": meta["namespace"],
            "labels": {**(template_meta.get("labels") or {}), LABEL_SCHEDULE: meta["name"]},
            "annotations": annotations,
            "ownerReferences": [
                {
                    "apiVersion": API_VERSION,
                    "kind": OPSSCHEDULE.kind,
                    "name": meta["name"],
                    "uid": meta["uid"],
                    "controller": True,
                }
            ],
        },
        "spec": spec,
    }


def concurrency_action(policy: str, active: list[str]) -> Literal["create", "skip", "replace"]:
    """Return what a fire does given the runs still active: create, skip (Forbid), or replace them."""
    if not active or policy == "Allow":
        return "create"
    return "skip" if policy == "Forbid" else "replace"


def retry_delay(retry: Manifest, failed_attempt: int) -> timedelta | None:
    """Wait before re-running a fire whose attempt ``failed_attempt`` failed; None when retries are spent.

    Exponential: ``backoffSeconds * 2**(attempt-1)``, at most ``maxBackoffSeconds``.
    """
    limit = int(retry.get("limit", 0))
    if failed_attempt > limit:
        return None
    base = int(retry.get("backoffSeconds", 5))
    cap = int(retry.get("maxBackoffSeconds", 300))
    return timedelta(seconds=min(cap, base * 2 ** (failed_attempt - 1)))


@dataclass(frozen=True)
class RunInfo:
    """What the schedule needs to know about one of its OpsJobs."""

    name: str
    uid: str
    phase: str
    first_run: str
    """The name of the fire's first run (this run's own name unless it is a retry)."""
    started_by: str
    scheduled_time: datetime | None
    attempt: int
    created: datetime | None
    completed: datetime | None

    @property
    def finished(self) -> bool:
        """The run ended."""
        return self.phase in TERMINAL


def _time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def run_info(job: Manifest) -> RunInfo:
    """Read a :class:`RunInfo` from an OpsJob manifest."""
    meta = job["metadata"]
    annotations = meta.get("annotations") or {}
    status = job.get("status") or {}
    attempt = int(annotations.get(ANNOTATION_ATTEMPT) or 1)
    name = meta["name"]
    return RunInfo(
        name=name,
        uid=meta.get("uid", ""),
        phase=status.get("phase") or "Pending",
        first_run=annotations.get(ANNOTATION_RETRY_OF) or name,
        started_by=annotations.get(ANNOTATION_STARTED_BY) or "",
        scheduled_time=_time(annotations.get(ANNOTATION_SCHEDULED_TIME)),
        attempt=attempt,
        created=_time(meta.get("creationTimestamp")),
        completed=_time(status.get("completionTime")),
    )


def runs_to_delete(runs: list[RunInfo], successful_limit: int, failed_limit: int) -> list[str]:
    """Finished runs beyond the history limits (oldest first); Cancelled counts as failed."""

    def order(run: RunInfo) -> tuple[datetime, str]:
        return (run.completed or run.created or datetime.min.replace(tzinfo=UTC), run.name)

    succeeded = sorted((r for r in runs if r.phase == "Succeeded"), key=order)
    failed = sorted((r for r in runs if r.phase in ("Failed", "Cancelled")), key=order)
    doomed = succeeded[: max(0, len(succeeded) - successful_limit)]
    doomed += failed[: max(0, len(failed) - failed_limit)]
    return [r.name for r in doomed]


def summarize_runs(runs: list[RunInfo]) -> Manifest:
    """Return the run-derived status fields: active runs, last result, last successful time."""
    active = sorted(
        (r for r in runs if not r.finished),
        key=lambda r: (r.created or datetime.min.replace(tzinfo=UTC), r.name),
    )
    finished = sorted(
        (r for r in runs if r.finished and r.completed),
        key=lambda r: (r.completed or datetime.min.replace(tzinfo=UTC), r.name),
    )
    succeeded = [r for r in finished if r.phase == "Succeeded"]
    summary: Manifest = {
        "active": [
            {"name": r.name, **({"scheduledTime": _stamp(r.scheduled_time)} if r.scheduled_time else {})}
            for r in active[:100]
        ],
        "activeCount": len(active),
    }
    if finished:
        summary["lastResult"] = finished[-1].phase
    if succeeded and succeeded[-1].completed:
        summary["lastSuccessfulTime"] = _stamp(succeeded[-1].completed)
    return summary


# --- dependencies ---------------------------------------------------------------------------
def dependency_cycle(name: str, edges: dict[str, list[str]]) -> list[str] | None:
    """Return the cycle through ``name`` in the after-graph (schedule -> schedules it waits for), or None."""
    stack: list[tuple[str, list[str]]] = [(name, [name])]
    seen: set[str] = set()
    while stack:
        node, path = stack.pop()
        for upstream in edges.get(node, []):
            if upstream == name:
                return [*path, name]
            if upstream not in seen:
                seen.add(upstream)
                stack.append((upstream, [*path, upstream]))
    return None
