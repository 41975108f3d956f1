"""OpsJob spec.after verdicts (reconcile.dependencies)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from opsconductor.reconcile.dependencies import Resolved, judge_dependencies

NOW = datetime(2026, 1, 1, 12, tzinfo=UTC)
JOB: dict[str, Any] = {"metadata": {"name": "second"}}


def run(name: str, phase: str | None, after: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {"after": after or []},
        "status": {"phase": phase} if phase else {},
    }


def test_waits_while_the_dependency_is_missing_or_running() -> None:
    missing = judge_dependencies(JOB, [Resolved({"opsJob": "first"}, None)], NOW, NOW)
    assert missing.action == "wait" and "opsJob first (not created yet)" in missing.message
    running = judge_dependencies(JOB, [Resolved({"opsJob": "first"}, run("first", "Running"))], NOW, NOW)
    assert running.action == "wait" and "is Running" in running.message


def test_starts_when_every_dependency_ended_as_wanted() -> None:
    verdict = judge_dependencies(
        JOB,
        [
            Resolved({"opsJob": "a"}, run("a", "Succeeded")),
            Resolved({"opsJob": "b", "result": "Failed"}, run("b", "Cancelled")),
            Resolved({"opsSchedule": "s", "result": "Any"}, run("s-1", "Failed")),
        ],
        NOW,
        NOW,
    )
    assert verdict.action == "start"


def test_fails_when_a_dependency_ended_otherwise() -> None:
    verdict = judge_dependencies(JOB, [Resolved({"opsJob": "first"}, run("first", "Failed"))], NOW, NOW)
    assert verdict.action == "fail" and verdict.reason == "DependencyFailed"
    assert "ended Failed; this run needs Succeeded" in verdict.message


def test_times_out_after_the_shortest_pending_timeout() -> None:
    deps = [
        Resolved({"opsJob": "slow", "timeoutSeconds": 600}, run("slow", "Running")),
        Resolved({"opsJob": "done"}, run("done", "Succeeded")),
    ]
    assert judge_dependencies(JOB, deps, NOW, NOW - timedelta(seconds=599)).action == "wait"
    late = judge_dependencies(JOB, deps, NOW, NOW - timedelta(seconds=601))
    assert late.action == "fail" and late.reason == "DependencyTimeout"


def test_two_jobs_waiting_for_each_other_fail_as_a_cycle() -> None:
    upstream = run("first", "Pending", after=[{"opsJob": "second"}])
    verdict = judge_dependencies(JOB, [Resolved({"opsJob": "first"}, upstream)], NOW, NOW)
    assert verdict.action == "fail" and "dependency cycle" in verdict.message
