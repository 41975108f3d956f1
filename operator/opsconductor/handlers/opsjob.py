"""OpsJob handlers: start the runner, follow it, cancel it, expire finished jobs.

Level-triggered: every entry point ends in :func:`sync_with_runner`, which reads the job and its
runner pod and applies the status ``reconcile.opsjob`` decides. Status transitions are patched with
the job's resourceVersion as a precondition, so two concurrent syncs (a pod event and a resync
timer) cannot both record a transition and emit its Events twice.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import kopf
from kubernetes.client import V1DeleteOptions, V1Preconditions
from kubernetes.client.exceptions import ApiException

from opsconductor import clock, kube
from opsconductor import conditions as c
from opsconductor.api import CREDENTIAL, OPSJOB, TARGET
from opsconductor.builders.runner import (
    TERMINATION_GRACE_SECONDS,
    build_plan_config_map,
    build_runner_pod,
    build_runner_rbac,
)
from opsconductor.config import Config, is_pattern
from opsconductor.constants import LABEL_SCHEDULE, runner_pod_name
from opsconductor.handlers.resolve import MissingReference, PlanError, plan_job
from opsconductor.planner import build_run_plan
from opsconductor.reconcile.dependencies import REASON_WAITING_FOR_RUN, Resolved, judge_dependencies
from opsconductor.reconcile.opsjob import (
    TERMINAL_PHASES,
    StatusUpdate,
    failure_update,
    judge_runner,
    status_update,
    waiting_update,
)

Manifest = dict[str, Any]
log = logging.getLogger(__name__)
_CREATE_POOL = ThreadPoolExecutor(max_workers=8, thread_name_prefix="create")
DEPENDENCY_POLL_SECONDS = 2
"""How often an OpsJob waiting for its ``spec.after`` runs looks at them again."""


def _post_events(job: Manifest, update: StatusUpdate) -> None:
    for event_type, reason, message in update.events:
        # kopf.event is annotated for kopf.Body but takes any object mapping (it reads apiVersion,
        # kind and metadata); our handlers pass plain dicts.
        kopf.event(job, type=event_type, reason=reason, message=message)  # type: ignore[arg-type]


def apply_update(job: Manifest, update: StatusUpdate | None) -> bool:
    """Patch the status (guarded by resourceVersion) and post the transition's Events.

    Returns:
        False when the job changed underneath or is gone (the caller re-reads and decides again).
    """
    if update is None:
        return True
    meta = job["metadata"]
    try:
        applied = kube.patch_status(
            OPSJOB.plural, meta["namespace"], meta["name"], update.patch, meta["resourceVersion"]
        )
    except ApiException as error:
        if error.status != 404:
            raise
        applied = False  # deleted since it was read (its namespace may be going away)
    if applied:
        _post_events(job, update)
    return applied


def sync_with_runner(namespace: str, name: str, pod_seen: Manifest | None = None) -> None:
    """Bring the job's status in line with its runner pod (idempotent; safe to call any time).

    Args:
        namespace: the job's namespace.
        name: the job's name.
        pod_seen: the runner pod as a pod event just delivered it (saves reading it again; after a
            conflict the pod is read afresh).
    """
    for attempt in range(5):
        job = kube.read_opsjob(namespace, name)
        if job is None:
            return
        status = job.get("status") or {}
        if status.get("phase") in TERMINAL_PHASES:
            return
        pod = (
            pod_seen
            if attempt == 0 and pod_seen is not None
            else kube.read_pod(namespace, runner_pod_name(name))
        )
        if (
            pod is not None
            and pod["metadata"].get("labels", {}).get("opsconductor.io/job-uid") != job["metadata"]["uid"]
        ):
            pod = None  # a pod of an earlier job with the same name, being garbage-collected
        verdict = judge_runner(
            pod,
            runner_created=bool(status.get("runnerPod")),
            cancel_requested=bool(job["spec"].get("cancel")),
        )
        if apply_update(job, status_update(job, verdict)):
            return
    raise kopf.TemporaryError("the OpsJob kept changing while its status was being updated", delay=1)


def start_runner(job: Manifest, config: Config, retry: int) -> None:
    """Validate and plan the run, then create its ConfigMap, RBAC and pod (each only once)."""
    meta = job["metadata"]
    status = job.get("status") or {}
    if status.get("phase") in TERMINAL_PHASES or status.get("runnerPod"):
        sync_with_runner(meta["namespace"], meta["name"])
        return
    if job["spec"].get("cancel"):
        apply_update(job, status_update(job, judge_runner(None, runner_created=False, cancel_requested=True)))
        return
    if job["spec"].get("after") and not _dependencies_released(job):
        return
    try:
        planned = plan_job(job)
    except PlanError as error:
        apply_update(job, failure_update(job, error.reason, error.message))
        return
    except MissingReference as error:
        age = (
            datetime.now(UTC) - datetime.fromisoformat(meta["creationTimestamp"].replace("Z", "+00:00"))
        ).total_seconds()
        if age < config.dependency_wait_seconds:
            apply_update(
                job,
                waiting_update(
                    job, c.REASON_WAITING_FOR_DEPENDENCIES, f"{error.message}; waiting for it to appear"
                ),
            )
            raise kopf.TemporaryError(error.message, delay=min(10, 2 + retry * 2)) from error
        apply_update(job, failure_update(job, error.reason, error.message))
        return

    # Pending with its conditions first (guarded by resourceVersion like every transition).
    pending = status_update(job, judge_runner(None, runner_created=False, cancel_requested=False))
    if not apply_update(job, pending) and kube.read_opsjob(meta["namespace"], meta["name"]) is None:
        return  # deleted while it was being started
    runner = job["spec"].get("runner") or {}
    rbac = [] if runner.get("serviceAccountName") else build_runner_rbac(job)
    pod = build_runner_pod(job, config, planned.secrets, planned.config_maps)
    # Pod admission needs the service account, and binding a Role needs the Role (RBAC escalation
    # check), so those go first; the kubelet waits for the plan ConfigMap, and the runner's first
    # status write retries until its RoleBinding exists. Creating side by side keeps starts short.
    first = [m for m in rbac if m["kind"] in ("ServiceAccount", "Role")]
    second = [pod, build_plan_config_map(job, planned.plan), *(m for m in rbac if m["kind"] == "RoleBinding")]
    for batch in (first, second):
        list(_CREATE_POOL.map(kube.create_if_absent, batch))
    # Recorded only after the pod exists: a restarted operator that finds runnerPod set and no pod
    # knows the runner was lost, and never starts a second run. Only runnerPod is written here: the
    # pod's events may already have moved the phase on (runner_pod_changed), which must not regress.
    kube.patch_status(
        OPSJOB.plural,
        meta["namespace"],
        meta["name"],
        {"status": {"runnerPod": pod["metadata"]["name"]}},
        None,
    )


def _resolve_dependency(job: Manifest, dependency: Manifest) -> Resolved:
    namespace = job["metadata"]["namespace"]
    if dependency.get("opsJob"):
        return Resolved(dependency, kube.read_opsjob(namespace, dependency["opsJob"]))
    # An OpsSchedule: its first run created at or after this job (server timestamps, both).
    created = job["metadata"]["creationTimestamp"]
    candidates = [
        run
        for run in kube.list_custom(OPSJOB.plural, namespace, f"{LABEL_SCHEDULE}={dependency['opsSchedule']}")
        if run["metadata"]["creationTimestamp"] >= created
        and run["metadata"]["name"] != job["metadata"]["name"]
    ]
    candidates.sort(key=lambda run: (run["metadata"]["creationTimestamp"], run["metadata"]["name"]))
    return Resolved(dependency, candidates[0] if candidates else None)


def _dependencies_released(job: Manifest) -> bool:
    """``spec.after``: True when the run may start; otherwise record waiting or failure (and retry later).

    The wait is measured on the operator's clock from the job's first WaitingForRun status.
    """
    now = clock.now()
    ready = next(
        (x for x in (job.get("status") or {}).get("conditions") or [] if x.get("type") == c.READY), None
    )
    waiting_since = now
    if ready and ready.get("reason") == REASON_WAITING_FOR_RUN and ready.get("lastTransitionTime"):
        waiting_since = datetime.fromisoformat(ready["lastTransitionTime"].replace("Z", "+00:00"))
    resolved = [_resolve_dependency(job, d) for d in job["spec"]["after"]]
    verdict = judge_dependencies(job, resolved, now, waiting_since)
    if verdict.action == "start":
        return True
    if verdict.action == "fail":
        apply_update(job, failure_update(job, verdict.reason, verdict.message))
        return False
    if not ready or ready.get("reason") != REASON_WAITING_FOR_RUN or ready.get("message") != verdict.message:
        update = waiting_update(job, verdict.reason, verdict.message, now)
        if not apply_update(job, update):
            raise kopf.TemporaryError("the OpsJob changed while recording its wait", delay=1)
    raise kopf.TemporaryError(verdict.message, delay=DEPENDENCY_POLL_SECONDS)


def warm_up(namespaces: tuple[str, ...] = ()) -> None:
    """Pay first-use costs before the first OpsJob.

    That is: connections, the API server's watch caches for our kinds (a fresh cache answers 429
    "storage is (re)initializing" for a second), planning. Best effort: lists in the first watched
    namespace that is not a pattern (or ``default`` when watching the cluster), and a refusal (RBAC
    granted per namespace) only costs the warm-up.
    """
    exact = [ns for ns in namespaces if not is_pattern(ns)]
    namespace = exact[0] if exact else "default"
    try:
        for plural in (TARGET.plural, CREDENTIAL.plural, OPSJOB.plural):
            kube.list_custom(plural, namespace)
    except ApiException as error:
        log.info("warm-up skipped listing in %s: %s", namespace, error.reason)
    job = {
        "metadata": {"name": "warm-up", "namespace": "default", "uid": "0"},
        "spec": {"steps": [{"name": "w", "type": "wait", "seconds": 1}]},
    }
    build_run_plan(job, [], {}, {}, {})


def cancel_runner(job: Manifest) -> None:
    """Stop the run: the runner gets SIGTERM, stops remote commands and reports Cancelled."""
    meta = job["metadata"]
    if (job.get("status") or {}).get("phase") in TERMINAL_PHASES:
        return
    pod = kube.read_pod(meta["namespace"], runner_pod_name(meta["name"]))
    if (
        pod is not None
        and pod.get("status", {}).get("phase") not in ("Succeeded", "Failed")
        and not pod["metadata"].get("deletionTimestamp")  # already stopping: cancelled before
    ):
        kopf.event(
            job,  # type: ignore[arg-type]  # a plain dict: see _post_events
            type="Normal",
            reason="Cancelling",
            message="stopping the runner and its remote commands",
        )
        kube.delete_pod(meta["namespace"], pod["metadata"]["name"], TERMINATION_GRACE_SECONDS)
    sync_with_runner(meta["namespace"], meta["name"])


def delete_expired(job: Manifest) -> None:
    """Delete the job (only this incarnation of it: the uid is a precondition)."""
    meta = job["metadata"]
    try:
        kube.custom().delete_namespaced_custom_object(
            OPSJOB.group,
            OPSJOB.version,
            meta["namespace"],
            OPSJOB.plural,
            meta["name"],
            body=V1DeleteOptions(
                preconditions=V1Preconditions(uid=meta["uid"]),
                propagation_policy="Background",
            ),
        )
    except ApiException as error:
        if error.status not in (404, 409):
            raise
