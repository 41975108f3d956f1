"""OpsSchedule runtime: one scheduler loop with a heap of next wake-ups, firing OpsJobs on time.

kopf handlers (``main.py``) only feed this module: every OpsSchedule event calls
:meth:`Scheduler.upsert`, every event of an OpsJob labelled with a schedule calls
:meth:`Scheduler.job_event`. The fire path does not go through kopf: a single thread sleeps until
the earliest wake-up in a heap (``opsconductor.clock.sleep``-style, precise with the real clock and
polling a fake one), then hands due schedules to a small pool that decides (``reconcile.opsschedule``)
and creates OpsJobs. Status patches, Events and history pruning go to a second, single-threaded
pool, so at a busy instant (hundreds of schedules on the same minute) the creates go first.

What must stay true:
- one fire creates at most one OpsJob: its name is derived from the fire (create-or-409), and the
  horizon (``status.evaluatedTime``) only moves past decided fires;
- a schedule is evaluated by one thread at a time (``Entry.lock``);
- time is read only through ``opsconductor.clock``;
- ``status.consecutiveFailures`` is never written here (the notifications feature owns it).
"""

from __future__ import annotations

import heapq
import itertools
import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from kubernetes.client import V1DeleteOptions, V1Preconditions
from kubernetes.client.exceptions import ApiException

from opsconductor import clock, kube, metrics
from opsconductor import conditions as c
from opsconductor.api import GROUP, MAINTENANCEWINDOW, OPSJOB, OPSSCHEDULE, VERSION
from opsconductor.constants import (
    ANNOTATION_TRIGGER,
    ANNOTATION_TRIGGERED_BY,
    LABEL_SCHEDULE,
)
from opsconductor.reconcile import opsschedule as rs
from opsconductor.reconcile.cron import InvalidSchedule
from opsconductor.reconcile.dependencies import result_matches

Manifest = dict[str, Any]
Key = tuple[str, str]
log = logging.getLogger(__name__)

REASON_SCHEDULED = "Scheduled"
REASON_SUSPENDED = "Suspended"
REASON_DEPENDENCY_CYCLE = "DependencyCycle"
REASON_WINDOW_NOT_FOUND = "WindowNotFound"
REASON_RUN_CREATE_FAILED = "RunCreateFailed"
FAKE_CLOCK_POLL_SECONDS = 0.2
BURST_YIELD_SECONDS = 2.0
"""How long follow-up work (starting runs, status writes) waits for a burst of fires to be created."""
SHARED_WINDOW_CACHE_SECONDS = 10.0
FIRE_THREADS = 48
"""Evaluations (and their create calls) in flight at once: enough to keep both API server cores busy."""


def _stamp(instant: datetime) -> str:
    return instant.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _api_message(error: ApiException) -> str:
    """Return the API server's message from an error response (its Status body), else the reason."""
    try:
        return str(json.loads(error.body or "{}").get("message") or error.reason)
    except ValueError:
        return str(error.reason)


def _gone(error: ApiException) -> bool:
    """Tell whether the schedule or its namespace is gone or being deleted (nothing to do or report)."""
    return error.status == 404 or (error.status == 403 and "being terminated" in _api_message(error))


def _parse_time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


