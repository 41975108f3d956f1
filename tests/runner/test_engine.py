"""The step engine: fan-out, when, templates, retries, timeouts, failure policy, cancel, deadline.

Protocol sessions are scripted test doubles here (the engine's contract is the ProtocolSession
interface); HTTP steps also run against a real loopback server. Synchronisation is by events and
barriers, never by sleeping.
"""

from __future__ import annotations

import io
import os
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import TypeAdapter

from opsconductor.api.opsjob import FailurePolicy, Step
from opsconductor.plan import JobRef, PlanCredential, PlanStep, PlanTarget, RunPlan, RunSummary
from opsconductor.runner.engine import (
    DEFAULT_MAX_CONCURRENCY,
    DEFAULT_SESSION_KINDS,
    SSH_STEP_TYPES,
    Engine,
    RunResult,
    SessionKind,
    backoff_seconds,
    session_kinds_with,
)
from opsconductor.runner.protocols.base import StepContext, StepOutcome
from opsconductor.runner.reporting import OutputLog
from opsconductor.runner.results import STATUS_MAX_BYTES, RunState, TargetRecord, serialized_size
from opsconductor.runner.secrets import FileSecretStore
from tests.fixtures.sshd import ClientKeys, SshdFactory, SshServer, TestUser
from tests.runner.servers import as_json, serve, text

STEP: TypeAdapter[Any] = TypeAdapter(Step)
Behaviour = Callable[[Any, StepContext], StepOutcome]


class Scripted:
    """A ProtocolSession whose attempts run ``behaviour``; counts calls and parallelism."""

    step_types = SSH_STEP_TYPES

    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.calls: list[tuple[str, str | None]] = []
        self.running = 0
        self.max_running = 0
        self.closed = False
        self.lock = threading.Lock()

    def run(self, step: Any, ctx: StepContext) -> StepOutcome:
        with self.lock:
            self.calls.append((step.name, tname(ctx) if ctx.target else None))
            self.running += 1
            self.max_running = max(self.max_running, self.running)
        try:
            return self.behaviour(step, ctx)
        finally:
            with self.lock:
                self.running -= 1

    def close(self) -> None:
        self.closed = True


def tname(ctx: StepContext) -> str:
    assert ctx.target is not None
    return ctx.target.name


def echo(step: Any, ctx: StepContext) -> StepOutcome:
    return StepOutcome(ok=True, exit_code=0, stdout=f"{step.command}\n", outputs={"host": tname(ctx)})


def ssh_target(name: str, **labels: str) -> PlanTarget:
    return PlanTarget(name=name, address="127.0.0.1", port=22, protocol="ssh", labels=labels)


def make_plan(
    steps: list[tuple[dict[str, Any], list[str]]],
    targets: list[PlanTarget] | None = None,
    **extra: Any,
) -> RunPlan:
    return RunPlan(
        job=JobRef(namespace="ops", name="job1", uid="uid-1"),
        targets={t.name: t for t in targets or []},
        steps=[
            PlanStep(step=STEP.validate_python({"type": "ssh.exec", **fields}), targets=names)
            for fields, names in steps
        ],
        **extra,
    )


