"""``python -m opsconductor.runner``: the runner pod's entrypoint.

Reads the plan (``$OPSCONDUCTOR_PLAN``, default ``/etc/opsconductor/plan/plan.json``), runs it with a
:class:`~opsconductor.runner.secrets.FileSecretStore` and the
:class:`~opsconductor.runner.reporting.KubernetesReporter`, writes the
:class:`~opsconductor.plan.RunSummary` as JSON to the termination log (``$OPSCONDUCTOR_TERMINATION_LOG``,
default ``/dev/termination-log``) and exits 0 (Succeeded), 1 (Failed) or 2 (Cancelled). SIGTERM
(pod deletion, ``spec.cancel``) cancels the run: running commands are stopped first.

Step output goes to stdout with ``[step/target]`` prefixes; diagnostics go to stderr. Neither ever
holds secret values: everything is masked by the secret store first.
"""

from __future__ import annotations

import signal
import threading

# Catch SIGTERM before the slow imports below: the runner is PID 1 of its container, and PID 1
# ignores signals it has no handler for, so a pod deleted during start-up would otherwise run on
# until the kubelet's SIGKILL at the end of the grace period.
CANCEL = threading.Event()
if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda signum, frame: CANCEL.set())
    signal.signal(signal.SIGINT, lambda signum, frame: CANCEL.set())
    import sys

    if sys.argv[1:] == ["probe"]:  # probe pods: same image, one argument; skip the engine's imports
        from opsconductor.runner.probe import main as probe_main

        sys.exit(probe_main())

import logging  # noqa: E402
import os  # noqa: E402
import ssl  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from types import FrameType  # noqa: E402

from pydantic import ValidationError  # noqa: E402

from opsconductor.plan import PLAN_DIR, PLAN_FILE, TERMINATION_LOG, RunPlan, RunSummary  # noqa: E402
from opsconductor.runner.engine import Engine  # noqa: E402
from opsconductor.runner.reporting import ApiEndpoint, KubernetesReporter, NullReporter, Reporter  # noqa: E402
from opsconductor.runner.secrets import FileSecretStore  # noqa: E402

log = logging.getLogger("opsconductor.runner")

EXIT_CODES = {"Succeeded": 0, "Failed": 1, "Cancelled": 2}
TERMINATION_MESSAGE_MAX_BYTES = 4096


def plan_path() -> Path:
    """Return where the plan is read from (``OPSCONDUCTOR_PLAN`` overrides the mounted ConfigMap)."""
    return Path(os.environ.get("OPSCONDUCTOR_PLAN") or f"{PLAN_DIR}/{PLAN_FILE}")


def termination_log_path() -> Path:
    """Return where the RunSummary is written (``OPSCONDUCTOR_TERMINATION_LOG`` overrides)."""
    return Path(os.environ.get("OPSCONDUCTOR_TERMINATION_LOG") or TERMINATION_LOG)


def summary_json(summary: RunSummary) -> str:
    """Return the summary as JSON, its message cut so it fits a termination message (4096 bytes)."""
    data = summary.model_dump_json()
    message = summary.message
    while len(data.encode()) > TERMINATION_MESSAGE_MAX_BYTES and message:
        message = message[: len(message) // 2]
        data = summary.model_copy(update={"message": message + "…"}).model_dump_json()
    return data


def write_summary(summary: RunSummary, path: Path) -> None:
    """Write the summary JSON to the termination log (errors are logged, not raised)."""
    try:
        path.write_text(summary_json(summary))
    except OSError as error:
        log.error("cannot write the run summary to %s: %s", path, error)


def make_reporter(plan: RunPlan) -> Reporter:
    """Return the KubernetesReporter for the plan's job (a NullReporter outside a pod)."""
    try:
        return KubernetesReporter(plan.job, ApiEndpoint.in_cluster())
    except RuntimeError as error:
        log.warning("status is not reported: %s", error)
    except (OSError, ssl.SSLError) as error:
        log.error("status is not reported: cannot use the service account's CA certificate: %s", error)
    return NullReporter()


def install_signal_handlers(cancel: threading.Event) -> None:
    """Make SIGTERM and SIGINT cancel the run (a second signal does not kill it mid-cleanup)."""

    def handle(signum: int, frame: FrameType | None) -> None:
        log.warning("received %s: cancelling the run", signal.Signals(signum).name)
        cancel.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)


def main() -> int:
    """Run the plan; return the process exit code."""
    logging.basicConfig(
        level=os.environ.get("OPSCONDUCTOR_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    cancel = CANCEL
    if cancel.is_set():
        log.warning("received a stop signal while starting: cancelling the run")
    install_signal_handlers(cancel)
    path = plan_path()
    try:
        plan = RunPlan.model_validate_json(path.read_bytes())
    except (OSError, ValidationError) as error:
        message = f"cannot read the plan {path}: {error}"
        summary = RunSummary(phase="Failed", reason="InvalidPlan", message=message)
        log.error("%s", summary.message)
        write_summary(summary, termination_log_path())
        return EXIT_CODES["Failed"]
    secrets = FileSecretStore()
    log.info("running OpsJob %s/%s: %d step(s)", plan.job.namespace, plan.job.name, len(plan.steps))
    result = Engine(plan, secrets, reporter=make_reporter(plan), cancel=cancel).run()
    summary = result.summary.model_copy(update={"message": secrets.mask(result.summary.message)})
    log.info("run %s%s", summary.phase, f": {summary.message}" if summary.message else "")
    write_summary(summary, termination_log_path())
    return EXIT_CODES[summary.phase]


if __name__ == "__main__":
    sys.exit(main())
