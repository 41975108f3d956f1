"""OpsJob upkeep without finalizers: the resync safety net and ``ttlSecondsAfterFinished``.

kopf timers and daemons put a finalizer on every object they match, which costs each OpsJob three
extra writes (add it, remove it, and a retry when the removal races another change). This module
does the same two jobs from one thread per operator, fed by the OpsJob watch that kopf runs anyway
(:meth:`JobUpkeep.observe`, called for every OpsJob event):

- **resync**: a running job (it has a runner pod) that saw no event for ``resync_seconds`` is synced
  with its pod again, in case a pod event was missed;
- **expiry**: a finished job with ``ttlSecondsAfterFinished`` is deleted when that time has passed
  since its ``completionTime`` (only that incarnation: the uid is a precondition).

The decisions are pure (:func:`due_actions`); the thread only runs them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from opsconductor.reconcile.opsjob import TERMINAL_PHASES

Manifest = dict[str, Any]
Key = tuple[str, str]
Action = Literal["resync", "expire"]
log = logging.getLogger(__name__)

TICK_SECONDS = 1.0
"""How often the thread looks for due work (TTLs and resyncs are whole seconds)."""
RETRY_DELAY = timedelta(seconds=10)
"""How long a failed deletion waits before it is tried again (a failed resync waits a full period)."""


@dataclass
class Tracked:
    """What upkeep needs to know of one OpsJob."""

    uid: str
    running: bool
    """Not finished, and its runner pod was created (there is a pod to sync with)."""
    expires: datetime | None
    """When a finished job's TTL runs out; None while it runs or without a TTL."""
    last_event: datetime
    """When the job last changed (or was last resynced)."""


def tracked(job: Manifest, now: datetime) -> Tracked:
    """Derive upkeep's view of a job from its manifest."""
    status = job.get("status") or {}
    finished = status.get("phase") in TERMINAL_PHASES
    ttl = (job.get("spec") or {}).get("ttlSecondsAfterFinished")
    expires = None
    if finished and ttl is not None and status.get("completionTime"):
        completed = datetime.fromisoformat(status["completionTime"].replace("Z", "+00:00"))
        expires = completed + timedelta(seconds=int(ttl))
    return Tracked(
        uid=job["metadata"]["uid"],
        running=not finished and bool(status.get("runnerPod")),
        expires=expires,
        last_event=now,
    )


def due_actions(jobs: dict[Key, Tracked], now: datetime, resync: timedelta) -> list[tuple[Action, Key]]:
    """Return the work due at ``now``: expired jobs to delete, quiet running jobs to resync."""
    actions: list[tuple[Action, Key]] = []
    for key, job in jobs.items():
        if job.expires is not None and job.expires <= now:
            actions.append(("expire", key))
        elif job.running and now - job.last_event >= resync:
            actions.append(("resync", key))
    return actions


class JobUpkeep:
    """The operator's upkeep thread and its table of OpsJobs."""

    def __init__(
        self,
        resync_seconds: float,
        resync: Callable[[str, str], None],
        expire: Callable[[str, str, str], None],
        workers: int = 4,
    ) -> None:
        """Create the table; :meth:`start` starts the thread.

        Args:
            resync_seconds: how long a running job may stay quiet before it is synced again.
            resync: syncs one job with its runner pod (namespace, name).
            expire: deletes one job incarnation (namespace, name, uid).
            workers: calls made side by side (each is one or two API requests).
        """
        self._resync_after = timedelta(seconds=resync_seconds)
        self._resync = resync
        self._expire = expire
        self._jobs: dict[Key, Tracked] = {}
        self._busy: set[Key] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="opsjob-upkeep")
        self._thread: threading.Thread | None = None

    def observe(self, job: Manifest, deleted: bool) -> None:
        """Take in one OpsJob event."""
        meta = job["metadata"]
        key = (meta["namespace"], meta["name"])
        with self._lock:
            if deleted:
                known = self._jobs.get(key)
                if known is not None and known.uid == meta.get("uid"):
                    del self._jobs[key]
                return
            self._jobs[key] = tracked(job, datetime.now(UTC))

    def tracked_jobs(self) -> int:
        """How many OpsJobs the table holds."""
        with self._lock:
            return len(self._jobs)

    def start(self) -> None:
        """Start the thread (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="opsjob-upkeep", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop the thread; calls in flight finish."""
        self._stop.set()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _loop(self) -> None:
        while not self._stop.wait(TICK_SECONDS):
            now = datetime.now(UTC)
            with self._lock:
                due = due_actions(self._jobs, now, self._resync_after)
                actions = [(action, key) for action, key in due if key not in self._busy]
                for _, key in actions:
                    self._busy.add(key)
                    self._jobs[key].last_event = now  # the next resync counts from this one
            for action, key in actions:
                self._pool.submit(self._run, action, key)

    def _run(self, action: Action, key: Key) -> None:
        try:
            if action == "resync":
                self._resync(*key)
            else:
                with self._lock:
                    job = self._jobs.get(key)
                if job is not None:
                    self._expire(*key, job.uid)
                    with self._lock:
                        if self._jobs.get(key) is job:
                            job.expires = None  # deleted; its DELETED event removes it
        except Exception:
            log.exception("OpsJob %s/%s: %s failed; tried again later", *key, action)
            with self._lock:
                job = self._jobs.get(key)
                if action == "expire" and job is not None and job.expires is not None:
                    job.expires = datetime.now(UTC) + RETRY_DELAY
        finally:
            with self._lock:
                self._busy.discard(key)
