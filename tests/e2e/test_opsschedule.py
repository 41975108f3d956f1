"""OpsSchedule end to end on the local control plane, with the operator on a controllable clock.

Every test moves the fake clock across fire times instead of waiting for them; what the operator
creates (OpsJobs, named after their fire), writes (status) and reports (Events) is read back from
the API server. Runs are real: runner pods POST to a local HTTP server (success or failure chosen by
``expectStatus``) or wait (to keep a run active).
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import yaml

from opsconductor.constants import (
    ANNOTATION_ATTEMPT,
    ANNOTATION_RETRY_OF,
    ANNOTATION_SCHEDULED_TIME,
    ANNOTATION_STARTED_BY,
)
from opsconductor.localcluster.operatorprocess import OperatorProcess
from opsconductor.reconcile.opsschedule import fire_key, run_name
from tests.e2e.conftest import wait_phase
from tests.e2e.schedule_fixtures import (  # noqa: F401  (fixtures)
    FakeClock,
    fake_clock,
    runs,
    schedule_events,
    schedule_operator,
    schedule_status,
    sk,
    wait_runs,
)
from tests.e2e.servers import recording_server
from tests.kube import Kubectl, wait_until

WAIT_STEP = "[{name: hold, type: wait, seconds: 3600}]"


def schedule(name: str, steps: str, extra: str = "", cron: str = "*/10 * * * *") -> str:
    return f"""
apiVersion: opsconductor.io/v1alpha1
kind: OpsSchedule
metadata: {{name: {name}}}
spec:
  schedules: ["{cron}"]
{extra}
  jobTemplate:
    metadata: {{labels: {{team: ops}}}}
    spec:
      steps: {steps}
