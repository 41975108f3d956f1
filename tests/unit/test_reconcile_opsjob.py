"""The operator's decisions about an OpsJob, from its runner pod (pure, no cluster)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from opsconductor.reconcile.opsjob import judge_runner, status_update

NOW = datetime(2026, 11, 23, 12, 0, 30, tzinfo=UTC)


def job(status: dict | None = None) -> dict:
    return {
        "metadata": {
            "name": "j",
            "namespace": "ns",
            "uid": "u1",
            "generation": 1,
            "creationTimestamp": "2026-11-23T12:00:00Z",
        },
        "spec": {"steps": []},
        "status": status or {},
    }


def pod(phase: str, *, terminated: dict | None = None, waiting: dict | None = None, **status: object) -> dict:
    state = {"terminated": terminated} if terminated else {"waiting": waiting} if waiting else {"running": {}}
    return {
        "metadata": {"name": "j-runner"},
        "status": {"phase": phase, "containerStatuses": [{"name": "runner", "state": state}], **status},
    }


def summary(phase: str, message: str = "", reason: str = "") -> str:
    return json.dumps({"phase": phase, "message": message, "reason": reason})


def test_the_runner_summary_decides_the_outcome() -> None:
    done = pod(
        "Failed", terminated={"exitCode": 1, "message": summary("Failed", "step restart failed on 2 targets")}
    )
    verdict = judge_runner(done, runner_created=True, cancel_requested=False)
    assert (verdict.phase, verdict.reason) == ("Failed", "StepsFailed")
    assert "restart" in verdict.message
    ok = pod("Succeeded", terminated={"exitCode": 0, "message": summary("Succeeded")})
    assert judge_runner(ok, runner_created=True, cancel_requested=False).phase == "Succeeded"


def test_a_runner_that_dies_without_a_summary_is_lost() -> None:
    oom = pod("Failed", terminated={"exitCode": 137, "reason": "OOMKilled"})
    verdict = judge_runner(oom, runner_created=True, cancel_requested=False)
    assert (verdict.phase, verdict.reason) == ("Failed", "RunnerLost")
    assert "OOM" in verdict.message
    gone = judge_runner(None, runner_created=True, cancel_requested=False)
    assert (gone.phase, gone.reason) == ("Failed", "RunnerLost")
    deadline = judge_runner(
        pod("Failed", reason="DeadlineExceeded", terminated={"exitCode": 137}),
        runner_created=True,
        cancel_requested=False,
    )
    assert deadline.reason == "DeadlineExceeded"


def test_a_missing_pod_before_creation_is_not_a_loss() -> None:
    assert judge_runner(None, runner_created=False, cancel_requested=False).phase == "Pending"
    assert judge_runner(None, runner_created=True, cancel_requested=True).phase == "Cancelled"


def test_a_runner_that_cannot_start_is_stalled() -> None:
    stuck = pod("Pending", waiting={"reason": "ImagePullBackOff", "message": "no such image"})
    verdict = judge_runner(stuck, runner_created=True, cancel_requested=False)
    assert verdict.stalled and verdict.reason == "RunnerNotStarting" and "no such image" in verdict.message
    update = status_update(job({"phase": "Pending"}), verdict, NOW)
    conditions = {c["type"]: c for c in update.patch["status"]["conditions"]}
    assert conditions["Stalled"]["status"] == "True"
    assert conditions["Reconciling"]["status"] == "False"
    assert update.events[0][:2] == ("Warning", "RunnerNotStarting")


def test_terminal_transition_sets_times_conditions_and_events() -> None:
    verdict = judge_runner(
        pod("Failed", terminated={"exitCode": 1, "message": summary("Failed", "boom")}),
        runner_created=True,
        cancel_requested=False,
    )
    running = job(
        {
            "phase": "Running",
            "startTime": "2026-11-23T12:00:05Z",
            "steps": [
                {
                    "name": "restart",
                    "phase": "Failed",
                    "counts": {"failed": 2},
                    "targets": [{"target": "web-01", "phase": "Failed"}],
                }
            ],
        }
    )
    update = status_update(running, verdict, NOW)
    status = update.patch["status"]
    assert status["phase"] == "Failed" and status["completionTime"] == "2026-11-23T12:00:30Z"
    assert status["duration"] == "25s"
    conditions = {c["type"]: c["status"] for c in status["conditions"]}
    assert conditions == {"Ready": "False", "Reconciling": "False", "Stalled": "True", "Succeeded": "False"}
    reasons = [reason for _, reason, _ in update.events]
    assert reasons == ["StepFailed", "Failed"]
    assert "web-01" in update.events[0][2]


def test_finished_runs_never_change_and_repeats_are_no_ops() -> None:
    done = job({"phase": "Succeeded"})
    assert status_update(done, judge_runner(None, runner_created=True, cancel_requested=False), NOW) is None
    running_verdict = judge_runner(pod("Running"), runner_created=True, cancel_requested=False)
    first = status_update(job({"phase": "Pending"}), running_verdict, NOW)
    assert [e[1] for e in first.events] == ["Started"]
    applied = job(first.patch["status"])
    assert status_update(applied, running_verdict, NOW) is None


def test_last_transition_time_changes_only_when_status_flips() -> None:
    earlier = datetime(2026, 11, 23, 11, 0, tzinfo=UTC)
    starting = status_update(job(), judge_runner(None, runner_created=False, cancel_requested=False), earlier)
    running = status_update(
        job(starting.patch["status"]),
        judge_runner(pod("Running"), runner_created=True, cancel_requested=False),
        NOW,
    )
    times = {c["type"]: c["lastTransitionTime"] for c in running.patch["status"]["conditions"]}
    assert times["Reconciling"] == "2026-11-23T11:00:00Z"  # still True
    assert times["Ready"] == "2026-11-23T11:00:00Z"  # still False
