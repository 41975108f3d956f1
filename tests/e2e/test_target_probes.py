"""Target probes through the operator: probe pods against real sshd and HTTP servers, backoff, CLI."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
from datetime import datetime
from typing import Any

from opsconductor.constants import ANNOTATION_PROBE
from opsconductor.localcluster.controlplane import ControlPlane
from opsconductor.localcluster.operatorprocess import OperatorProcess
from tests.e2e.servers import recording_server
from tests.e2e.test_opsjob_winrm import windows_manifest
from tests.fixtures.sshd import ClientKeys, SshdFactory
from tests.kube import Kubectl, wait_until
from tests.winrm.fixtures import WinrmServerFactory

CANARY = "canary-Probe-k3Jd9sPq"  # an extra Secret value that must never appear anywhere


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def get(k: Kubectl, name: str) -> dict[str, Any]:
    return k.get("target", name)


def probed(k: Kubectl, name: str, failures: int | None = None) -> dict[str, Any]:
    """Wait for a finished probe (optionally the n-th failure in a row); return the Target."""

    def done() -> dict[str, Any] | None:
        target = get(k, name)
        status = target.get("status") or {}
        if not status.get("lastProbe") or status.get("activeProbe"):
            return None
        if failures is not None and status.get("consecutiveProbeFailures") != failures:
            return None
        return target

    return wait_until(done, timeout=90, what=f"a probe result of Target {name}")


def reachable(target: dict[str, Any]) -> tuple[str, str]:
    condition = next(c for c in target["status"]["conditions"] if c["type"] == "Reachable")
    return condition["status"], condition["reason"]


def target_events(k: Kubectl, name: str) -> list[tuple[str, str]]:
    items = json.loads(
        k.run(
            "get",
            "events",
            "--field-selector",
            f"involvedObject.name={name},involvedObject.kind=Target",
            "-o",
            "json",
        ).stdout
    )
    return [(e["type"], e["reason"]) for e in items["items"]]


def probe_pods(k: Kubectl, name: str) -> list[str]:
    out = k.run("get", "pods", "-l", f"opsconductor.io/target={name}", "-o", "name").stdout
    return out.split()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_ssh_target_probe_fills_facts_and_wide_columns_without_leaking_secrets(
    k: Kubectl, sshd_server: SshdFactory, ssh_keys: ClientKeys, operator: OperatorProcess
) -> None:
    server = sshd_server("127.0.0.41")
    key = ssh_keys.ed25519_protected
    assert key.passphrase is not None
    k.apply(
        f"""apiVersion: v1
kind: Secret
metadata: {{name: ops-ssh}}
data:
  username: {b64(server.user.name)}
  ssh-privatekey: {b64(key.path.read_text())}
  passphrase: {b64(key.passphrase)}
  note: {b64(CANARY)}
---
apiVersion: opsconductor.io/v1alpha1
kind: Credential
metadata: {{name: ops-ssh}}
spec: {{type: SSHKey, secretRef: {{name: ops-ssh}}}}
---
apiVersion: opsconductor.io/v1alpha1
kind: Target
metadata: {{name: web-01}}
spec:
  address: {server.address}
  port: {server.port}
  protocol: ssh
  credentialRef: {{name: ops-ssh}}
  ssh: {{hostKeys: {json.dumps(server.host_key_lines)}}}
  probe: {{}}
"""
    )
    target = probed(k, "web-01")
    status = target["status"]
    assert reachable(target) == ("True", "Connected"), json.dumps(status, indent=1)
    facts = status["facts"]
    assert facts["hostname"] == socket.gethostname()
    assert facts["osName"] == "Linux"
    assert facts["kernel"] == os.uname().release
    assert facts["uptimeSeconds"] > 0
    assert status["lastProbe"]["reachable"] is True
    assert status["lastProbe"]["latencyMilliseconds"] >= 0
    assert status["consecutiveProbeFailures"] == 0
    assert "nextProbeTime" not in status  # no interval: on demand only
    assert target_events(k, "web-01") == [("Normal", "Reachable")]
    wait_until(lambda: probe_pods(k, "web-01") == [], what="the probe pod to be cleaned up")

    wide = k.run("get", "targets", "-o", "wide").stdout.splitlines()
    header, row = wide[0].split(), wide[1].split()
    assert header[:6] == ["NAME", "ADDRESS", "PROTOCOL", "OS", "REACHABLE", "AGE"]
    assert row[:5] == ["web-01", server.address, "ssh", "Linux", "True"]
    assert socket.gethostname() in row

    # The Credential was validated too: the key's fingerprint, never its material.
    credential = wait_until(
        lambda: (c := k.get("credential", "ops-ssh")).get("status", {}).get("publicKeyFingerprint") and c,
        what="the Credential's fingerprint",
    )
    assert credential["status"]["publicKeyFingerprint"] == key.fingerprint
    everything = {
        "target": json.dumps(target),
        "credential": json.dumps(credential),
        "events": k.run("get", "events", "-o", "json").stdout,
        "operator log": operator.log.read_text(errors="replace"),
    }
    for where, text in everything.items():
        assert CANARY not in text, f"the canary leaked into the {where}"
        assert key.passphrase not in text, f"the passphrase leaked into the {where}"


def test_http_probe_and_the_cli(k: Kubectl, control_plane: ControlPlane) -> None:
    with recording_server() as server:
        port = int(server.url.rsplit(":", 1)[1])
        k.apply(
            f"""apiVersion: opsconductor.io/v1alpha1
