"""The Helm chart: values documented and in sync with the schema model, lint, render, server dry-run."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from opsconductor import __version__, chartgen, crdgen, metrics, rbac
from opsconductor.chartvalues import ChartValues
from tests.helm import CHART, Helm, documents
from tests.kube import Kubectl

VALUES_FILE = CHART / "values.yaml"


def _leaf_paths(tree: dict[str, Any], prefix: str = "") -> Iterator[str]:
    for key, value in tree.items():
        yield prefix + key
        if isinstance(value, dict) and value:
            yield from _leaf_paths(value, f"{prefix}{key}.")


def test_values_yaml_is_exactly_the_models_defaults() -> None:
    on_disk = yaml.safe_load(VALUES_FILE.read_text())
    assert on_disk == ChartValues().model_dump(by_alias=True, mode="json")


def test_every_key_in_values_yaml_has_a_comment_above_it() -> None:
    lines = VALUES_FILE.read_text().splitlines()
    undocumented = []
    for index, line in enumerate(lines):
        match = re.match(r"^(\s*)([A-Za-z_][\w-]*):", line)
        if not match or index == 0:
            continue
        previous = lines[index - 1].strip()
        inside_free_map = match.group(2) == "grafana_dashboard"  # a user-chosen label key
        if not previous.startswith("#") and not inside_free_map:
            undocumented.append(line.strip())
    assert not undocumented


def test_chart_files_are_generated_and_current() -> None:
    diffs = crdgen.drift(chartgen.expected_files())
    assert not diffs, "chart files are stale; run `make crds`:\n" + "\n".join(diffs)[:4000]


def test_chart_version_follows_the_operator() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == __version__ == chart["version"]


def test_dashboard_only_queries_exported_metrics() -> None:
    exported = {family.name for family in metrics.REGISTRY.collect()}
    queried = set()
    for panel in chartgen.dashboard()["panels"]:
        queried |= set(re.findall(r"opsconductor_[a-z_]+", panel["targets"][0]["expr"]))
    assert len(queried) == len(chartgen.DASHBOARD_PANELS)
    family = lambda name: re.sub(r"_(total|bucket|sum|count)$", "", name)  # noqa: E731
    assert {family(name) for name in queried} <= exported


def test_helm_lint_is_clean(helm: Helm) -> None:
    result = helm.run("lint", str(CHART), "--strict", "--kube-version", "1.36.3")
    assert "0 chart(s) failed" in result.stdout


VALUE_SETS = {
    "defaults": [],
    "watched-namespaces": ["watchNamespaces={chart-a,chart-b}", "replicaCount=1"],
    "minimal": [
        "metrics.enabled=false",
        "userRoles.create=false",
        "podDisruptionBudget.enabled=false",
        "serviceAccount.create=false",
        "serviceAccount.name=existing",
    ],
    "hardened": ["networkPolicy.enabled=true", "verbose=true", "resources.limits.cpu=500m"],
}


@pytest.fixture(scope="module")
def peering_crds(kubectl: Kubectl) -> None:
    """The chart's crds/ that are not ours (kopf peering), as helm install would apply them."""
    kubectl.run("apply", "-f", str(CHART / "crds" / "kopf.dev_peerings.yaml"))
    kubectl.run(
        "wait", "--for=condition=Established", "crd/clusterkopfpeerings.kopf.dev", "crd/kopfpeerings.kopf.dev"
    )


@pytest.mark.parametrize("value_set", list(VALUE_SETS))
def test_chart_renders_and_the_api_server_accepts_it(
    value_set: str, helm: Helm, kubectl: Kubectl, namespace: str, peering_crds: None
) -> None:
    sets = [
        s.replace("chart-a", f"{namespace}-a").replace("chart-b", f"{namespace}-b")
        for s in VALUE_SETS[value_set]
    ]
    for watched in (f"{namespace}-a", f"{namespace}-b"):
        if any(watched in s for s in sets):
            kubectl.run("create", "namespace", watched)
    rendered = helm.template(*sets, f"peeringName={namespace}", namespace=namespace)
    docs = documents(rendered)
    # Cluster-scoped objects carry fixed names (user roles) or the release name: give this value set
    # its own names so the dry run cannot collide with other tests' objects.
    kinds = [d["kind"] for d in docs]
    assert "Deployment" in kinds
    result = kubectl.with_namespace("").run(
        "apply", "--dry-run=server", "-f", "-", input=rendered, check=False
    )
    assert result.returncode == 0, result.stderr
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    # Restricted pod security in every value set.
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert container["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    env = {e["name"]: e.get("value") for e in container["env"]}
    if value_set == "watched-namespaces":
        assert env["OPSCONDUCTOR_NAMESPACES"] == f"{namespace}-a,{namespace}-b"
        bindings = [d for d in docs if d["kind"] == "RoleBinding"]
        assert sorted(b["metadata"]["namespace"] for b in bindings) == [f"{namespace}-a", f"{namespace}-b"]
        cluster_binding_roles = {d["roleRef"]["name"] for d in docs if d["kind"] == "ClusterRoleBinding"}
        cluster_role = next(
            d for d in docs if d["kind"] == "ClusterRole" and d["metadata"]["name"] in cluster_binding_roles
        )
        granted = {r for rule in cluster_role["rules"] for r in rule["resources"]}
        assert granted == rbac.CLUSTER_SCOPED_RESOURCES  # nothing namespaced is granted cluster-wide
    flow_schema = next(d for d in docs if d["kind"] == "FlowSchema")
    expected = rbac.operator_flow_schema(service_account=(namespace, pod["serviceAccountName"]))
    assert flow_schema["spec"] == expected["spec"]  # the chart's FlowSchema is rbac.py's
    if value_set == "minimal":
        assert "OPSCONDUCTOR_METRICS_ADDRESS" not in env
        assert not [d for d in docs if d["kind"] in ("Service", "ServiceAccount", "PodDisruptionBudget")]
        assert pod["serviceAccountName"] == "existing"


def test_operator_cluster_role_grants_exactly_the_rules_from_rbac_py(helm: Helm) -> None:
    docs = documents(helm.template())
    role = next(
        d for d in docs if d["kind"] == "ClusterRole" and d["metadata"]["name"] == "release-opsconductor"
    )
    normalise = lambda rules: sorted(json.dumps(r, sort_keys=True) for r in rules)  # noqa: E731
    assert normalise(role["rules"]) == normalise(rbac.scoped_rules(False) + rbac.scoped_rules(True))


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("replicaCount=0", "replicaCount"),
        ("watchNamespaces={Not_A_Namespace}", "watchNamespaces"),
        ("replicaCuont=2", "replicaCuont"),
        ("image.pullPolicy=Sometimes", "pullPolicy"),
    ],
)
def test_schema_rejects_bad_values_with_a_message_naming_the_key(
    helm: Helm, setting: str, message: str
) -> None:
    result = helm.run(
        "template", "release", str(CHART), "--kube-version", "1.36.3", "--set", setting, check=False
    )
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr
    assert message in result.stderr


def test_notes_tell_the_user_what_to_apply_next(helm: Helm, namespace: str) -> None:
    # recordCreator=false: the local control plane already has the policy (install_crds).
    result = helm.run(
        "install",
        "release",
        str(CHART),
        "--dry-run=server",
        "--namespace",
        namespace,
        "--set",
        "recordCreator=false",
    )
    notes = result.stdout.split("NOTES:", 1)[1]
    assert "kubectl apply -f examples/credentials/" in notes
    assert "opsconductor probe target/" in notes
    assert "kubectl get opsconductor" in notes