"""


def post_step(url: str, expect: int = 200) -> str:
    return f"[{{name: post, type: http.post, url: '{url}', expectStatus: [{expect}]}}]"


def test_a_fire_creates_one_run_with_links_status_and_columns(
    sk: Kubectl,  # noqa: F811
    fake_clock: FakeClock,  # noqa: F811
) -> None:
    day = fake_clock.fresh_start()
    with recording_server() as server:
        sk.apply(schedule("every10", post_step(f"{server.url}/fired")))
        status = wait_until(
            lambda: schedule_status(sk, "every10").get("nextScheduleTime"), what="nextScheduleTime"
        )
        assert status == day.strftime("%Y-%m-%dT%H:%M:%SZ")
        assert runs(sk, "every10") == []
        fake_clock.set(day + timedelta(seconds=1))
        (run,) = wait_runs(sk, "every10", 1)
        assert run["metadata"]["name"] == run_name("every10", fire_key(day))
        annotations = run["metadata"]["annotations"]
        assert annotations[ANNOTATION_SCHEDULED_TIME] == day.strftime("%Y-%m-%dT%H:%M:%SZ")
        assert annotations[ANNOTATION_STARTED_BY] == "opsschedule/every10"
        assert annotations[ANNOTATION_ATTEMPT] == "1"
        assert run["metadata"]["labels"]["team"] == "ops"
        assert run["metadata"]["ownerReferences"][0]["kind"] == "OpsSchedule"
        assert wait_phase(sk, run["metadata"]["name"])["status"]["phase"] == "Succeeded"
        assert server.count("/fired") == 1

    def settled() -> dict[str, object] | None:
        s = schedule_status(sk, "every10")
        return s if s.get("lastResult") == "Succeeded" and s.get("activeCount") == 0 else None

    status = wait_until(settled, what="the schedule's status to show the result")
    assert status["lastScheduleTime"] == day.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert status["nextScheduleTime"] == (day + timedelta(minutes=10)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert status["lastSuccessfulTime"]
    ready = {c["type"]: c for c in status["conditions"]}["Ready"]
    assert ready["status"] == "True" and ready["reason"] == "Scheduled"
    header = sk.run("get", "opsschedule", "every10").stdout.splitlines()[0].split()
    assert header[:6] == ["NAME", "SCHEDULE", "TIMEZONE", "SUSPEND", "ACTIVE", "LAST"]
    # Nothing more fires before the next fire time, however often the schedule is looked at.
    sk.run("annotate", "opsschedule", "every10", "touch=1")
    fake_clock.set(day + timedelta(minutes=9, seconds=50))
    assert len(runs(sk, "every10")) == 1


def test_forbid_skips_a_fire_while_a_run_is_active_with_an_event(
    sk: Kubectl,  # noqa: F811
    fake_clock: FakeClock,  # noqa: F811
) -> None:
    day = fake_clock.fresh_start()
    sk.apply(schedule("forbid", WAIT_STEP, "  concurrencyPolicy: Forbid"))
    wait_until(lambda: schedule_status(sk, "forbid").get("nextScheduleTime"), what="registration")
    fake_clock.set(day + timedelta(seconds=1))
    (first,) = wait_runs(sk, "forbid", 1)
    wait_until(lambda: schedule_status(sk, "forbid").get("activeCount") == 1, what="the active run")
    fake_clock.set(day + timedelta(minutes=10, seconds=1))
    wait_until(
        lambda: any(r == "ConcurrencyForbid" for _, r, _ in schedule_events(sk, "forbid")),
        what="the Forbid skip event",
    )
    assert [j["metadata"]["name"] for j in runs(sk, "forbid")] == [first["metadata"]["name"]]


def test_replace_cancels_the_active_run_and_starts_the_new_one(
    sk: Kubectl,  # noqa: F811
    fake_clock: FakeClock,  # noqa: F811
) -> None:
    day = fake_clock.fresh_start()
    sk.apply(schedule("replace", WAIT_STEP, "  concurrencyPolicy: Replace"))
    wait_until(lambda: schedule_status(sk, "replace").get("nextScheduleTime"), what="registration")
    fake_clock.set(day + timedelta(seconds=1))
    (first,) = wait_runs(sk, "replace", 1)
    wait_phase(sk, first["metadata"]["name"], ("Running",))
    wait_until(lambda: schedule_status(sk, "replace").get("activeCount") == 1, what="the active run")
    fake_clock.set(day + timedelta(minutes=10, seconds=1))
    second = wait_runs(sk, "replace", 2)[1]
    assert second["metadata"]["name"] == run_name("replace", fire_key(day + timedelta(minutes=10)))
    assert wait_phase(sk, first["metadata"]["name"])["status"]["phase"] == "Cancelled"


def test_allow_overlaps(sk: Kubectl, fake_clock: FakeClock) -> None:  # noqa: F811
    day = fake_clock.fresh_start()
    sk.apply(schedule("allow", WAIT_STEP, "  concurrencyPolicy: Allow"))
    wait_until(lambda: schedule_status(sk, "allow").get("nextScheduleTime"), what="registration")
    fake_clock.set(day + timedelta(seconds=1))
    wait_runs(sk, "allow", 1)
    fake_clock.set(day + timedelta(minutes=10, seconds=1))
    wait_runs(sk, "allow", 2)
    wait_until(lambda: schedule_status(sk, "allow").get("activeCount") == 2, what="two active runs")


def test_downtime_runs_the_latest_missed_fire_once_and_no_burst(
    sk: Kubectl,  # noqa: F811
    fake_clock: FakeClock,  # noqa: F811
    schedule_operator: OperatorProcess,  # noqa: F811
) -> None:
    day = fake_clock.fresh_start()
    with recording_server() as server:
        sk.apply(schedule("downtime", post_step(f"{server.url}/x"), "  concurrencyPolicy: Allow"))
        wait_until(lambda: schedule_status(sk, "downtime").get("nextScheduleTime"), what="registration")
        schedule_operator.stop()
        fake_clock.set(day + timedelta(hours=5, minutes=3))  # 31 fires missed
        schedule_operator.start()
        (run,) = wait_runs(sk, "downtime", 1)
        assert run["metadata"]["name"] == run_name("downtime", fire_key(day + timedelta(hours=5)))
        wait_until(
            lambda: any(r == "MissedRunsSkipped" for _, r, _ in schedule_events(sk, "downtime")),
            what="the missed-runs event",
        )
        message = next(m for _, r, m in schedule_events(sk, "downtime") if r == "MissedRunsSkipped")
        assert "30 missed fire(s)" in message


def test_an_operator_restart_right_after_a_fire_creates_no_second_run(
    sk: Kubectl,  # noqa: F811
    fake_clock: FakeClock,  # noqa: F811
    schedule_operator: OperatorProcess,  # noqa: F811
) -> None:
    day = fake_clock.fresh_start()
    sk.apply(schedule("restart", WAIT_STEP, "  concurrencyPolicy: Allow"))
    wait_until(lambda: schedule_status(sk, "restart").get("nextScheduleTime"), what="registration")
    fake_clock.set(day + timedelta(seconds=1))
    wait_runs(sk, "restart", 1)
    # Killed before (or while) it recorded the fire in the status: the run's name is the fire's, so the
    # restarted operator's decision (RunLatest) meets a 409 and the schedule still has one run.
    schedule_operator.kill()
    schedule_operator.start()
    wait_until(lambda: schedule_status(sk, "restart").get("activeCount") == 1, what="status after restart")
    assert len(runs(sk, "restart")) == 1
    fake_clock.set(day + timedelta(minutes=10, seconds=1))
    wait_runs(sk, "restart", 2)


def test_starting_deadline_skips_a_late_fire_with_an_event(
    sk: Kubectl,  # noqa: F811
    fake_clock: FakeClock,  # noqa: F811
    schedule_operator: OperatorProcess,  # noqa: F811
) -> None:
    day = fake_clock.fresh_start()
    sk.apply(schedule("deadline", WAIT_STEP, "  startingDeadlineSeconds: 60"))
    wait_until(lambda: schedule_status(sk, "deadline").get("nextScheduleTime"), what="registration")
    schedule_operator.stop()
    fake_clock.set(day + timedelta(minutes=3))
    schedule_operator.start()
    wait_until(
        lambda: any(r == "DeadlinePassed" for _, r, _ in schedule_events(sk, "deadline")),
        what="the deadline event",
    )
    assert runs(sk, "deadline") == []


def test_blackout_window_skips_and_defer_runs_at_the_window_end(
    sk: Kubectl,  # noqa: F811
    fake_clock: FakeClock,  # noqa: F811
) -> None:
    day = fake_clock.fresh_start()
    window = (
        "{name: night, weekly: [{days: [Mon, Tue, Wed, Thu, Fri, Sat, Sun], start: '00:05', end: '00:25'}]}"
    )
    sk.apply(
        schedule("skipper", WAIT_STEP, f"  concurrencyPolicy: Allow\n  windows: {{blackout: [{window}]}}")
    )
    sk.apply(
        schedule(
            "deferrer",
            WAIT_STEP,
            f"  concurrencyPolicy: Allow\n  windows: {{blackout: [{window}], blackoutPolicy: Defer}}",
        )
    )
    for name in ("skipper", "deferrer"):
        wait_until(lambda n=name: schedule_status(sk, n).get("nextScheduleTime"), what="registration")
    fake_clock.set(day + timedelta(seconds=1))
    wait_runs(sk, "skipper", 1)
    wait_runs(sk, "deferrer", 1)
    fake_clock.set(day + timedelta(minutes=10, seconds=1))  # 00:10: inside the blackout
    wait_until(
        lambda: any(r == "BlackoutWindow" and "night" in m for _, r, m in schedule_events(sk, "skipper")),
        what="the blackout skip event",
    )
    assert schedule_status(sk, "deferrer").get("nextScheduleTime") == (day + timedelta(minutes=25)).strftime(
        "%Y-%m-%dT%H:%M:%SZ"
    )
    fake_clock.set(day + timedelta(minutes=25, seconds=1))  # the window's end: 00:10 and 00:20 -> one run
    deferred = wait_runs(sk, "deferrer", 2)[1]
    assert deferred["metadata"]["name"] == run_name("deferrer", fire_key(day + timedelta(minutes=20)))
    assert len(runs(sk, "skipper")) == 1


def test_failed_runs_are_retried_with_backoff_as_linked_attempts(
    sk: Kubectl,  # noqa: F811
    fake_clock: FakeClock,  # noqa: F811
) -> None:
    day = fake_clock.fresh_start()
    with recording_server(status=500) as server:
        sk.apply(
            schedule(
                "retrying",
                post_step(f"{server.url}/flaky"),
                "  retry: {limit: 2, backoffSeconds: 60, maxBackoffSeconds: 600}\n"
                "  failedJobsHistoryLimit: 5",
                cron="0 * * * *",
            )
        )
        wait_until(lambda: schedule_status(sk, "retrying").get("nextScheduleTime"), what="registration")
        fake_clock.set(day + timedelta(seconds=1))
        (first,) = wait_runs(sk, "retrying", 1)
        assert wait_phase(sk, first["metadata"]["name"])["status"]["phase"] == "Failed"
        assert len(runs(sk, "retrying")) == 1  # the backoff has not passed
        fake_clock.set(fake_clock.now() + timedelta(seconds=61))
        second = wait_runs(sk, "retrying", 2)[1]
        assert second["metadata"]["annotations"][ANNOTATION_ATTEMPT] == "2"
        assert second["metadata"]["annotations"][ANNOTATION_RETRY_OF] == first["metadata"]["name"]
        assert second["metadata"]["annotations"][ANNOTATION_SCHEDULED_TIME] == day.strftime(
            "%Y-%m-%dT%H:%M:%SZ"
        )
        wait_phase(sk, second["metadata"]["name"])
        fake_clock.set(fake_clock.now() + timedelta(seconds=61))
        assert len(runs(sk, "retrying")) == 2  # the second backoff is 120 s
        fake_clock.set(fake_clock.now() + timedelta(seconds=60))
        third = wait_runs(sk, "retrying", 3)[2]
        assert third["metadata"]["annotations"][ANNOTATION_ATTEMPT] == "3"
        wait_phase(sk, third["metadata"]["name"])
        fake_clock.set(fake_clock.now() + timedelta(seconds=600))
        assert len(runs(sk, "retrying")) == 3  # limit 2: spent
        assert server.count("/flaky") == 3


def test_manual_trigger_with_the_cli_creates_a_run_now(
    sk: Kubectl,  # noqa: F811
    fake_clock: FakeClock,  # noqa: F811
) -> None:
    fake_clock.fresh_start()
    sk.apply(schedule("manual", WAIT_STEP, "  suspend: true"))
    wait_until(lambda: schedule_status(sk, "manual").get("conditions"), what="registration")
    result = subprocess.run(
        [sys.executable, "-m", "opsconductor.cli", "trigger", "opsschedule/manual", "-n", sk.namespace],
        env={**os.environ, "KUBECONFIG": str(sk.kubeconfig)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    name = result.stdout.strip().removeprefix("opsjob/")
    (run,) = wait_runs(sk, "manual", 1)
    assert run["metadata"]["name"] == name
    # The admin kubeconfig's user, as the API server reports it (SelfSubjectReview).
    assert run["metadata"]["annotations"][ANNOTATION_STARTED_BY].startswith("user:")
    assert run["metadata"]["annotations"][ANNOTATION_STARTED_BY] != "user:unknown"
    wait_until(lambda: schedule_status(sk, "manual").get("lastTrigger"), what="the trigger recorded")
    sk.run("annotate", "opsschedule", "manual", "unrelated=1")  # a later change does not re-trigger
    wait_until(lambda: schedule_status(sk, "manual").get("activeCount") == 1, what="status")
    assert len(runs(sk, "manual")) == 1


def test_an_edit_never_fires_an_extra_run(sk: Kubectl, fake_clock: FakeClock) -> None:  # noqa: F811
    day = fake_clock.fresh_start()
    sk.apply(schedule("edited", WAIT_STEP, "  concurrencyPolicy: Allow", cron="0 12 * * *"))
    wait_until(lambda: schedule_status(sk, "edited").get("nextScheduleTime"), what="registration")
    fake_clock.set(day + timedelta(minutes=30))
    # No evaluation happened since (the next fire is at noon). The new cron's fires at 00:05 ... 00:30
    # lie before the edit: none may run now (Argo CronWorkflow would run one).
    sk.apply(schedule("edited", WAIT_STEP, "  concurrencyPolicy: Allow", cron="*/5 * * * *"))
    wait_until(
        lambda: (
            schedule_status(sk, "edited").get("observedGeneration") == 2
            and schedule_status(sk, "edited").get("nextScheduleTime")
            == (day + timedelta(minutes=35)).strftime("%Y-%m-%dT%H:%M:%SZ")
        ),
        what="the edit to be observed",
    )
    assert runs(sk, "edited") == []
    fake_clock.set(day + timedelta(minutes=35, seconds=1))
    (run,) = wait_runs(sk, "edited", 1)
    assert run["metadata"]["name"] == run_name("edited", fire_key(day + timedelta(minutes=35)))


def test_an_unknown_time_zone_stalls_with_a_clear_message(sk: Kubectl, fake_clock: FakeClock) -> None:  # noqa: F811
    fake_clock.fresh_start()
    sk.apply(schedule("atlantis", WAIT_STEP, "  timeZone: Europe/Atlantis"))

    def stalled() -> dict[str, str] | None:
        found = {c["type"]: c for c in schedule_status(sk, "atlantis").get("conditions") or []}
        return found.get("Stalled") if found.get("Stalled", {}).get("status") == "True" else None

    condition = wait_until(stalled, what="Stalled")
    assert condition["reason"] == "InvalidSpec"
    assert "unknown time zone 'Europe/Atlantis'" in condition["message"]


def test_a_schedule_runs_after_another_schedules_successful_run(
    sk: Kubectl,  # noqa: F811
    fake_clock: FakeClock,  # noqa: F811
) -> None:
    day = fake_clock.fresh_start()
    with recording_server() as server:
        sk.apply(schedule("upstream", post_step(f"{server.url}/up"), cron="0 * * * *"))
        sk.apply(
            f"""
