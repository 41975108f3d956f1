"""The runner pod of an OpsJob and what it needs: plan ConfigMap, service account, Role, RoleBinding.

Everything here is a pure function of the OpsJob, its plan and the operator Config, so the objects
can be unit-tested and are identical whenever they are rebuilt (a restart never makes new names).

Security contract of the runner pod (Pod Security Standards "restricted"):
- non-root (uid 65532), no privilege escalation, all capabilities dropped, seccomp RuntimeDefault,
  read-only root filesystem (``/tmp`` and ``/workspace`` are emptyDirs);
- only the Secrets this job references are mounted, as read-only volumes; never as env or args;
- its service account may only ``get`` and ``patch`` the status of its own OpsJob.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from opsconductor.api import API_VERSION, GROUP, OPSJOB
from opsconductor.config import Config
from opsconductor.constants import (
    COMPONENT_RUNNER,
    LABEL_COMPONENT,
    LABEL_JOB,
    LABEL_JOB_UID,
    LABEL_MANAGED_BY,
    LABEL_NAME,
    MANAGED_BY,
    RUNNER_CONTAINER,
    plan_config_map_name,
    runner_pod_name,
    runner_service_account_name,
)
from opsconductor.plan import (
    CONFIG_MAPS_ROOT,
    PLAN_DIR,
    PLAN_FILE,
    SECRETS_ROOT,
    TERMINATION_LOG,
    WORKSPACE,
    RunPlan,
    config_map_dir,
)

Manifest = dict[str, Any]
RUNNER_UID = 65532
# Extra seconds the kubelet allows beyond the job's own deadline, so the runner can report first.
DEADLINE_GRACE_SECONDS = 30
TERMINATION_GRACE_SECONDS = 30


RESTRICTED_CONTAINER_SECURITY: Manifest = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}
"""Container security context of every pod the operator creates (Pod Security Standards: restricted)."""


def _owner_reference(job: Manifest) -> Manifest:
    return {
        "apiVersion": API_VERSION,
        "kind": OPSJOB.kind,
        "name": job["metadata"]["name"],
        "uid": job["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _labels(job: Manifest) -> dict[str, str]:
    return {
        LABEL_NAME: "opsconductor-runner",
        LABEL_COMPONENT: COMPONENT_RUNNER,
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_JOB: job["metadata"]["name"],
        LABEL_JOB_UID: job["metadata"]["uid"],
    }


def _metadata(job: Manifest, name: str) -> Manifest:
    return {
        "name": name,
        "namespace": job["metadata"]["namespace"],
        "labels": _labels(job),
        "ownerReferences": [_owner_reference(job)],
    }


def build_plan_config_map(job: Manifest, plan: RunPlan) -> Manifest:
    """Build the ConfigMap holding ``plan.json`` (no secret values: the plan names files)."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(job, plan_config_map_name(job["metadata"]["name"])),
        "immutable": True,
        "data": {PLAN_FILE: plan.model_dump_json(by_alias=True, exclude_defaults=False)},
    }


def build_runner_rbac(job: Manifest) -> list[Manifest]:
    """ServiceAccount, Role and RoleBinding letting the runner patch only this job's status."""
    name = runner_service_account_name(job["metadata"]["name"])
    return [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": _metadata(job, name),
            "automountServiceAccountToken": False,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": _metadata(job, name),
            "rules": [
                {
                    "apiGroups": [GROUP],
                    "resources": [f"{OPSJOB.plural}/status"],
                    "resourceNames": [job["metadata"]["name"]],
                    "verbs": ["get", "patch"],
                }
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": _metadata(job, name),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": job["metadata"]["namespace"]}],
        },
    ]


def _volume_name(prefix: str, name: str) -> str:
    # Volume names are DNS labels (63); Secret names may be longer subdomains.
    safe = name.replace(".", "-")
    return f"{prefix}-{safe}"[:63].rstrip("-")