class Recorder:
    """A Reporter that records the calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.lock = threading.Lock()

    def _add(self, name: str, arg: Any = None) -> None:
        with self.lock:
            self.calls.append((name, arg))

    def run_started(self, state: RunState) -> None:
        self._add("run_started")

    def step_started(self, state: RunState, index: int) -> None:
        self._add("step_started", index)

    def target_finished(self, state: RunState, index: int, record: TargetRecord) -> None:
        self._add("target_finished", (index, record.target, record.phase))

    def step_finished(self, state: RunState, index: int) -> None:
        self._add("step_finished", index)

    def run_finished(self, state: RunState, summary: RunSummary) -> None:
        self._add("run_finished", summary.phase)


def run(
    plan: RunPlan,
    session: Scripted,
    *,
    cancel: threading.Event | None = None,
    secrets: FileSecretStore | None = None,
    reporter: Recorder | None = None,
    log: io.StringIO | None = None,
) -> RunResult:
    kinds = session_kinds_with({"ssh": lambda: session})
    engine = Engine(
        plan,
        secrets or FileSecretStore(),
        cancel=cancel,
        reporter=reporter,
        output=OutputLog(log if log is not None else io.StringIO()),
        session_kinds=kinds,
    )
    return engine.run()


def phases(result: RunResult, step: int) -> dict[str, str]:
    return {t.target: t.phase for t in result.state.steps[step].targets}


# --- basics -----------------------------------------------------------------------------------------
def test_steps_run_in_order_and_later_templates_see_earlier_results() -> None:
    plan = make_plan(
        [
            ({"name": "first", "command": "echo {{ target.labels.role }}"}, ["a", "b"]),
            (
                {
                    "name": "second",
                    "command": "got {{ steps.first.stdout | trim }} {{ steps.first.outputs.host }} "
                    "{{ params.svc }} {{ job.namespace }}/{{ job.name }}",
                },
                ["a", "b"],
            ),
        ],
        [ssh_target("a", role="web"), ssh_target("b", role="db")],
        parameters={"svc": "nginx"},
    )
    session = Scripted(echo)
    reporter = Recorder()
    log = io.StringIO()
    result = run(plan, session, reporter=reporter, log=log)
    assert result.summary.phase == "Succeeded"
    second = {t.target: t.stdout.text() for t in result.state.steps[1].targets}
    assert second == {"a": "got echo web a nginx ops/job1\n", "b": "got echo db b nginx ops/job1\n"}
    assert session.closed
    assert "[second/a] stdout: got echo web a nginx ops/job1" in log.getvalue().splitlines()
    names = [name for name, _ in reporter.calls]
    assert names[0] == "run_started" and names[-1] == "run_finished"
    assert names.count("target_finished") == 4
    assert names.index("step_finished") < names.index("step_started", 2)
    assert result.state.progress().model_dump() == {"steps": "2/2", "targets": "4/0"}


def test_when_protocol_and_template_errors() -> None:
    http = PlanTarget(name="api", address="127.0.0.1", port=80, protocol="http", scheme="http")
    plan = make_plan(
        [
            ({"name": "only-web", "command": "x", "when": "target.labels.role == 'web'"}, ["a", "b", "api"]),
            ({"name": "broken", "command": "echo {{ params.nope }}"}, ["a"]),
        ],
        [ssh_target("a", role="web"), ssh_target("b", role="db"), http],
    )
    result = run(plan, Scripted(echo))
    assert phases(result, 0) == {"a": "Succeeded", "b": "Skipped", "api": "Skipped"}
    api = result.state.steps[0].targets[2]
    assert "ssh.exec does not apply to Target api (protocol http)" in api.error
    assert result.state.steps[0].phase == "Succeeded"
    broken = result.state.steps[1].targets[0]
    assert broken.phase == "Failed" and "template error in command" in broken.error and "nope" in broken.error
    assert result.summary.phase == "Failed" and result.summary.reason == "StepsFailed"


def test_step_without_targets_runs_once_as_local() -> None:
    plan = RunPlan(
        job=JobRef(namespace="ops", name="j", uid="u"),
        steps=[
            PlanStep(step=STEP.validate_python({"name": "pause", "type": "wait", "seconds": 1}), targets=[])
        ],
    )
    result = Engine(plan, FileSecretStore(), output=OutputLog(io.StringIO())).run()
    assert result.summary.phase == "Succeeded"
    [record] = result.state.steps[0].targets
    assert record.target == "local" and record.phase == "Succeeded"


def test_a_winrm_target_without_a_credential_fails_clearly() -> None:
    winrm = PlanTarget(name="w", address="127.0.0.1", port=5985, protocol="winrm")
    plan = RunPlan(
        job=JobRef(namespace="ops", name="j", uid="u"),
        targets={"w": winrm},
        steps=[
            PlanStep(
                step=STEP.validate_python({"name": "x", "type": "winrm.exec", "command": "dir"}),
                targets=["w"],
            )
        ],
    )
    result = Engine(plan, FileSecretStore(), output=OutputLog(io.StringIO())).run()
    error = result.state.steps[0].targets[0].error
    assert error.startswith("winrm 127.0.0.1:5985: target w has no credential: set spec.credentialRef")
    assert result.summary.phase == "Failed"


# --- concurrency --------------------------------------------------------------------------------------
def barrier_behaviour(parties: int) -> tuple[threading.Barrier, Behaviour]:
    barrier = threading.Barrier(parties, timeout=10)

    def behaviour(step: Any, ctx: StepContext) -> StepOutcome:
        barrier.wait()  # breaks (and fails the target) unless `parties` attempts run at once
        return StepOutcome(ok=True, exit_code=0)

    return barrier, behaviour


def test_default_concurrency_is_all_targets_capped() -> None:
    names = [f"t{n}" for n in range(DEFAULT_MAX_CONCURRENCY * 2)]
    _, behaviour = barrier_behaviour(DEFAULT_MAX_CONCURRENCY)
    session = Scripted(behaviour)
    result = run(make_plan([({"name": "s", "command": "x"}, names)], [ssh_target(n) for n in names]), session)
    assert result.summary.phase == "Succeeded"
    assert session.max_running == DEFAULT_MAX_CONCURRENCY


def test_step_concurrency_overrides_the_job() -> None:
    names = [f"t{n}" for n in range(9)]
    _, behaviour = barrier_behaviour(3)
    session = Scripted(behaviour)
    plan = make_plan(
        [({"name": "s", "command": "x", "concurrency": 3}, names)],
        [ssh_target(n) for n in names],
        concurrency=1,
    )
    assert run(plan, session).summary.phase == "Succeeded"
    assert session.max_running == 3


# --- retries and timeouts -----------------------------------------------------------------------------
def test_backoff_doubles_up_to_the_cap() -> None:
    step = STEP.validate_python(
        {
            "name": "s",
            "type": "ssh.exec",
            "command": "x",
            "retries": {"limit": 9, "backoffSeconds": 2, "maxBackoffSeconds": 10},
        }
    )
    assert [backoff_seconds(step, n) for n in range(1, 6)] == [2, 4, 8, 10, 10]


def test_retry_until_success() -> None:
    attempts: dict[str, int] = {}

    def flaky(step: Any, ctx: StepContext) -> StepOutcome:
        attempts[tname(ctx)] = attempts.get(tname(ctx), 0) + 1
        ok = attempts[tname(ctx)] >= 2
        return StepOutcome(ok=ok, exit_code=0 if ok else 1, error="" if ok else "boom")

    plan = make_plan(
        [({"name": "s", "command": "x", "retries": {"limit": 3, "backoffSeconds": 1}}, ["a"])],
        [ssh_target("a")],
    )
    result = run(plan, Scripted(flaky))
    record = result.state.steps[0].targets[0]
    assert (record.phase, record.attempts, record.exit_code) == ("Succeeded", 2, 0)


def test_exhausted_retries_report_the_last_error() -> None:
    plan = make_plan(
        [({"name": "s", "command": "x", "retries": {"limit": 1, "backoffSeconds": 1}}, ["a"])],
        [ssh_target("a")],
    )
    result = run(plan, Scripted(lambda s, c: StepOutcome(ok=False, exit_code=3)))
    record = result.state.steps[0].targets[0]
    assert record.phase == "Failed" and record.attempts == 2
    assert record.error == "failed after 2 attempts: exit code 3"


def honour_deadline(step: Any, ctx: StepContext) -> StepOutcome:
    """Like a real session: block until cancelled or the attempt's deadline."""
    if ctx.cancel.wait(ctx.remaining()):
        return StepOutcome(ok=False, cancelled=True, error="cancelled")
    return StepOutcome(ok=False, timed_out=True)