@dataclass
class Entry:
    """What the scheduler holds for one OpsSchedule."""

    namespace: str
    name: str
    uid: str
    body: Manifest
    horizon: datetime
    parsed: rs.ParsedSchedule | None = None
    error: tuple[str, str] | None = None
    """(reason, message) when the schedule cannot run."""
    lock: threading.Lock = field(default_factory=threading.Lock)
    token: int = 0
    seeded: bool = False
    runs: dict[str, rs.RunInfo] = field(default_factory=dict)
    retries: dict[str, tuple[datetime, rs.RunInfo]] = field(default_factory=dict)
    """Next attempt's name -> (due, failed run)."""
    releases: list[rs.RunInfo] = field(default_factory=list)
    """Upstream runs (dependencies) that released a run of this schedule, not yet created."""
    trigger: tuple[str, str] | None = None
    """(token, user) of a manual trigger not yet handled."""
    last_trigger: str | None = None
    last_schedule_time: datetime | None = None
    status_sent: Manifest = field(default_factory=dict)
    create_error: str | None = None
    """Why the last run could not be created (the API server rejected the OpsJob)."""

    @property
    def key(self) -> Key:
        """(namespace, name)."""
        return (self.namespace, self.name)

    @property
    def spec(self) -> Manifest:
        """The schedule's spec."""
        spec: Manifest = self.body["spec"]
        return spec

    @property
    def label(self) -> str:
        """``opsschedule/<name>``: how runs record who started them."""
        return f"opsschedule/{self.name}"


