"""The operator's least-privilege RBAC, as data: the one source for tests and the Helm chart.

Why each permission exists is written next to it. The runner gets none of these: each runner pod
runs under its own service account whose Role (``builders.runner.build_runner_rbac``) allows only
``get``/``patch`` on its own OpsJob's status. To create that Role the operator must hold those
verbs itself (RBAC escalation check), which it does.
"""

from __future__ import annotations

from typing import Any

from opsconductor.api import GROUP, KINDS

OPERATOR_CLUSTER_ROLE = "opsconductor-controller"
"""The operator's own ClusterRole outside Helm (the chart names it after the release); not the
``opsconductor-operator`` user role, which is for people."""

_PLURALS = [kind.plural for kind in KINDS]

OPERATOR_RULES: list[dict[str, Any]] = [
    # Watch our kinds (MaintenanceWindows are only read); OpsSchedules create OpsJobs, cancel them
    # (concurrencyPolicy Replace patches spec.cancel) and delete them past the history limits; TTL
    # deletes finished OpsJobs.
    {"apiGroups": [GROUP], "resources": _PLURALS, "verbs": ["get", "list", "watch", "patch"]},
    {"apiGroups": [GROUP], "resources": ["opsjobs"], "verbs": ["create", "delete"]},
    {
        "apiGroups": [GROUP],
        "resources": [f"{p}/status" for p in _PLURALS],
        "verbs": ["get", "patch", "update"],
    },
    # Runner pods and their plan ConfigMaps; ConfigMaps are also read for parameters and templates.
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch", "create", "delete"]},
    {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list", "watch", "create"]},
    # Secrets: existence and key names for planning; values for Credential validation and
    # notification channels. Never written.
    {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list", "watch"]},
    # Per-job runner identity.
    {"apiGroups": [""], "resources": ["serviceaccounts"], "verbs": ["get", "create"]},
    {
        "apiGroups": ["rbac.authorization.k8s.io"],
        "resources": ["roles", "rolebindings"],
        "verbs": ["get", "create"],
    },
    # Events on our objects.
    {"apiGroups": ["", "events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
    # kopf discovers resources and (cluster-wide) namespaces.
    {
        "apiGroups": ["apiextensions.k8s.io"],
        "resources": ["customresourcedefinitions"],
        "verbs": ["get", "list", "watch"],
    },
    {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "list", "watch"]},
    # kopf peering (two replicas, one active).
    {
        "apiGroups": ["kopf.dev"],
        "resources": ["clusterkopfpeerings", "kopfpeerings"],
        "verbs": ["get", "list", "watch", "patch"],
    },
]


# Resources that exist outside namespaces: with a list of watched namespaces, these rules still need a
# ClusterRoleBinding while everything else is granted per namespace by RoleBindings.
CLUSTER_SCOPED_RESOURCES = frozenset({"customresourcedefinitions", "namespaces", "clusterkopfpeerings"})


def scoped_rules(cluster_scoped: bool, rules: list[dict[str, Any]] = OPERATOR_RULES) -> list[dict[str, Any]]:
    """Return the rules about cluster-scoped resources (or, with False, about namespaced ones)."""
    picked = []
    for rule in rules:
        resources = [r for r in rule["resources"] if (r in CLUSTER_SCOPED_RESOURCES) == cluster_scoped]
        if resources:
            picked.append({**rule, "resources": resources})
    return picked


# The user roles the chart ships (the old OpsConductor's Admin / Operator / Viewer), aggregated into
# Kubernetes' built-in admin / edit / view roles. What each may do is documented in docs/roles.md
# and checked by impersonation in tests/integration/test_user_roles.py.
_READ = ["get", "list", "watch"]
USER_ROLES: dict[str, dict[str, Any]] = {
    "opsconductor-admin": {
        "aggregate_to": "admin",
        "rules": [
            {"apiGroups": [GROUP], "resources": _PLURALS, "verbs": ["*"]},
            {"apiGroups": [GROUP], "resources": [f"{p}/status" for p in _PLURALS], "verbs": _READ},
            # Credentials point at Secrets: admins manage both.
            {
                "apiGroups": [""],
                "resources": ["secrets"],
                "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"],
            },
            {"apiGroups": [""], "resources": ["pods", "pods/log"], "verbs": _READ},
        ],
    },
    "opsconductor-operator": {
        "aggregate_to": "edit",
        "rules": [
            # Create, trigger (annotate), cancel (spec.cancel) and clean up runs and schedules.
            {
                "apiGroups": [GROUP],
                "resources": ["opsjobs", "opsschedules"],
                "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"],
            },
            # Read what runs target; probe a Target on demand (the probe annotation is a patch).
            {"apiGroups": [GROUP], "resources": ["targets"], "verbs": ["get", "list", "watch", "patch"]},
            {"apiGroups": [GROUP], "resources": ["credentials"], "verbs": _READ},
            {"apiGroups": [GROUP], "resources": [f"{p}/status" for p in _PLURALS], "verbs": _READ},
            # Follow runs: runner pods and their logs.
            {"apiGroups": [""], "resources": ["pods", "pods/log"], "verbs": _READ},
        ],
    },
    "opsconductor-viewer": {
        "aggregate_to": "view",
        "rules": [
            {"apiGroups": [GROUP], "resources": _PLURALS, "verbs": _READ},
            {"apiGroups": [GROUP], "resources": [f"{p}/status" for p in _PLURALS], "verbs": _READ},
        ],
    },
}


def user_cluster_roles(aggregate: bool = True) -> list[dict[str, Any]]:
    """Build the user ClusterRoles; with ``aggregate``, labelled to join the built-in admin/edit/view."""
    roles = []
    for name, role in USER_ROLES.items():
        labels = {"app.kubernetes.io/part-of": "opsconductor"}
        if aggregate:
            labels[f"rbac.authorization.k8s.io/aggregate-to-{role['aggregate_to']}"] = "true"
        roles.append(
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRole",
                "metadata": {"name": name, "labels": labels},
                "rules": role["rules"],
            }
        )
    return roles


