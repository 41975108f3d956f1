"""OpsJobs over WinRM on the local control plane: runner pods against the WinRM test server (NTLM)."""

from __future__ import annotations

import base64
import json
import socket

from opsconductor.localcluster.cluster import KubeletProcess
from opsconductor.localcluster.kubelet import container_log_path
from opsconductor.localcluster.operatorprocess import OperatorProcess
from tests.e2e.conftest import conditions, wait_phase
from tests.kube import Kubectl
from tests.winrm.fixtures import USER, WinrmServerFactory, winrm_password
from tests.winrm.server import WinrmServer

CANARY = "canary-e2e-W1nRm-k4"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def windows_manifest(
    server: WinrmServer, *, name: str = "win-01", password: str | None = None, port: int = 0
) -> str:
    return f"""apiVersion: v1
kind: Secret
metadata: {{name: {name}-login}}
type: kubernetes.io/basic-auth
data:
  username: {b64(USER)}
  password: {b64(password if password is not None else winrm_password())}
---
apiVersion: opsconductor.io/v1alpha1
kind: Credential
metadata: {{name: {name}-login}}
spec: {{type: BasicAuth, secretRef: {{name: {name}-login}}}}
---
apiVersion: opsconductor.io/v1alpha1
kind: Target
metadata: {{name: {name}, labels: {{os: windows}}}}
spec:
  address: {server.address}
  port: {port or server.port}
  protocol: winrm
  connectTimeoutSeconds: 3
  credentialRef: {{name: {name}-login}}
  winrm: {{transport: ntlm, operationTimeoutSeconds: 5}}
"""


def test_exec_and_copy_through_a_runner_pod_with_ntlm_encryption(
    k: Kubectl, winrm_server: WinrmServerFactory, kubelet: KubeletProcess, operator: OperatorProcess
) -> None:
    server = winrm_server("127.0.0.41")
    k.apply(windows_manifest(server))
    k.apply(
        f"""apiVersion: v1
kind: ConfigMap
metadata: {{name: site}}
data: {{index.html: "<h1>deployed by opsconductor</h1>\\n"}}
---
apiVersion: v1
kind: Secret
metadata: {{name: api-token}}
data: {{token: {b64(CANARY)}}}
---
apiVersion: opsconductor.io/v1alpha1
kind: OpsJob
metadata: {{name: iis-deploy}}
spec:
  targetSelector: {{matchLabels: {{os: windows}}}}
  parameters:
    - {{name: svc, default: W3SVC}}
    - {{name: token, secret: true, valueFrom: {{secretKeyRef: {{name: api-token, key: token}}}}}}
  steps:
    - name: deploy
      type: winrm.copy
      source: {{configMap: {{name: site}}}}
      destination: C:\\inetpub\\wwwroot
    - name: restart
      type: winrm.exec
      script: |
        Restart-Service -Name {{{{ params.svc | ps_quote }}}}
        (Get-Service -Name {{{{ params.svc | ps_quote }}}}).Status
    - name: check
      type: winrm.exec
      shell: cmd
      command: cat index.html && echo token={{{{ params.token }}}}
      workingDir: C:\\inetpub\\wwwroot
"""
    )
    done = wait_phase(k, "iis-deploy", timeout=120)
    status = done["status"]
    assert status["phase"] == "Succeeded", json.dumps(status, indent=1)[:3000]
    steps = {s["name"]: s["targets"][0] for s in status["steps"]}
    assert steps["restart"]["exitCode"] == 0 and steps["restart"]["stdout"].strip() == "Running"
    assert "C:\\inetpub\\wwwroot\\index.html" in steps["deploy"]["stdout"]
    assert "deployed by opsconductor" in steps["check"]["stdout"] and "token=***" in steps["check"]["stdout"]
    assert all(isinstance(t["durationMilliseconds"], int) for t in steps.values())
    assert server.host.service_calls[-1] == "Restart-Service W3SVC"
    landed = server.host.paths.local("C:\\inetpub\\wwwroot\\index.html")
    assert landed.read_text() == "<h1>deployed by opsconductor</h1>\n"
    assert server.requests and all(r.encrypted for r in server.requests)

    pod = k.get("pod", "iis-deploy-runner")
    runner_log = container_log_path(kubelet.root_dir, pod["metadata"]["uid"], "runner").read_text()
    for where, text in {
        "status": json.dumps(done),
        "events": k.run("get", "events", "-o", "json").stdout,
        "runner log": runner_log,
        "operator log": operator.log.read_text(errors="replace"),
        "plan": k.run("get", "configmap", "iis-deploy-plan", "-o", "json").stdout,
    }.items():
        assert CANARY not in text, f"secret canary leaked into the {where}"
        assert winrm_password() not in text, f"the WinRM password leaked into the {where}"


def test_bad_credentials_an_unreachable_host_and_a_timeout_fail_clearly(
    k: Kubectl, winrm_server: WinrmServerFactory
) -> None:
    server = winrm_server("127.0.0.42")
    with socket.socket() as sock:
        sock.bind(("127.0.0.43", 0))
        closed_port = sock.getsockname()[1]
    k.apply(windows_manifest(server, name="win-ok"))
    k.apply(windows_manifest(server, name="win-badpw", password=CANARY))
    unreachable = windows_manifest(server, name="win-gone", port=closed_port).replace(
        "127.0.0.42", "127.0.0.43"
    )
    k.apply(unreachable)
    k.apply(
        """apiVersion: opsconductor.io/v1alpha1
kind: OpsJob
metadata: {name: win-failures}
spec:
  failurePolicy: {mode: Continue}
  steps:
    - name: login
      type: winrm.exec
      targets: [win-badpw, win-gone]
      command: hostname
      continueOnError: true
    - {name: slow, type: winrm.exec, targets: [win-ok], command: Start-Sleep -Seconds 60, timeoutSeconds: 2}
"""
    )
    done = wait_phase(k, "win-failures", timeout=120)
    status = done["status"]
    assert status["phase"] == "Failed"
    assert conditions(done)["Stalled"][1] == "StepsFailed"
    steps = {s["name"]: {t["target"]: t for t in s["targets"]} for s in status["steps"]}
    bad = steps["login"]["win-badpw"]
    assert (
        bad["phase"] == "Failed"
        and "rejected the credentials" in bad["error"]
        and "127.0.0.42" in bad["error"]
    )
    gone = steps["login"]["win-gone"]
    assert (
        gone["phase"] == "Failed" and "connection refused" in gone["error"] and "127.0.0.43" in gone["error"]
    )
    slow = steps["slow"]["win-ok"]
    assert slow["phase"] == "Failed" and "timed out after 2s" in slow["error"]
    assert server.commands[-1].signals[:2] == ["ctrl_c", "terminate"]
    assert CANARY not in json.dumps(done)
