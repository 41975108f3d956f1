"""The CLI against the local control plane: rerun (with live progress), logs, results formats, plugin."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from opsconductor.constants import ANNOTATION_CREATED_BY, ANNOTATION_STARTED_BY
from tests.e2e.conftest import wait_phase
from tests.kube import Kubectl

BIN = Path(sys.executable).parent


def cli(k: Kubectl, *args: str, via_kubectl: bool = False) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": f"{BIN}:/usr/bin:/bin",
        "KUBECONFIG": str(k.kubeconfig),
        "HOME": os.environ.get("HOME", "/"),
    }
    command = [k.binary, "opsconductor"] if via_kubectl else [str(BIN / "opsconductor")]
    return subprocess.run(
        [*command, *args, "-n", k.namespace], capture_output=True, text=True, env=env, timeout=180
    )


JOB = {
    "apiVersion": "opsconductor.io/v1alpha1",
    "kind": "OpsJob",
    "metadata": {"name": "pause", "labels": {"team": "ops"}, "annotations": {"note": "kept"}},
    "spec": {"steps": [{"name": "pause", "type": "wait", "seconds": 1}]},
}


def test_rerun_creates_a_linked_run_and_shows_progress_until_it_ends(k: Kubectl) -> None:
    k.apply(json.dumps(JOB))
    first = wait_phase(k, "pause")
    assert first["status"]["phase"] == "Succeeded"
    result = cli(k, "rerun", "opsjob/pause", "--wait")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    new_name = lines[0].split()[0].removeprefix("opsjob/")
    assert new_name.startswith("pause-") and new_name != "pause"
    assert lines[-1].startswith(f"{new_name}: Succeeded")  # live progress ended with the outcome
    rerun = k.get("opsjob", new_name)
    annotations = rerun["metadata"]["annotations"]
    admin = k.run("auth", "whoami", "-o", "jsonpath={.status.userInfo.username}").stdout
    assert annotations["opsconductor.io/rerun-of"] == "pause"
    assert annotations[ANNOTATION_STARTED_BY] == admin
    assert annotations[ANNOTATION_CREATED_BY] == admin  # stamped by the API server
    assert annotations["note"] == "kept" and rerun["metadata"]["labels"] == {"team": "ops"}
    assert rerun["spec"] == first["spec"]


def test_logs_results_formats_and_kubectl_plugin(k: Kubectl) -> None:
    k.apply(json.dumps(JOB))
    wait_phase(k, "pause")
    logs = cli(k, "logs", "opsjob/pause")
    assert logs.returncode == 0, logs.stderr
    assert "pause" in logs.stdout  # the runner logs each step it runs
    as_yaml = yaml.safe_load(cli(k, "results", "opsjob/pause", "-o", "yaml").stdout)
    as_json = json.loads(cli(k, "results", "opsjob/pause", "-o", "json").stdout)
    assert as_yaml == as_json and as_json["phase"] == "Succeeded"
    table = cli(k, "results", "opsjob/pause", via_kubectl=True)
    assert table.returncode == 0, table.stderr
    assert "pause" in table.stdout
    missing = cli(k, "logs", "opsjob/nope")
    assert missing.returncode == 1 and "not found" in missing.stderr
    wrong = cli(k, "rerun", "target/pause")
    assert wrong.returncode == 1 and "expected opsjob/NAME" in wrong.stderr


def test_logs_follow_streams_until_the_runner_ends(k: Kubectl) -> None:
    job = {
        **JOB,
        "metadata": {"name": "slow"},
        "spec": {"steps": [{"name": "slow-wait", "type": "wait", "seconds": 4}]},
    }
    k.apply(json.dumps(job))
    wait_phase(k, "slow", phases=("Running",))
    followed = cli(k, "logs", "opsjob/slow", "-f")
    assert followed.returncode == 0, followed.stderr
    assert "slow-wait" in followed.stdout
    # -f returned because the runner container ended, so the run is over (or ending) by now.
    pod = k.get("pod", "slow-runner")
    assert pod["status"]["phase"] in ("Succeeded", "Failed") or pod["status"]["containerStatuses"][0][
        "state"
    ].get("terminated")
