"""Real local hosts for the examples: the example Targets re-pointed at sshd and HTTP on loopback.

``examples/`` is written for a real estate (``web01.example.com``, pinned host keys, a placeholder
key in the Secret). :class:`ExampleHosts` starts one real OpenSSH server per example SSH Target
(127.0.0.21, 127.0.0.22, ...) and an HTTP server for the HTTP Target, and renders the example
Targets and the ``linux-admin`` Secret with local addresses, ports, host keys and a real key. The
example OpsJobs are then applied unchanged. Used by ``make demo`` and ``tests/e2e/test_examples_run.py``.

The service-restart example runs ``systemctl`` with ``sudo: true``, which the runner executes as
``sudo -n -- /bin/sh -c ...`` (as Ansible's become does). So the local test account may run
``/bin/sh`` as root without a password on these throwaway hosts, and sudo's ``secure_path`` puts a
stub ``systemctl`` (recording its calls) first; so does the sshd's ``SetEnv PATH`` for commands
without sudo.

Windows Targets need a WinRM endpoint, which this package does not provide (the WinRM test server
lives with the tests, ``tests/winrm``): the caller starts one per Windows example Target and sets
:attr:`ExampleHosts.windows`; Windows Targets without an endpoint are left out of the manifests.
"""

from __future__ import annotations

import base64
import copy
import json
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

from opsconductor.localcluster.controlplane import REPO_ROOT
from opsconductor.localcluster.sshd import (
    SshdFactory,
    SshServer,
    ensure_test_user,
    generate_client_keys,
    state_lock,
)

EXAMPLES = REPO_ROOT / "examples"
# Not under STATE_DIR (root only): the test account must be able to run the stub without sudo.
HOST_DIR = Path("/var/lib/opsconductor-example-hosts")
STUB_DIR = HOST_DIR / "bin"
SYSTEMCTL_LOG = HOST_DIR / "systemctl.log"
SUDOERS_STUB = Path("/etc/sudoers.d/opsconductor-example-hosts")
EXAMPLE_USER = "opsc-example"
# Files the examples create on their hosts (all hosts share this machine's file system); removed
# at start so every run begins from a clean host, whoever ran the examples before.
EXAMPLE_OUTPUTS = (Path("/tmp/web01-config.tgz"), Path("/tmp/backups"))
_SYSTEMCTL_STUB = f"""#!/bin/sh
# Stand-in for systemctl on OpsConductor's local example hosts: records the call.
echo "$*" >> {SYSTEMCTL_LOG}
case "$1" in is-active) echo active ;; esac
"""


def _load(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if isinstance(doc, dict)]


