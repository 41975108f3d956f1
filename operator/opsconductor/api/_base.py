"""Shared building blocks of the API models: the base class, CEL rule helpers, common references.

Every custom resource's schema is generated from these pydantic models (``opsconductor.crdgen``).
Field docstrings become the CRD's field descriptions; ``cel()`` attaches
``x-kubernetes-validations`` rules that the API server enforces at admission.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

GROUP = "opsconductor.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

# Names of Kubernetes objects referenced by our resources (DNS-1123 subdomain / label).
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
# A Secret / ConfigMap data key.
CONFIG_KEY = r"^[-._a-zA-Z0-9]+$"

ObjectName = Annotated[str, Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN)]
LabelName = Annotated[str, Field(min_length=1, max_length=63, pattern=DNS_LABEL)]
ShortText = Annotated[str, Field(max_length=1024)]


def cel(
    rule: str, message: str, *, field_path: str | None = None, reason: str | None = None
) -> dict[str, str]:
    """One ``x-kubernetes-validations`` entry.

    Args:
        rule: the CEL expression; ``self`` is the object the rule is attached to.
        message: what a person reads when the rule fails; say what to do.
        field_path: JSONPath (relative to ``self``) of the field the message is about.
        reason: FieldValueInvalid (default), FieldValueForbidden, FieldValueRequired, ...

    Returns:
        The rule as the CRD schema spells it.
    """
    entry = {"rule": rule, "message": message}
    if field_path:
        entry["fieldPath"] = field_path
    if reason:
        entry["reason"] = reason
    return entry


def validations(*rules: dict[str, str]) -> dict[str, Any]:
    """``json_schema_extra`` carrying CEL rules, for ``model_config`` or ``Field``."""
    return {"x-kubernetes-validations": list(rules)}


class ApiModel(BaseModel):
    """Base of every API model: camelCase on the wire, attribute docstrings as descriptions."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        use_attribute_docstrings=True,
        extra="forbid",
        frozen=True,
    )


class LocalObjectReference(ApiModel):
    """A reference to an object in the same namespace."""

    name: ObjectName
    """Name of the referenced object."""


class SecretKeySelector(ApiModel):
    """One key of a Secret in the same namespace."""

    name: ObjectName
    """Name of the Secret."""
    key: Annotated[str, Field(min_length=1, max_length=253, pattern=CONFIG_KEY)]
    """Key in the Secret's data."""


class ConfigMapKeySelector(ApiModel):
    """One key of a ConfigMap in the same namespace."""

    name: ObjectName
    """Name of the ConfigMap."""
    key: Annotated[str, Field(min_length=1, max_length=253, pattern=CONFIG_KEY)]
    """Key in the ConfigMap's data."""


class LabelSelectorRequirement(ApiModel):
    """A set-based label requirement, as in ``metav1.LabelSelectorRequirement``."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "(self.operator in ['In', 'NotIn']) == (has(self.values) && size(self.values) > 0)",
                "values must be non-empty for operators In and NotIn, and empty for Exists and DoesNotExist",
                field_path=".values",
            )
        )
    )

    key: Annotated[str, Field(min_length=1, max_length=317)]
    """The label key the selector applies to."""
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    """How the key relates to the values."""
    values: Annotated[list[Annotated[str, Field(max_length=63)]], Field(max_length=64)] = []
    """Values for In / NotIn; must be empty for Exists / DoesNotExist."""


class LabelSelector(ApiModel):
    """Selects objects by labels, as in ``metav1.LabelSelector``; an empty selector matches all."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "has(self.matchLabels) || has(self.matchExpressions)",
                "a selector needs matchLabels or matchExpressions; to select every target, "
                "use matchExpressions with an Exists requirement on a label they share",
            )
        )
    )

    match_labels: Annotated[dict[str, Annotated[str, Field(max_length=63)]], Field(max_length=64)] | None = (
        None
    )
    """Labels that must all match exactly."""
    match_expressions: Annotated[list[LabelSelectorRequirement], Field(max_length=32)] | None = None
    """Set-based requirements that must all hold."""


ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(ApiModel):
    """A kstatus-style condition, as in ``metav1.Condition``."""

    type: Annotated[str, Field(max_length=316)]
    """Condition type: Ready, Reconciling, Stalled, or a kind-specific one."""
    status: ConditionStatus
    """True, False or Unknown."""
    reason: Annotated[str, Field(max_length=1024)]
    """CamelCase reason, one of the documented constants."""
    message: Annotated[str, Field(max_length=32768)] = ""
    """Human-readable details."""
    last_transition_time: datetime
    """When ``status`` last changed."""
    observed_generation: Annotated[int, Field(ge=0)] | None = None
    """The ``metadata.generation`` this condition was computed from."""


class CommonStatus(ApiModel):
    """The status contract every kind shares."""

    observed_generation: Annotated[int, Field(ge=0)] | None = None
    """The ``metadata.generation`` the operator last reconciled."""
    conditions: Annotated[list[Condition], Field(max_length=16)] = []
    """Ready summarises the rest; Reconciling / Stalled follow kstatus."""


class Toleration(ApiModel):
    """A pod toleration, as in ``corev1.Toleration``."""

    key: Annotated[str, Field(max_length=317)] | None = None
    """Taint key; empty with Exists tolerates everything."""
    operator: Literal["Exists", "Equal"] = "Equal"
    """Exists or Equal."""
    value: Annotated[str, Field(max_length=63)] | None = None
    """Taint value for Equal."""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    """Taint effect to match; empty matches all."""
    toleration_seconds: int | None = None
    """For NoExecute: how long the pod stays bound after the taint appears."""


Quantity = Annotated[
    int
    | Annotated[str, Field(max_length=64, pattern=r"^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti|P|Pi|E|Ei)?$")],
    Field(),
]


class ResourceList(ApiModel):
    """Amounts of compute resources, as in ``corev1.ResourceList``."""

    cpu: Quantity | None = None
    """CPU, e.g. ``500m`` or ``2``."""
    memory: Quantity | None = None
    """Memory, e.g. ``256Mi``."""
    ephemeral_storage: Annotated[Quantity | None, Field(alias="ephemeral-storage")] = None
    """Local scratch space, e.g. ``1Gi``."""


class ResourceRequirements(ApiModel):
    """CPU and memory requests and limits of the runner container."""

    requests: ResourceList | None = None
    """Minimum resources the scheduler reserves."""
    limits: ResourceList | None = None
    """Maximum resources; exceeding the memory limit kills the runner (the job fails as RunnerLost)."""