class Scheduler:
    """The process-wide scheduler (one per operator)."""

    def __init__(
        self, shared_windows_namespace: str = "opsconductor-system", fire_threads: int = FIRE_THREADS
    ) -> None:
        self.shared_windows_namespace = shared_windows_namespace
        self._entries: dict[Key, Entry] = {}
        self._heap: list[tuple[datetime, int, Key, int]] = []
        self._sequence = itertools.count()
        self._cv = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._fire_pool = ThreadPoolExecutor(max_workers=fire_threads, thread_name_prefix="fire")
        self._after_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="schedule-status")
        self._window_cache: dict[Key, tuple[float, Manifest | None]] = {}
        self._dependents: dict[Key, set[str]] = {}
        """(namespace, upstream schedule) -> names of the schedules that run after it."""
        self._in_flight = 0
        """Evaluations taken off the heap and not finished yet (queued or creating runs)."""
        self._idle = threading.Condition()

    # --- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        """Start the loop thread (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="scheduler", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop the loop; in-flight fires finish."""
        self._stop.set()
        with self._cv:
            self._cv.notify_all()
        self._fire_pool.shutdown(wait=True, cancel_futures=True)
        self._after_pool.shutdown(wait=True, cancel_futures=True)

    def _wake_at(self, entry: Entry, when: datetime) -> None:
        with self._cv:
            entry.token += 1
            heapq.heappush(self._heap, (when, next(self._sequence), entry.key, entry.token))
            self._cv.notify()

    def _loop(self) -> None:
        while not self._stop.is_set():
            with self._cv:
                if not self._heap:
                    self._cv.wait(FAKE_CLOCK_POLL_SECONDS if clock.is_fake() else 5.0)
                    continue
                when, _, key, token = self._heap[0]
                remaining = clock.seconds_until(when)
                if remaining > 0:
                    self._cv.wait(min(remaining, FAKE_CLOCK_POLL_SECONDS) if clock.is_fake() else remaining)
                    continue
                heapq.heappop(self._heap)
                entry = self._entries.get(key)
                if entry is None or entry.token != token:
                    continue  # superseded by a later wake-up of the same schedule
            with self._idle:
                self._in_flight += 1
            self._fire_pool.submit(self._evaluate_counted, entry)

    def _evaluate_counted(self, entry: Entry) -> None:
        try:
            self._evaluate_safely(entry)
        finally:
            with self._idle:
                self._in_flight -= 1
                if self._in_flight == 0:
                    self._idle.notify_all()

    def wait_until_idle(self, timeout: float = BURST_YIELD_SECONDS) -> bool:
        """Block while evaluations are queued or creating runs, at most ``timeout`` seconds.

        Hundreds of schedules can fire at the same instant. Their creates go first: starting the runs
        they create and writing the schedules' status wait here, so the API server is not busy with
        follow-up writes while later fires of the same instant are still being created.

        Returns:
            Whether the scheduler was idle (False: the timeout passed first).
        """
        with self._idle:
            return self._idle.wait_for(lambda: self._in_flight == 0, timeout)

    # --- inputs from kopf -------------------------------------------------------------------
    def upsert(self, body: Manifest) -> None:
        """Register a created, changed or (at startup) listed schedule: parse it and evaluate it now."""
        meta = body["metadata"]
        key = (meta["namespace"], meta["name"])
        now = clock.now()
        status = body.get("status") or {}
        with self._cv:
            entry = self._entries.get(key)
            if entry is None or entry.uid != meta["uid"]:
                # First sight: continue from the recorded horizon; a new schedule starts now.
                recorded = [
                    t
                    for t in (
                        _parse_time(status.get("evaluatedTime")),
                        _parse_time(status.get("lastScheduleTime")),
                    )
                    if t
                ]
                entry = Entry(meta["namespace"], meta["name"], meta["uid"], body, max(recorded, default=now))
                entry.last_trigger = status.get("lastTrigger")
                entry.last_schedule_time = _parse_time(status.get("lastScheduleTime"))
                self._entries[key] = entry
            elif meta.get("generation") != entry.body["metadata"].get("generation"):
                # An edit never fires an extra run: fires up to now count as decided.
                entry.horizon = max(entry.horizon, now)
            elif not self._triggered(entry, meta):
                entry.body = body  # our own status write, a label: nothing to decide
                return
            entry.body = body
        annotations = meta.get("annotations") or {}
        if self._triggered(entry, meta):
            entry.trigger = (
                annotations[ANNOTATION_TRIGGER],
                annotations.get(ANNOTATION_TRIGGERED_BY) or "unknown",
            )
        self._parse(entry)
        self._wake_at(entry, now)

    @staticmethod
    def _triggered(entry: Entry, meta: Manifest) -> bool:
        token = (meta.get("annotations") or {}).get(ANNOTATION_TRIGGER)
        return (
            bool(token)
            and token != entry.last_trigger
            and (entry.trigger is None or entry.trigger[0] != token)
        )

    def remove(self, namespace: str, name: str) -> None:
        """Forget a deleted schedule (its OpsJobs go with it, by owner reference)."""
        with self._cv:
            self._entries.pop((namespace, name), None)
            stalled = [
                e
                for e in self._entries.values()
                if e.namespace == namespace and e.error is not None and e.error[0] == REASON_DEPENDENCY_CYCLE
            ]
        for entry in stalled:  # the cycle may be broken now
            entry.error = None
            self._parse(entry)
            self._wake_at(entry, clock.now())

    def job_event(self, job: Manifest, deleted: bool) -> None:
        """Follow a change of a schedule's run: update the schedule's view, plan retries and releases."""
        meta = job["metadata"]
        schedule_name = (meta.get("labels") or {}).get(LABEL_SCHEDULE)
        if not schedule_name:
            return
        entry = self._entries.get((meta["namespace"], schedule_name))
        if entry is None:
            return
        info = rs.run_info(job)
        previous = entry.runs.get(info.name)
        if deleted:
            entry.runs.pop(info.name, None)
            return
        entry.runs[info.name] = info
        if not info.finished or (previous is not None and previous.finished):
            if previous is None or previous.phase != info.phase:
                self._after_pool.submit(self._write_status_safely, entry)
            return
        just_finished = previous is not None
        self._plan_retry(entry, info, just_finished)
        if just_finished:
            self._release_dependents(entry, info)
        self._wake_at(entry, clock.now())

    # --- parsing ----------------------------------------------------------------------------
    def _shared_window(self, namespace: str, name: str) -> Manifest | None:
        cached = self._window_cache.get((namespace, name))
        if cached and time.monotonic() - cached[0] < SHARED_WINDOW_CACHE_SECONDS:
            return cached[1]
        body = kube.get_custom(MAINTENANCEWINDOW.plural, namespace, name)
        self._window_cache[(namespace, name)] = (time.monotonic(), body)
        return body

    def _parse(self, entry: Entry) -> None:
        spec = entry.spec
        shared: list[Manifest] = []
        for ref in (spec.get("windows") or {}).get("refs") or []:
            namespace = self.shared_windows_namespace if ref.get("scope") == "Cluster" else entry.namespace
            window = self._shared_window(namespace, ref["name"])
            if window is None:
                entry.parsed = None
                entry.error = (
                    REASON_WINDOW_NOT_FOUND,
                    f"MaintenanceWindow {namespace}/{ref['name']} does not exist; no fires until it does",
                )
                return
            shared.append(window["spec"])
        try:
            entry.parsed = rs.parse_schedule(spec, shared)
            entry.error = None
        except InvalidSchedule as error:
            entry.parsed = None
            entry.error = (c.REASON_INVALID_SPEC, str(error))
            return
        for dependents in self._dependents.values():
            dependents.discard(entry.name)
        for dependency in spec.get("after") or []:
            self._dependents.setdefault((entry.namespace, dependency["opsSchedule"]), set()).add(entry.name)
        edges = {
            e.name: [a["opsSchedule"] for a in e.spec.get("after") or []]
            for e in list(self._entries.values())
            if e.namespace == entry.namespace
        }
        cycle = rs.dependency_cycle(entry.name, edges)
        if cycle:
            entry.parsed = None
            entry.error = (REASON_DEPENDENCY_CYCLE, "dependency cycle: " + " -> ".join(cycle))
            for member in cycle[1:-1]:  # the others learn it too (they were parsed before the cycle closed)
                other = self._entries.get((entry.namespace, member))
                if other is not None and other.error is None:
                    other.parsed = None
                    rotated = [*cycle[cycle.index(member) : -1], *cycle[: cycle.index(member) + 1]]
                    other.error = (REASON_DEPENDENCY_CYCLE, "dependency cycle: " + " -> ".join(rotated))
                    self._wake_at(other, clock.now())

    # --- evaluation -------------------------------------------------------------------------
    def _evaluate_safely(self, entry: Entry) -> None:
        try:
            self._evaluate(entry)
        except ApiException as error:
            if _gone(error):
                log.info(
                    "OpsSchedule %s/%s: its namespace is going away (%s)", *entry.key, _api_message(error)
                )
                return
            log.warning(
                "evaluating OpsSchedule %s/%s: API error %s (%s); again in 5s",
                *entry.key,
                error.status,
                _api_message(error),
            )
            self._wake_at(entry, clock.now() + timedelta(seconds=5))
        except Exception:
            log.exception("evaluating OpsSchedule %s/%s failed; again in 5s", *entry.key)
            self._wake_at(entry, clock.now() + timedelta(seconds=5))

    def _seed(self, entry: Entry) -> None:
        """Learn the schedule's existing runs once (kopf's watch fills in the rest)."""
        for job in kube.list_custom(OPSJOB.plural, entry.namespace, f"{LABEL_SCHEDULE}={entry.name}"):
            info = rs.run_info(job)
            entry.runs.setdefault(info.name, info)
            if (
                info.started_by == entry.label
                and info.attempt == 1
                and info.scheduled_time
                and (entry.last_schedule_time is None or info.scheduled_time > entry.last_schedule_time)
            ):
                entry.last_schedule_time = info.scheduled_time
        for info in list(entry.runs.values()):
            if info.phase == "Failed":
                self._plan_retry(entry, info, just_finished=False)
        entry.seeded = True

    def _evaluate(self, entry: Entry) -> None:
        with entry.lock:
            if self._entries.get(entry.key) is not entry:
                return
            if entry.error is not None and entry.error[0] == REASON_WINDOW_NOT_FOUND:
                self._parse(entry)  # it may exist by now
                if entry.error is not None:
                    self._wake_at(entry, clock.now() + timedelta(seconds=SHARED_WINDOW_CACHE_SECONDS))
            if entry.error is not None:
                self._after_pool.submit(self._write_status_safely, entry)
                return
            if (entry.spec.get("windows") or {}).get("refs"):
                self._parse(entry)  # shared windows may have changed (read through a short cache)
                if entry.error is not None:
                    self._after_pool.submit(self._write_status_safely, entry)
                    return
            assert entry.parsed is not None
            if not entry.seeded:
                self._seed(entry)
            now = clock.now()
            plan = rs.plan_fires(entry.parsed, entry.horizon, now)
            for fire in plan.run:
                if self._start_run(
                    entry, rs.run_name(entry.name, rs.fire_key(fire)), fire, entry.label, gate=True
                ):
                    entry.last_schedule_time = fire
            entry.horizon = plan.horizon or entry.horizon
            if entry.trigger is not None:
                token, user = entry.trigger
                self._start_run(
                    entry, rs.run_name(entry.name, rs.manual_key(token)), now, f"user:{user}", policy=False
                )
                entry.last_trigger, entry.trigger = token, None
            while entry.releases:
                upstream = entry.releases.pop(0)
                self._start_run(
                    entry,
                    rs.run_name(entry.name, rs.after_key(upstream.uid)),
                    now,
                    f"opsjob/{upstream.name}",
                    policy=False,
                )
            wake = plan.next_wake
            for name, (due, failed) in list(entry.retries.items()):
                if due <= now:
                    del entry.retries[name]
                    fire = failed.scheduled_time or now
                    self._start_run(
                        entry,
                        name,
                        fire,
                        failed.started_by or entry.label,
                        attempt=failed.attempt + 1,
                        retry_of=failed.first_run,
                    )
                else:
                    wake = min(wake, due) if wake else due
            skipped = plan.skipped
            if skipped:
                self._after_pool.submit(self._post_skips, entry, skipped)
            self._after_pool.submit(self._after_evaluation, entry)
            if wake is not None:
                self._wake_at(entry, wake)

    def _start_run(
        self,
        entry: Entry,
        name: str,
        fire: datetime,
        started_by: str,
        *,
        attempt: int = 1,
        retry_of: str | None = None,
        policy: bool = True,
        gate: bool = False,
    ) -> bool:
        """Create one run, after the concurrency policy; a 409 means this fire's run already exists.

        Returns:
            Whether the run exists now (created, or found).
        """
        if name in entry.runs:
            return True
        active = [r.name for r in entry.runs.values() if not r.finished]
        action = (
            rs.concurrency_action(entry.spec.get("concurrencyPolicy") or "Forbid", active)
            if policy
            else "create"
        )
        if action == "skip":
            self._after_pool.submit(
                self._post_skips,
                entry,
                [
                    rs.Skip(
                        fire,
                        "ConcurrencyForbid",
                        f"run {name} not started: {', '.join(active)} still running "
                        "(concurrencyPolicy Forbid)",
                    )
                ],
            )
            return False
        if action == "replace":
            for running in active:
                self._cancel(entry, running)
        extra_after = None
        if gate and entry.spec.get("after"):
            extra_after = [
                {
                    "opsSchedule": a["opsSchedule"],
                    "result": a.get("result", "Succeeded"),
                    "timeoutSeconds": a.get("timeoutSeconds", 86400),
                }
                for a in entry.spec["after"]
            ]
        body = rs.build_run(entry.body, name, fire, started_by, attempt, retry_of, extra_after)
        # Known before it exists: a run that ends before the create call returns is still seen to end.
        entry.runs.setdefault(name, rs.run_info(body))
        call_began = clock.now()
        try:
            created = kube.create_custom(OPSJOB.plural, entry.namespace, body)
        except ApiException as error:
            if error.status != 409:
                entry.runs.pop(name, None)
            if _gone(error):
                entry.runs.pop(name, None)
                raise
            if error.status in (400, 403, 422):
                # The template cannot become an OpsJob (e.g. a label value the API rejects): the fire is
                # decided (not retried); the schedule says why until a run is created again.
                entry.create_error = f"creating run {name} failed: {_api_message(error)}"
                self._after_pool.submit(
                    self._post_event, entry, "Warning", REASON_RUN_CREATE_FAILED, entry.create_error
                )
                return False
            if error.status != 409:
                raise
            created = kube.get_custom(OPSJOB.plural, entry.namespace, name) or body
        else:
            lag = (clock.now() - fire).total_seconds()
            metrics.SCHEDULE_LAG.labels(entry.namespace).observe(max(0.0, lag))
            log.info(
                "created run %s/%s (fire %s, %.0f ms after it; call began at %.0f ms)",
                entry.namespace,
                name,
                _stamp(fire),
                lag * 1000,
                (call_began - fire).total_seconds() * 1000,
            )
        entry.create_error = None
        known = entry.runs.get(name)
        if known is None or not known.uid:  # still the placeholder: no event about the run yet
            entry.runs[name] = rs.run_info(created)
        return True

    def _cancel(self, entry: Entry, name: str) -> None:
        try:
            kube.custom().patch_namespaced_custom_object(
                GROUP, VERSION, entry.namespace, OPSJOB.plural, name, {"spec": {"cancel": True}}
            )
        except ApiException as error:
            if error.status != 404:
                raise
        self._after_pool.submit(
            self._post_event, entry, "Normal", "Replaced", f"cancelled run {name} (concurrencyPolicy Replace)"
        )

    def _plan_retry(self, entry: Entry, failed: rs.RunInfo, just_finished: bool) -> None:
        retry = entry.spec.get("retry")
        if failed.phase != "Failed" or not retry:
            return
        delay = rs.retry_delay(retry, failed.attempt)
        if delay is None:
            return
        next_name = rs.attempt_name(failed.first_run, failed.attempt + 1)
        if next_name in entry.runs:
            return
        if not just_finished:
            # Seen finished at startup: retry only the schedule's latest run (not old history).
            newest = max(
                entry.runs.values(), key=lambda r: (r.created or datetime.min.replace(tzinfo=UTC), r.name)
            )
            if newest.name != failed.name:
                return
        entry.retries.setdefault(next_name, (clock.now() + delay, failed))

    def _release_dependents(self, upstream_entry: Entry, run: rs.RunInfo) -> None:
        """Release the schedules that run ``after`` this schedule (without cron of their own)."""
        names = self._dependents.get(upstream_entry.key, set())
        for name in list(names):
            entry = self._entries.get((upstream_entry.namespace, name))
            if entry is None or entry.parsed is None or entry.parsed.expressions:
                continue
            for dependency in entry.spec.get("after") or []:
                if dependency["opsSchedule"] == upstream_entry.name and result_matches(
                    dependency.get("result", "Succeeded"), run.phase
                ):
                    if not entry.parsed.suspend:
                        entry.releases.append(run)
                        self._wake_at(entry, clock.now())
                    break

    # --- status, events, history ------------------------------------------------------------
    def _after_evaluation(self, entry: Entry) -> None:
        self._guarded("updating the history and status of", entry, self._prune, self._write_status)

    def _write_status_safely(self, entry: Entry) -> None:
        self._guarded("updating the status of", entry, self._write_status)

    def _guarded(self, what: str, entry: Entry, *steps: Callable[[Entry], None]) -> None:
        """Run follow-up steps; API errors are logged in one line (the next evaluation tries again)."""
        self.wait_until_idle()
        try:
            for step in steps:
                step(entry)
        except ApiException as error:
            level = logging.INFO if _gone(error) else logging.WARNING
            log.log(
                level,
                "%s OpsSchedule %s/%s: API error %s (%s)",
                what,
                *entry.key,
                error.status,
                _api_message(error),
            )
        except Exception:
            log.exception("%s OpsSchedule %s/%s failed", what, *entry.key)

    def _prune(self, entry: Entry) -> None:
        spec = entry.spec
        doomed = rs.runs_to_delete(
            list(entry.runs.values()),
            int(spec.get("successfulJobsHistoryLimit", 3)),
            int(spec.get("failedJobsHistoryLimit", 1)),
        )
        for name in doomed:
            if any(d.name == name for _, d in entry.retries.values()):
                continue  # a retry still needs it
            info = entry.runs.get(name)
            try:
                kube.custom().delete_namespaced_custom_object(
                    GROUP,
                    VERSION,
                    entry.namespace,
                    OPSJOB.plural,
                    name,
                    propagation_policy="Background",
                    body=V1DeleteOptions(preconditions=V1Preconditions(uid=info.uid))
                    if info and info.uid
                    else None,
                )
            except ApiException as error:
                if error.status not in (404, 409):
                    raise
            entry.runs.pop(name, None)

    def _write_status(self, entry: Entry) -> None:
        if self._entries.get(entry.key) is not entry:
            return
        generation = entry.body["metadata"].get("generation")
        previous = (
            entry.status_sent.get("conditions") or (entry.body.get("status") or {}).get("conditions") or []
        )
        stamp = _stamp(clock.now())
        status: Manifest = {"observedGeneration": generation, "evaluatedTime": _stamp(entry.horizon)}
        conditions: list[Manifest] = list(previous)

        def put(kind: str, value: c.Status, reason: str, message: str = "") -> None:
            nonlocal conditions
            conditions = c.set_condition(conditions, kind, value, reason, message, generation, stamp)

        if entry.error is not None or entry.create_error is not None:
            reason, message = entry.error or (REASON_RUN_CREATE_FAILED, entry.create_error or "")
            put(c.READY, "False", reason, message)
            put(c.RECONCILING, "False", reason)
            put(c.STALLED, "True", reason, message)
            if entry.error is not None:
                status["nextScheduleTime"] = None
        else:
            assert entry.parsed is not None
            upcoming = rs.next_run_time(entry.parsed, max(entry.horizon, clock.now()))
            status["nextScheduleTime"] = _stamp(upcoming) if upcoming else None
            if entry.parsed.suspend:
                put(c.READY, "True", REASON_SUSPENDED, "suspended: no new runs")
            else:
                put(
                    c.READY,
                    "True",
                    REASON_SCHEDULED,
                    f"next run at {status['nextScheduleTime']}" if upcoming else "waiting for dependencies",
                )
            put(c.RECONCILING, "False", REASON_SCHEDULED)
            put(c.STALLED, "False", REASON_SCHEDULED)
        status["conditions"] = conditions
        if entry.last_schedule_time:
            status["lastScheduleTime"] = _stamp(entry.last_schedule_time)
        if entry.last_trigger:
            status["lastTrigger"] = entry.last_trigger
        status.update(rs.summarize_runs(list(entry.runs.values())))

        def comparable(value: Manifest) -> Manifest:
            return {
                **value,
                "conditions": [
                    {k: v for k, v in x.items() if k != "lastTransitionTime"}
                    for x in value.get("conditions") or []
                ],
            }

        if comparable(status) == comparable(entry.status_sent):
            return
        kube.patch_status(OPSSCHEDULE.plural, entry.namespace, entry.name, {"status": status}, None)
        entry.status_sent = status

    def _post_skips(self, entry: Entry, skipped: list[rs.Skip]) -> None:
        for skip in skipped:
            self._post_event(
                entry, "Warning" if skip.reason != "Deferred" else "Normal", skip.reason, skip.message
            )

    def _post_event(self, entry: Entry, event_type: str, reason: str, message: str) -> None:
        self._guarded(
            f"posting Event {reason} on",
            entry,
            lambda e: kube.post_event(e.body, event_type, reason, message, clock.now()),
        )


SCHEDULER: Scheduler | None = None


def scheduler(shared_windows_namespace: str = "opsconductor-system") -> Scheduler:
    """Return the process's scheduler (created on first use)."""
    global SCHEDULER
    if SCHEDULER is None:
        SCHEDULER = Scheduler(shared_windows_namespace)
    return SCHEDULER
