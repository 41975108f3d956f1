"""The step engine: runs a RunPlan's steps in order, each fanned out over its targets.

This module owns the execution semantics of an OpsJob run:

- steps run in plan order; a step fans out over its targets (an empty target list runs it once
  without a target) on up to ``step.concurrency or plan.concurrency or min(targets, 50)`` threads;
- per target: a step type that does not fit the target's protocol is Skipped; ``when`` false is
  Skipped; templates are rendered; then attempts run with ``retries`` (exponential backoff,
  ``backoffSeconds`` doubling up to ``maxBackoffSeconds``), each bounded by ``timeoutSeconds``
  and by the run's ``activeDeadlineSeconds``;
- the failure policy: FailFast stops starting new targets once more targets failed than
  ``maxFailedTargets``/``maxFailedPercentage`` allow (running ones finish); Continue runs all.
  Failures beyond the tolerance fail the step, and a failed step fails the run unless it has
  ``continueOnError``;
- cancellation (a ``threading.Event``, set by SIGTERM in the runner): sessions stop running
  attempts, backoff waits end, targets not finished are Cancelled, the run is Cancelled;
- dispatch by step type to one protocol session per kind for the whole run; every output, error
  and log line is masked before it is recorded, logged or reported.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opsconductor.api.opsjob import HttpStep, Step
from opsconductor.plan import PlanStep, PlanTarget, RunPlan, RunSummary
from opsconductor.runner.protocols.base import ProtocolSession, SecretStore, StepContext, StepOutcome
from opsconductor.runner.reporting import NullReporter, OutputLog, Reporter
from opsconductor.runner.results import (
    LOCAL_TARGET,
    Captured,
    RunState,
    StepRecord,
    capture_keep,
    utcnow,
)
from opsconductor.templating import (
    TemplateRenderError,
    build_context,
    evaluate_when,
    referenced_steps,
    render_step,
    step_result_context,
    target_context,
)

log = logging.getLogger(__name__)

DEFAULT_MAX_CONCURRENCY = 50
"""Targets run in parallel when neither the step nor the job sets ``concurrency``: all of them, up
to this many. An SSH command costs the runner ~6 ms CPU per target (the crypto is in C), while the
target spends far longer waiting on the network and the host, so parallelism hides that latency.
bench/ssh_fanout.py, 200 targets with 0.2 s latency each: 5.9 s at 16, 4.7-4.8 s at 32 and 50, 4.6 s
at 100. With no latency at all (loopback, sshd sharing the runner's 2 cores) 16 to 100 are within
noise. The SSH session also caps connections being opened at once per address:port
(``HANDSHAKES_PER_ENDPOINT``)."""
CONTEXT_OUTPUT_CHARS = 64 * 1024
"""Characters of stdout/stderr kept per target for ``steps.<name>.stdout`` in later templates (only
for steps some template refers to)."""

SSH_STEP_TYPES = frozenset({"ssh.exec", "ssh.copy", "sftp.upload", "sftp.sync", "sftp.download"})
WINRM_STEP_TYPES = frozenset({"winrm.exec", "winrm.copy"})
HTTP_STEP_TYPES = frozenset({"http.get", "http.post", "http.put", "http.patch", "http.delete"})

SessionFactory = Callable[[], ProtocolSession]


class UnsupportedStep(Exception):
    """No session can run this step type."""


def _ssh_session() -> ProtocolSession:
    from opsconductor.runner.protocols.ssh import SshSession

    session: ProtocolSession = SshSession()
    return session


def _http_session() -> ProtocolSession:
    from opsconductor.runner.protocols.http import HttpSession

    return HttpSession()


def _wait_session() -> ProtocolSession:
    from opsconductor.runner.protocols.http import WaitSession

    return WaitSession()


def _winrm_session() -> ProtocolSession:
    from opsconductor.runner.protocols.winrm import WinrmSession

    return WinrmSession()


@dataclass(frozen=True)
class SessionKind:
    """A protocol session type: which step types it runs and how to make one."""

    name: str
    step_types: frozenset[str]
    factory: SessionFactory


DEFAULT_SESSION_KINDS: tuple[SessionKind, ...] = (
    SessionKind("ssh", SSH_STEP_TYPES, _ssh_session),
    SessionKind("http", HTTP_STEP_TYPES | {"webhook.call"}, _http_session),
    SessionKind("wait", frozenset({"wait"}), _wait_session),
    SessionKind("winrm", WINRM_STEP_TYPES, _winrm_session),
)


def protocol_mismatch(step: Step, target: PlanTarget | None) -> str | None:
    """Why a step type does not apply to a target (None when it does).

    ssh/sftp steps need ssh Targets, winrm steps winrm Targets; http, webhook and wait steps run on
    any target (relative http URLs are checked after rendering).

    Args:
        step: the step.
        target: the target, or None for a run without one.

    Returns:
        The reason the target is skipped, or None.
    """
    needed = "ssh" if step.type in SSH_STEP_TYPES else "winrm" if step.type in WINRM_STEP_TYPES else None
    if needed is None:
        return None
    if target is None:
        return f"{step.type} steps need a Target, and this step has none"
    if target.protocol != needed:
        return f"{step.type} does not apply to Target {target.name} (protocol {target.protocol})"
    return None


def concurrency_for(step: Step, plan: RunPlan, target_count: int) -> int:
    """Return how many targets of a step run in parallel."""
    wanted = step.concurrency or plan.concurrency or min(target_count, DEFAULT_MAX_CONCURRENCY)
    return max(1, min(wanted, target_count))


def allowed_failures(plan: RunPlan, target_count: int) -> int:
    """Return how many failed targets a step tolerates under the job's failure policy.

    With both ``maxFailedTargets`` and ``maxFailedPercentage`` set, both must hold.
    """
    policy = plan.failure_policy
    limits = []
    if policy.max_failed_targets is not None:
        limits.append(policy.max_failed_targets)
    if policy.max_failed_percentage is not None:
        limits.append(math.floor(target_count * policy.max_failed_percentage / 100))
    return min(limits) if limits else 0


def backoff_seconds(step: Step, failed_attempts: int) -> float:
    """Return the wait before the next attempt after ``failed_attempts`` failures (1 = first retry)."""
    retries = step.retries
    if retries is None:
        return 0.0
    wait = retries.backoff_seconds * 2 ** (failed_attempts - 1)
    return float(min(wait, retries.max_backoff_seconds))


def relative_http_url(step: Step) -> str | None:
    """Return a rendered http step's URL when it is relative to its target (else None)."""
    if isinstance(step, HttpStep) and not step.url.lower().startswith(("http://", "https://")):
        return step.url
    return None


def _first_failure(record: StepRecord) -> str:
    first = next((t for t in record.targets if t.phase == "Failed"), None)
    if first is None:
        return ""
    return f" (first: {first.target}: {first.error.splitlines()[0] if first.error else 'failed'})"


@dataclass
class RunResult:
    """What :meth:`Engine.run` returns."""

    summary: RunSummary
    state: RunState


@dataclass
class _StepRun:
    """Shared state of one step's fan-out."""

    index: int
    plan_step: PlanStep
    record: StepRecord
    allowed: int
    lock: threading.Lock
    next_index: int = 0
    failed: int = 0
    stop_reason: str = ""


class Engine:
    """Runs one RunPlan to the end (or to cancellation / the deadline)."""

    def __init__(
        self,
        plan: RunPlan,
        secrets: SecretStore,
        *,
        reporter: Reporter | None = None,
        cancel: threading.Event | None = None,
        output: OutputLog | None = None,
        session_kinds: tuple[SessionKind, ...] = DEFAULT_SESSION_KINDS,
        workspace: Path | None = None,
    ) -> None:
        """Prepare a run.

        Args:
            plan: the plan.
            secrets: where secret values come from; masks them in every output.
            reporter: told about progress (default: nothing).
            cancel: set it to cancel the run (SIGTERM does, in the runner).
            output: where step output goes line by line (default: standard output).
            session_kinds: protocol sessions by step type (tests may substitute their own).
            workspace: the run's workspace directory (default: ``plan.workspace``).
        """
        self.plan = plan
        self.secrets = secrets
        self.reporter: Reporter = reporter or NullReporter()
        self.cancel = cancel or threading.Event()
        self.output = output or OutputLog()
        self.workspace = workspace or Path(plan.workspace)
        self.state = RunState(
            [(ps.step.name, [self._display_name(key) for key in ps.targets]) for ps in plan.steps]
        )
        self._kinds = {step_type: kind for kind in session_kinds for step_type in kind.step_types}
        self._sessions: dict[str, ProtocolSession] = {}
        self._session_errors: dict[str, str] = {}
        self._sessions_lock = threading.Lock()
        self._referenced = referenced_steps([ps.step for ps in plan.steps])
        self._results: dict[str, dict[str, dict[str, Any]]] = {}
        self._params: dict[str, Any] = {}
        self._deadline: float | None = None

    def _display_name(self, key: str) -> str:
        """Return the Target name of a plan target key (``web01@other-cred`` → ``web01``)."""
        target = self.plan.targets.get(key)
        return target.name if target is not None else key

    # --- the run ------------------------------------------------------------------------------
    def run(self) -> RunResult:
        """Run every step; never raises for step failures.

        Returns:
            The summary (phase, reason, message) and the final state.
        """
        started = time.monotonic()
        if self.plan.active_deadline_seconds:
            self._deadline = started + self.plan.active_deadline_seconds
        with self.state.lock:
            self.state.start_time = utcnow()
        self._report("run_started", self.state)
        try:
            summary = self._run_steps()
        finally:
            self._close_sessions()
        with self.state.lock:
            self.state.completion_time = utcnow()
        self._report("run_finished", self.state, summary)
        return RunResult(summary, self.state)

    def _run_steps(self) -> RunSummary:
        try:
            self._params = self._resolve_parameters()
        except (OSError, ValueError) as error:
            message = self.secrets.mask(f"cannot read a secret parameter: {error}")
            self._finish_remaining(0, "Failed", message)
            return RunSummary(phase="Failed", reason="SecretUnreadable", message=message)
        failure: RunSummary | None = None
        for index, plan_step in enumerate(self.plan.steps):
            if self.cancel.is_set():
                self._finish_remaining(index, "Cancelled", "not run: the run was cancelled")
                return RunSummary(phase="Cancelled", reason="Cancelled", message="the run was cancelled")
            if self._deadline_passed():
                self._finish_remaining(index, "Cancelled", "not run: the run's deadline passed")
                return self._deadline_summary()
            record = self._run_step(index, plan_step)
            if self.cancel.is_set():
                self._finish_remaining(index + 1, "Cancelled", "not run: the run was cancelled")
                return RunSummary(phase="Cancelled", reason="Cancelled", message="the run was cancelled")
            if record.phase == "Failed" and self._deadline_passed():
                self._finish_remaining(index + 1, "Cancelled", "not run: the run's deadline passed")
                return self._deadline_summary()
            if record.phase == "Failed" and not plan_step.step.continue_on_error:
                failure = RunSummary(
                    phase="Failed",
                    reason="StepsFailed",
                    message=f"step {record.name} failed: {record.message}",
                )
                self._finish_remaining(index + 1, "Skipped", f"not run: step {record.name} failed")
                return failure
        return RunSummary(phase="Succeeded", reason="Succeeded", message="")

    def _deadline_summary(self) -> RunSummary:
        seconds = self.plan.active_deadline_seconds
        return RunSummary(
            phase="Failed",
            reason="DeadlineExceeded",
            message=f"the run did not finish within activeDeadlineSeconds ({seconds}s)",
        )

    def _deadline_passed(self) -> bool:
        return self._deadline is not None and time.monotonic() >= self._deadline

    def _resolve_parameters(self) -> dict[str, Any]:
        params = dict(self.plan.parameters)
        for name, path in self.plan.secret_parameters.items():
            params[name] = self.secrets.read(path).rstrip("\r\n")
        return params

    def _finish_remaining(self, first: int, phase: Any, message: str) -> None:
        """Give steps from ``first`` on (never started) a final phase."""
        with self.state.lock:
            for record in self.state.steps[first:]:
                record.phase = phase
                record.message = message
                for target in record.targets:
                    target.phase = phase

    # --- one step -----------------------------------------------------------------------------
    def _run_step(self, index: int, plan_step: PlanStep) -> StepRecord:
        record = self.state.steps[index]
        targets: list[str | None] = [*plan_step.targets] or [None]
        run = _StepRun(
            index=index,
            plan_step=plan_step,
            record=record,
            allowed=allowed_failures(self.plan, len(targets)),
            lock=threading.Lock(),
        )
        with self.state.lock:
            record.phase = "Running"
            record.start_time = utcnow()
        self._results[plan_step.step.name] = {}
        self._report("step_started", self.state, index)
        workers = [
            threading.Thread(target=self._worker, args=(run,), name=f"{record.name}-{n}", daemon=True)
            for n in range(concurrency_for(plan_step.step, self.plan, len(targets)))
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        with self.state.lock:
            record.phase, record.message = self._step_verdict(run)
            record.completion_time = utcnow()
        self._report("step_finished", self.state, index)
        return record

    def _worker(self, run: _StepRun) -> None:
        targets: list[str | None] = [*run.plan_step.targets] or [None]
        while True:
            with run.lock:
                if run.next_index >= len(targets):
                    return
                position = run.next_index
                run.next_index += 1
                stop = run.stop_reason or self._stop_reason()
            if stop:
                self._finish_target(run, position, phase="Cancelled", error=stop)
                continue
            try:
                self._run_target(run, position, targets[position])
            except Exception as error:  # a bug must not hang the step or kill the run
                trace = self.secrets.mask(traceback.format_exc())
                log.error("internal error in step %s: %s", run.record.name, trace)
                message = self.secrets.mask(f"internal error: {error}")
                self._finish_target(run, position, phase="Failed", error=message)

    def _stop_reason(self) -> str:
        if self.cancel.is_set():
            return "not started: the run was cancelled"
        if self._deadline_passed():
            return "not started: the run's deadline passed"
        return ""

    def _step_verdict(self, run: _StepRun) -> tuple[Any, str]:
        counts = dict.fromkeys(("Succeeded", "Failed", "Skipped", "Cancelled", "Pending", "Running"), 0)
        for target in run.record.targets:
            counts[target.phase] += 1
        total = len(run.record.targets)
        if self.cancel.is_set() and counts["Cancelled"]:
            return "Cancelled", "the run was cancelled"
        if counts["Failed"] > run.allowed or (counts["Cancelled"] and self._deadline_passed()):
            message = f"{counts['Failed']} of {total} target(s) failed"
            if run.allowed:
                message += f", more than the {run.allowed} tolerated"
            if counts["Cancelled"] and run.stop_reason:
                message += f"; {counts['Cancelled']} not started (FailFast)"
            return "Failed", message + _first_failure(run.record)
        if counts["Skipped"] == total:
            return "Skipped", "every target was skipped"
        if counts["Failed"]:
            failed = counts["Failed"]
            return "Succeeded", f"{failed} of {total} target(s) failed, within the tolerated {run.allowed}"
        return "Succeeded", ""

    # --- one target ---------------------------------------------------------------------------
    def _run_target(self, run: _StepRun, position: int, target_key: str | None) -> None:
        step = run.plan_step.step
        target = self.plan.targets.get(target_key) if target_key is not None else None
        if target_key is not None and target is None:
            self._finish_target(
                run, position, phase="Failed", error=f"Target {target_key} is not in the plan"
            )
            return
        with self.state.lock:
            run.record.targets[position].phase = "Running"
        skip = protocol_mismatch(step, target)
        if skip:
            self._finish_target(run, position, phase="Skipped", error=skip)
            return
        context = self._template_context(target, run.index)
        try:
            if step.when is not None and not evaluate_when(step.when, context):
                self._finish_target(run, position, phase="Skipped", error="")
                return
            rendered = render_step(step, context)
        except TemplateRenderError as error:
            self._finish_target(run, position, phase="Failed", error=self.secrets.mask(str(error)))
            return
        relative = relative_http_url(rendered)
        if relative is not None and (target is None or target.protocol != "http"):
            where = "no target" if target is None else f"Target {target.name} (protocol {target.protocol})"
            reason = f"relative URL {relative!r} needs an http Target, not {where}"
            self._finish_target(run, position, phase="Skipped", error=reason)
            return
        try:
            session = self._session(step.type)
        except UnsupportedStep as error:
            self._finish_target(run, position, phase="Failed", error=str(error))
            return
        self._attempts(run, position, rendered, target, session)

    def _attempts(
        self, run: _StepRun, position: int, step: Step, target: PlanTarget | None, session: ProtocolSession
    ) -> None:
        name = target.name if target else LOCAL_TARGET
        limit = step.retries.limit if step.retries else 0
        outcome = StepOutcome(ok=False)
        duration_ms = 0
        error = ""
        attempt = 0
        for attempt in range(1, limit + 2):
            ctx = StepContext(
                plan=self.plan,
                target=target,
                secrets=self.secrets,
                workspace=self.workspace,
                cancel=self.cancel,
                deadline=self._attempt_deadline(step),
            )
            started = time.monotonic()
            try:
                outcome = session.run(step, ctx)
            except Exception as exc:  # a session bug: report it, keep the run going
                trace = self.secrets.mask(traceback.format_exc())
                log.error("session error in %s/%s: %s", step.name, name, trace)
                outcome = StepOutcome(ok=False, error=f"internal error in the {step.type} session: {exc}")
            duration_ms = int((time.monotonic() - started) * 1000)
            outcome = self._masked(outcome, ctx.log)
            self._log_outcome(step.name, name, attempt, outcome, ctx.log)
            if outcome.ok:
                self._finish_target(run, position, "Succeeded", "", attempt, duration_ms, outcome)
                return
            if outcome.cancelled or self.cancel.is_set():
                error = outcome.error or "cancelled"
                self._finish_target(run, position, "Cancelled", error, attempt, duration_ms, outcome)
                return
            error = self._attempt_error(step, outcome)
            if self._deadline_passed():
                seconds = self.plan.active_deadline_seconds
                error = f"the run's deadline passed (activeDeadlineSeconds {seconds}s): {error}"
                break
            if attempt <= limit:
                wait = backoff_seconds(step, attempt)
                self.output.write(step.name, name, f"retrying in {wait:g}s (attempt {attempt + 1})")
                if self._wait(wait):
                    error = f"cancelled while waiting to retry; last error: {error}"
                    self._finish_target(run, position, "Cancelled", error, attempt, duration_ms, outcome)
                    return
        if attempt > 1:
            error = f"failed after {attempt} attempts: {error}"
        self._finish_target(run, position, "Failed", error, attempt, duration_ms, outcome)

    def _attempt_deadline(self, step: Step) -> float | None:
        deadlines = [d for d in (self._deadline,) if d is not None]
        if step.timeout_seconds:
            deadlines.append(time.monotonic() + step.timeout_seconds)
        return min(deadlines) if deadlines else None

    def _wait(self, seconds: float) -> bool:
        """Wait before a retry; True when cancelled. Ends early at the run's deadline."""
        if self._deadline is not None:
            seconds = min(seconds, max(0.0, self._deadline - time.monotonic()))
        return self.cancel.wait(seconds)

    @staticmethod
    def _attempt_error(step: Step, outcome: StepOutcome) -> str:
        if outcome.timed_out and (not outcome.error or "timed out" not in outcome.error):
            limit = f" after {step.timeout_seconds}s" if step.timeout_seconds else ""
            detail = f": {outcome.error}" if outcome.error else ""
            return f"timed out{limit}{detail}"
        if outcome.error:
            return outcome.error
        if outcome.exit_code is not None:
            return f"exit code {outcome.exit_code}"
        return "failed"

    def _masked(self, outcome: StepOutcome, lines: list[str]) -> StepOutcome:
        mask = self.secrets.mask
        lines[:] = [mask(line) for line in lines]
        return StepOutcome(
            ok=outcome.ok,
            exit_code=outcome.exit_code,
            stdout=mask(outcome.stdout),
            stderr=mask(outcome.stderr),
            error=mask(outcome.error),
            timed_out=outcome.timed_out,
            cancelled=outcome.cancelled,
            outputs={key: mask(value) for key, value in outcome.outputs.items()},
        )

    def _log_outcome(
        self, step: str, target: str, attempt: int, outcome: StepOutcome, lines: list[str]
    ) -> None:
        """Write an attempt's log lines and output to the run log.

        Sessions that stream output line by line into ``ctx.log`` (``stdout: ...``) are not echoed
        again from the outcome, which only holds head and tail.
        """
        prefix = f"[{target}] "
        streamed = False
        for line in lines:
            line = line.removeprefix(prefix)
            streamed = streamed or line.startswith(("stdout: ", "stderr: "))
            self.output.write(step, target, line)
        if not streamed:
            self.output.write(step, target, outcome.stdout, "stdout")
            self.output.write(step, target, outcome.stderr, "stderr")
        if not outcome.ok and outcome.error:
            self.output.write(step, target, f"attempt {attempt} failed: {outcome.error}")

    def _finish_target(
        self,
        run: _StepRun,
        position: int,
        phase: Any,
        error: str,
        attempts: int = 0,
        duration_ms: int | None = None,
        outcome: StepOutcome | None = None,
    ) -> None:
        record = run.record.targets[position]
        keep = capture_keep(len(run.record.targets), phase)
        with self.state.lock:
            record.phase = phase
            record.error = error
            record.attempts = attempts
            record.duration_milliseconds = duration_ms
            if outcome is not None:
                record.exit_code = outcome.exit_code
                record.stdout = Captured.of(outcome.stdout, keep)
                record.stderr = Captured.of(outcome.stderr, keep)
        if phase == "Failed":
            with run.lock:
                run.failed += 1
                fail_fast = self.plan.failure_policy.mode == "FailFast"
                if fail_fast and run.failed > run.allowed and not run.stop_reason:
                    run.stop_reason = f"not started: FailFast stopped the step after {record.target} failed"
        step_name = run.plan_step.step.name
        if step_name in self._referenced:
            out = outcome or StepOutcome(ok=False)
            self._results[step_name][record.target] = step_result_context(
                stdout=out.stdout[:CONTEXT_OUTPUT_CHARS],
                stderr=out.stderr[:CONTEXT_OUTPUT_CHARS],
                exit_code=out.exit_code,
                phase=phase,
                outputs=out.outputs,
            )
        self._report("target_finished", self.state, run.index, record)

    # --- templates ------------------------------------------------------------------------------
    def _template_context(self, target: PlanTarget | None, upto: int) -> dict[str, Any]:
        """Build the template context for a target of step ``upto`` (earlier steps only)."""
        name = target.name if target else LOCAL_TARGET
        steps: dict[str, dict[str, Any]] = {}
        for index, (step_name, by_target) in enumerate(self._results.items()):
            if index < upto and step_name in self._referenced:
                steps[step_name] = self._earlier_result(index, by_target, name, target is None)
        target_value = (
            target_context(target.name, target.address, target.port, target.protocol, target.labels)
            if target
            else None
        )
        job = {"name": self.plan.job.name, "namespace": self.plan.job.namespace, "uid": self.plan.job.uid}
        return build_context(params=self._params, target=target_value, steps=steps, job=job)

    def _earlier_result(
        self, index: int, by_target: dict[str, dict[str, Any]], name: str, targetless: bool
    ) -> dict[str, Any]:
        """``steps.<name>`` for the current target.

        The same target's result; else the earlier step's run without a target; for a step without
        a target, the only result of an earlier single-target step; else a placeholder with the
        earlier step's phase (``Skipped`` when this target was not among its targets).
        """
        if name in by_target:
            return by_target[name]
        if LOCAL_TARGET in by_target:
            return by_target[LOCAL_TARGET]
        if targetless:
            if len(by_target) == 1:
                return next(iter(by_target.values()))
            with self.state.lock:
                phase = self.state.steps[index].phase
            return step_result_context(phase=phase)
        return step_result_context(phase="Skipped")

    # --- sessions and reporting -----------------------------------------------------------------
    def _session(self, step_type: str) -> ProtocolSession:
        kind = self._kinds.get(step_type)
        if kind is None:
            raise UnsupportedStep(f"{step_type} steps are not supported by this runner")
        with self._sessions_lock:
            if kind.name in self._session_errors:
                raise UnsupportedStep(self._session_errors[kind.name])
            session = self._sessions.get(kind.name)
            if session is None:
                try:
                    session = kind.factory()
                except UnsupportedStep as error:
                    self._session_errors[kind.name] = str(error)
                    raise
                except Exception as error:
                    message = f"{kind.name} steps are unavailable: {error}"
                    self._session_errors[kind.name] = message
                    raise UnsupportedStep(message) from error
                self._sessions[kind.name] = session
            return session

    def _close_sessions(self) -> None:
        with self._sessions_lock:
            sessions, self._sessions = list(self._sessions.items()), {}
        for name, session in sessions:
            try:
                session.close()
            except Exception:
                log.warning("closing the %s session failed", name, exc_info=True)

    def _report(self, method: str, *args: Any) -> None:
        try:
            getattr(self.reporter, method)(*args)
        except Exception:
            log.warning("reporter %s failed", method, exc_info=True)


def session_kinds_with(overrides: Mapping[str, SessionFactory]) -> tuple[SessionKind, ...]:
    """Return the default session kinds with some factories replaced (by kind name)."""
    return tuple(
        SessionKind(kind.name, kind.step_types, overrides.get(kind.name, kind.factory))
        for kind in DEFAULT_SESSION_KINDS
    )