class _HealthHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        healthy = self.path.rstrip("/").endswith("/healthz")
        body = json.dumps({"status": "ok" if healthy else "unknown path"}).encode()
        self.send_response(200 if healthy else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@dataclass(frozen=True)
class WindowsEndpoint:
    """Where the stand-in for one example Windows Target listens, and how to log in to it."""

    address: str
    port: int
    scheme: str
    username: str
    password: str
    ca_bundle_pem: str | None = None
    """The CA that issued the endpoint's certificate (https), rendered into the ``corp-ca`` Secret."""


@dataclass
class ExampleHosts:
    """Local stand-ins for the example Targets."""

    first_address: int = 21
    servers: dict[str, SshServer] = field(default_factory=dict)
    windows: dict[str, WindowsEndpoint] = field(default_factory=dict)
    """Windows Target name → the WinRM endpoint standing in for it (set by the caller)."""
    http_port: int = 0
    _root: Path | None = None
    _factory: SshdFactory | None = None
    _httpd: ThreadingHTTPServer | None = None

    def start(self) -> None:
        """Start sshd per example SSH Target and the HTTP server; install the systemctl stub."""
        for output in EXAMPLE_OUTPUTS:
            if output.is_dir():
                shutil.rmtree(output, ignore_errors=True)
            else:
                output.unlink(missing_ok=True)
        self._root = Path(tempfile.mkdtemp(prefix="opsc-example-hosts-"))
        self._root.chmod(0o755)
        # Its own account: the sudo rule below must not widen what the SSH tests' account may do.
        user = ensure_test_user(self._root / "credentials", name=EXAMPLE_USER)
        keys = generate_client_keys(self._root / "client-keys")
        self._factory = SshdFactory(self._root, user, keys)
        self._install_systemctl_stub(user.name)
        ssh_targets = [
            t for t in _load(EXAMPLES / "targets" / "linux-web.yaml") if t["spec"]["protocol"] == "ssh"
        ]
        for index, target in enumerate(ssh_targets):
            self.servers[target["metadata"]["name"]] = self._factory(
                f"127.0.0.{self.first_address + index}",
                extra_config=[f"SetEnv PATH={STUB_DIR}:/usr/local/bin:/usr/bin:/bin"],
            )
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _HealthHandler)
        self.http_port = self._httpd.server_address[1]
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()

    def _install_systemctl_stub(self, user: str) -> None:
        with state_lock():
            STUB_DIR.mkdir(parents=True, exist_ok=True)
            HOST_DIR.chmod(0o755)
            STUB_DIR.chmod(0o755)
            stub = STUB_DIR / "systemctl"
            stub.write_text(_SYSTEMCTL_STUB)
            stub.chmod(0o755)
            SYSTEMCTL_LOG.touch()
            SYSTEMCTL_LOG.chmod(0o666)
            rule = (
                f'Defaults:{user} secure_path="{STUB_DIR}:/usr/sbin:/usr/bin:/sbin:/bin"\n'
                f"{user} ALL=(root) NOPASSWD: /bin/sh\n"
            )
            if not SUDOERS_STUB.exists() or SUDOERS_STUB.read_text() != rule:
                staged = SUDOERS_STUB.with_name(".opsconductor-example-hosts.new")
                staged.write_text(rule)
                staged.chmod(0o440)
                subprocess.run(["visudo", "-cqf", str(staged)], check=True, capture_output=True)
                staged.replace(SUDOERS_STUB)

    def manifests(self) -> str:
        """Render the ``linux-admin`` Secret and the example Targets, pointing at the local hosts."""
        assert self._factory is not None, "start() first"
        user, key = self._factory.user, self._factory.keys.ed25519
        documents: list[dict[str, Any]] = []
        for doc in _load(EXAMPLES / "credentials" / "linux-admin.yaml"):
            if doc["kind"] == "Secret":
                doc = copy.deepcopy(doc)
                doc.pop("stringData", None)
                doc["data"] = {
                    "username": base64.b64encode(user.name.encode()).decode(),
                    "ssh-privatekey": base64.b64encode(key.path.read_bytes()).decode(),
                }
            documents.append(doc)
        for target in _load(EXAMPLES / "targets" / "linux-web.yaml"):
            server = self.servers[target["metadata"]["name"]]
            target = copy.deepcopy(target)
            target["spec"].update(address=server.address, port=server.port)
            target["spec"]["ssh"] = {"hostKeys": server.host_key_lines}
            documents.append(target)
        for target in _load(EXAMPLES / "targets" / "http-api.yaml"):
            target = copy.deepcopy(target)
            target["spec"].update(address="127.0.0.1", port=self.http_port)
            target["spec"]["http"] = {**target["spec"].get("http", {}), "scheme": "http"}
            documents.append(target)
        documents += self._windows_manifests()
        return "\n---\n".join(json.dumps(d) for d in documents)

    def _windows_manifests(self) -> list[dict[str, Any]]:
        """Render the ``windows-admin``/``corp-ca`` Secrets and the Windows Targets that have an endpoint."""
        if not self.windows:
            return []
        first = next(iter(self.windows.values()))
        documents: list[dict[str, Any]] = []
        for doc in _load(EXAMPLES / "credentials" / "windows-admin.yaml"):
            if doc["kind"] == "Secret":
                doc = copy.deepcopy(doc)
                doc["stringData"] = {"username": first.username, "password": first.password}
            documents.append(doc)
        ca = next((e.ca_bundle_pem for e in self.windows.values() if e.ca_bundle_pem), None)
        if ca is not None:
            for doc in _load(EXAMPLES / "credentials" / "corp-ca.yaml"):
                doc = copy.deepcopy(doc)
                doc["stringData"] = {"ca.crt": ca}
                documents.append(doc)
        for target in _load(EXAMPLES / "targets" / "windows.yaml"):
            endpoint = self.windows.get(target["metadata"]["name"])
            if endpoint is None:
                continue
            target = copy.deepcopy(target)
            target["spec"].update(address=endpoint.address, port=endpoint.port)
            target["spec"].setdefault("winrm", {})["scheme"] = endpoint.scheme
            target["spec"].pop("probe", None)
            documents.append(target)
        return documents

    @staticmethod
    def systemctl_calls() -> list[str]:
        """Return what the stub systemctl was asked to do so far."""
        return SYSTEMCTL_LOG.read_text().splitlines() if SYSTEMCTL_LOG.exists() else []

    def stop(self) -> None:
        """Stop the servers and remove their files."""
        if self._factory is not None:
            self._factory.stop_all()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)
