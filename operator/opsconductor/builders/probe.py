"""The probe pod of a Target: a short-lived pod of the runner image running ``probe``.

Pure functions of the Target, the resolved request and the operator Config.

Security contract (Pod Security Standards "restricted", like the runner pod):
- non-root, no privilege escalation, all capabilities dropped, seccomp RuntimeDefault, read-only
  root filesystem (``/tmp`` is a small in-memory emptyDir);
- no API access at all: no service account token is mounted; the result leaves through the
  termination message (see ``opsconductor.probemodels``);
- only the Secrets the Target's resolution references (its Credential, CA bundle, known_hosts)
  are mounted, read-only; the request in the environment holds file paths, never values.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from opsconductor.api import API_VERSION, TARGET
from opsconductor.builders.runner import RESTRICTED_CONTAINER_SECURITY, RUNNER_UID
from opsconductor.config import Config
from opsconductor.constants import (
    COMPONENT_PROBE,
    LABEL_COMPONENT,
    LABEL_MANAGED_BY,
    LABEL_NAME,
    LABEL_TARGET,
    LABEL_TARGET_UID,
    MANAGED_BY,
    PROBE_CONTAINER,
)
from opsconductor.plan import SECRETS_ROOT, TERMINATION_LOG
from opsconductor.probemodels import PROBE_REQUEST_ENV, ProbeRequest

Manifest = dict[str, Any]
DEADLINE_GRACE_SECONDS = 30
"""Beyond the probe's own timeout before the kubelet stops the pod."""


def probe_pod_name(target_name: str, started: datetime) -> str:
    """Name a probe's pod, fresh per probe: ``<target>-probe-<6 hex of the start time>``."""
    suffix = hashlib.sha256(f"{target_name}@{started.isoformat()}".encode()).hexdigest()[:6]
    return f"{target_name[:48].rstrip('-.')}-probe-{suffix}"


def _volume_name(name: str) -> str:
    return f"secret-{name.replace('.', '-')}"[:63].rstrip("-")


def build_probe_pod(
    target: Manifest, request: ProbeRequest, secret_names: Iterable[str], config: Config, pod_name: str
) -> Manifest:
    """Build the probe pod for one probe of ``target``.

    Args:
        target: the Target object (name, namespace, uid).
        request: what to probe (the resolved target, timeout, whether to collect facts).
        secret_names: Secrets to mount at ``SECRETS_ROOT/<name>``.
        config: operator settings (runner image, pull policy).
        pod_name: from :func:`probe_pod_name`.

    Returns:
        The Pod manifest, owned by the Target (deleted with it).
    """
    meta = target["metadata"]
    volumes: list[Manifest] = [{"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}}]
    mounts: list[Manifest] = [{"name": "tmp", "mountPath": "/tmp"}]
    for secret in sorted(set(secret_names)):
        volumes.append({"name": _volume_name(secret), "secret": {"secretName": secret, "defaultMode": 0o440}})
        mounts.append(
            {"name": _volume_name(secret), "mountPath": f"{SECRETS_ROOT}/{secret}", "readOnly": True}
        )
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod_name,
            "namespace": meta["namespace"],
            "labels": {
                LABEL_NAME: "opsconductor-probe",
                LABEL_COMPONENT: COMPONENT_PROBE,
                LABEL_MANAGED_BY: MANAGED_BY,
                LABEL_TARGET: meta["name"],
                LABEL_TARGET_UID: meta["uid"],
            },
            "ownerReferences": [
                {
                    "apiVersion": API_VERSION,
                    "kind": TARGET.kind,
                    "name": meta["name"],
                    "uid": meta["uid"],
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "terminationGracePeriodSeconds": 5,
            "activeDeadlineSeconds": request.timeout_seconds + DEADLINE_GRACE_SECONDS,
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": RUNNER_UID,
                "runAsGroup": RUNNER_UID,
                "fsGroup": RUNNER_UID,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [
                {
                    "name": PROBE_CONTAINER,
                    "image": config.runner_image,
                    "imagePullPolicy": config.runner_image_pull_policy,
                    "args": ["probe"],
                    "env": [
                        {"name": "PYTHONUNBUFFERED", "value": "1"},
                        {"name": "PYTHONDONTWRITEBYTECODE", "value": "1"},
                        {"name": PROBE_REQUEST_ENV, "value": request.model_dump_json()},
                    ],
                    "resources": {
                        "requests": {"cpu": "50m", "memory": "64Mi"},
                        "limits": {"memory": config.runner_memory_limit},
                    },
                    "volumeMounts": mounts,
                    "terminationMessagePath": TERMINATION_LOG,
                    "terminationMessagePolicy": "FallbackToLogsOnError",
                    "securityContext": RESTRICTED_CONTAINER_SECURITY,
                }
            ],
            "volumes": volumes,
        },
    }