def test_step_timeout_bounds_each_attempt() -> None:
    plan = make_plan([({"name": "s", "command": "x", "timeoutSeconds": 1}, ["a"])], [ssh_target("a")])
    started = time.monotonic()
    result = run(plan, Scripted(honour_deadline))
    record = result.state.steps[0].targets[0]
    assert record.phase == "Failed" and record.error == "timed out after 1s"
    assert 0.9 < time.monotonic() - started < 5


def test_run_deadline_fails_the_run_and_stops_later_steps() -> None:
    plan = make_plan(
        [({"name": "slow", "command": "x"}, ["a"]), ({"name": "never", "command": "x"}, ["a"])],
        [ssh_target("a")],
        active_deadline_seconds=1,
    )
    started = time.monotonic()
    result = run(plan, Scripted(honour_deadline))
    assert time.monotonic() - started < 5
    assert result.summary.phase == "Failed" and result.summary.reason == "DeadlineExceeded"
    assert "deadline" in result.state.steps[0].targets[0].error
    assert result.state.steps[1].phase == "Cancelled"


# --- failure policy ---------------------------------------------------------------------------------
def fail_on(*names: str) -> Behaviour:
    def behaviour(step: Any, ctx: StepContext) -> StepOutcome:
        failed = tname(ctx) in names
        return StepOutcome(ok=not failed, exit_code=1 if failed else 0, error="bad host" if failed else "")

    return behaviour


