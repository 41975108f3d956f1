"""kopf registrations only: which events reach which handler. Logic lives in ``handlers/``.

kopf's own bookkeeping is kept out of the public status: handler progress and the last-handled
spec live in ``opsconductor.io/*`` annotations, handlers return nothing, and kopf's log lines are
not posted as Events (we post our own, on meaningful changes only).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf

from opsconductor import kube
from opsconductor.api import GROUP, OPSJOB, OPSSCHEDULE, VERSION
from opsconductor.config import Config
from opsconductor.constants import COMPONENT_RUNNER, LABEL_COMPONENT, LABEL_JOB, LABEL_SCHEDULE
from opsconductor.handlers import opsjob, opsschedule
from opsconductor.reconcile.opsjob import TERMINAL_PHASES

CONFIG = Config.from_env()


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    """Operator settings; see https://kopf.readthedocs.io/en/stable/configuration/."""
    kube.load_configuration()
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.posting.loggers = False  # our Events are explicit; log lines never become Events
    settings.posting.reporting_component = "opsconductor"
    settings.execution.max_workers = 32
    settings.watching.server_timeout = 300
    settings.networking.request_timeout = 60
    logging.getLogger("kubernetes").setLevel(logging.WARNING)
    opsjob.warm_up()


def _is_active(status: kopf.Status, **_: Any) -> bool:
    """``when=`` filter (kopf's ``WhenFilterFn``): the OpsJob has not finished."""
    return (status.get("phase") if status else None) not in TERMINAL_PHASES


@kopf.on.create(GROUP, VERSION, OPSJOB.plural, id="start")
@kopf.on.resume(GROUP, VERSION, OPSJOB.plural, id="start", when=_is_active)
def start_opsjob(body: kopf.Body, retry: int, **_: Any) -> None:
    """Plan a new (or, after a restart, unfinished) OpsJob and start its runner."""
    opsjob.start_runner(dict(body), CONFIG, retry)


@kopf.on.field(GROUP, VERSION, OPSJOB.plural, field="spec.cancel", new=True, id="cancel")
def cancel_opsjob(body: kopf.Body, **_: Any) -> None:
    """``spec.cancel: true``: stop the runner and its remote commands."""
    opsjob.cancel_runner(dict(body))


@kopf.on.event("v1", "pods", labels={LABEL_COMPONENT: COMPONENT_RUNNER, LABEL_JOB: kopf.PRESENT})
def runner_pod_changed(body: kopf.Body, type: str | None, **_: Any) -> None:
    """Any change of a runner pod: re-derive its job's status."""
    pod = None if type == "DELETED" else dict(body)
    opsjob.sync_with_runner(body["metadata"]["namespace"], body["metadata"]["labels"][LABEL_JOB], pod)


@kopf.timer(
    GROUP, VERSION, OPSJOB.plural, interval=CONFIG.resync_seconds, idle=CONFIG.resync_seconds, when=_is_active
)
def resync_opsjob(body: kopf.Body, **_: Any) -> None:
    """Safety net for missed pod events (e.g. a pod deleted while the operator was down)."""
    if (body.get("status") or {}).get("runnerPod"):
        opsjob.sync_with_runner(body["metadata"]["namespace"], body["metadata"]["name"])


def _expires(spec: kopf.Spec, status: kopf.Status, **_: Any) -> bool:
    """``when=`` filter (kopf's ``WhenFilterFn``): the OpsJob finished and has a TTL."""
    return (
        spec.get("ttlSecondsAfterFinished") is not None
        and (status.get("phase") if status else None) in TERMINAL_PHASES
    )


@kopf.daemon(GROUP, VERSION, OPSJOB.plural, id="ttl", when=_expires, cancellation_timeout=1)
async def expire_opsjob(body: kopf.Body, stopped: kopf.DaemonStopped, **_: Any) -> None:
    """Delete a finished OpsJob ``ttlSecondsAfterFinished`` after it completed."""
    delay = opsjob.seconds_until_expiry(dict(body))
    if delay > 0 and await stopped.wait(delay):
        return
    await asyncio.to_thread(opsjob.delete_expired, dict(body))


# --- OpsSchedule (issue 5) --------------------------------------------------------------------
# kopf only delivers events; the scheduler's own loop fires runs (handlers/opsschedule.py).


@kopf.on.startup()
def start_scheduler(**_: Any) -> None:
    """Start the scheduler loop (after ``configure`` loaded the client configuration)."""
    opsschedule.scheduler(CONFIG.shared_windows_namespace).start()


@kopf.on.cleanup()
def stop_scheduler(**_: Any) -> None:
    """Stop the scheduler loop."""
    opsschedule.scheduler().stop()


@kopf.on.event(GROUP, VERSION, OPSSCHEDULE.plural)
def opsschedule_changed(body: kopf.Body, type: str | None, **_: Any) -> None:
    """Every OpsSchedule event (including the initial listing): (re)register the schedule."""
    meta = body["metadata"]
    if type == "DELETED":
        opsschedule.scheduler().remove(meta["namespace"], meta["name"])
    else:
        opsschedule.scheduler().upsert(dict(body))


@kopf.on.event(GROUP, VERSION, OPSJOB.plural, labels={LABEL_SCHEDULE: kopf.PRESENT})
def scheduled_run_changed(body: kopf.Body, type: str | None, **_: Any) -> None:
    """Follow a run of a schedule: its status, retries, dependents and history."""
    opsschedule.scheduler().job_event(dict(body), deleted=type == "DELETED")