apiVersion: opsconductor.io/v1alpha1
kind: OpsSchedule
metadata: {{name: downstream}}
spec:
  after: [{{opsSchedule: upstream, result: Succeeded}}]
  jobTemplate:
    spec:
      steps: {post_step(f"{server.url}/down")}
"""
        )
        wait_until(lambda: schedule_status(sk, "upstream").get("nextScheduleTime"), what="registration")
        wait_until(lambda: schedule_status(sk, "downstream").get("conditions"), what="registration")
        fake_clock.set(day + timedelta(seconds=1))
        (up,) = wait_runs(sk, "upstream", 1)
        wait_phase(sk, up["metadata"]["name"])
        (down,) = wait_runs(sk, "downstream", 1)
        assert down["metadata"]["annotations"][ANNOTATION_STARTED_BY] == f"opsjob/{up['metadata']['name']}"
        assert wait_phase(sk, down["metadata"]["name"])["status"]["phase"] == "Succeeded"
        assert server.count("/up") == 1 and server.count("/down") == 1


def test_schedules_waiting_for_each_other_are_rejected_as_a_cycle(
    sk: Kubectl,  # noqa: F811
    fake_clock: FakeClock,  # noqa: F811
) -> None:
    fake_clock.fresh_start()
    for name, other in (("ping", "pong"), ("pong", "ping")):
        sk.apply(
            f"""