def test_fail_fast_stops_starting_targets_and_skips_later_steps() -> None:
    names = [f"t{n}" for n in range(10)]
    plan = make_plan(
        [
            ({"name": "s", "command": "x", "concurrency": 1}, names),
            ({"name": "after", "command": "x"}, names),
        ],
        [ssh_target(n) for n in names],
    )
    session = Scripted(fail_on("t3"))
    result = run(plan, session)
    got = phases(result, 0)
    assert [got[f"t{n}"] for n in range(10)] == ["Succeeded"] * 3 + ["Failed"] + ["Cancelled"] * 6
    assert "FailFast stopped the step after t3 failed" in result.state.steps[0].targets[5].error
    assert len(session.calls) == 4
    assert result.summary.phase == "Failed"
    assert result.summary.message.startswith("step s failed: 1 of 10 target(s) failed")
    assert result.state.steps[1].phase == "Skipped"
    assert set(phases(result, 1).values()) == {"Skipped"}


class ReleaseOnFailure(Recorder):
    def __init__(self, release: threading.Event) -> None:
        super().__init__()
        self.release = release

    def target_finished(self, state: RunState, index: int, record: TargetRecord) -> None:
        super().target_finished(state, index, record)
        if record.phase == "Failed":
            self.release.set()


def test_fail_fast_lets_running_targets_finish() -> None:
    release = threading.Event()
    started = threading.Barrier(3, timeout=10)

    def behaviour(step: Any, ctx: StepContext) -> StepOutcome:
        started.wait()
        if tname(ctx) == "t0":
            return StepOutcome(ok=False, exit_code=1)
        release.wait(10)  # until t0's failure is recorded
        return StepOutcome(ok=True, exit_code=0)

    names = [f"t{n}" for n in range(6)]
    plan = make_plan(
        [({"name": "s", "command": "x", "concurrency": 3}, names)], [ssh_target(n) for n in names]
    )
    result = run(plan, Scripted(behaviour), reporter=ReleaseOnFailure(release))
    assert phases(result, 0) == {
        "t0": "Failed",
        "t1": "Succeeded",
        "t2": "Succeeded",
        "t3": "Cancelled",
        "t4": "Cancelled",
        "t5": "Cancelled",
    }
    assert "1 of 6 target(s) failed; 3 not started (FailFast)" in result.state.steps[0].message


def test_continue_runs_every_target() -> None:
    names = [f"t{n}" for n in range(5)]
    plan = make_plan(
        [({"name": "s", "command": "x"}, names)],
        [ssh_target(n) for n in names],
        failure_policy=FailurePolicy(mode="Continue"),
    )
    session = Scripted(fail_on("t1", "t2"))
    result = run(plan, session)
    assert len(session.calls) == 5
    assert list(phases(result, 0).values()).count("Failed") == 2
    assert result.summary.phase == "Failed"


@pytest.mark.parametrize(
    ("policy", "failures", "phase"),
    [
        ({"maxFailedTargets": 2}, ("t1", "t2"), "Succeeded"),
        ({"maxFailedTargets": 2}, ("t1", "t2", "t3"), "Failed"),
        ({"maxFailedPercentage": 30}, ("t1", "t2", "t3"), "Succeeded"),
        ({"maxFailedPercentage": 30}, ("t1", "t2", "t3", "t4"), "Failed"),
        ({"maxFailedTargets": 5, "maxFailedPercentage": 10}, ("t1", "t2"), "Failed"),
    ],
)
def test_tolerated_failures(policy: dict[str, int], failures: tuple[str, ...], phase: str) -> None:
    names = [f"t{n}" for n in range(10)]
    plan = make_plan(
        [({"name": "s", "command": "x", "concurrency": 1}, names)],
        [ssh_target(n) for n in names],
        failure_policy=FailurePolicy.model_validate({"mode": "FailFast", **policy}),
    )
    result = run(plan, Scripted(fail_on(*failures)))
    assert result.state.steps[0].phase == phase
    assert result.summary.phase == phase


