"""The process kubelet runs real pods bound by the real scheduler, with what their spec declares."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from opsconductor.localcluster.cluster import KubeletProcess
from opsconductor.localcluster.kubelet import container_log_path
from tests.kube import Kubectl, wait_until

pytestmark = pytest.mark.cluster

SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


@pytest.fixture
def k(kubectl: Kubectl, namespace: str, kubelet: KubeletProcess) -> Kubectl:
    """kubectl in the test namespace, once its default ServiceAccount exists (pods need it)."""
    k = kubectl.with_namespace(namespace)
    wait_until(
        lambda: k.run("get", "serviceaccount", "default", check=False).returncode == 0, 60, what="default SA"
    )
    return k


def pod(k: Kubectl, name: str) -> dict[str, Any]:
    return k.get("pod", name)


def wait_pod(k: Kubectl, name: str, phases: tuple[str, ...], timeout: float = 60) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        p = pod(k, name)
        return p if p.get("status", {}).get("phase") in phases else None

    return wait_until(probe, timeout, what=f"pod {name} in {phases}")


def wait_waiting_reason(
    k: Kubectl, name: str, reasons: tuple[str, ...], timeout: float = 60
) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        statuses = pod(k, name).get("status", {}).get("containerStatuses") or []
        waiting = statuses[0].get("state", {}).get("waiting", {}) if statuses else {}
        return waiting if waiting.get("reason") in reasons else None

    return wait_until(probe, timeout, what=f"pod {name} waiting with {reasons}")


def terminated(p: dict[str, Any], index: int = 0) -> dict[str, Any]:
    state: dict[str, Any] = p["status"]["containerStatuses"][index]["state"]
    assert "terminated" in state, state
    return state["terminated"]  # type: ignore[no-any-return]


def log_of(kubelet: KubeletProcess, p: dict[str, Any], container: str) -> str:
    return container_log_path(kubelet.root_dir, p["metadata"]["uid"], container).read_text()


def process_gone(pid: int) -> bool:
    return not Path(f"/proc/{pid}").exists()


HELLO = """
apiVersion: v1
kind: Secret
metadata: {name: creds}
stringData: {password: s3cr3t, greeting.txt: from-secret-volume}
---
apiVersion: v1
kind: Pod
metadata: {name: hello, labels: {app: hello-app}}
spec:
  restartPolicy: Never
  containers:
  - name: main
    image: busybox:1.36
    command:
    - sh
    - -c
    - |
      echo "password=$PASSWORD pod=$POD_NAME app=$APP host=$HOSTNAME api=$KUBERNETES_SERVICE_HOST"
      cat /var/run/opsconductor-test/creds/greeting.txt; echo
      echo "leak=${PYTHONPATH:-none}${KUBECONFIG:-}"
      printf 'all good' > /dev/termination-log
    env:
    - {name: PASSWORD, valueFrom: {secretKeyRef: {name: creds, key: password}}}
    - {name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
    - {name: APP, valueFrom: {fieldRef: {fieldPath: "metadata.labels['app']"}}}
    volumeMounts:
    - {name: creds, mountPath: /var/run/opsconductor-test/creds, readOnly: true}
  volumes:
  - {name: creds, secret: {secretName: creds}}
"""


def test_pod_gets_env_from_secret_and_downward_api_and_a_secret_volume(
    k: Kubectl, kubelet: KubeletProcess
) -> None:
    k.apply(HELLO)
    p = wait_pod(k, "hello", ("Succeeded", "Failed"))
    assert p["status"]["phase"] == "Succeeded", json.dumps(p["status"], indent=1)
    t = terminated(p)
    assert (t["exitCode"], t["reason"], t["message"]) == (0, "Completed", "all good")
    assert p["status"]["containerStatuses"][0]["containerID"].startswith("process://")
    assert p["status"]["podIP"] == "127.0.0.1" and p["status"]["startTime"]
    conditions = {c["type"]: c for c in p["status"]["conditions"]}
    assert conditions["PodScheduled"]["status"] == "True"
    assert conditions["Initialized"]["status"] == "True"
    assert conditions["Ready"]["status"] == "False" and conditions["Ready"]["reason"] == "PodCompleted"
    assert log_of(kubelet, p, "main") == (
        "password=s3cr3t pod=hello app=hello-app host=hello api=127.0.0.1\nfrom-secret-volume\nleak=none\n"
    )

    def kubelet_events() -> set[str] | None:
        listed = json.loads(
            k.run("get", "events", "--field-selector=involvedObject.name=hello", "-o", "json").stdout
        )
        reasons = {e["reason"] for e in listed["items"] if e.get("source", {}).get("component") == "kubelet"}
        return reasons if {"Pulled", "Created", "Started"} <= reasons else None

    wait_until(kubelet_events, 30, what="kubelet events")


def test_non_zero_exit_fails_the_pod_with_its_exit_code(k: Kubectl) -> None:
    k.apply(
        """
apiVersion: v1
kind: Pod
metadata: {name: fails}
spec:
  restartPolicy: Never
  containers:
  - name: main
    image: busybox
    command: [sh, -c, "echo first; echo 'it broke'; exit 3"]
    terminationMessagePolicy: FallbackToLogsOnError
"""
    )
    p = wait_pod(k, "fails", ("Succeeded", "Failed"))
    assert p["status"]["phase"] == "Failed"
    t = terminated(p)
    assert (t["exitCode"], t["reason"], t["message"]) == (3, "Error", "first\nit broke\n")


def test_init_containers_run_first_and_on_failure_restarts(k: Kubectl, kubelet: KubeletProcess) -> None:
    k.apply(
        """
apiVersion: v1
kind: Pod
metadata: {name: ordered}
spec:
  restartPolicy: OnFailure
  initContainers:
  - {name: prepare, image: busybox, command: [sh, -c, "echo prepared > work/state"],
     volumeMounts: [{name: work, mountPath: /var/run/opsconductor-test/work}],
     workingDir: /var/run/opsconductor-test}
  containers:
  - name: main
    image: busybox
    command:
    - sh
    - -c
    - |
      cd /var/run/opsconductor-test/work
      cat state
      test -f again || { touch again; exit 1; }
    volumeMounts: [{name: work, mountPath: /var/run/opsconductor-test/work}]
  volumes: [{name: work, emptyDir: {}}]
"""
    )
    p = wait_pod(k, "ordered", ("Succeeded", "Failed"))
    assert p["status"]["phase"] == "Succeeded", json.dumps(p["status"], indent=1)
    main = p["status"]["containerStatuses"][0]
    assert main["restartCount"] == 1
    assert main["lastState"]["terminated"]["exitCode"] == 1
    assert p["status"]["initContainerStatuses"][0]["state"]["terminated"]["reason"] == "Completed"
    assert log_of(kubelet, p, "main") == "prepared\n"


def test_active_deadline_fails_the_pod(k: Kubectl) -> None:
    k.apply(
        """
apiVersion: v1
kind: Pod
metadata: {name: slow}
spec:
  restartPolicy: Never
  activeDeadlineSeconds: 2
  terminationGracePeriodSeconds: 5
  containers: [{name: main, image: busybox, command: [sleep, "3600"]}]
"""
    )
    p = wait_pod(k, "slow", ("Succeeded", "Failed"), timeout=30)
    assert p["status"]["phase"] == "Failed"
    assert p["status"]["reason"] == "DeadlineExceeded"
    assert p["status"]["message"] == "Pod was active on the node longer than the specified deadline"
    # sleep is PID 1 of its container: it ignores SIGTERM, so it is SIGKILLed after the grace period
    assert terminated(p)["exitCode"] == 128 + 9


def test_deletion_stops_the_process_gracefully(k: Kubectl, kubelet: KubeletProcess) -> None:
    k.apply(
        """
apiVersion: v1
kind: Pod
metadata: {name: sleeper}
spec:
  containers:
  - name: main
    image: busybox
    command: [sh, -c, "trap 'echo got SIGTERM; exit 0' TERM; echo started; while true; do sleep 0.1; done"]
"""
    )
    p = wait_pod(k, "sleeper", ("Running",))
    pid = int(p["status"]["containerStatuses"][0]["containerID"].removeprefix("process://"))
    wait_until(lambda: "started" in log_of(kubelet, p, "main"), 30, what="container output")
    assert not process_gone(pid)
    k.run("delete", "pod", "sleeper", "--wait=false")
    wait_until(lambda: k.run("get", "pod", "sleeper", check=False).returncode != 0, 40, what="pod removed")
    assert process_gone(pid)
    assert log_of(kubelet, p, "main") == "started\ngot SIGTERM\n"


def test_force_deletion_kills_at_once(k: Kubectl) -> None:
    k.apply(
        """
apiVersion: v1
kind: Pod
metadata: {name: stubborn}
spec:
  terminationGracePeriodSeconds: 300
  containers: [{name: main, image: busybox, command: [sh, -c, "trap '' TERM; sleep 3600 & wait"]}]
"""
    )
    p = wait_pod(k, "stubborn", ("Running",))
    pid = int(p["status"]["containerStatuses"][0]["containerID"].removeprefix("process://"))
    k.run("delete", "pod", "stubborn", "--grace-period=0", "--force", "--wait=false")
    wait_until(lambda: process_gone(pid), 15, what="process killed")


TOKEN_CHECK = f"""
import json, os, ssl, urllib.request
sa = "{SA_DIR}"
token = open(sa + "/token").read()
ctx = ssl.create_default_context(cafile=sa + "/ca.crt")
url = "https://%s:%s/apis/authentication.k8s.io/v1/selfsubjectreviews" % (
    os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_SERVICE_PORT"])
body = json.dumps({{"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}}).encode()
req = urllib.request.Request(url, data=body, method="POST",
    headers={{"Authorization": "Bearer " + token, "Content-Type": "application/json"}})
review = json.load(urllib.request.urlopen(req, context=ctx))
print(review["status"]["userInfo"]["username"])
print(open(sa + "/namespace").read())
"""


def test_projected_service_account_token_reaches_the_api_server(k: Kubectl, kubelet: KubeletProcess) -> None:
    k.apply(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "whoami"},
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [
                        {
                            "name": "main",
                            "image": "python:3.11-slim",
                            "command": ["python3", "-c", TOKEN_CHECK],
                        }
                    ],
                },
            }
        )
    )
    p = wait_pod(k, "whoami", ("Succeeded", "Failed"))
    out = log_of(kubelet, p, "main")
    assert p["status"]["phase"] == "Succeeded", out
    assert out == f"system:serviceaccount:{k.namespace}:default\n{k.namespace}\n"
    volumes = [v["name"] for v in p["spec"]["volumes"]]
    assert any(v.startswith("kube-api-access-") for v in volumes)


def test_runner_image_security_context(k: Kubectl, kubelet: KubeletProcess) -> None:
    k.apply(
        """
apiVersion: v1
kind: Pod
metadata: {name: locked}
spec:
  restartPolicy: Never
  securityContext: {runAsNonRoot: true, fsGroup: 2000}
  containers:
  - name: main
    image: ghcr.io/opsconductor/runner:0.1.0
    command:
    - sh
    - -c
    - |
      id -u; id -G
      touch /var/run/opsconductor-test-rofs 2>/dev/null || echo read-only
      touch scratch/ok && echo scratch-ok
    securityContext:
      readOnlyRootFilesystem: true
      allowPrivilegeEscalation: false
      capabilities: {drop: [ALL]}
    volumeMounts: [{name: scratch, mountPath: /var/run/opsconductor-test/scratch}]
    workingDir: /var/run/opsconductor-test
  volumes: [{name: scratch, emptyDir: {}}]
"""
    )
    p = wait_pod(k, "locked", ("Succeeded", "Failed"))
    out = log_of(kubelet, p, "main")
    assert p["status"]["phase"] == "Succeeded", out
    assert out.splitlines() == ["65532", "65532 2000", "read-only", "scratch-ok"]
    assert not os.path.exists("/var/run/opsconductor-test-rofs")


def test_run_as_non_root_refuses_a_root_image(k: Kubectl) -> None:
    k.apply(
        """
apiVersion: v1
kind: Pod
metadata: {name: rootimage}
spec:
  securityContext: {runAsNonRoot: true}
  containers: [{name: main, image: busybox, command: [sh, -c, "true"]}]
"""
    )
    waiting = wait_waiting_reason(k, "rootimage", ("CreateContainerConfigError",))
    assert waiting["message"].startswith("container has runAsNonRoot and image will run as root")
    assert pod(k, "rootimage")["status"]["phase"] == "Pending"


def test_missing_secret_key_and_unknown_image_keep_the_pod_pending(k: Kubectl) -> None:
    k.apply(
        """
apiVersion: v1
kind: Secret
metadata: {name: partial}
stringData: {present: "yes"}
---
apiVersion: v1
kind: Pod
metadata: {name: nokey}
spec:
  containers:
  - name: main
    image: busybox
    command: [sh, -c, "true"]
    env: [{name: X, valueFrom: {secretKeyRef: {name: partial, key: absent}}}]
---
apiVersion: v1
kind: Pod
metadata: {name: noimage}
spec:
  containers: [{name: main, image: registry.example.com/nothing:1}]
"""
    )
    waiting = wait_waiting_reason(k, "nokey", ("CreateContainerConfigError",))
    assert waiting["message"] == f"couldn't find key absent in Secret {k.namespace}/partial"
    waiting = wait_waiting_reason(k, "noimage", ("ErrImagePull", "ImagePullBackOff"))
    assert "registry.example.com/nothing" in waiting["message"] and "images.yaml" in waiting["message"]
    assert pod(k, "noimage")["status"]["phase"] == "Pending"


def test_memory_limit_kills_with_oom(k: Kubectl) -> None:
    k.apply(
        """
apiVersion: v1
kind: Pod
metadata: {name: hungry}
spec:
  restartPolicy: Never
  containers:
  - name: main
    image: python:3.11
    command: [python3, -c, "import time; x = bytearray(300 * 1024 * 1024); time.sleep(60)"]
    resources: {limits: {memory: 64Mi}}
"""
    )
    p = wait_pod(k, "hungry", ("Succeeded", "Failed"))
    t = terminated(p)
    assert (t["reason"], t["exitCode"]) == ("OOMKilled", 137)
