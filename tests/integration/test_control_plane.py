"""The local control plane behaves like a cluster: CRDs, status subresource, GC, RBAC."""

from __future__ import annotations

import json

from opsconductor.localcluster.controlplane import ControlPlane
from tests.kube import Kubectl, wait_until

MINIMAL = """
apiVersion: v1
kind: Secret
metadata: {name: web-ssh}
stringData: {username: ops, ssh-privatekey: placeholder}
---
apiVersion: opsconductor.io/v1alpha1
kind: Credential
metadata: {name: web-ssh}
spec: {type: SSHKey, secretRef: {name: web-ssh}}
---
apiVersion: opsconductor.io/v1alpha1
kind: Target
metadata: {name: web-01, labels: {role: web}}
spec: {address: 127.0.0.1, protocol: ssh, port: 2222, credentialRef: {name: web-ssh}}
---
apiVersion: opsconductor.io/v1alpha1
kind: OpsJob
metadata: {name: uname}
spec:
  target: web-01
  steps: [{name: uname, type: ssh.exec, command: uname -a}]
---
apiVersion: opsconductor.io/v1alpha1
kind: OpsSchedule
metadata: {name: nightly}
spec:
  schedules: ["0 3 * * *"]
  timeZone: Europe/London
  jobTemplate:
    spec:
      target: web-01
      steps: [{name: uname, type: ssh.exec, command: uname -a}]
"""


def test_get_opsconductor_lists_all_four_kinds(kubectl: Kubectl, namespace: str) -> None:
    k = kubectl.with_namespace(namespace)
    k.apply(MINIMAL)
    listed = json.loads(k.run("get", "opsconductor", "-o", "json").stdout)["items"]
    assert sorted(item["kind"] for item in listed) == ["Credential", "OpsJob", "OpsSchedule", "Target"]
    table = k.run("get", "opsjobs").stdout
    assert table.split("\n")[0].split() == ["NAME", "STATUS", "STEPS", "TARGETS", "DURATION", "AGE"]
    assert k.run("get", "oj,tgt,cred,osch", "-o", "name").stdout.count("\n") == 4


def test_defaults_are_applied_and_status_is_a_subresource(kubectl: Kubectl, namespace: str) -> None:
    k = kubectl.with_namespace(namespace)
    k.apply(MINIMAL)
    schedule = k.get("opsschedule", "nightly")
    assert schedule["spec"]["concurrencyPolicy"] == "Forbid"
    assert schedule["spec"]["successfulJobsHistoryLimit"] == 3
    # A status written through the main resource is dropped; through /status it sticks.
    k.run("patch", "opsjob", "uname", "--type=merge", "-p", '{"status": {"phase": "Running"}}')
    assert "status" not in k.get("opsjob", "uname") or k.get("opsjob", "uname")["status"].get("phase") is None
    k.run(
        "patch",
        "opsjob",
        "uname",
        "--subresource=status",
        "--type=merge",
        "-p",
        '{"status": {"phase": "Running", "progress": {"steps": "0/1", "targets": "0/0"}}}',
    )
    row = k.run("get", "opsjob", "uname", "--no-headers").stdout.split()
    assert row[1:3] == ["Running", "0/1"]


def test_owner_references_are_garbage_collected(kubectl: Kubectl, namespace: str) -> None:
    k = kubectl.with_namespace(namespace)
    k.apply(MINIMAL)
    uid = k.get("opsjob", "uname")["metadata"]["uid"]
    k.apply(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {
                    "name": "uname-plan",
                    "ownerReferences": [
                        {
                            "apiVersion": "opsconductor.io/v1alpha1",
                            "kind": "OpsJob",
                            "name": "uname",
                            "uid": uid,
                        }
                    ],
                },
                "data": {"plan": "{}"},
            }
        )
    )
    k.run("delete", "opsjob", "uname")
    wait_until(
        lambda: k.run("get", "configmap", "uname-plan", check=False).returncode != 0,
        timeout=60,
        what="the garbage collector to delete the owned ConfigMap",
    )


def test_rbac_is_enforced(control_plane: ControlPlane, kubectl: Kubectl, namespace: str) -> None:
    nobody = Kubectl(kubectl.binary, control_plane.client_kubeconfig("nobody"), namespace)
    denied = nobody.run("get", "opsjobs", check=False)
    assert denied.returncode != 0 and "forbidden" in denied.stderr.lower()
    kubectl.run(
        "create",
        "role",
        "read-opsjobs",
        "--verb=get,list",
        "--resource=opsjobs.opsconductor.io",
        "-n",
        namespace,
    )
    kubectl.run(
        "create", "rolebinding", "nobody-reads", "--role=read-opsjobs", "--user=nobody", "-n", namespace
    )
    wait_until(
        lambda: nobody.run("get", "opsjobs", check=False).returncode == 0, what="the RoleBinding to apply"
    )
    assert "forbidden" in nobody.run("get", "targets", check=False).stderr.lower()
    assert "forbidden" in nobody.run("get", "opsjobs", "-n", "default", check=False).stderr.lower()


def test_service_account_tokens_are_issued(kubectl: Kubectl, namespace: str) -> None:
    k = kubectl.with_namespace(namespace)
    wait_until(
        lambda: k.run("get", "serviceaccount", "default", check=False).returncode == 0, what="default SA"
    )
    token = k.run("create", "token", "default", "--duration=10m").stdout.strip()
    assert token.count(".") == 2
    wait_until(
        lambda: k.run("get", "configmap", "kube-root-ca.crt", check=False).returncode == 0,
        what="kube-root-ca.crt published into the namespace",
    )