kind: Target
metadata: {{name: api-01}}
spec:
  address: 127.0.0.1
  port: {port}
  protocol: http
  http: {{scheme: http, basePath: /healthz}}
"""
        )
        env = {**os.environ, "KUBECONFIG": str(control_plane.admin_kubeconfig)}
        command = [sys.executable, "-m", "opsconductor.cli", "probe", "target/api-01", "-n", k.namespace]
        result = subprocess.run(
            [*command, "--wait", "-o", "json"], env=env, capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, result.stderr
        outcome = json.loads(result.stdout)
        assert outcome["reachable"] is True
        assert outcome["reason"] == "Connected"
        assert outcome["message"] == "GET /healthz: HTTP 200 OK"
        assert server.count("/healthz") == 1
        target = get(k, "api-01")
        assert target["status"]["handledProbeRequest"] == outcome["request"]
        assert reachable(target) == ("True", "Connected")

        table = subprocess.run([*command, "--wait"], env=env, capture_output=True, text=True, timeout=120)
        assert table.returncode == 0, table.stderr
        assert "Reachable  yes (Connected)" in table.stdout
        assert server.count("/healthz") == 2  # a new request value probes again

    missing = subprocess.run(
        [sys.executable, "-m", "opsconductor.cli", "probe", "target/nope", "-n", k.namespace],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode == 1 and "not found" in missing.stderr


def test_unreachable_target_backs_off_with_one_event(k: Kubectl) -> None:
    k.apply(
        f"""apiVersion: opsconductor.io/v1alpha1
kind: Target
metadata: {{name: gone-01}}
spec:
  address: 127.0.0.1
  port: {closed_port()}
  protocol: http
  http: {{scheme: http}}
  probe: {{intervalSeconds: 30, timeoutSeconds: 5}}
"""
    )
    gaps = []
    for failures in (1, 2, 3):
        if failures > 1:  # on-demand probes run at once, whatever the backoff
            k.run("annotate", "--overwrite", "target", "gone-01", f"opsconductor.io/probe=again-{failures}")
        target = probed(k, "gone-01", failures)
        status = target["status"]
        assert reachable(target) == ("False", "ConnectionRefused"), json.dumps(status, indent=1)
        assert "refused" in status["lastProbe"]["message"].lower()
        assert "facts" not in status
        probe_time = datetime.fromisoformat(status["lastProbe"]["time"].replace("Z", "+00:00"))
        next_time = datetime.fromisoformat(status["nextProbeTime"].replace("Z", "+00:00"))
        gaps.append((next_time - probe_time).total_seconds())
    assert gaps == [30, 60, 120]
    assert target_events(k, "gone-01") == [("Warning", "Unreachable")]
    wait_until(lambda: probe_pods(k, "gone-01") == [], what="probe pods to be cleaned up")


def test_target_with_a_missing_credential_reports_why(k: Kubectl) -> None:
    k.apply(
        """apiVersion: opsconductor.io/v1alpha1
kind: Target
metadata: {name: orphan-01}
spec:
  address: 127.0.0.1
  protocol: ssh
  credentialRef: {name: nobody}
  ssh: {insecureSkipHostKeyVerification: true}
  probe: {}
"""
    )
    target = probed(k, "orphan-01")
    assert reachable(target) == ("False", "CredentialNotFound")
    assert "Credential nobody" in target["status"]["lastProbe"]["message"]
    assert probe_pods(k, "orphan-01") == []


def test_interval_probes_run_on_their_own(k: Kubectl) -> None:
    with recording_server() as server:
        port = int(server.url.rsplit(":", 1)[1])
        k.apply(
            f"""apiVersion: opsconductor.io/v1alpha1
kind: Target
metadata: {{name: api-02}}
spec:
  address: 127.0.0.1
  port: {port}
  protocol: http
  http: {{scheme: http}}
  probe: {{intervalSeconds: 30}}
"""
        )
        first = probed(k, "api-02")
        assert reachable(first) == ("True", "Connected")
        first_time = first["status"]["lastProbe"]["time"]
        due = datetime.fromisoformat(first["status"]["nextProbeTime"].replace("Z", "+00:00"))
        second = wait_until(
            lambda: (t := get(k, "api-02"))["status"]["lastProbe"]["time"] != first_time and t,
            timeout=75,
            what="the interval probe",
        )
        probe_time = datetime.fromisoformat(second["status"]["lastProbe"]["time"].replace("Z", "+00:00"))
        assert probe_time >= due
        assert server.count("/") >= 2
        assert target_events(k, "api-02") == [("Normal", "Reachable")]  # no Event without a change


def test_winrm_target_probe_fills_windows_facts(
    k: Kubectl, winrm_server: WinrmServerFactory, operator: OperatorProcess
) -> None:
    server = winrm_server("127.0.0.43")
    k.apply(windows_manifest(server, name="win-probe"))
    k.run("annotate", "target", "win-probe", f"{ANNOTATION_PROBE}=now")
    target = probed(k, "win-probe")
    assert reachable(target) == ("True", "Connected"), json.dumps(target["status"], indent=1)
    facts = target["status"]["facts"]
    assert facts["hostname"] == server.host.hostname
    assert facts["domain"] == "WORKGROUP" and "WinRM test server" in facts["osName"]
    wide = k.run("get", "target", "win-probe", "-o", "wide").stdout
    assert "winrm" in wide and "True" in wide
