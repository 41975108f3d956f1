"""Operator configuration: one documented class, read from ``OPSCONDUCTOR_*`` environment variables.

The Helm chart sets these variables; defaults suit the local control plane.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from opsconductor import __version__

DEFAULT_RUNNER_IMAGE = f"ghcr.io/opsconductor/runner:{__version__}"


def _env_list(name: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in os.environ.get(name, "").split(",") if item.strip())


def is_pattern(namespace: str) -> bool:
    """Whether an ``OPSCONDUCTOR_NAMESPACES`` entry is a glob pattern (kopf accepts both)."""
    return any(ch in namespace for ch in "*?[!")


@dataclass(frozen=True)
class Config:
    """Settings of one operator process.

    Attributes:
        runner_image: image of runner pods unless an OpsJob sets ``spec.runner.image``
            (``OPSCONDUCTOR_RUNNER_IMAGE``).
        runner_image_pull_policy: ``OPSCONDUCTOR_RUNNER_IMAGE_PULL_POLICY``.
        runner_cpu_request / runner_memory_request / runner_memory_limit: default runner resources.
        namespaces: namespaces to watch; empty = cluster-wide (``OPSCONDUCTOR_NAMESPACES``,
            comma-separated).
        dependency_wait_seconds: how long a new OpsJob waits for missing Targets, Credentials or
            Secrets (GitOps may apply them after the job) before failing
            (``OPSCONDUCTOR_DEPENDENCY_WAIT_SECONDS``).
        resync_seconds: how often running jobs are re-checked against their runner pod even
            without events (``OPSCONDUCTOR_RESYNC_SECONDS``).
        metrics_address: ``host:port`` to serve Prometheus metrics on; empty = none
            (``OPSCONDUCTOR_METRICS_ADDRESS``).
        shared_windows_namespace: where MaintenanceWindows referenced with ``scope: Cluster`` live
            (``OPSCONDUCTOR_SHARED_WINDOWS_NAMESPACE``).
    """

    runner_image: str = DEFAULT_RUNNER_IMAGE
    runner_image_pull_policy: str = "IfNotPresent"
    runner_cpu_request: str = "100m"
    runner_memory_request: str = "128Mi"
    runner_memory_limit: str = "512Mi"
    namespaces: tuple[str, ...] = field(default_factory=tuple)
    dependency_wait_seconds: int = 60
    resync_seconds: int = 30
    metrics_address: str = ""
    shared_windows_namespace: str = "opsconductor-system"

    @classmethod
    def from_env(cls) -> Config:
        """Read the configuration from the environment."""
        env = os.environ
        return cls(
            runner_image=env.get("OPSCONDUCTOR_RUNNER_IMAGE", DEFAULT_RUNNER_IMAGE),
            runner_image_pull_policy=env.get("OPSCONDUCTOR_RUNNER_IMAGE_PULL_POLICY", "IfNotPresent"),
            runner_cpu_request=env.get("OPSCONDUCTOR_RUNNER_CPU_REQUEST", "100m"),
            runner_memory_request=env.get("OPSCONDUCTOR_RUNNER_MEMORY_REQUEST", "128Mi"),
            runner_memory_limit=env.get("OPSCONDUCTOR_RUNNER_MEMORY_LIMIT", "512Mi"),
            namespaces=_env_list("OPSCONDUCTOR_NAMESPACES"),
            dependency_wait_seconds=int(env.get("OPSCONDUCTOR_DEPENDENCY_WAIT_SECONDS", "60")),
            resync_seconds=int(env.get("OPSCONDUCTOR_RESYNC_SECONDS", "30")),
            metrics_address=env.get("OPSCONDUCTOR_METRICS_ADDRESS", ""),
            shared_windows_namespace=env.get("OPSCONDUCTOR_SHARED_WINDOWS_NAMESPACE", "opsconductor-system"),
        )
