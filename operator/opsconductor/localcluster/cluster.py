"""A whole local cluster: the control plane, our CRDs, and a process kubelet running one Node.

Used by the test session fixtures, ``make cluster`` and ``make demo``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from opsconductor.admission import created_by_policy
from opsconductor.api import KINDS, OPSJOB
from opsconductor.localcluster.controlplane import (
    REPO_ROOT,
    ControlPlane,
    ControlPlaneError,
    exit_error,
    spawn_logged,
    terminate,
    wait_for,
)

DEFAULT_NODE = "opsconductor-local"
DEFAULT_IMAGE_TABLE = Path(__file__).with_name("images.yaml")
CRDS_DIR = REPO_ROOT / "crds"


def admin_kubectl(plane: ControlPlane, *args: str, input: str | None = None) -> str:
    """Run kubectl as the admin and return stdout.

    Raises:
        ControlPlaneError: kubectl failed; the message carries its stderr.
    """
    result = subprocess.run(
        [plane.binary("kubectl"), f"--kubeconfig={plane.admin_kubeconfig}", *args],
        input=input,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if result.returncode != 0:
        raise ControlPlaneError(f"kubectl {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


def install_crds(plane: ControlPlane, timeout: float = 60.0) -> None:
    """Apply ``crds/``, wait until every CRD is Established, and install our admission policies."""
    admin_kubectl(plane, "apply", "--server-side", "-f", str(CRDS_DIR))
    names = {f"{kind.plural}.{kind.group}" for kind in KINDS}

    def established() -> bool:
        # Not `kubectl wait`: it fails instead of waiting while a new CRD has no conditions yet.
        listed = json.loads(admin_kubectl(plane, "get", "crd", *sorted(names), "-o", "json"))["items"]
        return all(
            any(
                c["type"] == "Established" and c["status"] == "True"
                for c in (crd.get("status") or {}).get("conditions") or []
            )
            for crd in listed
        )

    wait_for(established, timeout, "the CRDs to be established", interval=0.1)
    policies = "\n---\n".join(json.dumps(doc) for doc in created_by_policy())
    admin_kubectl(plane, "apply", "--server-side", "-f", "-", input=policies)
    # The policy needs the CRD's schema in the API server's type checker, which lags the CRD by a
    # moment ("Resource kind ... not found"): wait until an OpsJob can be created (dry run).
    probe_job = json.dumps(
        {
            "apiVersion": f"{OPSJOB.group}/{OPSJOB.version}",
            "kind": OPSJOB.kind,
            "metadata": {"name": "admission-probe", "namespace": "default"},
            "spec": {"steps": [{"name": "w", "type": "wait", "seconds": 1}]},
        }
    )

    def admits_opsjobs() -> bool:
        try:
            admin_kubectl(plane, "create", "--dry-run=server", "-f", "-", input=probe_job)
        except ControlPlaneError:
            return False
        return True

    wait_for(admits_opsjobs, timeout, "OpsJob admission (the created-by policy)", interval=0.2)


@dataclass
class KubeletProcess:
    """The process kubelet (``opsconductor.localcluster.kubelet``) as a child process."""

    plane: ControlPlane
    root_dir: Path
    node_name: str = DEFAULT_NODE
    image_table: Path = DEFAULT_IMAGE_TABLE
    startup_seconds: float = 0.0
    _popen: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        """The kubelet's own log."""
        return self.plane.logs_dir / f"kubelet-{self.node_name}.log"

    def start(self, timeout: float = 60.0) -> None:
        """Start the kubelet and wait until its Node is Ready."""
        began = time.monotonic()
        serving = self.plane.kubelet_serving_pair(self.node_name)
        self._popen = popen = spawn_logged(
            [
                sys.executable,
                "-m",
                "opsconductor.localcluster.kubelet",
                f"--tls-cert-file={serving.cert}",
                f"--tls-private-key-file={serving.key}",
                f"--client-ca-file={self.plane.ca_file}",
                f"--kubeconfig={self.plane.node_kubeconfig(self.node_name)}",
                f"--node-name={self.node_name}",
                f"--root-dir={self.root_dir}",
                f"--images={self.image_table}",
                f"--api-host={self.plane.api_host}",
                f"--api-port={self.plane.api_port}",
            ],
            self.log,
        )

        def node_ready() -> bool:
            if popen.poll() is not None:
                raise exit_error("the process kubelet", popen, self.log)
            found = admin_kubectl(
                self.plane, "get", "node", self.node_name, "-o", "json", "--ignore-not-found"
            )
            if not found.strip():
                return False  # not registered yet
            conditions = json.loads(found).get("status", {}).get("conditions", [])
            return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

        wait_for(node_ready, timeout, f"node {self.node_name} to become Ready", interval=0.2)
        self.startup_seconds = time.monotonic() - began

    def stop(self) -> None:
        """SIGTERM the kubelet (it kills its pods' processes), SIGKILL after 30 s."""
        terminate(self._popen, 30)
        self._popen = None


@dataclass
class LocalCluster:
    """Control plane + CRDs + process kubelet, all on loopback under ``workdir``."""

    workdir: Path
    node_name: str = DEFAULT_NODE
    control_plane: ControlPlane = field(init=False)
    kubelet: KubeletProcess = field(init=False)
    startup_seconds: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.control_plane = ControlPlane(workdir=self.workdir / "controlplane")
        self.kubelet = KubeletProcess(self.control_plane, self.workdir / "kubelet", self.node_name)

    @property
    def admin_kubeconfig(self) -> Path:
        """Kubeconfig of the cluster admin."""
        return self.control_plane.admin_kubeconfig

    def kubectl(self, *args: str, input: str | None = None) -> str:
        """Run kubectl as the admin and return stdout."""
        return admin_kubectl(self.control_plane, *args, input=input)

    def start(self, timeout: float = 120.0) -> None:
        """Start everything; return once the CRDs are established and the Node is Ready."""
        began = time.monotonic()
        self.control_plane.start(timeout)
        self.startup_seconds.update(self.control_plane.startup_seconds)
        try:
            crds_began = time.monotonic()
            install_crds(self.control_plane, timeout)
            self.startup_seconds["crds"] = time.monotonic() - crds_began
            self.kubelet.start(timeout)
            self.startup_seconds["kubelet"] = self.kubelet.startup_seconds
        except BaseException:
            self.stop()
            raise
        self.startup_seconds["cluster"] = time.monotonic() - began

    def stop(self) -> None:
        """Stop the kubelet, then the control plane."""
        self.kubelet.stop()
        self.control_plane.stop()
