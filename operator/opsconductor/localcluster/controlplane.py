"""Start and stop a real Kubernetes control plane on loopback for tests and the demo.

Owns: locating (or building) the binaries, the PKI, kubeconfigs for each identity, and the
processes etcd, kube-apiserver, kube-controller-manager and kube-scheduler. Every component binds
to 127.0.0.1 on ports picked at start, so several control planes can run side by side.

What must stay true: the API server runs with the admission chain and authorizers of a real
cluster (``Node,RBAC``, ``NodeRestriction``, ServiceAccount admission), so tests see validation,
status subresources, watches, finalizers, garbage collection and RBAC exactly as in a cluster.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import yaml

from opsconductor.localcluster.pki import CertificateAuthority, KeyPair, write_service_account_keys

REPO_ROOT = Path(__file__).resolve().parents[3]
BUILD_SCRIPT = REPO_ROOT / "hack" / "build-k8s-binaries.sh"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
BINARY_NAMES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl", "helm")


_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """``preexec_fn``: the child gets SIGTERM when the process that started it dies.

    Keeps a killed test session or demo from leaving etcd/kube-apiserver running on loopback.
    """
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def spawn_logged(argv: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start a child in its own session, stdout and stderr appended to ``log``, dying with us.

    Args:
        argv: the command.
        log: the log file (appended to).
        env: the environment (default: ours).

    Returns:
        The running child.
    """
    with log.open("ab") as log_file:
        return subprocess.Popen(
            argv,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )


def log_tail(log: Path, lines: int = 30) -> str:
    """Return the last lines of a log file (for error messages)."""
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def exit_error(what: str, popen: subprocess.Popen[bytes], log: Path) -> ControlPlaneError:
    """Build the error for a child that exited while we waited for it to become ready."""
    tail = log_tail(log)
    return ControlPlaneError(f"{what} exited with code {popen.returncode}; log {log}:\n{tail}")


def terminate(popen: subprocess.Popen[bytes] | None, timeout: float) -> None:
    """SIGTERM a child, and SIGKILL its process group if it has not exited after ``timeout`` s."""
    if popen is None or popen.poll() is not None:
        return
    popen.terminate()
    try:
        popen.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(popen.pid, signal.SIGKILL)
        popen.wait()


class ControlPlaneError(RuntimeError):
    """A component failed to start; the message names it and the tail of its log."""


