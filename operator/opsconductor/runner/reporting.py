"""Reporting a run while it happens: to the OpsJob's status, to a terminal, and to the pod log.

This module owns:

- :class:`Reporter`, the protocol the engine calls at run/step/target milestones;
- :class:`KubernetesReporter`, which JSON-merge-patches the OpsJob's **status subresource** with
  ``startTime``, ``steps`` and ``progress`` only (the operator owns ``phase``, conditions and
  messages). Writes are batched: at once on run/step start and end, otherwise at most once per
  :data:`FLUSH_INTERVAL_SECONDS` from a flusher thread, so a run costs O(steps) writes, not
  O(targets) or O(output lines). A failed write is logged and retried with backoff; reporting never
  fails the run;
- :class:`ConsoleReporter`, live progress lines for ``opsconductor run``;
- :class:`OutputLog`, the full (masked) step output on stdout, each line prefixed
  ``[step/target]``.
"""

from __future__ import annotations

import logging
import os
import ssl
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TextIO

import httpx

from opsconductor.api._base import GROUP, VERSION
from opsconductor.plan import JobRef, RunSummary
from opsconductor.runner.results import RunState, TargetRecord, count_phases

log = logging.getLogger(__name__)

SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
FLUSH_INTERVAL_SECONDS = 2.0
"""At most one status write per this interval between step boundaries."""
MAX_RETRY_BACKOFF_SECONDS = 30.0
FINAL_FLUSH_TIMEOUT_SECONDS = 30.0
"""How long the last write (at the end of the run) is retried before the runner exits anyway."""
REQUEST_TIMEOUT_SECONDS = 10.0


class Reporter(Protocol):
    """What the engine tells about a run. Implementations must not raise and must return quickly."""

    def run_started(self, state: RunState) -> None:
        """Report that the run started (``state.start_time`` is set)."""
        ...

    def step_started(self, state: RunState, index: int) -> None:
        """Report that step ``index`` started."""
        ...

    def target_finished(self, state: RunState, index: int, record: TargetRecord) -> None:
        """Report that one target of step ``index`` reached a final phase."""
        ...

    def step_finished(self, state: RunState, index: int) -> None:
        """Report that step ``index`` reached a final phase."""
        ...

    def run_finished(self, state: RunState, summary: RunSummary) -> None:
        """Report the run's outcome; flush everything (may block briefly)."""
        ...


class NullReporter:
    """Reports nothing (tests, dry runs)."""

    def run_started(self, state: RunState) -> None:
        """Do nothing."""

    def step_started(self, state: RunState, index: int) -> None:
        """Do nothing."""

    def target_finished(self, state: RunState, index: int, record: TargetRecord) -> None:
        """Do nothing."""

    def step_finished(self, state: RunState, index: int) -> None:
        """Do nothing."""

    def run_finished(self, state: RunState, summary: RunSummary) -> None:
        """Do nothing."""


class MultiReporter:
    """Fans every call out to several reporters."""

    def __init__(self, reporters: Sequence[Reporter]) -> None:
        """Report to each of ``reporters`` in order."""
        self.reporters = list(reporters)

    def run_started(self, state: RunState) -> None:
        """Forward to every reporter."""
        for reporter in self.reporters:
            reporter.run_started(state)

    def step_started(self, state: RunState, index: int) -> None:
        """Forward to every reporter."""
        for reporter in self.reporters:
            reporter.step_started(state, index)

    def target_finished(self, state: RunState, index: int, record: TargetRecord) -> None:
        """Forward to every reporter."""
        for reporter in self.reporters:
            reporter.target_finished(state, index, record)

    def step_finished(self, state: RunState, index: int) -> None:
        """Forward to every reporter."""
        for reporter in self.reporters:
            reporter.step_finished(state, index)

    def run_finished(self, state: RunState, summary: RunSummary) -> None:
        """Forward to every reporter."""
        for reporter in self.reporters:
            reporter.run_finished(state, summary)


# --- Kubernetes -----------------------------------------------------------------------------
@dataclass(frozen=True)
class ApiEndpoint:
    """Where and how to reach the Kubernetes API."""

    server: str
    """Base URL, e.g. ``https://10.96.0.1:443``."""
    token_file: str
    """Bearer token file; re-read on every request (projected tokens rotate)."""
    ca_file: str | None
    """PEM CA bundle to verify the server with (None: system roots)."""

    @classmethod
    def in_cluster(cls, service_account_dir: str = SERVICE_ACCOUNT_DIR) -> ApiEndpoint:
        """Build the endpoint a pod uses: ``KUBERNETES_SERVICE_HOST/PORT`` and its service account.

        Raises:
            RuntimeError: not running in a pod (the environment variables are missing).
        """
        host = os.environ.get("KUBERNETES_SERVICE_HOST")
        port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        if not host:
            raise RuntimeError("KUBERNETES_SERVICE_HOST is not set: not running in a Kubernetes pod")
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        ca_file = f"{service_account_dir}/ca.crt"
        return cls(f"https://{host}:{port}", f"{service_account_dir}/token", ca_file)


