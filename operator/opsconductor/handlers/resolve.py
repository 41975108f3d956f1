"""Read what an OpsJob references from the API and hand it to the pure planner.

Only Secret *key names* are read into the plan's inputs; values stay in the API server and reach
the runner as mounted files.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from opsconductor import kube
from opsconductor.api import CREDENTIAL, TARGET
from opsconductor.conditions import REASON_INVALID_CREDENTIAL
from opsconductor.credentialcheck import credential_problem
from opsconductor.planner import (
    REASON_CONFIG_MAP_NOT_FOUND,
    REASON_CREDENTIAL_NOT_FOUND,
    REASON_SECRET_NOT_FOUND,
    REASON_TARGET_NOT_FOUND,
    PlanError,
    PlannedRun,
    build_run_plan,
)

Manifest = dict[str, Any]
# Reasons for objects that may simply not exist yet (GitOps tools apply in any order).
MISSING_REASONS = frozenset(
    {
        REASON_TARGET_NOT_FOUND,
        REASON_CREDENTIAL_NOT_FOUND,
        REASON_SECRET_NOT_FOUND,
        REASON_CONFIG_MAP_NOT_FOUND,
    }
)


class MissingReference(Exception):
    """Something the job references does not exist (yet)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def _references(value: Any, kind: str) -> Iterator[str]:
    """Names of Secrets (kind ``secret``) or ConfigMaps (``configMap``) referenced anywhere in ``value``."""
    if isinstance(value, dict):
        for key, item in value.items():
            lowered = key.lower()
            if isinstance(item, dict) and isinstance(item.get("name"), str):
                if kind == "secret" and (
                    lowered == "secret" or lowered.endswith(("secretref", "secretkeyref"))
                ):
                    yield item["name"]
                if kind == "configMap" and (
                    lowered == "configmap"
                    or lowered.endswith(("configmapref", "configmapkeyref", "templateref"))
                ):
                    yield item["name"]
            yield from _references(item, kind)
    elif isinstance(value, list):
        for item in value:
            yield from _references(item, kind)


def plan_job(job: Manifest) -> PlannedRun:
    """Plan a job from the live API objects of its namespace.

    Raises:
        MissingReference: a Target, Credential, Secret or ConfigMap is missing (may appear later).
        PlanError: the job cannot run as specified (invalid arguments, template errors, a
            Credential the operator found invalid: reason InvalidCredential, ...).
    """
    namespace = job["metadata"]["namespace"]
    targets = kube.list_custom(TARGET.plural, namespace)
    credentials = {c["metadata"]["name"]: c for c in kube.list_custom(CREDENTIAL.plural, namespace)}
    sources = [
        job.get("spec"),
        [t.get("spec") for t in targets],
        [c.get("spec") for c in credentials.values()],
    ]
    secret_keys: dict[str, set[str]] = {}
    for name in sorted(set(_references(sources, "secret"))):
        keys = kube.secret_keys(namespace, name)
        if keys is not None:
            secret_keys[name] = keys
    config_maps: dict[str, dict[str, str]] = {}
    for name in sorted(set(_references(sources, "configMap"))):
        data = kube.config_map_data(namespace, name)
        if data is not None:
            config_maps[name] = data
    try:
        planned = build_run_plan(job, targets, credentials, secret_keys, config_maps)
    except PlanError as error:
        if error.reason in MISSING_REASONS:
            raise MissingReference(error.reason, error.message) from error
        raise
    # Fail fast on a Credential the operator found invalid (a bad key, an expired certificate):
    # missing Secrets and keys were handled above (they may still appear), this needs a person.
    used = sorted({t.credential.name for t in planned.plan.targets.values() if t.credential is not None})
    for name in used:
        problem = credential_problem(credentials[name])
        if problem is not None:
            raise PlanError(
                REASON_INVALID_CREDENTIAL, f"Credential {name} is not valid ({problem[0]}): {problem[1]}"
            )
    return planned


__all__ = ["MissingReference", "PlanError", "plan_job"]
