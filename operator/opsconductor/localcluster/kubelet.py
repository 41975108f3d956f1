"""Process kubelet: a node agent that runs a real cluster's pods as local processes.

What it owns: registering the Node (labels, capacity, Ready and pressure conditions), renewing its
``kube-node-lease`` Lease every 10 s and posting node status every 60 s; watching the pods that
kube-scheduler binds to the node; materialising their volumes under
``<root_dir>/pods/<uid>/volumes/<volume>``; running their containers (init containers in order,
then app containers, restarted per ``restartPolicy`` with the kubelet's back-off); enforcing
``activeDeadlineSeconds`` and memory limits; graceful deletion; events; and pod status through the
status subresource. It authenticates as ``system:node:<name>``, so the Node authorizer and the
NodeRestriction admission plugin limit it exactly as a real kubelet.

Everything a container relies on comes from its pod spec, as in a real cluster: env and envFrom
(Secrets, ConfigMaps, downward API, resource fields), volumes (secret, configMap, downwardAPI,
projected with a pod-bound service account token from the TokenRequest API, emptyDir, hostPath),
security context (uid/gid/groups, runAsNonRoot, readOnlyRootFilesystem, capabilities,
allowPrivilegeEscalation) and the termination message. The container start itself is done by
``containerinit.py`` in new mount, UTS and PID namespaces: the command runs as PID 1 of its
container (it only gets the signals it handles, and its death ends every process of the
container); the ``process://<pid>`` container ID is the relay process that forwards signals to it.
Deleting a pod sends SIGTERM to the container's PID 1, waits ``deletionGracePeriodSeconds``, then
SIGKILLs, and finally deletes the pod with grace period 0, as the kubelet does.

Deviations from a real kubelet:

* No images: ``images.yaml`` maps an image repository to what the image would run (entrypoint, cmd,
  user, workingDir, env) and the host file system stands in for the image's. An image missing from
  the table fails like a pull (``ErrImagePull`` / ``ImagePullBackOff``).
* No network namespace and no kube-proxy: the pod IP is 127.0.0.1 and ``KUBERNETES_SERVICE_HOST`` /
  ``_PORT`` point straight at the API server (no other services' variables are injected).
* Memory limits are enforced by polling the RSS of the container's process tree every 0.5 s and
  SIGKILLing it when over the limit, reported as ``OOMKilled`` / 137 (an emulation of the cgroup
  OOM killer); CPU limits are not enforced. No seccomp or AppArmor enforcement. Probes and
  lifecycle hooks are not run (a running container is ready). emptyDir ``medium``/``sizeLimit``
  are ignored; only secret, configMap, downwardAPI, projected, emptyDir and hostPath volumes exist.
* Logs are plain files, :func:`container_log_path` (the previous run's at
  ``<container>.previous.log``), kept after a pod is deleted (the rest of its directory is removed).
  With TLS files given, :mod:`kubeletserver` serves them to the API server on the node's
  ``daemonEndpoints.kubeletEndpoint`` (``kubectl logs [-f]``); no exec, attach or port-forward.
* The host file system is every container's root file system, seen through its own mount
  namespace: mount points missing on the host are created there as empty directories (or empty
  files for a file bind mount such as ``/dev/termination-log``), and the working directory is
  created if missing. ``readOnlyRootFilesystem`` remounts ``/`` read-only; other host mounts
  (``/dev``, ``/tmp`` if separate, ...) stay writable. No user namespace: uids are host uids.
* Containers die with the kubelet (they cannot be re-adopted); after a restart, containers the
  status shows running are reported ``ContainerStatusUnknown`` (137) and restarted per policy.
* Must run as root (namespaces, bind mounts, uid switching).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import logging
import os
import platform
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar, cast

from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

from opsconductor.localcluster import podspec, volumes
from opsconductor.localcluster.kubeletserver import ContainerLog, KubeletServer
from opsconductor.localcluster.podspec import JSON, ContainerView, ImageTable, load_image_table

__all__ = ["ImageTable", "KubeletConfig", "ProcessKubelet", "container_log_path", "load_image_table", "main"]

log = logging.getLogger(__name__)

KUBELET_VERSION = "v1.36.3"
NODE_IP = "127.0.0.1"
LEASE_SECONDS = 40
LEASE_RENEW = 10.0
NODE_STATUS_EVERY = 60.0
TICK = 0.2
MEMORY_POLL = 0.5
VOLUME_RESYNC = 60.0
RETRY_CONFIG = 5.0
MAX_BACKOFF = 300.0
INIT_SCRIPT = Path(__file__).with_name("containerinit.py")
# What every "image" contains besides the host's files: the Python runtime, the virtualenv and the
# opsconductor source (an editable install lives in the checkout). containerinit keeps them reachable.
IMAGE_PATHS = sorted({sys.base_prefix, sys.prefix, str(Path(__file__).resolve().parents[2])})
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
TERMINAL = ("Succeeded", "Failed")


def container_log_path(root_dir: Path, pod_uid: str, container: str) -> Path:
    """Return where a container's stdout+stderr (current run) are written.

    Args:
        root_dir: The kubelet's state directory.
        pod_uid: The pod UID.
        container: The container name.

    Returns:
        ``<root_dir>/pods/<uid>/logs/<container>.log``.
    """
    return Path(root_dir) / "pods" / pod_uid / "logs" / f"{container}.log"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def _default_capacity() -> dict[str, str]:
    return {"cpu": "32", "memory": "64Gi", "pods": "500"}


@dataclass
class KubeletConfig:
    """How to run the process kubelet."""

    kubeconfig: Path
    node_name: str
    root_dir: Path
    images: ImageTable
    api_host: str
    api_port: int
    capacity: dict[str, str] = field(default_factory=_default_capacity)
    tls_cert: Path | None = None
    """Serving certificate of the kubelet API (container logs); None = no kubelet API."""
    tls_key: Path | None = None
    client_ca: Path | None = None
    """CA of the API server's kubelet-client certificate."""


# --------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------


