"""Target handlers: start probe pods when one is due, turn their reports into status, clean up.

Level-triggered: every entry point (a Target event, a probe pod event, the interval daemon, the
resync timer) ends in :func:`reconcile`, which reads the Target and its active probe pod and does
the one thing ``reconcile.target`` says is due. Starting a probe first records it in
``status.activeProbe`` with the Target's resourceVersion as a precondition: two concurrent
reconciles cannot both start one, and the Event of a transition is posted once.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from opsconductor import clock, kube
from opsconductor.api import CREDENTIAL, TARGET
from opsconductor.builders.probe import build_probe_pod, probe_pod_name
from opsconductor.config import Config
from opsconductor.constants import ANNOTATION_PROBE
from opsconductor.credentialcheck import credential_problem
from opsconductor.handlers.resolve import _references
from opsconductor.planner import PlanError, plan_probe_target
from opsconductor.probemodels import (
    REASON_CREDENTIAL_INVALID,
    REASON_CREDENTIAL_NOT_FOUND,
    REASON_PROBE_FAILED,
    REASON_PROBE_LOST,
    REASON_SECRET_NOT_FOUND,
    ProbeReport,
    ProbeRequest,
)
from opsconductor.reconcile.target import (
    ProbeUpdate,
    probe_is_lost,
    probe_settings,
    probe_trigger,
    report_from_pod,
    result_update,
    seconds_until_due,
    start_patch,
)

Manifest = dict[str, Any]
log = logging.getLogger(__name__)
_PLAN_REASONS = {
    "CredentialNotFound": REASON_CREDENTIAL_NOT_FOUND,
    "SecretNotFound": REASON_SECRET_NOT_FOUND,
}


def _apply(target: Manifest, update: ProbeUpdate) -> bool:
    meta = target["metadata"]
    applied = kube.patch_status(
        TARGET.plural, meta["namespace"], meta["name"], update.patch, meta["resourceVersion"]
    )
    if applied:
        for event_type, reason, message in update.events:
            kopf.event(target, type=event_type, reason=reason, message=message)  # type: ignore[arg-type]
    return applied


def _resolve(target: Manifest) -> tuple[ProbeRequest, tuple[str, ...]]:
    """Build the probe request for the Target as it is now.

    Raises:
        PlanError: the Credential or a Secret is missing, or the Credential is known to be invalid.
    """
    namespace = target["metadata"]["namespace"]
    spec = target.get("spec") or {}
    credentials: dict[str, Manifest] = {}
    credential_name = (spec.get("credentialRef") or {}).get("name")
    if credential_name:
        credential = kube.get_custom(CREDENTIAL.plural, namespace, credential_name)
        if credential is not None:
            problem = credential_problem(credential, include_missing=True)
            if problem is not None:
                raise PlanError(
                    REASON_CREDENTIAL_INVALID, f"Credential {credential_name} is not valid: {problem[1]}"
                )
            credentials[credential_name] = credential
    sources = [spec, [c.get("spec") for c in credentials.values()]]
    secret_keys: dict[str, set[str]] = {}
    for name in sorted(set(_references(sources, "secret"))):
        keys = kube.secret_keys(namespace, name)
        if keys is not None:
            secret_keys[name] = keys
    planned, secrets = plan_probe_target(target, credentials, secret_keys)
    settings = probe_settings(target)
    request = ProbeRequest(
        target=planned,
        timeout_seconds=int(settings.get("timeoutSeconds") or 15),
        collect_facts=bool(settings.get("collectFacts", True)),
    )
    return request, secrets


def _fail_now(target: Manifest, trigger: str, report: ProbeReport) -> bool:
    """Record a probe that could not even start (no pod)."""
    update = result_update(target, report, clock.now())
    if trigger == "annotation":
        update.patch["status"]["handledProbeRequest"] = target["metadata"]["annotations"][ANNOTATION_PROBE]
    return _apply(target, update)


def _start(target: Manifest, trigger: str, config: Config) -> bool:
    """Start a probe; False when the Target changed underneath (the caller re-reads)."""
    now = clock.now()
    try:
        request, secrets = _resolve(target)
    except PlanError as error:
        reason = error.reason if error.reason == REASON_CREDENTIAL_INVALID else None
        report = ProbeReport(
            reachable=False,
            reason=reason or _PLAN_REASONS.get(error.reason, REASON_PROBE_FAILED),
            message=error.message,
        )
        return _fail_now(target, trigger, report)
    meta = target["metadata"]
    pod_name = probe_pod_name(meta["name"], now)
    if not kube.patch_status(
        TARGET.plural,
        meta["namespace"],
        meta["name"],
        start_patch(target, trigger, pod_name, now),
        meta["resourceVersion"],
    ):
        return False
    try:
        kube.create_if_absent(build_probe_pod(target, request, secrets, config, pod_name))
    except ApiException as error:
        log.warning("cannot create probe pod %s/%s: %s", meta["namespace"], pod_name, error.reason)
        fresh = kube.get_custom(TARGET.plural, meta["namespace"], meta["name"])
        if fresh is not None:
            report = ProbeReport(
                reachable=False,
                reason=REASON_PROBE_FAILED,
                message=f"cannot create probe pod {pod_name}: {error.status} {error.reason}",
            )
            _apply(fresh, result_update(fresh, report, clock.now()))
    log.info("Target %s/%s: probe %s started (%s)", meta["namespace"], meta["name"], pod_name, trigger)
    return True


def reconcile(namespace: str, name: str, config: Config) -> None:
    """Do what is due for one Target: record a finished probe, declare a lost one, or start one."""
    for _ in range(5):
        target = kube.get_custom(TARGET.plural, namespace, name)
        if target is None or target["metadata"].get("deletionTimestamp"):
            return
        now = clock.now()
        active = (target.get("status") or {}).get("activeProbe")
        if active:
            pod = kube.read_pod(namespace, active["pod"])
            report = report_from_pod(pod) if pod is not None else None
            if report is None:
                if not probe_is_lost(target, pod is not None, now):
                    return
                report = ProbeReport(
                    reachable=False,
                    reason=REASON_PROBE_LOST,
                    message=f"probe pod {active['pod']} "
                    + ("did not report in time" if pod is not None else "disappeared before reporting"),
                )
            if _apply(target, result_update(target, report, now)):
                if pod is not None:
                    kube.delete_pod(namespace, active["pod"], 0)
                return
            continue
        trigger = probe_trigger(target, now)
        if trigger is None or _start(target, trigger, config):
            return
    raise kopf.TemporaryError("the Target kept changing while its probe status was being updated", delay=1)


def probe_pod_changed(namespace: str, target_name: str, pod: Manifest, config: Config) -> None:
    """Record a finished probe pod's report; remove finished pods nobody waits for."""
    if report_from_pod(pod) is None:
        return
    reconcile(namespace, target_name, config)
    target = kube.get_custom(TARGET.plural, namespace, target_name)
    active = ((target or {}).get("status") or {}).get("activeProbe") or {}
    if active.get("pod") != pod["metadata"]["name"]:
        kube.delete_pod(namespace, pod["metadata"]["name"], 0)


def probe_on_interval(
    namespace: str, name: str, body: kopf.Body, stopped: kopf.DaemonStopped, config: Config
) -> None:
    """Run interval probes while ``spec.probe.intervalSeconds`` is set (a kopf daemon's body)."""
    while not stopped:
        # None: the interval was just removed (kopf stops the daemon); never return on our own, as
        # kopf does not restart a daemon that returned.
        wait = seconds_until_due(dict(body), clock.now())
        if wait is None:
            wait = 30.0
        elif wait <= 0:
            reconcile(namespace, name, config)
            wait = 5.0  # the status now says when the next one is due
        # The body is kept current by kopf; wake up at least every 30 s (every 0.5 s with the test
        # clock) to notice a new due time or a clock jump.
        stopped.wait(min(wait, 0.5 if clock.is_fake() else 30.0))
