"""OpsJob lifecycle on the local control plane: runner pod, status, conditions, events, failures.

These runs use steps that need no remote host (http against a local server, wait); SSH runs are in
test_opsjob_ssh.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from opsconductor.localcluster.controlplane import ControlPlane
from opsconductor.localcluster.operatorprocess import OperatorProcess
from tests.e2e.conftest import conditions, events_for, wait_phase
from tests.e2e.servers import recording_server
from tests.kube import Kubectl, wait_until


def job(name: str, steps: str, extra: str = "") -> str:
    return f"""
apiVersion: opsconductor.io/v1alpha1
kind: OpsJob
metadata: {{name: {name}}}
spec:
{extra}
  steps:
{steps}
"""


def test_a_run_succeeds_with_status_conditions_columns_and_events(k: Kubectl) -> None:
    with recording_server() as server:
        k.apply(
            job(
                "ping",
                f"""    - name: notify
      type: http.post
      url: {server.url}/hook/{{{{ params.env }}}}
      body: {{json: {{env: "{{{{ params.env }}}}"}}}}
      expectStatus: [200]""",
                "  parameters: [{name: env, default: staging}]",
            )
        )
        done = wait_phase(k, "ping")
        assert server.count("/hook/staging") == 1
    status = done["status"]
    assert status["phase"] == "Succeeded", status
    assert status["observedGeneration"] == done["metadata"]["generation"]
    assert conditions(done) == {
        "Ready": ("True", "Succeeded"),
        "Reconciling": ("False", "Succeeded"),
        "Stalled": ("False", "Succeeded"),
        "Succeeded": ("True", "Succeeded"),
    }
    (step,) = status["steps"]
    assert step["name"] == "notify" and step["phase"] == "Succeeded"
    assert step["targets"][0]["exitCode"] == 200
    assert status["progress"] == {"steps": "1/1", "targets": "1/0"}
    row = k.run("get", "opsjob", "ping", "--no-headers").stdout.split()
    assert row[1:4] == ["Succeeded", "1/1", "1/0"]
    assert row[4].endswith("s")  # duration
    wait_until(lambda: ("Normal", "Succeeded") in events_for(k, "ping"), what="the Succeeded event")
    assert ("Normal", "Started") in events_for(k, "ping")
    table = subprocess.run(
        [sys.executable, "-m", "opsconductor.cli", "results", "opsjob/ping", "-n", k.namespace],
        env={**os.environ, "KUBECONFIG": str(k.kubeconfig)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert table.splitlines()[0].startswith(f"OpsJob {k.namespace}/ping: Succeeded")
    assert table.splitlines()[2].split()[:4] == ["notify", "local", "Succeeded", "200"]


def test_runner_pods_pass_the_restricted_pod_security_standard(k: Kubectl, kubectl: Kubectl) -> None:
    kubectl.run("label", "namespace", k.namespace, "pod-security.kubernetes.io/enforce=restricted")
    k.apply(job("restricted", "    - {name: pause, type: wait, seconds: 1}"))
    assert wait_phase(k, "restricted")["status"]["phase"] == "Succeeded"
    pod = k.get("pod", "restricted-runner")
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True


def test_the_runner_may_only_write_its_own_jobs_status(k: Kubectl) -> None:
    k.apply(job("first", "    - {name: pause, type: wait, seconds: 1}"))
    k.apply(job("second", "    - {name: pause, type: wait, seconds: 1}"))
    wait_phase(k, "first")
    runner = f"system:serviceaccount:{k.namespace}:first-runner"

    def can(*args: str) -> bool:
        return k.run("auth", "can-i", f"--as={runner}", *args, check=False).stdout.strip() == "yes"

    assert can("patch", "opsjobs.opsconductor.io/first", "--subresource=status")
    assert not can("patch", "opsjobs.opsconductor.io/second", "--subresource=status")
    assert not can("patch", "opsjobs.opsconductor.io/first")  # the spec
    assert not can("get", "secrets")
    assert not can("create", "pods")
    assert not can("list", "targets.opsconductor.io")


def test_a_missing_target_fails_with_a_reason_after_the_dependency_wait(k: Kubectl) -> None:
    k.apply(job("orphan", "    - {name: uname, type: ssh.exec, command: uname}", "  target: nowhere"))
    done = wait_phase(k, "orphan")
    assert done["status"]["phase"] == "Failed"
    assert conditions(done)["Stalled"] == ("True", "TargetNotFound")
    assert "nowhere" in done["status"]["message"]
    assert k.run("get", "pod", "orphan-runner", check=False).returncode != 0


def test_a_bad_template_fails_before_any_step_naming_step_and_field(k: Kubectl) -> None:
    with recording_server() as server:
        k.apply(
            job(
                "typo",
                f"""    - {{name: first, type: http.get, url: "{server.url}/a"}}
    - {{name: second, type: http.get, url: "{server.url}/{{{{ params.missing }}}}"}}""",
            )
        )
        done = wait_phase(k, "typo")
        assert server.requests == []
    assert done["status"]["phase"] == "Failed"
    assert conditions(done)["Ready"][1] == "InvalidTemplate"
    assert "steps[1].url" in done["status"]["message"] and "missing" in done["status"]["message"]


def test_a_deleted_runner_pod_fails_the_run_as_runner_lost(k: Kubectl) -> None:
    k.apply(job("lost", "    - {name: pause, type: wait, seconds: 300}"))
    wait_phase(k, "lost", ("Running",))
    k.run("delete", "pod", "lost-runner", "--grace-period=0", "--force")
    done = wait_phase(k, "lost")
    assert done["status"]["phase"] == "Failed"
    assert conditions(done)["Stalled"][1] == "RunnerLost"
    wait_until(lambda: ("Warning", "Failed") in events_for(k, "lost"), what="the Failed event")


def test_an_oom_killed_runner_is_reported(k: Kubectl) -> None:
    k.apply(
        job(
            "oom",
            "    - {name: pause, type: wait, seconds: 60}",
            "  runner: {resources: {limits: {memory: 8Mi}}}",
        )
    )
    done = wait_phase(k, "oom")
    assert conditions(done)["Stalled"][1] == "RunnerLost"
    assert "OOM" in done["status"]["message"]


def test_cancellation_stops_the_run_promptly(k: Kubectl) -> None:
    k.apply(job("stop", "    - {name: pause, type: wait, seconds: 300}"))
    wait_phase(k, "stop", ("Running",))
    k.run("patch", "opsjob", "stop", "--type=merge", "-p", '{"spec": {"cancel": true}}')
    done = wait_phase(k, "stop", timeout=40)
    assert done["status"]["phase"] == "Cancelled"
    assert done["status"]["steps"][0]["phase"] == "Cancelled"
    wait_until(
        lambda: k.run("get", "pod", "stop-runner", check=False).returncode != 0, what="the runner pod to go"
    )


def test_the_job_deadline_fails_the_run(k: Kubectl) -> None:
    k.apply(job("slow", "    - {name: pause, type: wait, seconds: 300}", "  activeDeadlineSeconds: 2"))
    done = wait_phase(k, "slow", timeout=60)
    assert done["status"]["phase"] == "Failed"
    assert conditions(done)["Stalled"][1] == "DeadlineExceeded"


def test_finished_jobs_expire_after_their_ttl(k: Kubectl) -> None:
    k.apply(job("brief", "    - {name: pause, type: wait, seconds: 1}", "  ttlSecondsAfterFinished: 1"))
    wait_until(
        lambda: k.run("get", "opsjob", "brief", check=False).returncode != 0, timeout=60, what="TTL deletion"
    )


def test_an_operator_restart_mid_run_completes_the_run_once(
    k: Kubectl, operator: OperatorProcess, control_plane: ControlPlane
) -> None:
    with recording_server() as server:
        # The first step blocks in the server until released: the run is certainly mid-flight
        # while the operator is killed and started again.
        server.held_paths.add("/hold")
        k.apply(
            job(
                "survivor",
                f"""    - {{name: hold, type: http.get, url: "{server.url}/hold", timeoutSeconds: 300}}
    - {{name: report, type: http.post, url: "{server.url}/done", body: {{text: once}}}}""",
            )
        )
        wait_until(lambda: server.count("/hold") == 1, timeout=120, what="the runner to reach the first step")
        # Events are posted asynchronously: let the first operator post Started before it dies, so
        # the count below checks that the restarted one does not post it again.
        wait_until(lambda: ("Normal", "Started") in events_for(k, "survivor"), what="the Started event")
        # Running and no finalizer: kopf timers and daemons would have added one when the job was created.
        running = json.loads(k.run("get", "opsjob", "survivor", "-o", "json").stdout)
        assert running["status"]["phase"] == "Running" and "finalizers" not in running["metadata"]
        operator.kill()
        operator.start()
        server.release.set()
        done = wait_phase(k, "survivor")
        assert done["status"]["phase"] == "Succeeded"
        assert server.count("/hold") == 1
        assert server.count("/done") == 1
    pods = json.loads(k.run("get", "pods", "-o", "json").stdout)["items"]
    assert [p["metadata"]["name"] for p in pods] == ["survivor-runner"]
    wait_until(lambda: ("Normal", "Succeeded") in events_for(k, "survivor"), what="the Succeeded event")
    assert [e for e in events_for(k, "survivor") if e[1] in ("Started", "Succeeded")].count(
        ("Normal", "Started")
    ) == 1


def test_the_operator_log_shows_no_errors(operator: OperatorProcess) -> None:
    text = operator.log.read_text(errors="replace")
    assert "Traceback" not in text, text[-3000:]
    subprocess.run(["true"], check=True)
