"""OpsJobs over SSH on the local control plane: real sshd hosts, fan-out, SFTP, secrets never leak."""

from __future__ import annotations

import base64
import json
from pathlib import Path

from opsconductor.localcluster.cluster import KubeletProcess
from opsconductor.localcluster.controlplane import ControlPlane
from opsconductor.localcluster.kubelet import container_log_path
from opsconductor.localcluster.operatorprocess import OperatorProcess
from tests.e2e.conftest import conditions, events_for, wait_phase
from tests.fixtures.sshd import ClientKeys, SshdFactory, SshServer
from tests.kube import Kubectl, wait_until

CANARY = "canary-Zq7vX2pLm9"  # a secret parameter value that must never appear anywhere


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def hosts_manifest(servers: list[SshServer], keys: ClientKeys, *, role: str = "web") -> str:
    key = keys.ed25519
    documents = [
        f"""apiVersion: v1
kind: Secret
metadata: {{name: ops-ssh}}
data:
  username: {b64(servers[0].user.name)}
  ssh-privatekey: {b64(key.path.read_text())}
---
apiVersion: v1
kind: Secret
metadata: {{name: deploy-token}}
data: {{token: {b64(CANARY)}}}
---
apiVersion: opsconductor.io/v1alpha1
kind: Credential
metadata: {{name: ops-ssh}}
spec: {{type: SSHKey, secretRef: {{name: ops-ssh}}}}
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: motd}}
data: {{motd.txt: "managed by opsconductor\\n"}}"""
    ]
    for index, server in enumerate(servers):
        host_keys = json.dumps(server.host_key_lines)
        documents.append(
            f"""apiVersion: opsconductor.io/v1alpha1
kind: Target
metadata: {{name: {role}-{index + 1:02d}, labels: {{role: {role}}}}}
spec:
  address: {server.address}
  port: {server.port}
  protocol: ssh
  credentialRef: {{name: ops-ssh}}
  ssh: {{hostKeys: {host_keys}}}"""
        )
    return "\n---\n".join(documents)


def test_fan_out_over_a_label_selected_group_with_sftp_and_masked_secrets(
    k: Kubectl,
    sshd_server: SshdFactory,
    ssh_keys: ClientKeys,
    tmp_path: Path,
    operator: OperatorProcess,
    kubelet: KubeletProcess,
    control_plane: ControlPlane,
) -> None:
    servers = [sshd_server("127.0.0.2"), sshd_server("127.0.0.3"), sshd_server("127.0.0.4")]
    remote = f"/tmp/opsc-e2e-{k.namespace}"
    k.apply(hosts_manifest(servers, ssh_keys))
    k.apply(
        f"""apiVersion: opsconductor.io/v1alpha1
kind: OpsJob
metadata: {{name: deploy}}
spec:
  targetSelector: {{matchLabels: {{role: web}}}}
  concurrency: 3
  parameters:
    - {{name: release, default: "2026.11"}}
    - {{name: token, secret: true, valueFrom: {{secretKeyRef: {{name: deploy-token, key: token}}}}}}
  steps:
    - name: facts
      type: ssh.exec
      command: echo "$(hostname) {{{{ target.name }}}} {{{{ params.release | shell_quote }}}}"
    - name: upload
      type: sftp.upload
      source: {{configMap: {{name: motd}}}}
      destination: {remote}/etc
      mode: "0640"
    - name: check
      type: ssh.exec
      command: cat {remote}/etc/motd.txt && stat -c %a {remote}/etc/motd.txt
        && echo token={{{{ params.token }}}}
"""
    )
    done = wait_phase(k, "deploy", timeout=120)
    status = done["status"]
    assert status["phase"] == "Succeeded", json.dumps(status, indent=1)[:3000]
    steps = {s["name"]: s for s in status["steps"]}
    assert {t["target"] for t in steps["facts"]["targets"]} == {"web-01", "web-02", "web-03"}
    facts = {t["target"]: t["stdout"] for t in steps["facts"]["targets"]}
    assert "web-02 2026.11" in facts["web-02"]
    check = steps["check"]["targets"][0]["stdout"]
    assert "managed by opsconductor" in check and "640" in check
    assert "token=***" in check
    assert status["progress"] == {"steps": "3/3", "targets": "9/0"}

    # The canary is nowhere: status, events, operator log, runner log, kubelet log.
    pod = k.get("pod", "deploy-runner")
    runner_log = container_log_path(kubelet.root_dir, pod["metadata"]["uid"], "runner").read_text()
    assert "facts" in runner_log
    events = k.run("get", "events", "-o", "json").stdout
    for where, text in {
        "status": json.dumps(done),
        "events": events,
        "operator log": operator.log.read_text(errors="replace"),
        "runner log": runner_log,
        "kubelet log": kubelet.log.read_text(errors="replace"),
        "plan": k.run("get", "configmap", "deploy-plan", "-o", "json").stdout,
    }.items():
        assert CANARY not in text, f"secret canary leaked into the {where}"


def test_host_key_mismatch_fails_the_step_with_a_clear_message(
    k: Kubectl, sshd_server: SshdFactory, ssh_keys: ClientKeys
) -> None:
    server = sshd_server("127.0.0.5")
    other = sshd_server("127.0.0.6", unique_host_keys=True)
    manifest = hosts_manifest([server], ssh_keys, role="db")
    # Declare the other server's host keys: a man in the middle, as far as the runner can tell.
    manifest = manifest.replace(json.dumps(server.host_key_lines), json.dumps(other.host_key_lines))
    k.apply(manifest)
    k.apply(
        """apiVersion: opsconductor.io/v1alpha1
kind: OpsJob
metadata: {name: mitm}
spec:
  target: db-01
  steps: [{name: uname, type: ssh.exec, command: uname}]
"""
    )
    done = wait_phase(k, "mitm", timeout=90)
    assert done["status"]["phase"] == "Failed"
    assert conditions(done)["Stalled"][1] == "StepsFailed"
    error = done["status"]["steps"][0]["targets"][0]["error"]
    assert "host key" in error.lower() and "127.0.0.5" in error
    wait_until(lambda: ("Warning", "StepFailed") in events_for(k, "mitm"), what="the StepFailed event")


def test_an_unreachable_host_fails_within_the_connect_timeout(
    k: Kubectl, ssh_keys: ClientKeys, sshd_server: SshdFactory
) -> None:
    server = sshd_server("127.0.0.7")
    manifest = hosts_manifest([server], ssh_keys, role="gone")
    server.stop()
    k.apply(manifest.replace("protocol: ssh", "protocol: ssh\n  connectTimeoutSeconds: 3"))
    k.apply(
        """apiVersion: opsconductor.io/v1alpha1
kind: OpsJob
metadata: {name: unreachable}
spec:
  target: gone-01
  steps: [{name: uname, type: ssh.exec, command: uname}]
"""
    )
    done = wait_phase(k, "unreachable", timeout=90)
    target = done["status"]["steps"][0]["targets"][0]
    assert done["status"]["phase"] == "Failed"
    assert "127.0.0.7" in target["error"] and "refused" in target["error"].lower()
    assert target["durationMilliseconds"] < 5000