def build_runner_pod(
    job: Manifest,
    config: Config,
    secret_names: Iterable[str],
    config_map_names: Iterable[str] = (),
) -> Manifest:
    """Build the runner pod: restricted security context, the plan and the job's Secrets as volumes.

    Args:
        job: the OpsJob object.
        config: operator settings (default image and resources).
        secret_names: Secrets the plan references (credentials, secret parameters, file sources).
        config_map_names: ConfigMaps the plan references (file sources, templates).

    Returns:
        The Pod manifest.
    """
    spec = job.get("spec", {})
    runner = spec.get("runner") or {}
    job_name = job["metadata"]["name"]
    volumes: list[Manifest] = [
        {"name": "plan", "configMap": {"name": plan_config_map_name(job_name)}},
        {"name": "workspace", "emptyDir": {}},
        {"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}},
        {
            "name": "kube-api-access",
            "projected": {
                "defaultMode": 0o444,
                "sources": [
                    {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}},
                    {
                        "configMap": {
                            "name": "kube-root-ca.crt",
                            "items": [{"key": "ca.crt", "path": "ca.crt"}],
                        }
                    },
                    {
                        "downwardAPI": {
                            "items": [{"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]
                        }
                    },
                ],
            },
        },
    ]
    mounts: list[Manifest] = [
        {"name": "plan", "mountPath": PLAN_DIR, "readOnly": True},
        {"name": "workspace", "mountPath": WORKSPACE},
        {"name": "tmp", "mountPath": "/tmp"},
        {
            "name": "kube-api-access",
            "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
            "readOnly": True,
        },
    ]
    for secret in sorted(set(secret_names)):
        volume = _volume_name("secret", secret)
        volumes.append({"name": volume, "secret": {"secretName": secret, "defaultMode": 0o440}})
        mounts.append({"name": volume, "mountPath": f"{SECRETS_ROOT}/{secret}", "readOnly": True})
    for config_map in sorted(set(config_map_names)):
        volume = _volume_name("cm", config_map)
        volumes.append({"name": volume, "configMap": {"name": config_map}})
        mounts.append(
            {"name": volume, "mountPath": config_map_dir(config_map, CONFIG_MAPS_ROOT), "readOnly": True}
        )

    resources = runner.get("resources") or {
        "requests": {"cpu": config.runner_cpu_request, "memory": config.runner_memory_request},
        "limits": {"memory": config.runner_memory_limit},
    }
    pod_spec: Manifest = {
        "restartPolicy": "Never",
        "serviceAccountName": runner.get("serviceAccountName") or runner_service_account_name(job_name),
        # The token is mounted explicitly above (kube-api-access), only into the runner container.
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUNNER_UID,
            "runAsGroup": RUNNER_UID,
            "fsGroup": RUNNER_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [
            {
                "name": RUNNER_CONTAINER,
                "image": runner.get("image") or config.runner_image,
                "imagePullPolicy": config.runner_image_pull_policy,
                "env": [
                    {"name": "PYTHONUNBUFFERED", "value": "1"},
                    {"name": "PYTHONDONTWRITEBYTECODE", "value": "1"},
                ],
                "resources": resources,
                "volumeMounts": mounts,
                "terminationMessagePath": TERMINATION_LOG,
                "terminationMessagePolicy": "FallbackToLogsOnError",
                "securityContext": RESTRICTED_CONTAINER_SECURITY,
            }
        ],
        "volumes": volumes,
    }
    if spec.get("activeDeadlineSeconds"):
        pod_spec["activeDeadlineSeconds"] = int(spec["activeDeadlineSeconds"]) + DEADLINE_GRACE_SECONDS
    if runner.get("nodeSelector"):
        pod_spec["nodeSelector"] = dict(runner["nodeSelector"])
    if runner.get("tolerations"):
        pod_spec["tolerations"] = list(runner["tolerations"])
    metadata = _metadata(job, runner_pod_name(job_name))
    metadata["annotations"] = {"kubectl.kubernetes.io/default-container": RUNNER_CONTAINER}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": pod_spec}


def summary_from_termination_message(message: str | None) -> dict[str, Any] | None:
    """Parse the runner's RunSummary JSON from a container's termination message, if it is one."""
    if not message:
        return None
    try:
        parsed = json.loads(message)
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) and parsed.get("phase") else None
