"""kopf registrations only: which events reach which handler. Logic lives in ``handlers/``.

kopf's own bookkeeping is kept out of the public status: handler progress and the last-handled
spec live in ``opsconductor.io/*`` annotations, handlers return nothing, and kopf's log lines are
not posted as Events (we post our own, on meaningful changes only).
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from opsconductor import kopfpatches, kube, metrics
from opsconductor.api import GROUP, OPSJOB, OPSSCHEDULE, VERSION
from opsconductor.config import Config
from opsconductor.constants import COMPONENT_RUNNER, LABEL_COMPONENT, LABEL_JOB, LABEL_SCHEDULE
from opsconductor.handlers import opsjob, opsschedule
from opsconductor.handlers.opsjob_upkeep import JobUpkeep
from opsconductor.reconcile.opsjob import TERMINAL_PHASES

CONFIG = Config.from_env()
kopfpatches.apply()


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
    if CONFIG.metrics_address:
        metrics.serve(CONFIG.metrics_address)
    opsjob.warm_up(CONFIG.namespaces)


def _is_active(status: kopf.Status, **_: Any) -> bool:
    """``when=`` filter (kopf's ``WhenFilterFn``): the OpsJob has not finished."""
    return (status.get("phase") if status else None) not in TERMINAL_PHASES


@kopf.on.create(GROUP, VERSION, OPSJOB.plural, id="start")
@kopf.on.resume(GROUP, VERSION, OPSJOB.plural, id="start", when=_is_active)
@metrics.counting_errors("OpsJob")
def start_opsjob(body: kopf.Body, retry: int, **_: Any) -> None:
    """Plan a new (or, after a restart, unfinished) OpsJob and start its runner."""
    opsschedule.scheduler().wait_until_idle()  # a burst of scheduled fires is created first
    opsjob.start_runner(dict(body), CONFIG, retry)


def _cancel_requested(spec: kopf.Spec, status: kopf.Status, **_: Any) -> bool:
    """``when=`` filter: ``spec.cancel`` is set on a job whose runner was started and has not finished.

    A job cancelled before its runner started is recorded Cancelled by ``start_opsjob``.
    """
    return (
        bool(spec.get("cancel"))
        and bool(status.get("runnerPod"))
        and (status.get("phase") if status else None) not in TERMINAL_PHASES
    )


# An event handler, not a kopf field handler: field handlers cost a bookkeeping patch per change.
# cancel_runner is idempotent (a runner pod already being deleted is left to finish).
@kopf.on.event(GROUP, VERSION, OPSJOB.plural, id="cancel", when=_cancel_requested)
@metrics.counting_errors("OpsJob")
def cancel_opsjob(body: kopf.Body, type: str | None, **_: Any) -> None:
    """``spec.cancel: true``: stop the runner and its remote commands."""
    if type != "DELETED":
        opsjob.cancel_runner(dict(body))


@kopf.on.event("v1", "pods", labels={LABEL_COMPONENT: COMPONENT_RUNNER, LABEL_JOB: kopf.PRESENT})
@metrics.counting_errors("OpsJob")
def runner_pod_changed(body: kopf.Body, type: str | None, **_: Any) -> None:
    """Any change of a runner pod: re-derive its job's status."""
    pod = None if type == "DELETED" else dict(body)
    metrics.observe_runner_pod(body["metadata"]["uid"], pod)
    opsjob.sync_with_runner(body["metadata"]["namespace"], body["metadata"]["labels"][LABEL_JOB], pod)


# Resync and TTL run in one upkeep thread, not as kopf timers and daemons: those would put a finalizer
# on every OpsJob (three more writes per run). See handlers/opsjob_upkeep.py.
UPKEEP = JobUpkeep(
    CONFIG.resync_seconds,
    resync=metrics.counting_errors("OpsJob")(opsjob.sync_with_runner),
    expire=metrics.counting_errors("OpsJob")(
        lambda namespace, name, uid: opsjob.delete_expired(
            {"metadata": {"namespace": namespace, "name": name, "uid": uid}}
        )
    ),
)


@kopf.on.startup()
def start_upkeep(**_: Any) -> None:
    """Start the OpsJob upkeep thread (after ``configure`` loaded the client configuration)."""
    UPKEEP.start()


@kopf.on.cleanup()
def stop_upkeep(**_: Any) -> None:
    """Stop the OpsJob upkeep thread."""
    UPKEEP.stop()


@kopf.on.event(GROUP, VERSION, OPSJOB.plural, id="observe")
def opsjob_seen(body: kopf.Body, type: str | None, **_: Any) -> None:
    """Every OpsJob event: count finished runs for metrics, keep the upkeep table current."""
    metrics.observe_opsjob(dict(body))
    UPKEEP.observe(dict(body), deleted=type == "DELETED")


# --- Target probes and Credential validation (docs/targets.md, docs/credentials.md) ----------------
# Imported here, not at the top, so this section stays self-contained for merges.
from opsconductor.api import CREDENTIAL, TARGET  # noqa: E402
from opsconductor.constants import COMPONENT_PROBE, LABEL_TARGET  # noqa: E402
from opsconductor.handlers import credential as credential_handlers  # noqa: E402
from opsconductor.handlers import target as target_handlers  # noqa: E402

CREDENTIAL_RECHECK_SECONDS = 24 * 3600
"""How often every Credential is re-validated without a change (certificate expiry, Expiring)."""


@kopf.on.event(GROUP, VERSION, TARGET.plural)
def target_changed(body: kopf.Body, type: str | None, **_: Any) -> None:
    """Any change of a Target (spec, probe annotation, our own status): do what is due."""
    if type != "DELETED":
        target_handlers.reconcile(body["metadata"]["namespace"], body["metadata"]["name"], CONFIG)


@kopf.on.event("v1", "pods", labels={LABEL_COMPONENT: COMPONENT_PROBE, LABEL_TARGET: kopf.PRESENT})
def probe_pod_changed(body: kopf.Body, type: str | None, **_: Any) -> None:
    """Turn a finished probe pod's report into its Target's status."""
    if type != "DELETED":
        meta = body["metadata"]
        target_handlers.probe_pod_changed(meta["namespace"], meta["labels"][LABEL_TARGET], dict(body), CONFIG)


def _probe_active(status: kopf.Status, **_: Any) -> bool:
    """``when=`` filter: a probe is in flight."""
    return bool(status.get("activeProbe")) if status else False


@kopf.timer(GROUP, VERSION, TARGET.plural, interval=15, when=_probe_active)
def resync_probe(body: kopf.Body, **_: Any) -> None:
    """Safety net for missed probe pod events (a pod deleted while the operator was down)."""
    target_handlers.reconcile(body["metadata"]["namespace"], body["metadata"]["name"], CONFIG)


def _probes_on_interval(spec: kopf.Spec, **_: Any) -> bool:
    """``when=`` filter: ``spec.probe.intervalSeconds`` is set."""
    return bool((spec.get("probe") or {}).get("intervalSeconds"))


@kopf.daemon(
    GROUP, VERSION, TARGET.plural, id="probe-interval", when=_probes_on_interval, cancellation_timeout=2
)
def probe_interval(body: kopf.Body, stopped: kopf.DaemonStopped, **_: Any) -> None:
    """Probe every ``spec.probe.intervalSeconds``, backing off while the Target is unreachable."""
    meta = body["metadata"]
    target_handlers.probe_on_interval(meta["namespace"], meta["name"], body, stopped, CONFIG)


@kopf.index(GROUP, VERSION, CREDENTIAL.plural)
def credentials_by_secret(namespace: str | None, name: str, spec: kopf.Spec, **_: Any) -> dict[Any, str]:
    """(namespace, Secret name) → the Credentials that reference it."""
    return {(namespace, (spec.get("secretRef") or {}).get("name")): name}


@kopf.on.event(GROUP, VERSION, CREDENTIAL.plural)
def credential_changed(body: kopf.Body, type: str | None, **_: Any) -> None:
    """Validate a Credential against its Secret (created, changed, or found at start-up)."""
    if type != "DELETED":
        credential_handlers.validate(body["metadata"]["namespace"], body["metadata"]["name"])


def _referenced_secret(namespace: str | None, name: str, **kwargs: Any) -> bool:
    """``when=`` filter: some Credential references this Secret (others are never looked at)."""
    index: kopf.Index[Any, str] = kwargs["credentials_by_secret"]  # kopf passes indices as kwargs
    return (namespace, name) in index


@kopf.on.event("v1", "secrets", when=_referenced_secret)
def secret_changed(namespace: str | None, name: str, **kwargs: Any) -> None:
    """Re-validate the Credentials of a referenced Secret that was created, changed or deleted."""
    index: kopf.Index[Any, str] = kwargs["credentials_by_secret"]
    for credential in set(index.get((namespace, name), [])):
        credential_handlers.validate(str(namespace), credential)


@kopf.timer(GROUP, VERSION, CREDENTIAL.plural, interval=CREDENTIAL_RECHECK_SECONDS, initial_delay=60)
def recheck_credential(body: kopf.Body, **_: Any) -> None:
    """Daily re-validation: certificates expire without anything changing."""
    credential_handlers.validate(body["metadata"]["namespace"], body["metadata"]["name"])


def _holds_certificate(status: kopf.Status, **_: Any) -> bool:
    """``when=`` filter: the Credential's status shows a certificate (it can expire)."""
    return bool(status.get("certificate")) if status else False


@kopf.daemon(GROUP, VERSION, CREDENTIAL.plural, id="expiry", when=_holds_certificate, cancellation_timeout=2)
def watch_credential_expiry(body: kopf.Body, stopped: kopf.DaemonStopped, **_: Any) -> None:
    """Flip Expiring and Ready on time, not up to a day late."""
    meta = body["metadata"]
    credential_handlers.watch_expiry(meta["namespace"], meta["name"], body, stopped)


# --- notifications (issue 6): see handlers/notify.py and docs/notifications.md ----------------
# Imported here so this section stays self-contained (other sections are edited in parallel).
from opsconductor.api import CREDENTIAL, NOTIFICATIONPOLICY  # noqa: E402
from opsconductor.constants import ANNOTATION_NOTIFY_TEST  # noqa: E402
from opsconductor.handlers import notify  # noqa: E402

NOTIFIER = notify.Notifier(notify.NotifySettings.from_env())


@kopf.on.startup()
async def start_notifier(**_: Any) -> None:
    """Start the notifier's evaluators on kopf's loop."""
    await NOTIFIER.start()


@kopf.on.cleanup()
async def stop_notifier(**_: Any) -> None:
    """Stop deliveries; unsent records stay Pending in status for the next start."""
    await NOTIFIER.stop()


@kopf.on.event(GROUP, VERSION, OPSJOB.plural, id="notify")
async def notify_opsjob(body: kopf.Body, type: str | None, **_: Any) -> None:
    """Every OpsJob event: queue notification work when the run reached a new event (never blocks)."""
    if type != "DELETED":
        NOTIFIER.job_event(dict(body))


@kopf.on.event(GROUP, VERSION, NOTIFICATIONPOLICY.plural, id="notify-policy")
def notify_policy(body: kopf.Body, type: str | None, **_: Any) -> None:
    """Track namespaces with NotificationPolicies and keep each policy's status current."""
    meta = body["metadata"]
    NOTIFIER.policy_event(meta["namespace"], meta["name"], deleted=type == "DELETED")
    patch = None if type == "DELETED" else notify.policy_status_patch(dict(body))
    if patch is not None:
        kube.patch_status(NOTIFICATIONPOLICY.plural, meta["namespace"], meta["name"], patch, None)


@kopf.on.event(
    GROUP,
    VERSION,
    CREDENTIAL.plural,
    id="notify-test",
    annotations={ANNOTATION_NOTIFY_TEST: kopf.PRESENT},
)
async def notify_test(body: kopf.Body, type: str | None, **_: Any) -> None:
    """``opsconductor notify test``: a channel Credential asked for a test notification."""
    if type != "DELETED":
        NOTIFIER.credential_event(dict(body))


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
