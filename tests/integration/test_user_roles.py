"""The chart's user roles, impersonated against the API server: each does exactly what docs/roles.md says."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helm import Helm, documents
from tests.kube import Kubectl, wait_until

# (verb, resource) → whether each role may do it, in its namespace.
EXPECTED: dict[tuple[str, str], dict[str, bool]] = {
    ("create", "opsjobs.opsconductor.io"): {"admin": True, "operator": True, "viewer": False},
    ("patch", "opsjobs.opsconductor.io"): {"admin": True, "operator": True, "viewer": False},  # cancel
    ("delete", "opsjobs.opsconductor.io"): {"admin": True, "operator": True, "viewer": False},
    ("patch", "opsschedules.opsconductor.io"): {"admin": True, "operator": True, "viewer": False},  # trigger
    ("list", "opsjobs.opsconductor.io"): {"admin": True, "operator": True, "viewer": True},
    ("get", "opsjobs.opsconductor.io/status"): {"admin": True, "operator": True, "viewer": True},
    ("get", "targets.opsconductor.io"): {"admin": True, "operator": True, "viewer": True},
    ("patch", "targets.opsconductor.io"): {"admin": True, "operator": True, "viewer": False},  # probe
    ("create", "targets.opsconductor.io"): {"admin": True, "operator": False, "viewer": False},
    ("delete", "targets.opsconductor.io"): {"admin": True, "operator": False, "viewer": False},
    ("get", "credentials.opsconductor.io"): {"admin": True, "operator": True, "viewer": True},
    ("create", "credentials.opsconductor.io"): {"admin": True, "operator": False, "viewer": False},
    ("get", "secrets"): {"admin": True, "operator": False, "viewer": False},
    ("create", "secrets"): {"admin": True, "operator": False, "viewer": False},
    ("get", "pods/log"): {"admin": True, "operator": True, "viewer": False},
    ("patch", "opsjobs.opsconductor.io/status"): {"admin": False, "operator": False, "viewer": False},
    ("create", "rolebindings.rbac.authorization.k8s.io"): {
        "admin": False,
        "operator": False,
        "viewer": False,
    },
}
ROLES = ("admin", "operator", "viewer")


@pytest.fixture(scope="module")
def user_roles(helm: Helm, kubectl: Kubectl) -> Iterator[list[str]]:
    """The chart's user ClusterRoles, applied as helm would render them (removed afterwards)."""
    rendered = helm.template(show_only="templates/user-roles.yaml")
    names = [d["metadata"]["name"] for d in documents(rendered)]
    kubectl.apply(rendered)
    yield names
    kubectl.run("delete", "clusterrole", *names, "--ignore-not-found")


def _can(kubectl: Kubectl, namespace: str, user: str, verb: str, resource: str) -> bool:
    resource, _, subresource = resource.partition("/")  # "x/status" alone would mean the object named status
    extra = [f"--subresource={subresource}"] if subresource else []
    result = kubectl.with_namespace(namespace).run(
        "auth", "can-i", verb, resource, *extra, f"--as={user}", check=False
    )
    return result.stdout.strip() == "yes"


def test_each_role_can_do_exactly_what_the_docs_say(
    user_roles: list[str], kubectl: Kubectl, namespace: str
) -> None:
    assert sorted(user_roles) == [f"opsconductor-{r}" for r in sorted(ROLES)]
    k = kubectl.with_namespace(namespace)
    for role in ROLES:
        k.run(
            "create",
            "rolebinding",
            f"{role}-binding",
            f"--clusterrole=opsconductor-{role}",
            f"--user={role}-user",
        )
    mismatches = []
    for (verb, resource), allowed in EXPECTED.items():
        for role in ROLES:
            can = _can(kubectl, namespace, f"{role}-user", verb, resource)
            if can != allowed[role]:
                mismatches.append(f"{role}: {verb} {resource} -> {can}, expected {allowed[role]}")
    assert not mismatches, "\n".join(mismatches)
    # Nothing outside the namespace the binding is in.
    assert not _can(kubectl, "default", "admin-user", "get", "opsjobs.opsconductor.io")


def test_roles_aggregate_into_the_built_in_roles(
    user_roles: list[str], kubectl: Kubectl, namespace: str
) -> None:
    k = kubectl.with_namespace(namespace)
    for builtin in ("view", "edit", "admin"):
        k.run(
            "create",
            "rolebinding",
            f"builtin-{builtin}",
            f"--clusterrole={builtin}",
            f"--user=builtin-{builtin}",
        )

    def aggregated() -> bool:
        return _can(kubectl, namespace, "builtin-view", "list", "opsjobs.opsconductor.io")

    wait_until(aggregated, timeout=30, what="the aggregation controller to add the viewer rules to view")
    assert not _can(kubectl, namespace, "builtin-view", "create", "opsjobs.opsconductor.io")
    assert _can(kubectl, namespace, "builtin-edit", "create", "opsjobs.opsconductor.io")
    assert _can(kubectl, namespace, "builtin-admin", "create", "credentials.opsconductor.io")
    assert not _can(kubectl, namespace, "builtin-edit", "create", "credentials.opsconductor.io")