def scan_processes() -> dict[int, tuple[int, int, int]]:
    """Return ``pid -> (ppid, session id, rss bytes)`` for every process in /proc."""
    procs: dict[int, tuple[int, int, int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                raw = f.read()
        except OSError:
            continue
        fields = raw[raw.rfind(b")") + 2 :].split()
        procs[int(entry)] = (int(fields[1]), int(fields[3]), int(fields[21]) * PAGE_SIZE)
    return procs


def process_tree(pid: int, procs: dict[int, tuple[int, int, int]]) -> set[int]:
    """Return the processes of a container: its session plus all descendants of ``pid``."""
    members = {p for p, (_pp, sid, _rss) in procs.items() if sid == pid}
    if pid in procs:
        members.add(pid)
    children: dict[int, list[int]] = {}
    for p, (pp, _sid, _rss) in procs.items():
        children.setdefault(pp, []).append(p)
    todo = [pid, *members]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in members:
                members.add(child)
                todo.append(child)
    return members


def signal_tree(pid: int, sig: int, leader_alive: bool = True) -> None:
    """Send ``sig`` to a container's process group and every process of its tree.

    Args:
        pid: The container's first process (leader of its session and process group).
        sig: The signal.
        leader_alive: Whether ``pid`` is not reaped yet; if it is, only its session is signalled
            (its children were re-parented, and the pid may have been reused).
    """
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
    procs = scan_processes()
    members = process_tree(pid, procs) if leader_alive else {p for p, v in procs.items() if v[1] == pid}
    for p in members:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(p, sig)


# --------------------------------------------------------------------------------------------
# API access (raw JSON through the kubernetes client)
# --------------------------------------------------------------------------------------------


def _json(resp: Any) -> JSON:
    data: JSON = json.loads(resp.data)
    return data


def _decode_data(obj: JSON, binary_key: str | None, text_key: str) -> dict[str, bytes]:
    out = {k: str(v).encode() for k, v in (obj.get(text_key) or {}).items()}
    if binary_key:
        out.update({k: base64.b64decode(v) for k, v in (obj.get(binary_key) or {}).items()})
    return out


_M = TypeVar("_M")


def _model(cls: type[_M], body: JSON) -> _M:
    obj = cls.from_dict(body)  # type: ignore[attr-defined]
    if obj is None:
        raise ValueError(f"cannot build {cls.__name__}")
    return cast(_M, obj)


class _Api:
    def __init__(self, kubeconfig: Path) -> None:
        cfg = k8s.Configuration()
        k8s_config.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg)
        cfg.connection_pool_maxsize = 32
        self.client = k8s.ApiClient(cfg)
        self.client.user_agent = (
            f"kubelet/{KUBELET_VERSION} (linux/{_go_arch()}) opsconductor-process-kubelet"
        )
        self.core = k8s.CoreV1Api(self.client)
        self.coord = k8s.CoordinationV1Api(self.client)
        self.watch_resp: Any = None

    def secret(self, namespace: str, name: str) -> dict[str, bytes] | None:
        try:
            obj = _json(self.core.read_namespaced_secret(name, namespace, _preload_content=False))
        except ApiException as e:
            if e.status == 404:
                return None
            raise
        return {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}

    def config_map(self, namespace: str, name: str) -> dict[str, bytes] | None:
        try:
            obj = _json(self.core.read_namespaced_config_map(name, namespace, _preload_content=False))
        except ApiException as e:
            if e.status == 404:
                return None
            raise
        return _decode_data(obj, "binaryData", "data")

    def token(self, pod: JSON, audience: str, expiration: int) -> tuple[str, float]:
        meta = pod["metadata"]
        body = _model(
            k8s.AuthenticationV1TokenRequest,
            {
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenRequest",
                "spec": {
                    "audiences": [audience] if audience else [],
                    "expirationSeconds": expiration,
                    "boundObjectRef": {
                        "apiVersion": "v1",
                        "kind": "Pod",
                        "name": meta["name"],
                        "uid": meta["uid"],
                    },
                },
            },
        )
        sa = pod["spec"].get("serviceAccountName") or "default"
        resp = _json(
            self.core.create_namespaced_service_account_token(
                sa, meta["namespace"], body, _preload_content=False
            )
        )
        status = resp["status"]
        return str(status["token"]), _parse_time(status["expirationTimestamp"])

    def patch_pod_status(self, namespace: str, name: str, status: JSON) -> None:
        self.core.patch_namespaced_pod_status(
            name,
            namespace,
            {"status": status},
            _content_type="application/merge-patch+json",
            _preload_content=False,
            _request_timeout=15,
        )

    def delete_pod(self, namespace: str, name: str, uid: str, attempts: int = 5) -> None:
        """Finalise a pod: delete it with grace period 0 (retried; gone already is fine)."""
        body = k8s.V1DeleteOptions(grace_period_seconds=0, preconditions=k8s.V1Preconditions(uid=uid))
        for attempt in range(attempts):
            try:
                self.core.delete_namespaced_pod(
                    name, namespace, body=body, _preload_content=False, _request_timeout=15
                )
                return
            except ApiException as e:
                if e.status in (404, 409):
                    return
                if attempt == attempts - 1:
                    raise
            except Exception:
                if attempt == attempts - 1:
                    raise
            time.sleep(1.0)

    def list_pods(self, node: str) -> tuple[list[JSON], str]:
        obj = _json(
            self.core.list_pod_for_all_namespaces(
                field_selector=f"spec.nodeName={node}", _preload_content=False, _request_timeout=30
            )
        )
        return list(obj.get("items") or []), str(obj["metadata"]["resourceVersion"])

    def watch_pods(self, node: str, resource_version: str, timeout: int) -> Iterator[JSON]:
        resp: Any = self.core.list_pod_for_all_namespaces(
            field_selector=f"spec.nodeName={node}",
            resource_version=resource_version,
            allow_watch_bookmarks=True,
            watch=True,
            timeout_seconds=timeout,
            _preload_content=False,
            _request_timeout=(10, timeout + 30),
        )
        self.watch_resp = resp
        try:
            buf = b""
            for chunk in resp.stream(amt=None, decode_content=False):
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if line.strip():
                        yield json.loads(line)
        finally:
            self.watch_resp = None
            resp.release_conn()

    def event(self, namespace: str, body: JSON) -> None:
        self.core.create_namespaced_event(
            namespace, _model(k8s.CoreV1Event, body), _preload_content=False, _request_timeout=10
        )


# --------------------------------------------------------------------------------------------
# Pod worker
# --------------------------------------------------------------------------------------------


class _Retry(Exception):
    """Container could not be started; waiting reason + message, retry later."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass
class _Run:
    popen: subprocess.Popen[bytes]
    started_at: str
    started_mono: float
    run_dir: Path
    oom: bool = False

    @property
    def pid(self) -> int:
        return self.popen.pid


@dataclass
class _Container:
    spec: JSON
    kind: str  # "init" | "sidecar" | "app"
    state: JSON = field(default_factory=dict)
    last_state: JSON = field(default_factory=dict)
    restart_count: int = 0
    run: _Run | None = None
    done: bool = False  # will not run again
    next_attempt: float = 0.0
    failures: int = 0
    image_id: str = ""
    container_id: str = ""
    pull_failures: int = 0

    @property
    def name(self) -> str:
        return str(self.spec["name"])

    @property
    def field_path(self) -> str:
        return f"spec.{'containers' if self.kind == 'app' else 'initContainers'}{{{self.name}}}"

    def view(self) -> ContainerView:
        kind = next(iter(self.state), "waiting")
        exit_code = self.state.get("terminated", {}).get("exitCode")
        return ContainerView(self.name, kind, exit_code, bool(self.last_state), kind == "running")


class _PodWorker:
    def __init__(self, kubelet: ProcessKubelet, pod: JSON) -> None:
        meta = pod["metadata"]
        self.thread = threading.Thread(
            target=self.run, name=f"pod-{meta['namespace']}/{meta['name']}", daemon=True
        )
        self.kubelet = kubelet
        self.api = kubelet.api
        self.cfg = kubelet.config
        self.pod = pod
        self.uid: str = meta["uid"]
        self.name: str = meta["name"]
        self.namespace: str = meta["namespace"]
        self.pod_dir = self.cfg.root_dir / "pods" / self.uid
        self.wake = threading.Event()
        self.gone = False  # removed from the API (force delete)
        self.shutdown = False  # kubelet stopping
        self.terminating = False
        self.phase = "Pending"
        self.reason: str | None = None
        self.message: str | None = None
        self.sandbox_ready = False
        self.start_time: str = (pod.get("status") or {}).get("startTime") or _now()
        self.last_status: str = ""
        self.cond_times: dict[str, tuple[str, str]] = {
            str(c.get("type")): (str(c.get("status")), str(c.get("lastTransitionTime") or _now()))
            for c in (pod.get("status") or {}).get("conditions") or []
        }
        self.status_retry_at = 0.0
        self.volume_paths: dict[str, Path] = {}
        self.volume_retry_at = 0.0
        self.volume_resync_at = 0.0
        self.volume_error = ""
        self.tokens: dict[tuple[str, int], tuple[str, float]] = {}
        self.next_memory_check = 0.0
        spec = pod["spec"]
        self.restart_policy: str = spec.get("restartPolicy") or "Always"
        self.containers: list[_Container] = [
            _Container(c, "sidecar" if c.get("restartPolicy") == "Always" else "init")
            for c in spec.get("initContainers") or []
        ] + [_Container(c, "app") for c in spec.get("containers") or []]
        has_init = any(c.kind != "app" for c in self.containers)
        for c in self.containers:
            reason = "PodInitializing" if has_init else "ContainerCreating"
            c.state = {"waiting": {"reason": reason}}
        self._restore(pod.get("status") or {})

    # -- inputs from the kubelet --------------------------------------------------------------

    def update(self, pod: JSON) -> None:
        self.pod = pod
        self.wake.set()

    def force_delete(self) -> None:
        self.gone = True
        self.wake.set()

    def stop(self) -> None:
        self.shutdown = True
        self.wake.set()

    # -- helpers ----------------------------------------------------------------------------

    def _event(self, c: _Container | None, type_: str, reason: str, message: str) -> None:
        obj = {
            "kind": "Pod",
            "apiVersion": "v1",
            "namespace": self.namespace,
            "name": self.name,
            "uid": self.uid,
        }
        if c is not None:
            obj["fieldPath"] = c.field_path
        self.kubelet.record_event(self.namespace, obj, type_, reason, message)

    def _app(self) -> list[_Container]:
        return [c for c in self.containers if c.kind == "app"]

    def _init_done(self) -> bool:
        for c in self.containers:
            if c.kind == "init" and not (c.done and c.state.get("terminated", {}).get("exitCode") == 0):
                return False
            if c.kind == "sidecar" and c.run is None and not c.last_state and not c.done:
                return False
        return True

    def _restore(self, status: JSON) -> None:
        """After a kubelet restart, pick up restart counts and finished containers from the status."""
        previous = {
            s["name"]: s
            for s in [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]
        }
        for c in self.containers:
            s = previous.get(c.name)
            if not s:
                continue
            c.restart_count = int(s.get("restartCount") or 0)
            state = s.get("state") or {}
            if "running" in state:
                terminated = {
                    "exitCode": 137,
                    "reason": "ContainerStatusUnknown",
                    "message": "The container could not be located when the pod was terminated",
                    "startedAt": state["running"].get("startedAt"),
                    "finishedAt": _now(),
                }
            elif "terminated" in state:
                terminated = dict(state["terminated"])
            else:
                continue
            self._after_exit(c, terminated)

    # -- main loop --------------------------------------------------------------------------

    def run(self) -> None:
        try:
            self._loop()
        except Exception:
            log.exception("pod %s/%s: worker failed", self.namespace, self.name)
            self._kill_all(signal.SIGKILL)
        finally:
            self.kubelet.worker_done(self)

    def _loop(self) -> None:
        while True:
            if self.shutdown:
                self._stop_containers(5.0)
                return
            if self.gone:
                self._kill_all(signal.SIGKILL)
                self._cleanup()
                return
            if self.pod["metadata"].get("deletionTimestamp"):
                self._delete_pod()
                return
            try:
                self._tick()
            except Exception:
                log.exception("pod %s/%s: sync failed", self.namespace, self.name)
                time.sleep(1.0)
            self._sync_status()
            if self.phase in TERMINAL and not any(c.run for c in self.containers):
                self._final_status()
                self._cleanup()
                return
            self.wake.wait(TICK)
            self.wake.clear()

    def _tick(self) -> None:
        self._reap()
        now = time.monotonic()
        if now >= self.next_memory_check:
            self.next_memory_check = now + MEMORY_POLL
            self._check_memory()
        deadline = self.pod["spec"].get("activeDeadlineSeconds")
        if (
            deadline is not None
            and self.phase not in TERMINAL
            and time.time() - _parse_time(self.start_time) > deadline
        ):
            self.reason = "DeadlineExceeded"
            self.message = "Pod was active on the node longer than the specified deadline"
            self._event(None, "Normal", "DeadlineExceeded", self.message)
            self.terminating = True
            self._stop_containers(float(self.pod["spec"].get("terminationGracePeriodSeconds", 30)))
            self.phase = "Failed"
            return
        if not self.sandbox_ready or now >= self.volume_resync_at:
            self._setup_volumes()
        if not self.sandbox_ready:
            return
        self._start_due()
        self.phase = self._phase()
        if self.phase in TERMINAL:
            self.terminating = True
            self._stop_containers(float(self.pod["spec"].get("terminationGracePeriodSeconds", 30)))

    def _phase(self) -> str:
        if self.reason == "DeadlineExceeded":
            return "Failed"
        init = [c.view() for c in self.containers if c.kind == "init"]
        app = [c.view() for c in self._app()]
        phase = podspec.pod_phase(self.restart_policy, init, app, self._init_done())
        if self.terminating and phase not in TERMINAL and not any(c.run for c in self._app()):
            succeeded = all(v.state == "terminated" and v.exit_code == 0 for v in app)
            phase = "Succeeded" if succeeded else "Failed"
        return phase

    # -- volumes ----------------------------------------------------------------------------

    def _setup_volumes(self) -> None:
        now = time.monotonic()
        if not self.sandbox_ready and now < self.volume_retry_at:
            return
        pod = self.pod
        fs_group = (pod["spec"].get("securityContext") or {}).get("fsGroup")
        paths: dict[str, Path] = {}
        try:
            secret_names, cm_names = volumes.volume_references(pod)
            inputs = volumes.VolumeInputs(
                secrets={n: self.api.secret(self.namespace, n) for n in secret_names},
                config_maps={n: self.api.config_map(self.namespace, n) for n in cm_names},
                node_allocatable=self.cfg.capacity,
                token=self._token,
            )
            for vol in pod["spec"].get("volumes") or []:
                name = vol["name"]
                target = self.pod_dir / "volumes" / name
                try:
                    if volumes.is_atomic_volume(vol):
                        volumes.write_atomic(target, volumes.volume_files(vol, pod, inputs), fs_group)
                    elif "emptyDir" in vol:
                        if not target.exists():
                            volumes.make_empty_dir(target, fs_group)
                    elif "hostPath" in vol:
                        target = volumes.host_path(vol["hostPath"])
                    else:
                        kind = next((k for k in vol if k != "name"), "?")
                        raise volumes.VolumeError(
                            f"volume type {kind} is not supported by the process kubelet"
                        )
                except volumes.VolumeError as e:
                    raise volumes.VolumeError(f'MountVolume.SetUp failed for volume "{name}" : {e}') from e
                paths[name] = target
        except (volumes.VolumeError, ApiException) as e:
            msg = (
                str(e)
                if isinstance(e, volumes.VolumeError)
                else f"MountVolume.SetUp failed: {e.status} {e.reason}"
            )
            if msg != self.volume_error:
                self._event(None, "Warning", "FailedMount", msg)
            self.volume_error = msg
            self.volume_retry_at = now + RETRY_CONFIG
            self.volume_resync_at = now + RETRY_CONFIG
            return
        self.volume_error = ""
        self.volume_paths = paths
        self.volume_resync_at = now + VOLUME_RESYNC
        for _token, refresh in self.tokens.values():  # re-request tokens at 80% of their life
            self.volume_resync_at = min(self.volume_resync_at, now + max(1.0, refresh - time.time()))
        self.sandbox_ready = True

    def _token(self, audience: str, expiration: int) -> str:
        key = (audience, expiration)
        cached = self.tokens.get(key)
        if cached and time.time() < cached[1]:
            return cached[0]
        issued = time.time()
        token, expires = self.api.token(self.pod, audience, expiration)
        refresh = issued + min(0.8 * (expires - issued), 24 * 3600)
        self.tokens[key] = (token, refresh)
        return token

    # -- starting containers ----------------------------------------------------------------

    def _start_due(self) -> None:
        now = time.monotonic()
        for c in self.containers:
            if c.kind == "app" and not self._init_done():
                break
            if c.run is None and not c.done and now >= c.next_attempt:
                self._start(c)
            if c.kind == "init" and not (c.done and c.state.get("terminated", {}).get("exitCode") == 0):
                break  # init containers run one at a time, in order, each to success
            if c.kind == "sidecar" and c.run is None and not c.last_state:
                break

    def _start(self, c: _Container) -> None:
        try:
            self._spawn(c)
        except _Retry as r:
            first = c.state.get("waiting", {}).get("message") != r.message
            if r.reason == "ErrImagePull":
                c.pull_failures += 1
                delay = min(5.0 * 2 ** (c.pull_failures - 1), MAX_BACKOFF)
                reason = "ErrImagePull" if c.pull_failures == 1 else "ImagePullBackOff"
                c.state = {"waiting": {"reason": reason, "message": r.message}}
                if c.pull_failures == 1:
                    self._event(c, "Warning", "Failed", r.message)
                    self._event(c, "Warning", "Failed", "Error: ErrImagePull")
                else:
                    self._event(c, "Normal", "BackOff", f'Back-off pulling image "{c.spec.get("image")}"')
                c.next_attempt = time.monotonic() + delay
                return
            c.state = {"waiting": {"reason": r.reason, "message": r.message}}
            if first:
                self._event(c, "Warning", "Failed", f"Error: {r.message}")
            c.next_attempt = time.monotonic() + RETRY_CONFIG

    def _spawn(self, c: _Container) -> None:
        pod, spec = self.pod, c.spec
        table = self.kubelet.image_table()
        image = str(spec.get("image", ""))
        entry = table.resolve(image)
        if entry is None:
            raise _Retry("ErrImagePull", podspec.image_pull_error(image, table))
        if not c.image_id:
            self._event(c, "Normal", "Pulled", f'Container image "{image}" already present on machine')
        c.image_id = entry.image_id()
        c.pull_failures = 0
        try:
            secret_names, cm_names = podspec.env_references(spec)
            ctx = podspec.EnvContext(
                secrets={n: self.api.secret(self.namespace, n) for n in secret_names},
                config_maps={n: self.api.config_map(self.namespace, n) for n in cm_names},
                service_env=podspec.service_env(self.cfg.api_host, self.cfg.api_port),
                node_allocatable=self.cfg.capacity,
                pod_ip=NODE_IP,
                host_ip=NODE_IP,
            )
            kube_env = podspec.build_env(pod, spec, ctx)
            ident = podspec.resolve_identity(pod, spec, entry)
            env = podspec.final_environment(
                kube_env, entry, podspec.pod_hostname(pod), os.environ, ident.home
            )
            argv = podspec.container_command(entry, spec, kube_env, sys.executable)
            mounts = podspec.container_mounts(spec, self.volume_paths, kube_env)
        except (podspec.ContainerConfigError, podspec.CreateContainerError) as e:
            raise _Retry(e.reason, str(e)) from e
        except ApiException as e:
            raise _Retry(
                "CreateContainerConfigError", f"failed to read referenced object: {e.status} {e.reason}"
            ) from e
        for m in mounts:  # the kubelet creates missing sub-paths as directories
            src = Path(m.source)
            if not src.exists() and not src.is_symlink():
                src.mkdir(parents=True, exist_ok=True)
        sc = podspec.effective_security(pod, spec)
        run_dir = self.pod_dir / "containers" / c.name / str(c.restart_count)
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir(parents=True)
        term_log = run_dir / "termination-log"
        term_log.touch()
        os.chmod(term_log, 0o666)
        init_spec = {
            "argv": argv,
            "env": env,
            "workingDir": spec.get("workingDir") or entry.working_dir,
            "uid": ident.uid,
            "gid": ident.gid,
            "groups": list(ident.groups),
            "hostname": podspec.pod_hostname(pod),
            "mounts": [{"source": m.source, "target": m.target, "readOnly": m.read_only} for m in mounts],
            "terminationLog": {
                "source": str(term_log),
                "target": spec.get("terminationMessagePath") or podspec.DEFAULT_TERMINATION_MESSAGE_PATH,
            },
            "readOnlyRootFilesystem": bool(sc.get("readOnlyRootFilesystem")),
            "noNewPrivs": sc.get("allowPrivilegeEscalation") is False,
            "capabilities": podspec.container_capabilities(pod, spec),
            "errorFile": str(run_dir / "start-error"),
            # The host's Python runtime is part of every "image" (see containerinit).
            "imagePaths": IMAGE_PATHS,
            "parentPid": os.getpid(),
        }
        spec_file = run_dir / "spec.json"
        fd = os.open(spec_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(init_spec, f)
        log_path = container_log_path(self.cfg.root_dir, self.uid, c.name)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        if log_path.exists() and c.restart_count > 0:
            os.replace(log_path, log_path.with_name(f"{c.name}.previous.log"))
        with open(log_path, "ab") as logf:
            popen = subprocess.Popen(
                [sys.executable, "-I", str(INIT_SCRIPT), str(spec_file)],
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
                cwd="/",
                env={"PATH": os.environ.get("PATH") or podspec.DEFAULT_PATH},
            )
        c.run = _Run(popen, _now(), time.monotonic(), run_dir)
        c.container_id = f"process://{popen.pid}"
        c.state = {"running": {"startedAt": c.run.started_at}}
        self._event(c, "Normal", "Created", f"Created container: {c.name}")
        self._event(c, "Normal", "Started", f"Started container {c.name}")
        log.info("pod %s/%s: started container %s (pid %d)", self.namespace, self.name, c.name, popen.pid)

    # -- running containers -----------------------------------------------------------------

    def _reap(self) -> None:
        for c in self.containers:
            if c.run is not None and c.run.popen.poll() is not None:
                self._exited(c)

    def _exited(self, c: _Container) -> None:
        assert c.run is not None
        run, rc = c.run, c.run.popen.returncode
        signal_tree(run.pid, signal.SIGKILL, leader_alive=False)  # its "pid namespace" goes with it
        exit_code = rc if rc >= 0 else 128 - rc
        error_file = run.run_dir / "start-error"
        start_error = error_file.read_text(errors="replace") if error_file.exists() else ""
        terminated: JSON = {"exitCode": exit_code, "startedAt": run.started_at, "finishedAt": _now()}
        if rc < 0:
            terminated["signal"] = -rc
        if start_error and rc == 128:
            terminated.update(reason="StartError", message=start_error)
            self._event(c, "Warning", "Failed", f"Error: {start_error}")
        else:
            terminated["reason"] = "OOMKilled" if run.oom else ("Completed" if exit_code == 0 else "Error")
            with open(run.run_dir / "termination-log", "rb") as f:
                file_content = f.read(podspec.MAX_TERMINATION_MESSAGE_BYTES)
            tail = None
            if not file_content and exit_code != 0:
                tail = _read_tail(container_log_path(self.cfg.root_dir, self.uid, c.name))
            msg = podspec.termination_message(
                file_content, tail, c.spec.get("terminationMessagePolicy"), exit_code
            )
            if msg:
                terminated["message"] = msg
        terminated["containerID"] = c.container_id
        if time.monotonic() - run.started_mono > 2 * MAX_BACKOFF:
            c.failures = 0  # ran long enough: back-off resets
        c.run = None
        log.info("pod %s/%s: container %s exited %d", self.namespace, self.name, c.name, exit_code)
        self._after_exit(c, terminated)

    def _after_exit(self, c: _Container, terminated: JSON) -> None:
        exit_code = int(terminated.get("exitCode", 1))
        if c.kind == "sidecar":
            restart = not self.terminating
        elif c.kind == "init":
            restart = exit_code != 0 and self.restart_policy != "Never" and not self.terminating
        else:
            restart = not self.terminating and (
                self.restart_policy == "Always" or (self.restart_policy == "OnFailure" and exit_code != 0)
            )
        if not restart:
            c.state = {"terminated": terminated}
            c.done = True
            return
        delay = 0.0 if c.failures == 0 else min(10.0 * 2 ** (c.failures - 1), MAX_BACKOFF)
        c.failures += 1
        c.restart_count += 1
        c.last_state = {"terminated": terminated}
        c.next_attempt = time.monotonic() + delay
        if delay > 0:
            pod_ref = f"{self.name}_{self.namespace}({self.uid})"
            msg = f"back-off {int(delay)}s restarting failed container={c.name} pod={pod_ref}"
            c.state = {"waiting": {"reason": "CrashLoopBackOff", "message": msg}}
            self._event(
                c, "Warning", "BackOff", f"Back-off restarting failed container {c.name} in pod {pod_ref}"
            )
        else:
            c.state = {"terminated": terminated}

    def _check_memory(self) -> None:
        limited = [
            (c, podspec.quantity(str(lim)))
            for c in self.containers
            if c.run is not None
            and (lim := ((c.spec.get("resources") or {}).get("limits") or {}).get("memory"))
        ]
        if not limited:
            return
        procs = scan_processes()
        for c, limit in limited:
            assert c.run is not None
            # the relay (the container's first pid) stays outside the container: not counted
            rss = sum(procs[p][2] for p in process_tree(c.run.pid, procs) - {c.run.pid} if p in procs)
            if rss > limit:
                log.info(
                    "pod %s/%s: container %s over memory limit (%d > %s)",
                    self.namespace,
                    self.name,
                    c.name,
                    rss,
                    limit,
                )
                c.run.oom = True
                signal_tree(c.run.pid, signal.SIGKILL)

    def _kill_all(self, sig: int) -> None:
        self.terminating = True
        for c in self.containers:
            if c.run is not None:
                signal_tree(c.run.pid, sig)
                if sig == signal.SIGKILL:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        c.run.popen.wait(timeout=5)
                    self._exited(c)

    def _stop_containers(self, grace: float) -> None:
        """SIGTERM every running container, wait up to ``grace`` seconds, then SIGKILL its whole tree."""
        self.terminating = True
        running = [c for c in self.containers if c.run is not None]
        for c in running:  # like a runtime: SIGTERM to the container's first process only
            self._event(c, "Normal", "Killing", f"Stopping container {c.name}")
            assert c.run is not None
            with contextlib.suppress(ProcessLookupError):
                os.kill(c.run.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while any(c.run for c in running):
            self._reap()
            if self.gone or time.monotonic() >= deadline:
                self._kill_all(signal.SIGKILL)
                break
            new_grace = self.pod["metadata"].get("deletionGracePeriodSeconds")
            if new_grace is not None:  # a deletion may shorten the grace period
                deadline = min(deadline, time.monotonic() + float(new_grace))
            self.wake.wait(0.1)
            self.wake.clear()
        for c in self.containers:  # never-started containers will not start any more
            c.done = True

    def _delete_pod(self) -> None:
        grace = float(self.pod["metadata"].get("deletionGracePeriodSeconds") or 0)
        self._stop_containers(grace)
        self.phase = self._phase()
        self._final_status()
        self.api.delete_pod(self.namespace, self.name, self.uid)
        self._cleanup()

    def _cleanup(self) -> None:
        """Tear down the volumes and run directories of a finished pod (logs are kept)."""
        shutil.rmtree(self.pod_dir / "volumes", ignore_errors=True)
        shutil.rmtree(self.pod_dir / "containers", ignore_errors=True)

    # -- status -----------------------------------------------------------------------------

    def _container_status(self, c: _Container) -> JSON:
        running = "running" in c.state
        return {
            "name": c.name,
            "image": c.spec.get("image", ""),
            "imageID": c.image_id,
            **({"containerID": c.container_id} if c.container_id else {}),
            "state": c.state,
            "lastState": c.last_state,
            "ready": running,
            "started": running,
            "restartCount": c.restart_count,
        }

    def build_status(self) -> JSON:
        phase = self.phase if self.phase in TERMINAL else self._phase()
        self.phase = phase
        init = [c.view() for c in self.containers if c.kind == "init"]
        conds = podspec.pod_conditions(
            phase, self.sandbox_ready, init, self._init_done(), [c.view() for c in self._app()]
        )
        ours = {c.type for c in conds}
        current = (self.pod.get("status") or {}).get("conditions") or []
        conditions: list[JSON] = [c for c in current if c.get("type") not in ours]  # e.g. PodScheduled
        for cond in conds:
            status = "True" if cond.status else "False"
            prev = self.cond_times.get(cond.type)
            since = prev[1] if prev and prev[0] == status else _now()
            self.cond_times[cond.type] = (status, since)
            entry: JSON = {
                "type": cond.type,
                "status": status,
                "lastProbeTime": None,
                "lastTransitionTime": since,
            }
            if cond.reason:
                entry["reason"] = cond.reason
            if cond.message:
                entry["message"] = cond.message
            conditions.append(entry)
        status_out: JSON = {
            "phase": phase,
            "conditions": conditions,
            "hostIP": NODE_IP,
            "hostIPs": [{"ip": NODE_IP}],
            "startTime": self.start_time,
            "containerStatuses": [self._container_status(c) for c in self._app()],
        }
        if self.sandbox_ready:
            status_out.update(podIP=NODE_IP, podIPs=[{"ip": NODE_IP}])
        inits = [self._container_status(c) for c in self.containers if c.kind != "app"]
        if inits:
            status_out["initContainerStatuses"] = inits
        if self.reason:
            status_out.update(reason=self.reason, message=self.message)
        if self.pod["metadata"].get("generation") is not None:
            status_out["observedGeneration"] = self.pod["metadata"]["generation"]
        return status_out

    def _sync_status(self, force: bool = False) -> bool:
        """Patch the pod status if it changed; return whether the API has the current status."""
        status = self.build_status()
        key = json.dumps(status, sort_keys=True)  # stable: transition times change only on change
        if key == self.last_status:
            return True
        if not force and time.monotonic() < self.status_retry_at:
            return False
        try:
            self.api.patch_pod_status(self.namespace, self.name, status)
        except ApiException as e:
            if e.status == 404:
                self.gone = True
                return True
            log.warning(
                "pod %s/%s: status update failed: %s %s", self.namespace, self.name, e.status, e.reason
            )
            self.status_retry_at = time.monotonic() + 1.0
            return False
        except Exception as e:  # connection errors: retry on the next tick
            log.warning("pod %s/%s: status update failed: %s", self.namespace, self.name, e)
            self.status_retry_at = time.monotonic() + 1.0
            return False
        self.last_status = key
        return True

    def _final_status(self) -> None:
        for _ in range(30):
            if self._sync_status(force=True) or self.shutdown:
                return
            time.sleep(1.0)


def _read_tail(path: Path, max_read: int = 64 * 1024) -> bytes:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_read))
            return f.read()
    except OSError:
        return b""


# --------------------------------------------------------------------------------------------
# The kubelet
# --------------------------------------------------------------------------------------------


class ProcessKubelet:
    """A node agent running the pods bound to its Node as local processes."""

    def __init__(self, config: KubeletConfig) -> None:
        self.config = config
        self.api = _Api(config.kubeconfig)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._workers: dict[str, _PodWorker] = {}
        self._finished: set[str] = set()
        self._finalising: set[str] = set()
        self._threads: list[threading.Thread] = []
        self._events: list[tuple[str, JSON]] = []
        self._events_cv = threading.Condition()
        self._table = config.images
        self._table_mtime = self._mtime()
        self._transition_time = _now()
        self._server: KubeletServer | None = None
        # (namespace, pod) -> uid of pods this kubelet ran, so logs stay reachable after the pod ends.
        self._pod_uids: OrderedDict[tuple[str, str], str] = OrderedDict()
        if config.tls_cert and config.tls_key and config.client_ca:
            self._server = KubeletServer(
                self.container_log, config.tls_cert, config.tls_key, config.client_ca
            )

    def container_log(self, namespace: str, pod: str, container: str, previous: bool) -> ContainerLog | None:
        """Find a container's log file (kubelet API ``/containerLogs``); None if no such log.

        Logs outlive their pod's worker (a finished pod's worker is gone): the file is found by the
        pod's uid, and "running" is whether a worker still runs that container.
        """
        with self._lock:
            uid = self._pod_uids.get((namespace, pod))
            worker = self._workers.get(uid) if uid else None
        if uid is None:
            return None
        path = container_log_path(self.config.root_dir, uid, container)
        if previous:
            path = path.with_name(f"{container}.previous.log")
        runs = [c for c in (worker.containers if worker else []) if c.name == container]

        def running() -> bool:
            return any(c.run is not None for c in runs) and not self._stop.is_set()

        return ContainerLog(path, running)

    def _mtime(self) -> float:
        src = self._table.source
        try:
            return src.stat().st_mtime if src else 0.0
        except OSError:
            return 0.0

    def image_table(self) -> ImageTable:
        """Return the image table, reloaded if its file changed (a "pull" retry sees new entries)."""
        mtime = self._mtime()
        if self._table.source and mtime != self._table_mtime:
            try:
                self._table = load_image_table(self._table.source)
                self._table_mtime = mtime
            except (OSError, ValueError) as e:
                log.warning("image table %s not reloaded: %s", self._table.source, e)
        return self._table

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Register the Node, start lease renewal and the pod watch; return once the Node is Ready.

        Raises:
            RuntimeError: Not running as root (mount namespaces and uid switching need it).
        """
        if os.geteuid() != 0:
            raise RuntimeError(
                "the process kubelet must run as root (it bind-mounts volumes and switches users)"
            )
        self.config.root_dir.mkdir(parents=True, exist_ok=True)
        if self._server is not None:
            self._server.start()
        self._register_node()
        self._renew_lease()
        for target, name in (
            (self._lease_loop, "kubelet-lease"),
            (self._watch_loop, "kubelet-watch"),
            (self._event_loop, "kubelet-events"),
        ):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        self._wait_schedulable(60.0)

    def stop(self) -> None:
        """Kill all running containers (SIGTERM, then SIGKILL) and stop the threads."""
        self._stop.set()
        resp = self.api.watch_resp
        if resp is not None:
            with contextlib.suppress(Exception):
                resp.shutdown()
        with self._lock:
            workers = list(self._workers.values())
        for w in workers:
            w.stop()
        for w in workers:
            w.thread.join(timeout=15)
        with self._events_cv:
            self._events_cv.notify_all()
        for t in self._threads:
            t.join(timeout=5)
        if self._server is not None:
            self._server.stop()

    def worker_done(self, worker: _PodWorker) -> None:
        """Forget a pod worker that exited (a pod being deleted is finalised)."""
        with self._lock:
            if self._workers.get(worker.uid) is worker:
                del self._workers[worker.uid]
            if worker.gone or worker.shutdown:
                return
            self._finished.add(worker.uid)
            pod = worker.pod
        if pod["metadata"].get("deletionTimestamp") and not self._stop.is_set():
            self._finalise(pod)

    # -- node -------------------------------------------------------------------------------

    def _node_status(self) -> JSON:
        now = _now()
        cap = dict(self.config.capacity)

        def cond(type_: str, status: str, reason: str, message: str) -> JSON:
            return {
                "type": type_,
                "status": status,
                "reason": reason,
                "message": message,
                "lastHeartbeatTime": now,
                "lastTransitionTime": self._transition_time,
            }

        uname = platform.uname()
        return {
            "capacity": cap,
            "allocatable": cap,
            "conditions": [
                cond(
                    "MemoryPressure",
                    "False",
                    "KubeletHasSufficientMemory",
                    "kubelet has sufficient memory available",
                ),
                cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
                cond(
                    "PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"
                ),
                cond("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
            ],
            "addresses": [
                {"type": "InternalIP", "address": NODE_IP},
                {"type": "Hostname", "address": self.config.node_name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self._server.port if self._server else 0}},
            "nodeInfo": {
                "machineID": _read_id("/etc/machine-id"),
                "systemUUID": _read_id("/sys/class/dmi/id/product_uuid"),
                "bootID": _read_id("/proc/sys/kernel/random/boot_id"),
                "kernelVersion": uname.release,
                "osImage": _os_image(),
                "containerRuntimeVersion": "process://0.1.0",
                "kubeletVersion": KUBELET_VERSION,
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": _go_arch(),
            },
        }

    def _register_node(self) -> None:
        name = self.config.node_name
        labels = {
            "kubernetes.io/hostname": name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": _go_arch(),
            "beta.kubernetes.io/os": "linux",
            "beta.kubernetes.io/arch": _go_arch(),
        }
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "labels": labels,
                "annotations": {"volumes.kubernetes.io/controller-managed-attach-detach": "true"},
            },
            "status": self._node_status(),
        }
        try:
            self.api.core.create_node(_model(k8s.V1Node, body), _preload_content=False)
            log.info("registered node %s", name)
        except ApiException as e:
            if e.status != 409:
                raise
            self.api.core.patch_node(
                name,
                {"metadata": {"labels": labels}},
                _content_type="application/merge-patch+json",
                _preload_content=False,
            )
        self._post_node_status()

    def _post_node_status(self) -> None:
        self.api.core.patch_node_status(
            self.config.node_name,
            {"status": self._node_status()},
            _content_type="application/merge-patch+json",
            _preload_content=False,
            _request_timeout=15,
        )

    def _wait_schedulable(self, timeout: float) -> None:
        """Wait until the node lifecycle controller lifted the not-ready taint (the Node is Ready)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            node = _json(self.api.core.read_node(self.config.node_name, _preload_content=False))
            taints = (node.get("spec") or {}).get("taints") or []
            if not any(t.get("key", "").startswith("node.kubernetes.io/not-ready") for t in taints):
                return
            time.sleep(0.5)
        log.warning("node %s still tainted not-ready after %.0fs", self.config.node_name, timeout)

    def _renew_lease(self) -> None:
        name = self.config.node_name
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        spec = {"holderIdentity": name, "leaseDurationSeconds": LEASE_SECONDS, "renewTime": now}
        try:
            self.api.coord.patch_namespaced_lease(
                name,
                "kube-node-lease",
                {"spec": spec},
                _content_type="application/merge-patch+json",
                _preload_content=False,
                _request_timeout=10,
            )
        except ApiException as e:
            if e.status != 404:
                raise
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {
                    "name": name,
                    "namespace": "kube-node-lease",
                    "ownerReferences": [
                        {"apiVersion": "v1", "kind": "Node", "name": name, "uid": self._node_uid()}
                    ],
                },
                "spec": spec,
            }
            self.api.coord.create_namespaced_lease(
                "kube-node-lease", _model(k8s.V1Lease, body), _preload_content=False
            )

    def _node_uid(self) -> str:
        node = _json(self.api.core.read_node(self.config.node_name, _preload_content=False))
        return str(node["metadata"]["uid"])

    def _lease_loop(self) -> None:
        next_status = time.monotonic() + NODE_STATUS_EVERY
        while not self._stop.wait(LEASE_RENEW):
            try:
                self._renew_lease()
                if time.monotonic() >= next_status:
                    self._post_node_status()
                    next_status = time.monotonic() + NODE_STATUS_EVERY
            except Exception as e:
                log.warning("lease/node status update failed: %s", e)

    # -- pods -------------------------------------------------------------------------------

    def _watch_loop(self) -> None:
        rv: str | None = None
        backoff = 1.0
        while not self._stop.is_set():
            try:
                if rv is None:
                    items, rv = self.api.list_pods(self.config.node_name)
                    self._resync(items)
                for ev in self.api.watch_pods(self.config.node_name, rv, 300):
                    if self._stop.is_set():
                        return
                    obj = ev.get("object") or {}
                    if ev.get("type") == "ERROR":
                        if obj.get("code") == 410:
                            rv = None
                            break
                        raise RuntimeError(f"watch error: {obj.get('message')}")
                    rv = (obj.get("metadata") or {}).get("resourceVersion") or rv
                    if ev.get("type") != "BOOKMARK":
                        self._dispatch(str(ev.get("type")), obj)
                backoff = 1.0
            except ApiException as e:
                if e.status == 410:
                    rv = None
                    continue
                if not self._stop.is_set():
                    log.warning("pod watch failed: %s %s; retrying in %.0fs", e.status, e.reason, backoff)
            except Exception as e:
                if self._stop.is_set():
                    return
                log.warning("pod watch failed: %s; retrying in %.0fs", e, backoff)
            else:
                continue
            if self._stop.wait(backoff):
                return
            backoff = min(backoff * 2, 30.0)

    def _resync(self, pods: list[JSON]) -> None:
        present = {p["metadata"]["uid"] for p in pods}
        with self._lock:
            for uid, w in self._workers.items():
                if uid not in present:
                    w.force_delete()
            self._finished &= present
        for p in pods:
            self._dispatch("MODIFIED", p)

    def _dispatch(self, type_: str, pod: JSON) -> None:
        uid = pod["metadata"]["uid"]
        with self._lock:
            w = self._workers.get(uid)
            if type_ == "DELETED":
                if w is not None:
                    w.force_delete()
                self._finished.discard(uid)
                return
            if w is not None:
                w.update(pod)
                return
            phase = (pod.get("status") or {}).get("phase")
            if uid in self._finished or phase in TERMINAL:
                self._finished.add(uid)
                finalise = bool(pod["metadata"].get("deletionTimestamp"))
            else:
                finalise = False
                w = _PodWorker(self, pod)
                self._workers[uid] = w
                self._pod_uids[(w.namespace, w.name)] = uid
                if len(self._pod_uids) > 10_000:
                    self._pod_uids.popitem(last=False)
                w.thread.start()
        if finalise:
            self._finalise(pod)

    def _finalise(self, pod: JSON) -> None:
        """Delete (grace 0) a terminal pod that is being deleted, as the kubelet does."""
        uid = pod["metadata"]["uid"]
        with self._lock:
            if uid in self._finalising:
                return
            self._finalising.add(uid)

        def work() -> None:
            try:
                self.api.delete_pod(pod["metadata"]["namespace"], pod["metadata"]["name"], uid)
                root = self.config.root_dir / "pods" / uid
                for sub in ("volumes", "containers"):
                    shutil.rmtree(root / sub, ignore_errors=True)
            except Exception as e:
                log.warning("finalising pod %s failed: %s", pod["metadata"]["name"], e)
            finally:
                with self._lock:
                    self._finalising.discard(uid)

        threading.Thread(target=work, name=f"finalise-{uid}", daemon=True).start()

    # -- events -----------------------------------------------------------------------------

    def record_event(self, namespace: str, involved: JSON, type_: str, reason: str, message: str) -> None:
        """Queue a core/v1 Event from this kubelet about ``involved``."""
        now = _now()
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{involved['name']}.{uuid.uuid4().hex[:16]}", "namespace": namespace},
            "involvedObject": involved,
            "reason": reason,
            "message": message,
            "type": type_,
            "source": {"component": "kubelet", "host": self.config.node_name},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
            "reportingComponent": "kubelet",
            "reportingInstance": self.config.node_name,
        }
        with self._events_cv:
            if len(self._events) < 1000:
                self._events.append((namespace, body))
            self._events_cv.notify()

    def _event_loop(self) -> None:
        while True:
            with self._events_cv:
                while not self._events and not self._stop.is_set():
                    self._events_cv.wait(1.0)
                if self._stop.is_set():
                    return
                namespace, body = self._events.pop(0)
            try:
                self.api.event(namespace, body)
            except Exception as e:
                log.debug("event %s not recorded: %s", body["reason"], e)


def _read_id(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


def _os_image() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return "Linux"


def _go_arch() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm"}.get(machine, machine)


def main(argv: list[str] | None = None) -> int:
    """Run the process kubelet until SIGTERM/SIGINT.

    Args:
        argv: Command-line arguments (default ``sys.argv[1:]``).

    Returns:
        The exit code.
    """
    parser = argparse.ArgumentParser(prog="opsconductor-kubelet", description=__doc__.splitlines()[0])
    parser.add_argument("--kubeconfig", type=Path, required=True)
    parser.add_argument("--node-name", required=True)
    parser.add_argument("--root-dir", type=Path, required=True)
    parser.add_argument("--images", type=Path, default=Path(__file__).with_name("images.yaml"))
    parser.add_argument("--api-host", default="127.0.0.1")
    parser.add_argument("--api-port", type=int, required=True)
    parser.add_argument("--tls-cert-file", type=Path, help="serving certificate of the kubelet API (logs)")
    parser.add_argument("--tls-private-key-file", type=Path)
    parser.add_argument("--client-ca-file", type=Path, help="CA of the API server's kubelet-client cert")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(threadName)s %(message)s")
    kubelet = ProcessKubelet(
        KubeletConfig(
            kubeconfig=args.kubeconfig,
            node_name=args.node_name,
            root_dir=args.root_dir,
            images=load_image_table(args.images),
            api_host=args.api_host,
            api_port=args.api_port,
            tls_cert=args.tls_cert_file,
            tls_key=args.tls_private_key_file,
            client_ca=args.client_ca_file,
        )
    )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    kubelet.start()
    log.info("process kubelet %s running", args.node_name)
    stop.wait()
    kubelet.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