def ensure_binaries() -> Path:
    """Return the directory holding the control-plane binaries, building them when missing.

    ``OPSCONDUCTOR_K8S_BIN`` overrides the location (no build is attempted then).

    Returns:
        The directory with etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
        kubectl and helm.
    """
    override = os.environ.get("OPSCONDUCTOR_K8S_BIN")
    if override:
        return Path(override)
    result = subprocess.run(["bash", str(BUILD_SCRIPT)], check=True, stdout=subprocess.PIPE, text=True)
    return Path(result.stdout.strip().splitlines()[-1])


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.1) -> None:
    """Poll ``predicate`` until it returns True.

    Args:
        predicate: called repeatedly; exceptions count as "not yet".
        timeout: seconds before giving up.
        what: described in the error.
        interval: seconds between polls.

    Raises:
        TimeoutError: when the predicate stayed false.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            if predicate():
                return
        except ControlPlaneError:
            raise
        except Exception:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


@dataclass
class _Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        return log_tail(self.log, lines)

    def peak_rss_kib(self) -> int | None:
        """Peak resident memory (VmHWM) of the process, while it runs."""
        try:
            for line in Path(f"/proc/{self.popen.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
        except OSError:
            return None
        return None


@dataclass
class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager + kube-scheduler on 127.0.0.1.

    Attributes:
        workdir: holds certificates, kubeconfigs, etcd data and component logs (``logs/``).
        binaries: directory of the binaries; found or built by :func:`ensure_binaries` when None.
        scheduler: also run kube-scheduler (binds pods to the process kubelet's Node).
        startup_seconds: per component, filled by :meth:`start`.
    """

    workdir: Path
    binaries: Path | None = None
    scheduler: bool = True
    api_host: str = "127.0.0.1"
    api_port: int = 0
    startup_seconds: dict[str, float] = field(default_factory=dict)
    _processes: list[_Process] = field(default_factory=list)

    # --- paths -------------------------------------------------------------------------------
    @property
    def pki_dir(self) -> Path:
        """Directory of the CA, serving/client certificates and SA keys."""
        return self.workdir / "pki"

    @property
    def admin_kubeconfig(self) -> Path:
        """Kubeconfig of a ``system:masters`` user."""
        return self.workdir / "admin.kubeconfig"

    @property
    def ca_file(self) -> Path:
        """The cluster CA certificate."""
        return self.pki_dir / "ca.crt"

    @property
    def api_url(self) -> str:
        """The API server's URL."""
        return f"https://{self.api_host}:{self.api_port}"

    @property
    def logs_dir(self) -> Path:
        """Where each component writes its log."""
        return self.workdir / "logs"

    def binary(self, name: str) -> str:
        """Absolute path of one control-plane binary (e.g. ``kubectl``)."""
        assert self.binaries is not None, "start() locates the binaries"
        return str(self.binaries / name)

    # --- identities --------------------------------------------------------------------------
    def client_kubeconfig(self, user: str, groups: tuple[str, ...] = (), name: str | None = None) -> Path:
        """Write a kubeconfig authenticating as ``user`` in ``groups`` with a CA-signed client cert.

        Args:
            user: the Kubernetes user name (certificate CN).
            groups: the user's groups (certificate O values).
            name: file stem; defaults to a sanitised user name.

        Returns:
            Path of the kubeconfig.
        """
        stem = name or user.replace(":", "-")
        pair = self._ca.issue(stem, common_name=user, organizations=groups, client=True)
        return self._write_kubeconfig(self.workdir / f"{stem}.kubeconfig", pair)

    def kubelet_serving_pair(self, node_name: str) -> KeyPair:
        """Issue the serving certificate of a kubelet's API on 127.0.0.1 (the API server verifies it)."""
        return self._ca.issue(
            f"kubelet-{node_name}-serving",
            common_name=f"system:node:{node_name}",
            dns_names=(node_name,),
            ip_addresses=("127.0.0.1",),
            server=True,
        )

    def node_kubeconfig(self, node_name: str) -> Path:
        """Kubeconfig of a kubelet for ``node_name`` (``system:node:<name>`` in ``system:nodes``)."""
        return self.client_kubeconfig(f"system:node:{node_name}", ("system:nodes",), name=f"node-{node_name}")

    def _write_kubeconfig(self, path: Path, pair: KeyPair) -> Path:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "opsconductor-local",
                    "cluster": {"server": self.api_url, "certificate-authority": str(self.ca_file)},
                }
            ],
            "users": [
                {"name": "user", "user": {"client-certificate": str(pair.cert), "client-key": str(pair.key)}}
            ],
            "contexts": [
                {"name": "opsconductor-local", "context": {"cluster": "opsconductor-local", "user": "user"}}
            ],
            "current-context": "opsconductor-local",
        }
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)
        return path

    # --- lifecycle ---------------------------------------------------------------------------
    def start(self, timeout: float = 120.0) -> None:
        """Start every component and wait until the API server serves and controllers work.

        Args:
            timeout: seconds allowed for each component to become ready.

        Raises:
            ControlPlaneError: a component exited or did not become ready.
        """
        began = time.monotonic()
        if self.binaries is None:
            self.binaries = ensure_binaries()
        self.startup_seconds["binaries"] = time.monotonic() - began
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.logs_dir.mkdir(exist_ok=True)
        self._ca = CertificateAuthority(self.pki_dir)
        sa_keys = write_service_account_keys(self.pki_dir)
        self.api_port = self.api_port or free_port()
        try:
            self._start_etcd(timeout)
            self._start_apiserver(sa_keys, timeout)
            self._start_controller_manager(sa_keys)
            if self.scheduler:
                self._start_scheduler()
            self._wait_for_controllers(timeout)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds["total"] = time.monotonic() - began

    def _spawn(self, name: str, args: list[str]) -> _Process:
        log = self.logs_dir / f"{name}.log"
        process = _Process(name, spawn_logged([self.binary(name), *args], log), log)
        self._processes.append(process)
        return process

    def _await(self, process: _Process, predicate: Callable[[], bool], timeout: float) -> None:
        began = time.monotonic()

        def ready() -> bool:
            if not process.alive():
                raise ControlPlaneError(
                    f"{process.name} exited with code {process.popen.returncode}; "
                    f"log {process.log}:\n{process.log_tail()}"
                )
            return predicate()

        try:
            wait_for(ready, timeout, f"{process.name} to become ready")
        except TimeoutError as exc:
            raise ControlPlaneError(f"{exc}; log {process.log}:\n{process.log_tail()}") from exc
        self.startup_seconds[process.name] = time.monotonic() - began

    def _start_etcd(self, timeout: float) -> None:
        client_port, peer_port = free_port(), free_port()
        self.etcd_url = f"http://127.0.0.1:{client_port}"
        peer_url = f"http://127.0.0.1:{peer_port}"
        process = self._spawn(
            "etcd",
            [
                "--name=default",
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={self.etcd_url}",
                f"--advertise-client-urls={self.etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=default={peer_url}",
                "--unsafe-no-fsync=true",  # test data: durability is not needed, speed is
                "--log-level=warn",
            ],
        )
        self._await(
            process, lambda: httpx.get(f"{self.etcd_url}/health", timeout=2).status_code == 200, timeout
        )

    def _start_apiserver(self, sa_keys: KeyPair, timeout: float) -> None:
        serving = self._ca.issue(
            "apiserver",
            common_name="kube-apiserver",
            dns_names=(
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ),
            ip_addresses=("127.0.0.1", "10.0.0.1"),
            server=True,
        )
        kubelet_client = self._ca.issue(
            "apiserver-kubelet-client",
            common_name="kube-apiserver-kubelet-client",
            organizations=("system:masters",),
            client=True,
        )
        self.client_kubeconfig("opsconductor-admin", ("system:masters",), name="admin")
        process = self._spawn(
            "kube-apiserver",
            [
                f"--etcd-servers={self.etcd_url}",
                f"--bind-address={self.api_host}",
                f"--advertise-address={self.api_host}",
                f"--secure-port={self.api_port}",
                f"--cert-dir={self.workdir / 'apiserver-certs'}",
                f"--tls-cert-file={serving.cert}",
                f"--tls-private-key-file={serving.key}",
                f"--client-ca-file={self.ca_file}",
                f"--kubelet-client-certificate={kubelet_client.cert}",
                f"--kubelet-client-key={kubelet_client.key}",
                "--kubelet-preferred-address-types=InternalIP",
                f"--kubelet-certificate-authority={self.ca_file}",
                f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
                f"--service-account-key-file={sa_keys.cert}",
                f"--service-account-signing-key-file={sa_keys.key}",
                "--service-cluster-ip-range=10.0.0.0/24",
                "--authorization-mode=Node,RBAC",
                "--enable-admission-plugins=NodeRestriction",
                "--allow-privileged=true",
                # No kube-proxy runs, so the `kubernetes` Service has no use; skip its endpoints.
                "--endpoint-reconciler-type=none",
                "--profiling=false",
                "--event-ttl=1h",
                "--v=1",
            ],
        )
        admin = self.admin_client()
        try:
            self._await(process, lambda: admin.get("/readyz").status_code == 200, timeout)
        finally:
            admin.close()

    def _start_controller_manager(self, sa_keys: KeyPair) -> None:
        kubeconfig = self.client_kubeconfig("system:kube-controller-manager")
        self._spawn(
            "kube-controller-manager",
            [
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
                "--leader-elect=false",
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={sa_keys.key}",
                f"--root-ca-file={self.ca_file}",
                f"--cluster-signing-cert-file={self.ca_file}",
                f"--cluster-signing-key-file={self.pki_dir / 'ca.key'}",
                "--concurrent-job-syncs=20",
                "--v=1",
            ],
        )

    def _start_scheduler(self) -> None:
        kubeconfig = self.client_kubeconfig("system:kube-scheduler")
        self._spawn(
            "kube-scheduler",
            [
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
                "--leader-elect=false",
                "--v=1",
            ],
        )

    def _wait_for_controllers(self, timeout: float) -> None:
        """Wait until controllers work, i.e. the ServiceAccount controller made ``default/default``."""
        began = time.monotonic()
        admin = self.admin_client()

        def default_service_account() -> bool:
            for process in self._processes:
                if not process.alive():
                    raise ControlPlaneError(
                        f"{process.name} exited with code {process.popen.returncode}:\n{process.log_tail()}"
                    )
            response = admin.get("/api/v1/namespaces/default/serviceaccounts/default")
            return response.status_code == 200

        try:
            wait_for(
                default_service_account,
                timeout,
                "kube-controller-manager to create the default ServiceAccount",
            )
        finally:
            admin.close()
        self.startup_seconds["controllers"] = time.monotonic() - began

    def admin_client(self) -> httpx.Client:
        """Return an httpx client to the API server authenticated as the admin user."""
        context = ssl.create_default_context(cafile=str(self.ca_file))
        context.load_cert_chain(self.pki_dir / "admin.crt", self.pki_dir / "admin.key")
        return httpx.Client(base_url=self.api_url, verify=context, timeout=10)

    def peak_memory_kib(self) -> dict[str, int]:
        """Peak resident memory of each running component, in KiB."""
        return {p.name: rss for p in self._processes if (rss := p.peak_rss_kib()) is not None}

    def stop(self) -> None:
        """Stop every component (SIGTERM, then SIGKILL after 10 s), newest first."""
        for process in reversed(self._processes):
            if process.alive():
                os.killpg(process.popen.pid, signal.SIGTERM)
        for process in reversed(self._processes):
            try:
                process.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.popen.pid, signal.SIGKILL)
                process.popen.wait()
        self._processes.clear()

    def remove(self) -> None:
        """Stop and delete the work directory."""
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)