def test_continue_on_error_keeps_the_run_going() -> None:
    plan = make_plan(
        [
            ({"name": "optional", "command": "x", "continueOnError": True}, ["a"]),
            ({"name": "next", "command": "y"}, ["a"]),
        ],
        [ssh_target("a")],
    )
    session = Scripted(lambda s, c: StepOutcome(ok=s.name == "next", exit_code=0 if s.name == "next" else 1))
    result = run(plan, session)
    assert result.state.steps[0].phase == "Failed"
    assert result.state.steps[1].phase == "Succeeded"
    assert result.summary.phase == "Succeeded"


# --- cancellation -----------------------------------------------------------------------------------
def test_cancel_stops_running_attempts_and_the_rest() -> None:
    cancel = threading.Event()
    names = [f"t{n}" for n in range(8)]
    barrier = threading.Barrier(3, timeout=10)

    def behaviour(step: Any, ctx: StepContext) -> StepOutcome:
        barrier.wait()
        if tname(ctx) == "t0":
            cancel.set()  # like SIGTERM arriving while three attempts run
        return honour_deadline(step, ctx)

    plan = make_plan(
        [
            ({"name": "s", "command": "x", "concurrency": 3}, names),
            ({"name": "later", "command": "x"}, names),
        ],
        [ssh_target(n) for n in names],
    )
    started = time.monotonic()
    reporter = Recorder()
    result = run(plan, Scripted(behaviour), cancel=cancel, reporter=reporter)
    assert time.monotonic() - started < 5
    assert result.summary.phase == "Cancelled"
    assert set(phases(result, 0).values()) == {"Cancelled"}
    assert result.state.steps[0].phase == "Cancelled"
    assert result.state.steps[1].phase == "Cancelled"
    assert reporter.calls[-1] == ("run_finished", "Cancelled")


class CancelOnRetry(io.StringIO):
    """A run log that cancels the run when the engine announces a retry (it then waits)."""

    def __init__(self, cancel: threading.Event) -> None:
        super().__init__()
        self.cancel = cancel

    def write(self, text: str) -> int:
        if "retrying in" in text:
            self.cancel.set()
        return super().write(text)


def test_cancel_interrupts_retry_backoff() -> None:
    cancel = threading.Event()
    plan = make_plan(
        [({"name": "s", "command": "x", "retries": {"limit": 5, "backoffSeconds": 600}}, ["a"])],
        [ssh_target("a")],
    )
    started = time.monotonic()
    session = Scripted(lambda s, c: StepOutcome(ok=False, exit_code=1))
    result = run(plan, session, cancel=cancel, log=CancelOnRetry(cancel))
    assert time.monotonic() - started < 5
    record = result.state.steps[0].targets[0]
    assert record.phase == "Cancelled" and "waiting to retry" in record.error
    assert len(session.calls) == 1
    assert result.summary.phase == "Cancelled"


