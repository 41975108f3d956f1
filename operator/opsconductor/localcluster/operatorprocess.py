"""The operator as a child process against the local control plane, with least-privilege RBAC.

Tests and the demo run the operator exactly as its image would (``python -m opsconductor``), under a
client-certificate identity bound to the ClusterRole from ``opsconductor.rbac``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from opsconductor.localcluster.cluster import admin_kubectl
from opsconductor.localcluster.controlplane import (
    ControlPlane,
    exit_error,
    free_port,
    spawn_logged,
    terminate,
    wait_for,
)
from opsconductor.rbac import operator_cluster_role, operator_cluster_role_binding, operator_flow_schema

OPERATOR_USER = "opsconductor-operator"


@dataclass
class OperatorProcess:
    """``python -m opsconductor --standalone`` with its own kubeconfig, logs in ``log``."""

    plane: ControlPlane
    name: str = "operator"
    env: dict[str, str] = field(default_factory=dict)
    args: tuple[str, ...] = ("--standalone",)
    """Operator arguments: ``--standalone``, or ``--peering NAME`` for several replicas."""
    health_port: int = 0
    _popen: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        """The operator's log file (appended to across restarts)."""
        return self.plane.logs_dir / f"{self.name}.log"

    def install_rbac(self) -> None:
        """Apply the operator's ClusterRole, bind it to the operator's user, and set its API priority."""
        manifests = [
            operator_cluster_role(),
            operator_cluster_role_binding(user=OPERATOR_USER),
            operator_flow_schema(user=OPERATOR_USER),
        ]
        admin_kubectl(self.plane, "apply", "-f", "-", input="\n---\n".join(json.dumps(m) for m in manifests))

    def start(self, timeout: float = 60.0) -> None:
        """Start the operator and wait until its health endpoint answers."""
        self.install_rbac()
        kubeconfig = self.plane.client_kubeconfig(OPERATOR_USER)
        self.health_port = free_port()
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "KUBECONFIG": str(kubeconfig),
            "OPSCONDUCTOR_HEALTH_ADDRESS": f"127.0.0.1:{self.health_port}",
            "PYTHONUNBUFFERED": "1",
            **self.env,
        }
        self._popen = popen = spawn_logged([sys.executable, "-m", "opsconductor", *self.args], self.log, env)

        def healthy() -> bool:
            if popen.poll() is not None:
                raise exit_error("the operator", popen, self.log)
            return httpx.get(f"http://127.0.0.1:{self.health_port}/healthz", timeout=2).status_code == 200

        began = time.monotonic()
        wait_for(healthy, timeout, "the operator's health endpoint")
        self.startup_seconds = time.monotonic() - began

    def kill(self) -> None:
        """SIGKILL the operator (a crash, for restart tests)."""
        if self._popen is not None and self._popen.poll() is None:
            os.killpg(self._popen.pid, signal.SIGKILL)
            self._popen.wait()
        self._popen = None

    def stop(self) -> None:
        """SIGTERM and wait (kopf stops gracefully), SIGKILL after 20 s."""
        terminate(self._popen, 20)
        self._popen = None