apiVersion: opsconductor.io/v1alpha1
kind: OpsSchedule
metadata: {{name: {name}}}
spec:
  after: [{{opsSchedule: {other}}}]
  jobTemplate: {{spec: {{steps: {WAIT_STEP}}}}}
"""
        )

    def cycle_reported() -> bool:
        found = {c["type"]: c for c in schedule_status(sk, "pong").get("conditions") or []}
        return found.get("Stalled", {}).get("reason") == "DependencyCycle"

    wait_until(cycle_reported, what="the cycle condition")
    message = {c["type"]: c for c in schedule_status(sk, "pong")["conditions"]}["Stalled"]["message"]
    assert "pong -> ping -> pong" in message


def test_an_opsjob_waits_for_its_dependency_then_runs_or_fails(
    sk: Kubectl,  # noqa: F811
    fake_clock: FakeClock,  # noqa: F811
) -> None:
    fake_clock.fresh_start()
    with recording_server() as server:
        job = """
apiVersion: opsconductor.io/v1alpha1
kind: OpsJob
metadata: {{name: {name}}}
spec:
  {after}
  steps: {steps}
"""
        sk.apply(
            job.format(
                name="second",
                after="after: [{opsJob: first, result: Succeeded}]",
                steps=post_step(f"{server.url}/second"),
            )
        )
        sk.apply(job.format(name="never", after="after: [{opsJob: first, result: Failed}]", steps=WAIT_STEP))

        def waiting() -> bool:
            status = sk.get("opsjob", "second").get("status") or {}
            ready = {c["type"]: c for c in status.get("conditions") or []}.get("Ready", {})
            return status.get("phase") == "Pending" and ready.get("reason") == "WaitingForRun"

        wait_until(waiting, what="second to wait for first")
        assert server.count("/second") == 0
        sk.apply(job.format(name="first", after="", steps=post_step(f"{server.url}/first")))
        assert wait_phase(sk, "second")["status"]["phase"] == "Succeeded"
        assert server.count("/first") == 1 and server.count("/second") == 1
        never = wait_phase(sk, "never")
        assert never["status"]["phase"] == "Failed"
        reasons = {c["type"]: c["reason"] for c in never["status"]["conditions"]}
        assert reasons["Ready"] == "DependencyFailed"


def test_an_opsjob_dependency_times_out_on_the_operator_clock(
    sk: Kubectl,  # noqa: F811
    fake_clock: FakeClock,  # noqa: F811
) -> None:
    fake_clock.fresh_start()
    sk.apply(
        f"""
