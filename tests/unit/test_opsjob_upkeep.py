"""OpsJob upkeep decisions: which jobs are resynced with their pod, which expire (no finalizers)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

from opsconductor.handlers.opsjob_upkeep import JobUpkeep, due_actions, tracked

NOW = datetime(2026, 11, 23, 12, 0, 0, tzinfo=UTC)
RESYNC = timedelta(seconds=30)


def job(name: str, phase: str | None = None, **extra: object) -> dict[str, object]:
    status: dict[str, object] = {k: v for k, v in extra.items() if k in ("runnerPod", "completionTime")}
    if phase:
        status["phase"] = phase
    spec: dict[str, object] = {"steps": []}
    if "ttl" in extra:
        spec["ttlSecondsAfterFinished"] = extra["ttl"]
    meta = {"namespace": "ns", "name": name, "uid": f"uid-{name}"}
    return {"metadata": meta, "spec": spec, "status": status}


def test_only_started_unfinished_jobs_are_resynced_and_only_when_quiet() -> None:
    jobs = {
        ("ns", "running"): tracked(job("running", "Running", runnerPod="running-runner"), NOW - RESYNC),
        ("ns", "recent"): tracked(job("recent", "Running", runnerPod="recent-runner"), NOW - RESYNC / 2),
        ("ns", "pending"): tracked(job("pending", "Pending"), NOW - RESYNC * 3),
        ("ns", "done"): tracked(job("done", "Succeeded", runnerPod="done-runner"), NOW - RESYNC * 3),
    }
    assert due_actions(jobs, NOW, RESYNC) == [("resync", ("ns", "running"))]


def test_finished_jobs_expire_ttl_after_completion() -> None:
    completed = (NOW - timedelta(seconds=60)).strftime("%Y-%m-%dT%H:%M:%SZ")
    jobs = {
        ("ns", "expired"): tracked(job("expired", "Failed", completionTime=completed, ttl=60), NOW),
        ("ns", "young"): tracked(job("young", "Succeeded", completionTime=completed, ttl=61), NOW),
        ("ns", "kept"): tracked(job("kept", "Succeeded", completionTime=completed), NOW),
        ("ns", "running"): tracked(job("running", "Running", runnerPod="r", ttl=0), NOW),
    }
    assert due_actions(jobs, NOW, RESYNC) == [("expire", ("ns", "expired"))]
    assert jobs[("ns", "young")].expires == NOW + timedelta(seconds=1)


def test_the_thread_expires_a_job_and_forgets_it_on_its_deleted_event() -> None:
    deleted: list[tuple[str, str, str]] = []
    called = threading.Event()

    def expire(namespace: str, name: str, uid: str) -> None:
        deleted.append((namespace, name, uid))
        called.set()

    upkeep = JobUpkeep(30, resync=lambda namespace, name: None, expire=expire)
    finished = job("old", "Succeeded", completionTime="2020-01-01T00:00:00Z", ttl=0)
    upkeep.observe(finished, deleted=False)
    upkeep.start()
    try:
        assert called.wait(10)
        assert deleted == [("ns", "old", "uid-old")]
        upkeep.observe(finished, deleted=True)
        assert upkeep.tracked_jobs() == 0
    finally:
        upkeep.stop()
