"""OpsSchedule decisions: missed runs, deadlines, windows, names, retries, history, cycles."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from opsconductor.constants import ANNOTATION_ATTEMPT, ANNOTATION_SCHEDULED_TIME, LABEL_SCHEDULE
from opsconductor.reconcile import opsschedule as rs
from opsconductor.reconcile.cron import InvalidSchedule
from opsconductor.reconcile.windows import judge_fire, parse_window


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def schedule(**spec: Any) -> rs.ParsedSchedule:
    base: dict[str, Any] = {"schedules": ["*/10 * * * *"], "jobTemplate": {"spec": {}}}
    base.update(spec)
    return rs.parse_schedule(base)


def test_on_time_fire_runs_and_moves_the_horizon() -> None:
    plan = rs.plan_fires(schedule(), utc(2026, 1, 1, 0, 5), utc(2026, 1, 1, 0, 10, 0, 300))
    assert plan.run == [utc(2026, 1, 1, 0, 10)]
    assert plan.horizon == utc(2026, 1, 1, 0, 10)
    assert plan.next_wake == utc(2026, 1, 1, 0, 20)
    assert plan.skipped == []


def test_deciding_again_after_the_horizon_runs_nothing() -> None:
    plan = rs.plan_fires(schedule(), utc(2026, 1, 1, 0, 10), utc(2026, 1, 1, 0, 10, 30))
    assert plan.run == [] and plan.skipped == []


def test_run_latest_after_downtime_runs_one_fire_not_a_burst() -> None:
    # Down for a day: 144 fires missed; one run (the latest), the rest reported.
    plan = rs.plan_fires(schedule(), utc(2026, 1, 1), utc(2026, 1, 2, 0, 3))
    assert plan.run == [utc(2026, 1, 2, 0, 0)]
    assert [s.reason for s in plan.skipped] == ["MissedRunsSkipped"]
    assert "143 missed fire(s)" in plan.skipped[0].message
    assert plan.horizon == utc(2026, 1, 2)


def test_no_hundred_miss_cutoff() -> None:
    # Down for a month (4000+ fires): still runs the latest (CronJob gives up after 100 misses).
    plan = rs.plan_fires(schedule(), utc(2026, 1, 1), utc(2026, 2, 1, 0, 1))
    assert plan.run == [utc(2026, 2, 1)]


def test_run_all_catches_up_to_the_bound_oldest_first() -> None:
    plan = rs.plan_fires(
        schedule(missedRuns="RunAll", maxMissedRuns=3), utc(2026, 1, 1), utc(2026, 1, 1, 1, 5)
    )
    assert plan.run == [utc(2026, 1, 1, 0, 40), utc(2026, 1, 1, 0, 50), utc(2026, 1, 1, 1, 0)]
    assert "3 missed fire(s)" in plan.skipped[0].message


def test_skip_policy_runs_no_missed_fire_but_runs_on_time_ones() -> None:
    missed = rs.plan_fires(schedule(missedRuns="Skip"), utc(2026, 1, 1), utc(2026, 1, 1, 1, 5))
    assert missed.run == [] and missed.horizon == utc(2026, 1, 1, 1)
    on_time = rs.plan_fires(schedule(missedRuns="Skip"), utc(2026, 1, 1), utc(2026, 1, 1, 0, 10, 2))
    assert on_time.run == [utc(2026, 1, 1, 0, 10)]


def test_starting_deadline_skips_a_late_fire() -> None:
    plan = rs.plan_fires(schedule(startingDeadlineSeconds=120), utc(2026, 1, 1), utc(2026, 1, 1, 0, 14))
    assert plan.run == []
    assert [s.reason for s in plan.skipped] == ["DeadlinePassed"]
    assert plan.horizon == utc(2026, 1, 1, 0, 10)
    within = rs.plan_fires(schedule(startingDeadlineSeconds=300), utc(2026, 1, 1), utc(2026, 1, 1, 0, 14))
    assert within.run == [utc(2026, 1, 1, 0, 10)]


def test_suspend_decides_everything_up_to_now_and_never_wakes() -> None:
    plan = rs.plan_fires(schedule(suspend=True), utc(2026, 1, 1), utc(2026, 1, 1, 5))
    assert plan.run == [] and plan.next_wake is None and plan.horizon == utc(2026, 1, 1, 5)


WEEKEND = {"name": "weekend", "weekly": [{"days": ["Sat", "Sun"], "start": "00:00", "end": "00:00"}]}


def test_blackout_skip_and_defer() -> None:
    # 2026-01-03 is a Saturday.
    skip = schedule(schedules=["0 12 * * *"], windows={"blackout": [WEEKEND]})
    plan = rs.plan_fires(skip, utc(2026, 1, 3), utc(2026, 1, 3, 12, 0, 1))
    assert plan.run == [] and plan.skipped[0].reason == "BlackoutWindow"
    assert "weekend" in plan.skipped[0].message

    defer = schedule(schedules=["0 12 * * *"], windows={"blackout": [WEEKEND], "blackoutPolicy": "Defer"})
    waiting = rs.plan_fires(defer, utc(2026, 1, 3), utc(2026, 1, 3, 12, 0, 1))
    assert waiting.run == [] and waiting.horizon == utc(2026, 1, 3)
    # Saturday and Sunday noon both defer to Monday 00:00 (the window spans both days): one run.
    assert waiting.next_wake == utc(2026, 1, 5)
    monday = rs.plan_fires(defer, utc(2026, 1, 3), utc(2026, 1, 5, 0, 0, 1))
    assert monday.run == [utc(2026, 1, 4, 12)]
    assert monday.horizon == utc(2026, 1, 4, 12)


def test_allowed_window_in_its_own_zone() -> None:
    night = {"weekly": [{"days": ["Mon", "Tue", "Wed", "Thu", "Fri"], "start": "22:00", "end": "04:00"}]}
    spec = schedule(schedules=["0 * * * *"], timeZone="America/New_York", windows={"allowed": [night]})
    # Monday 2026-01-05 23:00 New York = Tuesday 04:00 UTC: inside.
    assert spec.judge(utc(2026, 1, 6, 4)).run_at == utc(2026, 1, 6, 4)
    # Monday 12:00 New York: outside -> skipped.
    assert spec.judge(utc(2026, 1, 5, 17)).run_at is None
    deferring = schedule(
        schedules=["0 * * * *"],
        timeZone="America/New_York",
        windows={"allowed": [night], "blackoutPolicy": "Defer"},
    )
    assert deferring.judge(utc(2026, 1, 5, 17)).run_at == utc(2026, 1, 6, 3)  # 22:00 New York


def test_cron_window_with_duration_is_half_open() -> None:
    window = parse_window({"name": "patch", "cron": "0 2 * * *", "durationMinutes": 60}, "Europe/Berlin")
    assert judge_fire(utc(2026, 1, 10, 1, 30), (window,), (), defer=True).run_at == utc(2026, 1, 10, 2)
    assert judge_fire(utc(2026, 1, 10, 2), (window,), (), defer=False).run_at == utc(2026, 1, 10, 2)
    assert judge_fire(utc(2026, 1, 10, 0, 59), (window,), (), defer=False).run_at == utc(2026, 1, 10, 0, 59)


def test_invalid_zone_and_window_cron_raise() -> None:
    with pytest.raises(InvalidSchedule, match="unknown time zone"):
        schedule(timeZone="Europe/Atlantis")
    with pytest.raises(InvalidSchedule, match="invalid cron"):
        schedule(windows={"blackout": [{"cron": "0 25 * * *", "durationMinutes": 5}]})


def test_run_names_are_deterministic_and_short() -> None:
    fire = utc(2026, 3, 29, 1)
    assert rs.run_name("nightly", rs.fire_key(fire)) == f"nightly-{int(fire.timestamp()) // 60}"
    long_name = "a" * 52
    name = rs.run_name(long_name, rs.fire_key(fire))
    assert len(name) <= 63 and name == rs.run_name(long_name, rs.fire_key(fire))
    retry = rs.attempt_name(name, 3)
    assert len(retry) <= 63 and retry.endswith("-r2") and retry != rs.attempt_name(name, 2)
    assert rs.run_name("x", rs.manual_key("t1")) != rs.run_name("x", rs.manual_key("t2"))


def test_retry_backoff_doubles_up_to_the_cap() -> None:
    retry = {"limit": 4, "backoffSeconds": 10, "maxBackoffSeconds": 30}
    assert [rs.retry_delay(retry, n) for n in (1, 2, 3, 4, 5)] == [
        timedelta(seconds=10),
        timedelta(seconds=20),
        timedelta(seconds=30),
        timedelta(seconds=30),
        None,
    ]


def job(name: str, phase: str, completed: str | None = None, attempt: int = 1) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "uid": name,
            "labels": {LABEL_SCHEDULE: "s"},
            "annotations": {
                ANNOTATION_SCHEDULED_TIME: "2026-01-01T00:00:00Z",
                ANNOTATION_ATTEMPT: str(attempt),
            },
            "creationTimestamp": "2026-01-01T00:00:00Z",
        },
        "status": {"phase": phase, **({"completionTime": completed} if completed else {})},
    }


def test_history_limits_keep_the_newest() -> None:
    runs = [
        rs.run_info(job("s1", "Succeeded", "2026-01-01T00:01:00Z")),
        rs.run_info(job("s2", "Succeeded", "2026-01-01T00:02:00Z")),
        rs.run_info(job("f1", "Failed", "2026-01-01T00:03:00Z")),
        rs.run_info(job("c1", "Cancelled", "2026-01-01T00:04:00Z")),
        rs.run_info(job("r1", "Running")),
    ]
    assert rs.runs_to_delete(runs, successful_limit=1, failed_limit=1) == ["s1", "f1"]
    summary = rs.summarize_runs(runs)
    assert summary["activeCount"] == 1 and summary["active"][0]["name"] == "r1"
    assert summary["lastResult"] == "Cancelled"
    assert summary["lastSuccessfulTime"] == "2026-01-01T00:02:00Z"


def test_dependency_cycles_are_found() -> None:
    edges = {"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}
    assert rs.dependency_cycle("a", edges) == ["a", "b", "c", "a"]
    assert rs.dependency_cycle("d", edges) is None


def test_concurrency_policies() -> None:
    assert rs.concurrency_action("Forbid", []) == "create"
    assert rs.concurrency_action("Forbid", ["x"]) == "skip"
    assert rs.concurrency_action("Replace", ["x"]) == "replace"
    assert rs.concurrency_action("Allow", ["x"]) == "create"


def test_build_run_links_back_to_the_schedule() -> None:
    body = {
        "metadata": {"name": "s", "namespace": "ns", "uid": "u1"},
        "spec": {
            "jobTemplate": {
                "metadata": {"labels": {"team": "ops"}},
                "spec": {"steps": [{"name": "w", "type": "wait", "seconds": 1}]},
            }
        },
    }
    run = rs.build_run(body, "s-1", utc(2026, 1, 1), "opsschedule/s")
    assert run["metadata"]["labels"] == {"team": "ops", LABEL_SCHEDULE: "s"}
    assert run["metadata"]["annotations"][ANNOTATION_SCHEDULED_TIME] == "2026-01-01T00:00:00Z"
    assert run["metadata"]["ownerReferences"][0]["uid"] == "u1"