apiVersion: opsconductor.io/v1alpha1
kind: OpsJob
metadata: {{name: patient}}
spec:
  after: [{{opsJob: missing, timeoutSeconds: 600}}]
  steps: {WAIT_STEP}
"""
    )
    wait_phase(sk, "patient", ("Pending",))
    wait_until(
        lambda: (
            {
                c["type"]: c["reason"] for c in sk.get("opsjob", "patient")["status"].get("conditions") or []
            }.get("Ready")
            == "WaitingForRun"
        ),
        what="the wait",
    )
    fake_clock.set(fake_clock.now() + timedelta(seconds=601))
    failed = wait_phase(sk, "patient")
    assert {c["type"]: c["reason"] for c in failed["status"]["conditions"]}["Ready"] == "DependencyTimeout"


def test_history_limits_delete_old_runs(sk: Kubectl, fake_clock: FakeClock) -> None:  # noqa: F811
    day = fake_clock.fresh_start()
    with recording_server() as server:
        sk.apply(
            schedule(
                "history",
                post_step(f"{server.url}/h"),
                "  successfulJobsHistoryLimit: 2\n  concurrencyPolicy: Allow",
            )
        )
        wait_until(lambda: schedule_status(sk, "history").get("nextScheduleTime"), what="registration")
        for index in range(4):
            fake_clock.set(day + timedelta(minutes=10 * index, seconds=1))
            name = run_name("history", fire_key(day + timedelta(minutes=10 * index)))
            wait_until(lambda n=name: sk.run("get", "opsjob", n, check=False).returncode == 0, what=name)
            wait_phase(sk, name)
        final = run_name("history", fire_key(day + timedelta(minutes=30)))
        previous = run_name("history", fire_key(day + timedelta(minutes=20)))
        wait_until(
            lambda: sorted(j["metadata"]["name"] for j in runs(sk, "history")) == sorted([previous, final]),
            what="the two newest runs to remain",
        )


def test_a_shared_maintenance_window_blacks_out_a_schedule(
    sk: Kubectl,  # noqa: F811
    fake_clock: FakeClock,  # noqa: F811
) -> None:
    day = fake_clock.fresh_start()
    sk.apply(
        """