def status_path(job: JobRef) -> str:
    """Return the URL path of an OpsJob's status subresource."""
    return f"/apis/{GROUP}/{VERSION}/namespaces/{job.namespace}/opsjobs/{job.name}/status"


class KubernetesReporter:
    """Writes the runner-owned status fields of the OpsJob, batched, from a flusher thread."""

    def __init__(
        self,
        job: JobRef,
        endpoint: ApiEndpoint,
        *,
        interval: float = FLUSH_INTERVAL_SECONDS,
        final_timeout: float = FINAL_FLUSH_TIMEOUT_SECONDS,
    ) -> None:
        """Prepare the reporter; the flusher thread starts with :meth:`run_started`.

        Args:
            job: the OpsJob whose status is written.
            endpoint: the API server and credentials.
            interval: minimum seconds between batched writes.
            final_timeout: how long the final write is retried.
        """
        self.job = job
        self.endpoint = endpoint
        self.interval = interval
        self.final_timeout = final_timeout
        self.writes = 0
        """Successful writes so far."""
        self._state: RunState | None = None
        self._cond = threading.Condition()
        self._dirty = False
        self._urgent = False
        self._stopping = False
        self._stop_deadline = 0.0
        self._last_write = float("-inf")
        self._retry_at = 0.0
        self._failures = 0
        self._thread: threading.Thread | None = None
        self._client = httpx.Client(verify=self._tls_context(), timeout=REQUEST_TIMEOUT_SECONDS)

    def _tls_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.endpoint.ca_file)

    # Reporter protocol
    def run_started(self, state: RunState) -> None:
        """Start the flusher and write the start time at once."""
        self._state = state
        self._thread = threading.Thread(target=self._loop, name="status-flusher", daemon=True)
        self._thread.start()
        self._mark(urgent=True)

    def step_started(self, state: RunState, index: int) -> None:
        """Write at once."""
        self._mark(urgent=True)

    def target_finished(self, state: RunState, index: int, record: TargetRecord) -> None:
        """Write with the next batch."""
        self._mark(urgent=False)

    def step_finished(self, state: RunState, index: int) -> None:
        """Write at once."""
        self._mark(urgent=True)

    def run_finished(self, state: RunState, summary: RunSummary) -> None:
        """Write the final status, retrying for up to ``final_timeout`` seconds, then stop."""
        self._state = state
        with self._cond:
            self._dirty = self._urgent = True
            self._stopping = True
            self._stop_deadline = time.monotonic() + self.final_timeout
            self._retry_at = 0.0
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(self.final_timeout + REQUEST_TIMEOUT_SECONDS)
        else:
            self._write()
        self._client.close()

    # flusher
    def _mark(self, *, urgent: bool) -> None:
        with self._cond:
            self._dirty = True
            self._urgent = self._urgent or urgent
            self._cond.notify_all()

    def _due(self, now: float) -> float | None:
        """Return when the next write should happen (None: nothing to write)."""
        if not self._dirty:
            return None
        if self._urgent:
            return max(now, self._retry_at)
        return max(self._last_write + self.interval, self._retry_at)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while True:
                    now = time.monotonic()
                    if self._stopping and (not self._dirty or now > self._stop_deadline):
                        if self._dirty:
                            log.error("giving up writing the final status of %s", self._job_name())
                        return
                    due = self._due(now)
                    if due is not None and due <= now:
                        break
                    wait = None if due is None else due - now
                    if self._stopping:
                        wait = min(wait or self.final_timeout, max(0.0, self._stop_deadline - now))
                    self._cond.wait(wait)
                self._dirty = self._urgent = False
            ok = self._write()
            with self._cond:
                self._last_write = time.monotonic()
                if ok:
                    self._failures = 0
                    self._retry_at = 0.0
                else:
                    self._failures += 1
                    self._dirty = True
                    backoff = min(MAX_RETRY_BACKOFF_SECONDS, 2.0 ** (self._failures - 1))
                    self._retry_at = self._last_write + backoff

    def _job_name(self) -> str:
        return f"OpsJob {self.job.namespace}/{self.job.name}"

    def _write(self) -> bool:
        """PATCH the status once; return False when the write should be retried."""
        if self._state is None:
            return True
        body = {"status": self._state.status()}
        try:
            token = Path(self.endpoint.token_file).read_text().strip()
            response = self._client.patch(
                self.endpoint.server.rstrip("/") + status_path(self.job),
                json=body,
                headers={
                    "Authorization": f"Bearer {token}",
                    "Content-Type": "application/merge-patch+json",
                    "Accept": "application/json",
                },
            )
        except (OSError, httpx.HTTPError) as error:
            log.warning("writing the status of %s failed (will retry): %s", self._job_name(), error)
            return False
        if response.is_success:
            self.writes += 1
            return True
        detail = _api_message(response)
        if response.status_code == 404:
            log.warning("%s is gone; status not written: %s", self._job_name(), detail)
            return True
        if response.status_code in (400, 422):
            log.error("the API server rejected the status of %s: %s", self._job_name(), detail)
            return True
        log.warning(
            "writing the status of %s failed with HTTP %d (will retry): %s",
            self._job_name(),
            response.status_code,
            detail,
        )
        return False


