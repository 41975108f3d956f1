"""The Helm chart's values, as a pydantic model: the one source of ``values.schema.json``.

``charts/opsconductor/values.yaml`` is written by hand (it carries the comments users read), and a
test checks that it equals this model's defaults and documents every key, so the two cannot drift.
``python -m opsconductor.chartgen`` writes ``values.schema.json`` from the model.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

KubernetesName = Annotated[str, Field(max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")]


class Values(BaseModel):
    """Base: camelCase keys as in values.yaml; unknown keys are an error (a typo never goes unnoticed)."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", use_attribute_docstrings=True
    )


class Image(Values):
    """A container image."""

    repository: str
    """Image repository."""
    tag: str = ""
    """Image tag; empty = the chart's appVersion."""
    pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    """Image pull policy."""


class ResourceList(Values):
    """CPU and memory quantities."""

    cpu: str | None = None
    """CPU (e.g. 100m)."""
    memory: str | None = None
    """Memory (e.g. 256Mi)."""


class Resources(Values):
    """Container resources."""

    requests: ResourceList = ResourceList()
    """Requests."""
    limits: ResourceList = ResourceList()
    """Limits."""


class RunnerValues(Values):
    """Runner pods the operator creates for OpsJobs (and probe pods for Targets)."""

    image: Image = Image(repository="ghcr.io/opsconductor/runner")
    """The runner image (an OpsJob may override it with spec.runner.image)."""
    cpu_request: str = "100m"
    """Default CPU request of a runner pod."""
    memory_request: str = "128Mi"
    """Default memory request of a runner pod."""
    memory_limit: str = "512Mi"
    """Default memory limit of a runner pod."""


class ServiceAccountValues(Values):
    """The operator's ServiceAccount."""

    create: bool = True
    """Create it (else use an existing one named ``name``)."""
    name: str = ""
    """Name; empty = the release's full name."""
    annotations: dict[str, str] = {}
    """Annotations (e.g. for workload identity)."""


class ServiceMonitorValues(Values):
    """A Prometheus Operator ServiceMonitor for the metrics Service."""

    enabled: bool = False
    """Create it (needs the monitoring.coreos.com CRDs)."""
    interval: str = "30s"
    """Scrape interval."""
    labels: dict[str, str] = {}
    """Extra labels (e.g. the ``release`` label your Prometheus selects)."""


class MetricsValues(Values):
    """The Prometheus metrics endpoint of the operator."""

    enabled: bool = True
    """Serve metrics and create the metrics Service."""
    port: Annotated[int, Field(ge=1, le=65535)] = 9090
    """Container port of the metrics endpoint (path /metrics)."""
    service_monitor: ServiceMonitorValues = ServiceMonitorValues()
    """ServiceMonitor settings."""
    dashboard: bool = True
    """Ship the Grafana dashboard as a ConfigMap labelled for the Grafana sidecar."""
    dashboard_labels: dict[str, str] = {"grafana_dashboard": "1"}
    """Labels of the dashboard ConfigMap (what your Grafana sidecar selects)."""


class NetworkPolicyValues(Values):
    """A NetworkPolicy for the operator pods."""

    enabled: bool = False
    """Create it: ingress only to the health and metrics ports; all egress allowed (the API server)."""
    metrics_from: list[dict[str, Any]] = []
    """``from`` peers allowed to scrape metrics (empty = any pod in the cluster)."""


class PodDisruptionBudgetValues(Values):
    """A PodDisruptionBudget for the operator pods."""

    enabled: bool = True
    """Create it (only when replicaCount > 1)."""
    max_unavailable: int = 1
    """Pods that may be down at once during voluntary disruptions."""


class ApiPriorityValues(Values):
    """API Priority and Fairness: how the API server queues the operator's requests."""

    enabled: bool = True
    """Create a FlowSchema for the operator's ServiceAccount. Without it the operator shares the
    workload-low level with every other service account, and a burst of scheduled runs can queue."""
    priority_level: KubernetesName = "workload-high"
    """PriorityLevelConfiguration of the operator's requests (workload-high: kube-controller-manager's)."""


class UserRolesValues(Values):
    """The opsconductor-admin / -operator / -viewer ClusterRoles for people."""

    create: bool = True
    """Create them."""
    aggregate: bool = True
    """Aggregate them into the built-in admin / edit / view ClusterRoles."""


class ChartValues(Values):
    """Values of the opsconductor chart."""

    image: Image = Image(repository="ghcr.io/opsconductor/operator")
    """The operator image."""
    image_pull_secrets: list[dict[str, str]] = []
    """Pull secrets for the operator and runner images (``[{name: regcred}]``)."""
    replica_count: Annotated[int, Field(ge=1, le=5)] = 2
    """Operator replicas; one is active at a time (kopf peering), the others stand by."""
    peering_name: KubernetesName = "opsconductor"
    """Name of the kopf peering object the replicas coordinate through."""
    watch_namespaces: list[KubernetesName] = []
    """Namespaces to watch; empty = the whole cluster. With a list, RBAC is granted per namespace."""
    verbose: bool = False
    """Debug logging."""
    health_port: Annotated[int, Field(ge=1, le=65535)] = 8080
    """Container port of kopf's health endpoint (liveness and readiness probes, path /healthz)."""
    resources: Resources = Resources(
        requests=ResourceList(cpu="100m", memory="192Mi"), limits=ResourceList(memory="512Mi")
    )
    """Operator container resources."""
    runner: RunnerValues = RunnerValues()
    """Runner pod defaults."""
    dependency_wait_seconds: Annotated[int, Field(ge=0)] = 60
    """How long a new OpsJob waits for missing Targets, Credentials or Secrets before failing."""
    resync_seconds: Annotated[int, Field(ge=5)] = 30
    """How often running OpsJobs are re-checked against their runner pod without events."""
    service_account: ServiceAccountValues = ServiceAccountValues()
    """The operator's ServiceAccount."""
    metrics: MetricsValues = MetricsValues()
    """Prometheus metrics."""
    network_policy: NetworkPolicyValues = NetworkPolicyValues()
    """NetworkPolicy."""
    pod_disruption_budget: PodDisruptionBudgetValues = PodDisruptionBudgetValues()
    """PodDisruptionBudget."""
    user_roles: UserRolesValues = UserRolesValues()
    """ClusterRoles for people."""
    api_priority: ApiPriorityValues = ApiPriorityValues()
    """API Priority and Fairness."""
    record_creator: bool = True
    """Stamp every new OpsJob with the user that created it (annotation opsconductor.io/created-by), by a
    MutatingAdmissionPolicy the API server runs (Kubernetes 1.36+, no webhook)."""
    pod_annotations: dict[str, str] = {}
    """Extra annotations on the operator pods."""
    pod_labels: dict[str, str] = {}
    """Extra labels on the operator pods."""
    node_selector: dict[str, str] = {}
    """Node selector of the operator pods."""
    tolerations: list[dict[str, Any]] = []
    """Tolerations of the operator pods."""
    affinity: dict[str, Any] = {}
    """Affinity of the operator pods (default: none; replicas spread by a soft anti-affinity)."""
    priority_class_name: str = ""
    """PriorityClass of the operator pods."""
    extra_env: list[dict[str, Any]] = []
    """Extra environment variables of the operator container (``[{name: ..., value: ...}]``)."""