apiVersion: opsconductor.io/v1alpha1
kind: MaintenanceWindow
metadata: {name: change-freeze}
spec:
  description: year-end change freeze
  timeZone: UTC
  blackout: [{name: freeze, cron: "5 0 * * *", durationMinutes: 30}]
"""
    )
    sk.apply(
        schedule(
            "frozen",
            WAIT_STEP,
            "  concurrencyPolicy: Allow\n  windows: {refs: [{name: change-freeze}]}",
        )
    )
    wait_until(lambda: schedule_status(sk, "frozen").get("nextScheduleTime"), what="registration")
    fake_clock.set(day + timedelta(minutes=10, seconds=1))  # 00:00 runs; 00:10 is inside the freeze
    wait_until(
        lambda: any(r == "BlackoutWindow" and "freeze" in m for _, r, m in schedule_events(sk, "frozen")),
        what="the shared window's skip",
    )
    fake_clock.set(day + timedelta(minutes=40, seconds=1))  # 00:20, 00:30 skipped; 00:40 runs
    names = [j["metadata"]["name"] for j in wait_runs(sk, "frozen", 2)]
    assert sorted(names) == sorted(run_name("frozen", fire_key(day + timedelta(minutes=m))) for m in (0, 40))


EXAMPLE_SCHEDULES = sorted((Path(__file__).resolve().parents[2] / "examples" / "opsschedules").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLE_SCHEDULES, ids=lambda p: p.stem)
def test_example_schedule_fires_its_next_run(
    path: Path,
    sk: Kubectl,  # noqa: F811
    fake_clock: FakeClock,  # noqa: F811
) -> None:
    fake_clock.fresh_start()
    sk.run("apply", "-f", str(path))
    documents = [d for d in yaml.safe_load_all(path.read_text()) if d]
    cron_schedules = [
        d["metadata"]["name"] for d in documents if d["kind"] == "OpsSchedule" and d["spec"].get("schedules")
    ]
    assert cron_schedules
    for name in cron_schedules:
        upcoming = wait_until(
            lambda n=name: schedule_status(sk, n).get("nextScheduleTime"), what=f"{name}'s next run"
        )
        at = datetime.fromisoformat(upcoming.replace("Z", "+00:00"))
        fake_clock.set(at + timedelta(seconds=1))
        (run,) = wait_runs(sk, name, 1)
        assert run["metadata"]["annotations"][ANNOTATION_STARTED_BY] == f"opsschedule/{name}"
    for document in documents:
        if document["kind"] == "OpsSchedule":
            ready = wait_until(
                lambda n=document["metadata"]["name"]: {
                    c["type"]: c for c in schedule_status(sk, n).get("conditions") or []
                }.get("Ready"),
                what="Ready",
            )
            assert ready["status"] == "True", ready


def test_a_template_the_api_server_rejects_stalls_the_schedule_with_its_message(
    sk: Kubectl,  # noqa: F811
    fake_clock: FakeClock,  # noqa: F811
) -> None:
    day = fake_clock.fresh_start()
    sk.apply(
        f"""
