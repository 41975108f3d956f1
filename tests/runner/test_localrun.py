"""``opsconductor run`` end to end: manifests in files, real sshd and a real HTTP server on loopback.

Also the runner pod's entrypoint (``python -m opsconductor.runner``) as a process: plan file in,
termination message and exit status out, SIGTERM cancels.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from opsconductor.localrun import add_run_parser, run_local
from opsconductor.plan import JobRef, PlanStep, RunPlan
from tests.fixtures.sshd import SshServer, TestUser
from tests.runner.servers import LoopbackServer, Recorded, as_json, serve, text

REPO = Path(__file__).resolve().parents[2]


def write_manifests(path: Path, *documents: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump_all(documents, sort_keys=False))
    return path


def api(kind: str, name: str, spec: dict[str, Any], labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "opsconductor.io/v1alpha1",
        "kind": kind,
        "metadata": {"name": name, "labels": labels or {}},
        "spec": spec,
    }


def secret(name: str, **values: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "stringData": values}


def health(r: Recorded) -> tuple[int, dict[str, str], bytes]:
    if r.headers.get("Authorization") != "Bearer api-token-value":
        return text("unauthorized", 401)
    return as_json({"status": "ok", "version": "1.2.3"})


def targets_and_secrets(tmp_path: Path, sshd: SshServer, user: TestUser, http: LoopbackServer) -> Path:
    key = sshd.keys.ed25519.path.read_text()
    ssh = {"hostKeys": sshd.host_key_lines}
    return write_manifests(
        tmp_path / "targets.yaml",
        api(
            "Target",
            "web01",
            {
                "address": sshd.address,
                "port": sshd.port,
                "protocol": "ssh",
                "credentialRef": {"name": "ssh-key"},
                "ssh": ssh,
            },
            {"role": "web"},
        ),
        api(
            "Target",
            "web02",
            {
                "address": sshd.address,
                "port": sshd.port,
                "protocol": "ssh",
                "credentialRef": {"name": "ssh-pw"},
                "ssh": ssh,
            },
            {"role": "web"},
        ),
        api(
            "Target",
            "api01",
            {
                "address": "127.0.0.1",
                "port": http.port,
                "protocol": "http",
                "credentialRef": {"name": "api-token"},
                "http": {"scheme": "http", "basePath": "/api"},
            },
        ),
        api("Credential", "ssh-key", {"type": "SSHKey", "secretRef": {"name": "ssh-key"}}),
        api("Credential", "ssh-pw", {"type": "BasicAuth", "secretRef": {"name": "ssh-pw"}}),
        api("Credential", "api-token", {"type": "BearerToken", "secretRef": {"name": "api-token"}}),
        secret("ssh-key", username=user.name, **{"ssh-privatekey": key}),
        secret("ssh-pw", username=user.name, password=user.password),
        secret("api-token", token="api-token-value\n"),
        secret("hooks", **{"hmac-key": "hook-signing-key"}),
        secret("params", greeting="Hello-Secret-World"),
    )


def test_local_run_end_to_end(
    tmp_path: Path, sshd: SshServer, ssh_test_user: TestUser, remote_dir: Path
) -> None:
    with serve({"/api/healthz": health, "/hook": lambda r: text("ok")}) as http:
        files = targets_and_secrets(tmp_path, sshd, ssh_test_user, http)
        job = write_manifests(
            tmp_path / "job.yaml",
            api(
                "OpsJob",
                "deploy",
                {
                    "targetSelector": {"matchLabels": {"role": "web"}},
                    "parameters": [
                        {"name": "svc", "default": "my app"},
                        {
                            "name": "greeting",
                            "secret": True,
                            "valueFrom": {"secretKeyRef": {"name": "params", "key": "greeting"}},
                        },
                    ],
                    "steps": [
                        {
                            "name": "info",
                            "type": "ssh.exec",
                            "command": "echo host={{ target.name }} svc={{ params.svc | shell_quote }} "
                            "uid=$(id -u)",
                        },
                        {
                            "name": "config",
                            "type": "sftp.upload",
                            "source": {
                                "inline": "svc={{ params.svc }}\nfrom={{ steps.info.stdout | trim }}\n"
                            },
                            "destination": f"{remote_dir}/{{{{ target.name }}}}.conf",
                            "mode": "0640",
                        },
                        {
                            "name": "show",
                            "type": "ssh.exec",
                            "command": f"cat {remote_dir}/{{{{ target.name }}}}.conf",
                        },
                        {"name": "secret", "type": "ssh.exec", "command": "echo {{ params.greeting }}"},
                        {
                            "name": "health",
                            "type": "http.get",
                            "url": "healthz",
                            "targets": ["api01"],
                            "assertions": [{"jsonPath": "$.status", "equals": "ok"}],
                        },
                        {
                            "name": "notify",
                            "type": "webhook.call",
                            "url": f"{http.url}/hook",
                            "payload": {
                                "job": "{{ job.name }}",
                                "health": "{{ steps.health.outputs.status }}",
                            },
                            "hmac": {"secretKeyRef": {"name": "hooks", "key": "hmac-key"}},
                        },
                    ],
                },
            ),
        )
        out, err = io.StringIO(), io.StringIO()
        status = run_local([job, files], stdout=out, stderr=err)
    output = out.getvalue()
    assert status == 0, output + err.getvalue()
    uid = ssh_test_user.uid
    assert f"[info/web01] stdout: host=web01 svc=my app uid={uid}" in output
    assert f"[info/web02] stdout: host=web02 svc=my app uid={uid}" in output
    assert f"[show/web02] stdout: from=host=web02 svc=my app uid={uid}" in output
    # The user name comes from a Secret, so it is masked like any secret value.
    assert ssh_test_user.name not in output
    assert "Hello-Secret-World" not in output + err.getvalue()
    assert "[secret/web01] stdout: ***" in output
    assert (remote_dir / "web01.conf").read_text().startswith("svc=my app\nfrom=host=web01")
    assert oct((remote_dir / "web02.conf").stat().st_mode & 0o777) == "0o640"
    table = output[output.index("STEP") :].splitlines()
    assert table[0].split() == ["STEP", "TARGET", "STATUS", "EXIT", "ATTEMPTS", "DURATION", "ERROR"]
    rows = {tuple(line.split()[:3]) for line in table[1:]}
    assert ("health", "api01", "Succeeded") in rows
    assert ("notify", "local", "Succeeded") in rows
    assert ("info", "web02", "Succeeded") in rows
    hook = http.requests[-1]
    assert hook.json() == {"job": "deploy", "health": "200"}
    expected = "sha256=" + hmac.new(b"hook-signing-key", hook.body, hashlib.sha256).hexdigest()
    assert hook.headers["X-Signature-256"] == expected
    assert "run Succeeded" in err.getvalue()


def test_local_run_failure_table_and_exit_status(
    tmp_path: Path, sshd: SshServer, ssh_test_user: TestUser
) -> None:
    with serve() as http:
        files = targets_and_secrets(tmp_path, sshd, ssh_test_user, http)
        job = write_manifests(
            tmp_path / "job.yaml",
            api(
                "OpsJob",
                "failing",
                {
                    "targets": ["web01", "web02"],
                    "failurePolicy": {"mode": "Continue"},
                    "steps": [
                        {
                            "name": "check",
                            "type": "ssh.exec",
                            "command": "test {{ target.name }} = web01 || exit 3",
                        },
                        {"name": "never", "type": "ssh.exec", "command": "true"},
                    ],
                },
            ),
        )
        out, err = io.StringIO(), io.StringIO()
        status = run_local([job, files], stdout=out, stderr=err)
    assert status == 1
    table = out.getvalue()[out.getvalue().index("STEP") :].splitlines()
    web02 = next(line for line in table if line.startswith("check") and " web02 " in line)
    assert "Failed" in web02 and " 3 " in web02
    never = [line for line in table if line.startswith("never")]
    assert all("Skipped" in line and "not run: step check failed" in line for line in never)
    assert "run Failed (StepsFailed)" in err.getvalue()


def test_local_run_reports_plan_errors(tmp_path: Path) -> None:
    job = write_manifests(
        tmp_path / "job.yaml",
        api(
            "OpsJob",
            "lost",
            {"target": "ghost", "steps": [{"name": "s", "type": "ssh.exec", "command": "x"}]},
        ),
    )
    err = io.StringIO()
    assert run_local([job], stdout=io.StringIO(), stderr=err) == 1
    assert err.getvalue() == "error: TargetNotFound: Target ghost (spec.target) not found\n"


def test_run_subcommand_with_params(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with serve({"/echo": lambda r: text(r.query["msg"][0])}) as http:
        job = write_manifests(
            tmp_path / "job.yaml",
            api(
                "OpsJob",
                "echo",
                {
                    "parameters": [
                        {"name": "msg", "required": True},
                        {"name": "n", "type": "integer", "default": 1},
                    ],
                    "steps": [
                        {
                            "name": "call",
                            "type": "http.get",
                            "url": f"{http.url}/echo",
                            "query": {"msg": "{{ params.msg }}-{{ params.n + 1 }}"},
                        }
                    ],
                },
            ),
        )
        parser = argparse.ArgumentParser(prog="opsconductor")
        add_run_parser(parser.add_subparsers(dest="command"))
        args = parser.parse_args(["run", "-f", str(job), "-p", "msg=hi there", "--param", "n=41"])
        assert args.func(args) == 0
    assert "[call/local] stdout: hi there-42" in capsys.readouterr().out


# --- the runner pod's entrypoint ----------------------------------------------------------------------
def runner_env(plan: Path, termination: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_")}
    env.update(
        OPSCONDUCTOR_PLAN=str(plan), OPSCONDUCTOR_TERMINATION_LOG=str(termination), PYTHONUNBUFFERED="1"
    )
    return env


def plan_file(tmp_path: Path, steps: list[dict[str, Any]]) -> Path:
    plan = RunPlan(
        job=JobRef(namespace="ops", name="j", uid="u"),
        steps=[PlanStep.model_validate({"step": s, "targets": []}) for s in steps],
        workspace=str(tmp_path),
    )
    path = tmp_path / "plan.json"
    path.write_text(plan.model_dump_json(by_alias=True))  # as the operator writes it
    return path


def test_runner_entrypoint_success_and_failure(tmp_path: Path) -> None:
    with serve({"/ok": lambda r: text("fine"), "/bad": lambda r: text("nope", 500)}) as http:
        for route, code, phase in (("ok", 0, "Succeeded"), ("bad", 1, "Failed")):
            plan = plan_file(tmp_path, [{"name": "call", "type": "http.get", "url": f"{http.url}/{route}"}])
            termination = tmp_path / f"termination-{route}"
            result = subprocess.run(
                [sys.executable, "-m", "opsconductor.runner"],
                env=runner_env(plan, termination),
                capture_output=True,
                text=True,
                timeout=60,
                cwd=REPO,
            )
            assert result.returncode == code, result.stderr
            summary = json.loads(termination.read_text())
            assert summary["phase"] == phase
            if route == "ok":
                assert "[call/local] stdout: fine" in result.stdout
            else:
                assert summary["reason"] == "StepsFailed" and "HTTP 500" in summary["message"]


def test_runner_entrypoint_sigterm_cancels(tmp_path: Path) -> None:
    plan = plan_file(tmp_path, [{"name": "pause", "type": "wait", "seconds": 3600}])
    termination = tmp_path / "termination"
    process = subprocess.Popen(
        [sys.executable, "-m", "opsconductor.runner"],
        env=runner_env(plan, termination),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    assert process.stderr is not None
    for line in process.stderr:  # wait until the run has started
        if "running OpsJob ops/j" in line:
            break
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 2
    summary = json.loads(termination.read_text())
    assert summary["phase"] == "Cancelled"


def test_runner_entrypoint_bad_plan(tmp_path: Path) -> None:
    bad = tmp_path / "plan.json"
    bad.write_text("{}")
    termination = tmp_path / "termination"
    result = subprocess.run(
        [sys.executable, "-m", "opsconductor.runner"],
        env=runner_env(bad, termination),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert result.returncode == 1
    assert json.loads(termination.read_text())["reason"] == "InvalidPlan"