OPERATOR_FLOW_SCHEMA = "opsconductor-controller"
"""The operator's FlowSchema outside Helm (the chart names it after the release)."""
OPERATOR_PRIORITY_LEVEL = "workload-high"
"""API Priority and Fairness level of the operator's requests: kube-controller-manager's built-in
level. Without a FlowSchema a service account lands in ``workload-low`` (shared with every other
workload) and a plain user in ``global-default``, where a burst of scheduled runs queues."""
OPERATOR_FLOW_PRECEDENCE = 1000
"""After the built-in system and controller FlowSchemas (up to 900), before ``service-accounts``."""


def operator_flow_schema(
    user: str | None = None,
    service_account: tuple[str, str] | None = None,
    priority_level: str = OPERATOR_PRIORITY_LEVEL,
) -> dict[str, Any]:
    """Build the FlowSchema that gives the operator's requests their API priority level.

    Args:
        user: the operator's user name (tests and the local control plane).
        service_account: or its ServiceAccount (namespace, name), as the Helm chart installs it.
        priority_level: the PriorityLevelConfiguration to use.
    """
    subjects: list[dict[str, Any]] = []
    if user:
        subjects.append({"kind": "User", "user": {"name": user}})
    if service_account:
        subjects.append(
            {
                "kind": "ServiceAccount",
                "serviceAccount": {"namespace": service_account[0], "name": service_account[1]},
            }
        )
    return {
        "apiVersion": "flowcontrol.apiserver.k8s.io/v1",
        "kind": "FlowSchema",
        "metadata": {"name": OPERATOR_FLOW_SCHEMA},
        "spec": {
            "priorityLevelConfiguration": {"name": priority_level},
            "matchingPrecedence": OPERATOR_FLOW_PRECEDENCE,
            "distinguisherMethod": {"type": "ByUser"},
            "rules": [
                {
                    "subjects": subjects,
                    "resourceRules": [
                        {
                            "verbs": ["*"],
                            "apiGroups": ["*"],
                            "resources": ["*"],
                            "namespaces": ["*"],
                            "clusterScope": True,
                        }
                    ],
                    "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}],
                }
            ],
        },
    }


def operator_cluster_role(name: str = OPERATOR_CLUSTER_ROLE) -> dict[str, Any]:
    """Build the operator's ClusterRole."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": name},
        "rules": OPERATOR_RULES,
    }


def operator_cluster_role_binding(
    user: str | None = None, service_account: tuple[str, str] | None = None
) -> dict[str, Any]:
    """Bind the ClusterRole to a user (tests) or a service account (namespace, name)."""
    subjects: list[dict[str, str]] = []
    if user:
        subjects.append({"kind": "User", "name": user, "apiGroup": "rbac.authorization.k8s.io"})
    if service_account:
        subjects.append(
            {"kind": "ServiceAccount", "namespace": service_account[0], "name": service_account[1]}
        )
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": OPERATOR_CLUSTER_ROLE},
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": OPERATOR_CLUSTER_ROLE,
        },
        "subjects": subjects,
    }
