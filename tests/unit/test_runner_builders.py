"""The runner pod and its RBAC, as built (pure, no cluster)."""

from __future__ import annotations

from opsconductor.builders.runner import build_plan_config_map, build_runner_pod, build_runner_rbac
from opsconductor.config import Config
from opsconductor.plan import JobRef, RunPlan

JOB = {
    "apiVersion": "opsconductor.io/v1alpha1",
    "kind": "OpsJob",
    "metadata": {"name": "restart-web", "namespace": "ops", "uid": "1234"},
    "spec": {"activeDeadlineSeconds": 600, "runner": {"nodeSelector": {"pool": "ops"}}},
}


def test_runner_pod_meets_the_restricted_pod_security_standard() -> None:
    pod = build_runner_pod(JOB, Config(), ["web-ssh"])
    spec = pod["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = spec["containers"]
    context = container["securityContext"]
    assert context["allowPrivilegeEscalation"] is False
    assert context["readOnlyRootFilesystem"] is True
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert spec["restartPolicy"] == "Never"
    assert spec["activeDeadlineSeconds"] > 600
    assert spec["nodeSelector"] == {"pool": "ops"}


def test_only_the_referenced_secrets_are_mounted_and_never_as_env() -> None:
    pod = build_runner_pod(JOB, Config(), ["web-ssh", "db-password"])
    secrets = sorted(v["secret"]["secretName"] for v in pod["spec"]["volumes"] if "secret" in v)
    assert secrets == ["db-password", "web-ssh"]
    (container,) = pod["spec"]["containers"]
    assert all("valueFrom" not in env for env in container.get("env", []))
    assert "envFrom" not in container
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/var/run/opsconductor/secrets/web-ssh"]["readOnly"] is True


def test_pod_and_rbac_are_owned_by_the_job_and_named_deterministically() -> None:
    objects = [build_runner_pod(JOB, Config(), []), *build_runner_rbac(JOB)]
    for obj in objects:
        (owner,) = obj["metadata"]["ownerReferences"]
        assert owner["uid"] == "1234" and owner["controller"] is True
    assert objects[0]["metadata"]["name"] == "restart-web-runner"
    assert build_runner_pod(JOB, Config(), []) == build_runner_pod(JOB, Config(), [])


def test_runner_role_only_patches_its_own_jobs_status() -> None:
    role = next(o for o in build_runner_rbac(JOB) if o["kind"] == "Role")
    assert role["rules"] == [
        {
            "apiGroups": ["opsconductor.io"],
            "resources": ["opsjobs/status"],
            "resourceNames": ["restart-web"],
            "verbs": ["get", "patch"],
        }
    ]


def test_plan_config_map_carries_no_secret_values() -> None:
    plan = RunPlan(job=JobRef(namespace="ops", name="restart-web", uid="1234"), steps=[])
    config_map = build_plan_config_map(JOB, plan)
    assert config_map["immutable"] is True
    assert set(config_map["data"]) == {"plan.json"}
