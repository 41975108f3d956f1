"""build_run_plan: OpsJob + Targets + Credentials + Secret keys → RunPlan and runner volumes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from opsconductor.api._base import LabelSelector
from opsconductor.plan import SECRETS_ROOT
from opsconductor.planner import PlanError, RunnerVolume, build_run_plan, selector_matches

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def target(name: str, labels: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    spec.setdefault("address", f"{name}.example.com")
    spec.setdefault("protocol", "ssh")
    return {"metadata": {"name": name, "labels": labels or {}}, "spec": spec}


def job(spec: dict[str, Any], name: str = "job1") -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "ops", "uid": "uid-1"}, "spec": spec}


TARGETS = [
    target("web01", {"role": "web", "env": "prod"}, credentialRef={"name": "ssh-key"}),
    target("web02", {"role": "web", "env": "staging"}, credentialRef={"name": "ssh-key"}, port=2222),
    target("db01", {"role": "db"}, credentialRef={"name": "ssh-key"}),
    target(
        "api01",
        {"role": "api"},
        protocol="http",
        credentialRef={"name": "api-token"},
        http={
            "scheme": "https",
            "basePath": "/v1",
            "tls": {"caBundleSecretRef": {"name": "corp-ca", "key": "ca.crt"}},
        },
    ),
    target("win01", {"os": "windows"}, protocol="winrm", winrm={"scheme": "https"}),
]
CREDENTIALS = {
    "ssh-key": {"type": "SSHKey", "secretRef": {"name": "ssh-key"}},
    "api-token": {"type": "BearerToken", "secretRef": {"name": "api"}, "keys": {"token": "bearer"}},
    "other-user": {"type": "BasicAuth", "secretRef": {"name": "other"}, "username": "deploy"},
}
SECRET_KEYS = {
    "ssh-key": {"username", "ssh-privatekey"},
    "api": {"bearer"},
    "corp-ca": {"ca.crt"},
    "other": {"password"},
    "params": {"db-password"},
    "hooks": {"hmac-key"},
    "files": {"a.conf", "b.conf"},
}


def plan_for(spec: dict[str, Any], **kwargs: Any) -> Any:
    return build_run_plan(job(spec), TARGETS, CREDENTIALS, SECRET_KEYS, **kwargs)


def test_full_plan() -> None:
    planned = plan_for(
        {
            "targetSelector": {"matchLabels": {"role": "web"}},
            "parameters": [
                {"name": "svc", "default": "nginx"},
                {
                    "name": "dbpw",
                    "secret": True,
                    "valueFrom": {"secretKeyRef": {"name": "params", "key": "db-password"}},
                },
                {
                    "name": "level",
                    "type": "integer",
                    "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "level"}},
                },
            ],
            "concurrency": 4,
            "failurePolicy": {"mode": "Continue"},
            "activeDeadlineSeconds": 600,
            "steps": [
                {
                    "name": "upload",
                    "type": "sftp.upload",
                    "source": {"secret": {"name": "files"}},
                    "destination": "/etc/app",
                },
                {
                    "name": "tmpl",
                    "type": "ssh.copy",
                    "source": {"configMap": {"name": "templates"}},
                    "destination": "/tmp",
                },
                {"name": "restart", "type": "ssh.exec", "command": "systemctl restart {{ params.svc }}"},
                {
                    "name": "as-deploy",
                    "type": "ssh.exec",
                    "command": "id",
                    "targets": ["db01"],
                    "credentialRef": {"name": "other-user"},
                },
                {"name": "health", "type": "http.get", "url": "healthz", "targets": ["api01"]},
                {"name": "pause", "type": "wait", "seconds": 5},
                {
                    "name": "notify",
                    "type": "webhook.call",
                    "url": "https://hooks.example.com/x",
                    "hmac": {"secretKeyRef": {"name": "hooks", "key": "hmac-key"}},
                },
            ],
        },
        config_maps={"settings": {"level": "3"}, "templates": {"t.j2": "x"}},
    )
    plan = planned.plan
    assert [s.targets for s in plan.steps] == [
        ["web01", "web02"],
        ["web01", "web02"],
        ["web01", "web02"],
        ["db01@other-user"],
        ["api01"],
        [],
        [],
    ]
    assert plan.parameters == {"svc": "nginx", "level": 3}
    assert plan.secret_parameters == {"dbpw": f"{SECRETS_ROOT}/params/db-password"}
    web01, web02 = plan.targets["web01"], plan.targets["web02"]
    assert (web01.port, web02.port, web01.labels) == (22, 2222, {"role": "web", "env": "prod"})
    assert web01.credential is not None and web01.credential.files == {
        "username": f"{SECRETS_ROOT}/ssh-key/username",
        "privateKey": f"{SECRETS_ROOT}/ssh-key/ssh-privatekey",
    }
    db = plan.targets["db01@other-user"]
    assert db.name == "db01" and db.credential is not None
    assert db.credential.username == "deploy" and db.credential.files == {
        "password": f"{SECRETS_ROOT}/other/password"
    }
    api = plan.targets["api01"]
    assert (api.port, api.scheme, api.base_path) == (443, "https", "/v1")
    assert api.ca_bundle_file == f"{SECRETS_ROOT}/corp-ca/ca.crt"
    assert api.credential is not None and api.credential.files == {"token": f"{SECRETS_ROOT}/api/bearer"}
    assert (
        plan.concurrency == 4
        and plan.failure_policy.mode == "Continue"
        and plan.active_deadline_seconds == 600
    )
    assert planned.secrets == ("api", "corp-ca", "files", "hooks", "other", "params", "ssh-key")
    assert planned.config_maps == ("templates",)
    assert plan.secret_dirs["hooks"] == f"{SECRETS_ROOT}/hooks"
    assert RunnerVolume("configMap", "templates", "/etc/opsconductor/configmaps/templates") in planned.volumes
    # The plan survives the trip through plan.json.
    assert type(plan).model_validate_json(plan.model_dump_json()) == plan


def test_custom_roots_for_local_runs(tmp_path: Path) -> None:
    planned = plan_for(
        {"target": "web01", "steps": [{"name": "s", "type": "ssh.exec", "command": "x"}]},
        secrets_root=str(tmp_path / "secrets"),
        workspace=str(tmp_path / "ws"),
    )
    credential = planned.plan.targets["web01"].credential
    assert (
        credential is not None
        and credential.files["privateKey"] == f"{tmp_path}/secrets/ssh-key/ssh-privatekey"
    )
    assert planned.plan.workspace == f"{tmp_path}/ws"


@pytest.mark.parametrize(
    ("spec", "reason", "words"),
    [
        ({"targets": ["web01", "nope"]}, "TargetNotFound", "Target nope (spec.targets) not found"),
        (
            {"targetSelector": {"matchLabels": {"role": "mail"}}},
            "TargetNotFound",
            "spec.targetSelector matches no Targets",
        ),
        ({}, "InvalidSpec", "step s (ssh.exec) needs targets"),
        (
            {
                "target": "web01",
                "steps": [
                    {"name": "s", "type": "ssh.exec", "command": "x", "credentialRef": {"name": "ghost"}}
                ],
            },
            "CredentialNotFound",
            "Credential ghost",
        ),
        (
            {
                "target": "web01",
                "parameters": [
                    {
                        "name": "p",
                        "valueFrom": {"secretKeyRef": {"name": "params", "key": "nokey"}},
                        "secret": True,
                    }
                ],
            },
            "SecretNotFound",
            "Secret params has no key nokey",
        ),
        (
            {"target": "web01", "steps": [{"name": "s", "type": "ssh.exec", "command": "{{ params.x }}"}]},
            "InvalidTemplate",
            "steps[0].command (step s): params.x is not a declared parameter",
        ),
        (
            {
                "target": "web01",
                "parameters": [{"name": "n", "type": "integer"}],
                "arguments": {"n": "three"},
            },
            "InvalidSpec",
            "parameter n: must be an integer",
        ),
        (
            {
                "target": "web01",
                "steps": [
                    {
                        "name": "s",
                        "type": "sftp.upload",
                        "source": {"secret": {"name": "files"}, "key": "c.conf"},
                        "destination": "/x",
                    }
                ],
            },
            "SecretNotFound",
            "Secret files has no key c.conf",
        ),
    ],
)
def test_plan_errors(spec: dict[str, Any], reason: str, words: str) -> None:
    spec.setdefault("steps", [{"name": "s", "type": "ssh.exec", "command": "x"}])
    with pytest.raises(PlanError) as error:
        plan_for(spec)
    assert error.value.reason == reason
    assert words in error.value.message


def test_missing_credential_secret_key() -> None:
    with pytest.raises(PlanError) as error:
        build_run_plan(
            job({"target": "web01", "steps": [{"name": "s", "type": "ssh.exec", "command": "x"}]}),
            TARGETS,
            CREDENTIALS,
            {"ssh-key": {"username"}},
        )
    assert error.value.reason == "SecretNotFound"
    assert (
        error.value.message
        == "Secret ssh-key has no key ssh-privatekey (the privateKey of SSHKey Credential ssh-key)"
    )


def test_template_issues_are_attached() -> None:
    with pytest.raises(PlanError) as error:
        plan_for(
            {"target": "web01", "steps": [{"name": "a", "type": "ssh.exec", "command": "{{ x }} {{ y }}"}]}
        )
    assert [issue.field for issue in error.value.issues] == ["steps[0].command", "steps[0].command"]


@pytest.mark.parametrize(
    ("selector", "labels", "matches"),
    [
        ({"matchLabels": {"a": "1"}}, {"a": "1", "b": "2"}, True),
        ({"matchLabels": {"a": "1"}}, {"a": "2"}, False),
        ({"matchExpressions": [{"key": "a", "operator": "In", "values": ["1", "2"]}]}, {"a": "2"}, True),
        ({"matchExpressions": [{"key": "a", "operator": "In", "values": ["1"]}]}, {}, False),
        ({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["1"]}]}, {}, True),
        ({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["1"]}]}, {"a": "1"}, False),
        ({"matchExpressions": [{"key": "a", "operator": "Exists"}]}, {"a": ""}, True),
        ({"matchExpressions": [{"key": "a", "operator": "DoesNotExist"}]}, {"a": ""}, False),
    ],
)
def test_selector_matches(selector: dict[str, Any], labels: dict[str, str], matches: bool) -> None:
    assert selector_matches(LabelSelector.model_validate(selector), labels) is matches


def load(kind_dir: str) -> list[dict[str, Any]]:
    documents: list[dict[str, Any]] = []
    for file in sorted((EXAMPLES / kind_dir).glob("*.yaml")):
        documents.extend(d for d in yaml.safe_load_all(file.read_text()) if d)
    return documents


@pytest.mark.parametrize(
    "name",
    sorted(d["metadata"]["name"] for d in load("opsjobs") if d["kind"] == "OpsJob"),
)
def test_examples_plan(name: str) -> None:
    jobs = {d["metadata"]["name"]: d for d in load("opsjobs") if d["kind"] == "OpsJob"}
    config_maps = {d["metadata"]["name"]: d["data"] for d in load("opsjobs") if d["kind"] == "ConfigMap"}
    credentials = [d for d in load("credentials") if d["kind"] == "Credential"]
    secrets = [d for d in load("credentials") if d["kind"] == "Secret"]
    planned = build_run_plan(
        jobs[name],
        load("targets"),
        {c["metadata"]["name"]: c for c in credentials},
        {s["metadata"]["name"]: set((s.get("stringData") or {}) | (s.get("data") or {})) for s in secrets},
        config_maps,
    )
    assert planned.plan.steps
