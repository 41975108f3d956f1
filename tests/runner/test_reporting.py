"""KubernetesReporter: batched merge-patches of the status subresource, token re-read, retries.

Against a loopback HTTPS stand-in for the API server (fast, exact request checks) and, marked
``cluster``, against the real local kube-apiserver with a per-job service account whose Role only
allows patching that job's status.
"""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import TypeAdapter

from opsconductor.api.opsjob import Step
from opsconductor.localcluster.controlplane import ControlPlane
from opsconductor.plan import JobRef, PlanStep, PlanTarget, RunPlan, RunSummary
from opsconductor.runner.engine import Engine, session_kinds_with
from opsconductor.runner.protocols.base import StepContext, StepOutcome
from opsconductor.runner.reporting import (
    ApiEndpoint,
    ConsoleReporter,
    KubernetesReporter,
    OutputLog,
    status_path,
)
from opsconductor.runner.results import RunState
from opsconductor.runner.secrets import FileSecretStore
from tests.kube import Kubectl
from tests.runner.servers import LoopbackServer, Pki, Recorded, as_json, make_pki

STEP: TypeAdapter[Any] = TypeAdapter(Step)
JOB = JobRef(namespace="ops", name="nightly", uid="uid-1")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


class FakeApi:
    """Answers PATCHes of the job's status; can fail the first N of them."""

    def __init__(self, fail_first: int = 0) -> None:
        self.fail_first = fail_first
        self.patches: list[Recorded] = []
        self.lock = threading.Lock()

    def __call__(self, request: Recorded) -> tuple[int, dict[str, str], bytes]:
        with self.lock:
            self.patches.append(request)
            if len(self.patches) <= self.fail_first:
                return as_json({"message": "etcdserver: leader changed"}, 500)
        return as_json({"kind": "OpsJob"})


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text("token-1\n")
    return path


@pytest.fixture
def api(pki: Pki) -> Iterator[tuple[LoopbackServer, FakeApi]]:
    fake = FakeApi()
    with LoopbackServer({status_path(JOB): fake}, pki.server_context()) as server:
        yield server, fake


def fanout_plan(steps: int, targets: int) -> RunPlan:
    names = [f"t{n:03d}" for n in range(targets)]
    return RunPlan(
        job=JOB,
        targets={n: PlanTarget(name=n, address="127.0.0.1", port=22, protocol="ssh") for n in names},
        steps=[
            PlanStep(
                step=STEP.validate_python({"name": f"s{i}", "type": "ssh.exec", "command": "x"}),
                targets=names,
            )
            for i in range(steps)
        ],
    )


class Quick:
    step_types = frozenset({"ssh.exec"})

    def run(self, step: Any, ctx: StepContext) -> StepOutcome:
        return StepOutcome(ok=True, exit_code=0, stdout="out\n" * 1000)

    def close(self) -> None:
        pass


def run_with(plan: RunPlan, reporter: Any) -> Any:
    return Engine(
        plan,
        FileSecretStore(),
        reporter=reporter,
        output=OutputLog(io.StringIO()),
        session_kinds=session_kinds_with({"ssh": Quick}),
    ).run()


def test_writes_are_batched_and_only_touch_runner_fields(
    api: tuple[LoopbackServer, FakeApi], pki: Pki, token_file: Path
) -> None:
    server, fake = api
    reporter = KubernetesReporter(JOB, ApiEndpoint(server.url, str(token_file), str(pki.ca)))
    result = run_with(fanout_plan(steps=3, targets=200), reporter)
    assert result.summary.phase == "Succeeded"
    # O(steps) writes, not O(targets): at most start + 2 per step + final + a few timed batches
    # (boundaries that come while a write is in flight share the next one).
    assert 2 <= len(fake.patches) <= 1 + 2 * 3 + 1 + 5
    assert reporter.writes == len(fake.patches)
    last = fake.patches[-1]
    assert last.method == "PATCH"
    assert last.headers["Content-Type"] == "application/merge-patch+json"
    assert last.headers["Authorization"] == "Bearer token-1"
    body = last.json()
    assert set(body) == {"status"}
    assert set(body["status"]) == {"startTime", "steps", "progress"}
    assert body["status"]["progress"] == {"steps": "3/3", "targets": "600/0"}
    assert [s["phase"] for s in body["status"]["steps"]] == ["Succeeded"] * 3
    assert body["status"]["steps"][0]["omittedTargets"] == 200  # big steps list failures only