def _api_message(response: httpx.Response) -> str:
    try:
        payload: Any = response.json()
    except ValueError:
        return response.text[:500]
    if isinstance(payload, dict) and isinstance(payload.get("message"), str):
        return str(payload["message"])[:500]
    return response.text[:500]


# --- console --------------------------------------------------------------------------------
_SYMBOLS = {"Succeeded": "ok", "Failed": "FAILED", "Skipped": "skipped", "Cancelled": "cancelled"}


class ConsoleReporter:
    """Prints live progress lines for local runs."""

    def __init__(self, stream: TextIO | None = None) -> None:
        """Print to ``stream`` (default: standard error, so stdout stays the step output)."""
        self.stream = stream or sys.stderr
        self._lock = threading.Lock()

    def _print(self, line: str) -> None:
        with self._lock:
            print(line, file=self.stream, flush=True)

    def run_started(self, state: RunState) -> None:
        """Print the run's size."""
        self._print(f"run started: {len(state.steps)} step(s)")

    def step_started(self, state: RunState, index: int) -> None:
        """Print the step's name and targets."""
        with state.lock:
            step = state.steps[index]
            count = len(step.targets)
        self._print(f"step {index + 1}/{len(state.steps)} {step.name}: {count} target(s)")

    def target_finished(self, state: RunState, index: int, record: TargetRecord) -> None:
        """Print one target's outcome."""
        with state.lock:
            step = state.steps[index].name
            parts = [f"  {step}/{record.target}: {_SYMBOLS.get(record.phase, record.phase)}"]
            if record.exit_code is not None:
                parts.append(f"exit {record.exit_code}")
            if record.duration_milliseconds is not None:
                parts.append(f"{record.duration_milliseconds / 1000:.1f}s")
            if record.attempts > 1:
                parts.append(f"{record.attempts} attempts")
            if record.error:
                parts.append(record.error.splitlines()[0][:200])
        self._print("  ".join(parts))

    def step_finished(self, state: RunState, index: int) -> None:
        """Print the step's phase and counts."""
        with state.lock:
            step = state.steps[index]
            counts = count_phases(step.targets)
            message = f" - {step.message}" if step.message else ""
        self._print(
            f"step {step.name}: {step.phase} ({counts.succeeded} ok, {counts.failed} failed, "
            f"{counts.skipped} skipped, {counts.cancelled} cancelled){message}"
        )

    def run_finished(self, state: RunState, summary: RunSummary) -> None:
        """Print the run's outcome."""
        reason = f" ({summary.reason})" if summary.reason else ""
        message = f": {summary.message}" if summary.message else ""
        self._print(f"run {summary.phase}{reason}{message}")


# --- pod log --------------------------------------------------------------------------------
class OutputLog:
    """Writes step output line by line with a ``[step/target]`` prefix (the pod log)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        """Write to ``stream`` (default: standard output)."""
        self.stream = stream or sys.stdout
        self._lock = threading.Lock()

    def write(self, step: str, target: str, text: str, stream_name: str | None = None) -> None:
        """Write ``text`` (already masked) with every line prefixed ``[step/target]``.

        Args:
            step: step name.
            target: target name (``local`` for steps without a target).
            text: output or log text, possibly several lines.
            stream_name: ``stdout`` or ``stderr`` to label output lines (``stdout: ...``); None for
                log lines.
        """
        if not text:
            return
        label = f"{stream_name}: " if stream_name else ""
        prefix = f"[{step}/{target}] {label}"
        lines = text.splitlines()
        with self._lock:
            self.stream.write("".join(f"{prefix}{line}\n" for line in lines))
            self.stream.flush()
