"""The run plan: everything a runner needs to execute one OpsJob, resolved by the operator.

The operator builds a :class:`RunPlan` from the OpsJob, its Targets and Credentials, and hands it to
the runner pod as ``plan.json`` in a ConfigMap owned by the OpsJob. Secret values are never in the
plan: it names files under :data:`SECRETS_ROOT` where the runner pod's Secret volumes put them.
``opsconductor run`` (local runs) builds the same plan from files.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from opsconductor.api.credential import CredentialType
from opsconductor.api.opsjob import FailurePolicy, Step
from opsconductor.api.target import Protocol

PLAN_VERSION: Final = 1
PLAN_DIR = "/etc/opsconductor/plan"
PLAN_FILE = "plan.json"
SECRETS_ROOT = "/var/run/opsconductor/secrets"
CONFIG_MAPS_ROOT = "/etc/opsconductor/configmaps"
WORKSPACE = "/workspace"
# The runner writes a RunSummary as JSON here; the kubelet reports it as the termination message.
TERMINATION_LOG = "/dev/termination-log"


class PlanModel(BaseModel):
    """Plan models: snake_case on the wire (internal format), strict, immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def secret_file(secret_name: str, key: str, root: str = SECRETS_ROOT) -> str:
    """Where the runner pod sees one key of a Secret (each Secret is a volume at ``root/<name>``)."""
    return f"{root}/{secret_name}/{key}"


def config_map_dir(config_map_name: str, root: str = CONFIG_MAPS_ROOT) -> str:
    """Where the runner pod sees a ConfigMap's keys as files."""
    return f"{root}/{config_map_name}"


class PlanCredential(PlanModel):
    """A Credential resolved to files: ``files[role]`` is the path holding that value.

    Roles are the keys of ``opsconductor.api.credential.SECRET_KEYS[type]`` (``username``,
    ``password``, ``privateKey``, ``passphrase``, ``token``, ...). Optional roles whose key is absent
    from the Secret are left out.
    """

    name: str
    type: CredentialType
    username: str | None = None
    """Inline (non-secret) user name from the Credential spec, if any; else ``files['username']``."""
    files: dict[str, str] = {}
    api_key_header: str | None = None


class PlanTarget(PlanModel):
    """A Target resolved for the runner."""

    name: str
    address: str
    port: int
    protocol: Protocol
    labels: dict[str, str] = {}
    connect_timeout_seconds: int = 10
    credential: PlanCredential | None = None
    # ssh
    host_keys: list[str] = []
    known_hosts_file: str | None = None
    insecure_skip_host_key_verification: bool = False
    # winrm / http
    scheme: Literal["http", "https"] | None = None
    path: str | None = None
    transport: str | None = None
    message_encryption: str | None = None
    operation_timeout_seconds: int | None = None
    base_path: str | None = None
    ca_bundle_file: str | None = None
    insecure_skip_tls_verify: bool = False


class PlanStep(PlanModel):
    """One step and the targets it runs on (empty: runs once, locally in the runner)."""

    step: Annotated[Step, Field()]
    targets: list[str]


class JobRef(PlanModel):
    """The OpsJob this plan runs (for status reports)."""

    namespace: str
    name: str
    uid: str


class RunPlan(PlanModel):
    """Everything one run needs."""

    version: Literal[1] = PLAN_VERSION
    job: JobRef
    parameters: dict[str, Any] = {}
    """Non-secret parameter values, already resolved (arguments > valueFrom configMap > default)."""
    secret_parameters: dict[str, str] = {}
    """Secret parameter name → file holding its value."""
    targets: dict[str, PlanTarget] = {}
    steps: list[PlanStep]
    concurrency: int | None = None
    failure_policy: FailurePolicy = FailurePolicy()
    active_deadline_seconds: int | None = None
    secret_dirs: dict[str, str] = {}
    """Secret name → directory where its keys are files (FileSource secret, HMAC keys, ...)."""
    config_map_dirs: dict[str, str] = {}
    """ConfigMap name → directory where its keys are files (FileSource configMap, templates)."""
    workspace: str = WORKSPACE


class RunSummary(PlanModel):
    """What the runner leaves in its termination message: the run's outcome in a few bytes."""

    phase: Literal["Succeeded", "Failed", "Cancelled"]
    message: str = ""
    reason: str = ""