def test_token_is_reread_and_failed_writes_are_retried(pki: Pki, token_file: Path) -> None:
    fake = FakeApi(fail_first=1)
    with LoopbackServer({status_path(JOB): fake}, pki.server_context()) as server:
        reporter = KubernetesReporter(
            JOB, ApiEndpoint(server.url, str(token_file), str(pki.ca)), final_timeout=20
        )
        state = RunState([("only", ["a"])])
        state.start_time = None
        reporter.run_started(state)
        token_file.write_text("token-2\n")  # the kubelet rotated the projected token
        reporter.run_finished(state, RunSummary(phase="Succeeded"))
    assert [p.headers["Authorization"] for p in fake.patches][-1] == "Bearer token-2"
    assert fake.patches[0].headers["Authorization"] in ("Bearer token-1", "Bearer token-2")
    assert reporter.writes >= 1
    assert len(fake.patches) >= 2  # the 500 was retried


def test_an_unreachable_api_never_fails_the_run(pki: Pki, token_file: Path) -> None:
    with LoopbackServer() as server:
        url = server.url.replace("http://", "https://")
    reporter = KubernetesReporter(JOB, ApiEndpoint(url, str(token_file), str(pki.ca)), final_timeout=1)
    started = time.monotonic()
    result = run_with(fanout_plan(steps=1, targets=3), reporter)
    assert result.summary.phase == "Succeeded"
    assert reporter.writes == 0
    assert time.monotonic() - started < 15


def test_in_cluster_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "fd00::1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "6443")
    endpoint = ApiEndpoint.in_cluster("/sa")
    assert endpoint == ApiEndpoint("https://[fd00::1]:6443", "/sa/token", "/sa/ca.crt")
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST")
    with pytest.raises(RuntimeError, match="not running in a Kubernetes pod"):
        ApiEndpoint.in_cluster()


def test_console_reporter_prints_progress() -> None:
    stream = io.StringIO()
    run_with(fanout_plan(steps=1, targets=2), ConsoleReporter(stream))
    lines = stream.getvalue().splitlines()
    assert lines[0] == "run started: 1 step(s)"
    assert lines[1] == "step 1/1 s0: 2 target(s)"
    assert any(line.startswith("  s0/t000: ok  exit 0") for line in lines)
    assert lines[-2] == "step s0: Succeeded (2 ok, 0 failed, 0 skipped, 0 cancelled)"
    assert lines[-1] == "run Succeeded (Succeeded)"


# --- against the real API server --------------------------------------------------------------------
RBAC = """
apiVersion: v1
kind: ServiceAccount
metadata: {name: runner}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: runner}
rules:
  - apiGroups: [opsconductor.io]
    resources: [opsjobs/status]
    resourceNames: [nightly]
    verbs: [get, patch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: runner}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: runner}
subjects: [{kind: ServiceAccount, name: runner}]
"""


@pytest.mark.cluster
def test_status_subresource_on_a_real_api_server(
    control_plane: ControlPlane, kubectl: Kubectl, namespace: str, tmp_path: Path
) -> None:
    k = kubectl.with_namespace(namespace)
    job = {
        "apiVersion": "opsconductor.io/v1alpha1",
        "kind": "OpsJob",
        "metadata": {"name": "nightly"},
        "spec": {"target": "web01", "steps": [{"name": "s0", "type": "ssh.exec", "command": "x"}]},
    }
    k.apply(yaml.safe_dump(job))
    k.apply(RBAC)
    uid = k.get("opsjob", "nightly")["metadata"]["uid"]
    token = tmp_path / "token"
    token.write_text(k.run("create", "token", "runner").stdout.strip())
    ref = JobRef(namespace=namespace, name="nightly", uid=uid)
    reporter = KubernetesReporter(
        ref, ApiEndpoint(control_plane.api_url, str(token), str(control_plane.ca_file))
    )
    plan = fanout_plan(steps=2, targets=25).model_copy(update={"job": ref})
    result = run_with(plan, reporter)
    assert result.summary.phase == "Succeeded"
    assert reporter.writes >= 2
    status = k.get("opsjob", "nightly")["status"]
    assert status["progress"] == {"steps": "2/2", "targets": "50/0"}
    assert [s["name"] for s in status["steps"]] == ["s0", "s1"]
    assert status["steps"][1]["counts"]["succeeded"] == 25
    assert status["steps"][1]["omittedTargets"] == 25
    assert "startTime" in status
    assert "phase" not in status or status["phase"] == "Pending"  # the operator owns the phase
    assert json.dumps(status).count("out") == 0  # successes of big steps carry no output