apiVersion: opsconductor.io/v1alpha1
kind: OpsSchedule
metadata: {{name: badlabel}}
spec:
  schedules: ["*/10 * * * *"]
  jobTemplate:
    metadata: {{labels: {{team: "a b"}}}}
    spec: {{steps: {WAIT_STEP}}}
"""
    )
    wait_until(lambda: schedule_status(sk, "badlabel").get("nextScheduleTime"), what="registration")
    fake_clock.set(day + timedelta(seconds=1))

    def stalled() -> dict[str, str] | None:
        found = {c["type"]: c for c in schedule_status(sk, "badlabel").get("conditions") or []}
        return found.get("Stalled") if found.get("Stalled", {}).get("reason") == "RunCreateFailed" else None

    condition = wait_until(stalled, what="RunCreateFailed")
    assert "metadata.labels" in condition["message"] and "a b" in condition["message"]
    assert any(r == "RunCreateFailed" for _, r, _ in schedule_events(sk, "badlabel"))
    assert runs(sk, "badlabel") == []


def test_a_missing_shared_window_stalls_the_schedule(sk: Kubectl, fake_clock: FakeClock) -> None:  # noqa: F811
    fake_clock.fresh_start()
    sk.apply(schedule("typo", WAIT_STEP, "  windows: {refs: [{name: chnage-freeze}]}"))

    def stalled() -> dict[str, str] | None:
        found = {c["type"]: c for c in schedule_status(sk, "typo").get("conditions") or []}
        return found.get("Stalled") if found.get("Stalled", {}).get("reason") == "WindowNotFound" else None

    assert "chnage-freeze does not exist" in wait_until(stalled, what="WindowNotFound")["message"]


def test_the_scheduler_logs_no_errors(schedule_operator: OperatorProcess) -> None:  # noqa: F811
    # The scheduler's own lines (an exception it logs is an ERROR line from its module). Tests delete
    # their namespaces with runs still starting; what the OpsJob handlers log about that is theirs.
    text = schedule_operator.log.read_text(errors="replace")
    errors = [
        line
        for line in text.splitlines()
        if "opsconductor.handlers.opsschedule" in line and (" ERROR " in line or " WARNING " in line)
    ]
    assert not errors, "\n".join(errors[:20])
    assert "created run" in text