# --- secrets ----------------------------------------------------------------------------------------
def test_secret_parameters_are_masked_everywhere(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("Sup3r-Secret\n")
    plan = make_plan(
        [({"name": "login", "command": "login --password {{ params.password }}"}, ["a"])],
        [ssh_target("a")],
        secret_parameters={"password": str(tmp_path / "pw")},
    )
    seen: list[str] = []

    def leaky(step: Any, ctx: StepContext) -> StepOutcome:
        seen.append(step.command)
        ctx.log.append(f"sent {step.command}")
        return StepOutcome(
            ok=False, exit_code=1, stdout=step.command, stderr="pw=Sup3r-Secret", error=step.command
        )

    log = io.StringIO()
    result = run(plan, Scripted(leaky), log=log)
    assert seen == ["login --password Sup3r-Secret"]  # the remote side gets the real value
    record = result.state.steps[0].targets[0]
    assert "Sup3r-Secret" not in record.stdout.text() + record.stderr.text() + record.error
    assert "***" in record.stdout.text()
    assert "Sup3r-Secret" not in log.getvalue()
    assert "Sup3r-Secret" not in str(result.state.status()) + result.summary.message


def test_unreadable_secret_parameter_fails_before_any_step(tmp_path: Path) -> None:
    plan = make_plan(
        [({"name": "s", "command": "x"}, ["a"])],
        [ssh_target("a")],
        secret_parameters={"p": str(tmp_path / "missing")},
    )
    session = Scripted(echo)
    result = run(plan, session)
    assert result.summary.reason == "SecretUnreadable"
    assert session.calls == []


# --- big fan-out ------------------------------------------------------------------------------------
def test_5000_targets_with_big_outputs_keep_the_status_small() -> None:
    names = [f"host-{n:04d}" for n in range(5000)]
    output = "x" * 100_000 + "\n"

    def behaviour(step: Any, ctx: StepContext) -> StepOutcome:
        failed = tname(ctx).endswith("7")
        return StepOutcome(
            ok=not failed, exit_code=int(failed), stdout=output, stderr=output, error="e" * 5000
        )

    plan = make_plan(
        [({"name": "fan", "command": "x"}, names)],
        [ssh_target(n) for n in names],
        failure_policy=FailurePolicy(mode="Continue"),
    )
    result = run(plan, Scripted(behaviour), log=io.StringIO())
    status = result.state.status()
    assert serialized_size(status) < STATUS_MAX_BYTES
    [step] = status["steps"]
    assert step["counts"] == {
        "pending": 0,
        "running": 0,
        "succeeded": 4500,
        "failed": 500,
        "skipped": 0,
        "cancelled": 0,
    }
    assert len(step["targets"]) == 20 and step["omittedTargets"] == 4980
    assert status["progress"] == {"steps": "1/1", "targets": "4500/500"}


# --- real HTTP --------------------------------------------------------------------------------------
def test_http_steps_through_the_engine() -> None:
    with serve({"/api/status": lambda r: as_json({"status": "ok"}), "/hook": lambda r: text("ok")}) as srv:
        api = PlanTarget(
            name="api", address="127.0.0.1", port=srv.port, protocol="http", scheme="http", base_path="/api"
        )
        plan = RunPlan(
            job=JobRef(namespace="ops", name="j", uid="u"),
            targets={"api": api},
            steps=[
                PlanStep(
                    step=STEP.validate_python(
                        {
                            "name": "check",
                            "type": "http.get",
                            "url": "status",
                            "assertions": [{"jsonPath": "$.status", "equals": "ok"}],
                        }
                    ),
                    targets=["api"],
                ),
                PlanStep(
                    step=STEP.validate_python(
                        {
                            "name": "notify",
                            "type": "webhook.call",
                            "url": f"{srv.url}/hook",
                            "payload": {
                                "status": "{{ steps.check.outputs.status }}",
                                "body": "{{ steps.check.outputs.body }}",
                            },
                        }
                    ),
                    targets=[],
                ),
            ],
        )
        result = Engine(
            plan, FileSecretStore(), output=OutputLog(io.StringIO()), session_kinds=DEFAULT_SESSION_KINDS
        ).run()
    assert result.summary.phase == "Succeeded", result.summary
    assert srv.requests[-1].json() == {"status": "200", "body": '{"status": "ok"}'}


def test_a_failing_session_factory_fails_its_steps_only() -> None:
    def broken() -> Any:
        raise RuntimeError("no paramiko here")

    kinds = tuple(
        SessionKind(k.name, k.step_types, broken if k.name == "ssh" else k.factory)
        for k in DEFAULT_SESSION_KINDS
    )
    plan = make_plan([({"name": "s", "command": "x"}, ["a"])], [ssh_target("a")])
    result = Engine(plan, FileSecretStore(), output=OutputLog(io.StringIO()), session_kinds=kinds).run()
    assert result.state.steps[0].targets[0].error == "ssh steps are unavailable: no paramiko here"


def test_relative_http_url_on_a_non_http_target_is_skipped() -> None:
    plan = RunPlan(
        job=JobRef(namespace="ops", name="j", uid="u"),
        targets={"a": ssh_target("a")},
        steps=[
            PlanStep(step=STEP.validate_python({"name": "h", "type": "http.get", "url": "/x"}), targets=["a"])
        ],
    )
    result = Engine(plan, FileSecretStore(), output=OutputLog(io.StringIO())).run()
    record = result.state.steps[0].targets[0]
    assert record.phase == "Skipped" and "needs an http Target" in record.error
    assert result.state.steps[0].phase == "Skipped"


# --- real sshd: cancellation stops the remote command -----------------------------------------------
def test_cancel_kills_remote_commands_over_ssh(
    sshd: SshServer, ssh_test_user: TestUser, remote_dir: Path, tmp_path: Path
) -> None:
    fifo = remote_dir / "started"
    os.mkfifo(fifo, 0o666)
    os.chmod(fifo, 0o666)
    marker = f"{300 + os.getpid() % 1000}.4242"
    (tmp_path / "username").write_text(ssh_test_user.name)
    credential = PlanCredential(
        name="pw",
        type="BasicAuth",
        files={"username": str(tmp_path / "username"), "password": str(ssh_test_user.password_path)},
    )
    target = PlanTarget(
        name="web01",
        address=sshd.address,
        port=sshd.port,
        protocol="ssh",
        credential=credential,
        host_keys=sshd.host_key_lines,
    )
    plan = make_plan(
        [({"name": "long", "command": f"echo started > {fifo}; sleep {marker}"}, ["web01"])], [target]
    )
    cancel = threading.Event()

    def cancel_when_started() -> None:
        with open(fifo) as reader:  # blocks until the remote command opens the FIFO
            reader.read()
        cancel.set()

    watcher = threading.Thread(target=cancel_when_started, daemon=True)
    watcher.start()
    started = time.monotonic()
    result = Engine(plan, FileSecretStore(), cancel=cancel, output=OutputLog(io.StringIO())).run()
    watcher.join(5)
    assert result.summary.phase == "Cancelled"
    assert result.state.steps[0].targets[0].phase == "Cancelled"
    assert time.monotonic() - started < 20

    def remote_sleep_running() -> bool:
        found = subprocess.run(
            ["pgrep", "-u", ssh_test_user.name, "-f", f"sleep {marker}"], capture_output=True
        )
        return found.returncode == 0

    assert not remote_sleep_running()


def test_step_credential_entries_report_the_target_name() -> None:
    plan = RunPlan(
        job=JobRef(namespace="ops", name="j", uid="u"),
        targets={"a": ssh_target("a"), "a@deploy": ssh_target("a")},
        steps=[
            PlanStep(
                step=STEP.validate_python({"name": "s1", "type": "ssh.exec", "command": "one"}), targets=["a"]
            ),
            PlanStep(
                step=STEP.validate_python(
                    {
                        "name": "s2",
                        "type": "ssh.exec",
                        "command": "{{ target.name }} {{ steps.s1.stdout | trim }}",
                    }
                ),
                targets=["a@deploy"],
            ),
        ],
    )
    result = run(plan, Scripted(echo))
    record = result.state.steps[1].targets[0]
    assert record.target == "a"
    assert record.stdout.text() == "a one\n"


def test_many_targets_on_one_sshd_do_not_overrun_its_max_startups(
    sshd_server: SshdFactory, ssh_keys: ClientKeys, ssh_test_user: TestUser, tmp_path: Path
) -> None:
    # An sshd that drops every unauthenticated connection beyond 8 (MaxStartups start:rate:full):
    # 30 Target names for that one host at concurrency 30 only succeed because the SSH session caps
    # the handshakes in flight per address:port.
    server = sshd_server("127.0.0.9", extra_config=["MaxStartups 8:100:8"])
    (tmp_path / "username").write_text(ssh_test_user.name)
    credential = PlanCredential(
        name="key",
        type="SSHKey",
        files={"username": str(tmp_path / "username"), "privateKey": str(ssh_keys.ed25519.path)},
    )
    targets = [
        PlanTarget(
            name=f"alias-{i:02d}",
            address=server.address,
            port=server.port,
            protocol="ssh",
            credential=credential,
            host_keys=server.host_key_lines,
        )
        for i in range(30)
    ]
    plan = make_plan(
        [({"name": "uname", "command": "uname"}, [t.name for t in targets])], targets, concurrency=30
    )
    result = Engine(plan, FileSecretStore(), output=OutputLog(io.StringIO())).run()
    assert result.summary.phase == "Succeeded", result.summary.message
    assert {t.phase for t in result.state.steps[0].targets} == {"Succeeded"}
