"""OpsJob: one run of parameterised steps against targets (like a Kubernetes Job).

Steps are a discriminated union on ``type``. In the CRD they appear as one structural object
whose fields are the union of all step types' fields, with CEL rules saying which fields each type
takes (``opsconductor.crdgen`` derives them), so ``kubectl apply`` rejects a field on the wrong
step type with a message naming it.
"""

from __future__ import annotations

import typing
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field

from opsconductor.api._base import (
    DNS_LABEL,
    ApiModel,
    CommonStatus,
    ConfigMapKeySelector,
    LabelSelector,
    LocalObjectReference,
    ObjectName,
    ResourceRequirements,
    SecretKeySelector,
    Toleration,
    cel,
    validations,
)
from opsconductor.api.notification import NotificationStatus, NotifyRule

MAX_STEPS = 50
MAX_TARGET_NAMES = 500
StepName = Annotated[str, Field(min_length=1, max_length=63, pattern=DNS_LABEL)]
ParameterName = Annotated[str, Field(min_length=1, max_length=63, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
# A Jinja2 expression evaluated to a boolean, e.g. "params.restart and target.labels.role == 'web'".
Expression = Annotated[str, Field(min_length=1, max_length=1024)]
Command = Annotated[str, Field(min_length=1, max_length=65536)]
RemotePath = Annotated[str, Field(min_length=1, max_length=4096)]
FileMode = Annotated[str, Field(pattern=r"^0?[0-7]{3,4}$")]
HeaderMap = Annotated[dict[str, Annotated[str, Field(max_length=8192)]], Field(max_length=64)]
EnvMap = Annotated[dict[str, Annotated[str, Field(max_length=32768)]], Field(max_length=128)]
TimeoutSeconds = Annotated[int, Field(ge=1, le=86400)]


# --- parameters -----------------------------------------------------------------------------
class ParameterSource(ApiModel):
    """Where a parameter's value comes from instead of ``arguments``."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "has(self.secretKeyRef) != has(self.configMapKeyRef)",
                "valueFrom takes exactly one of secretKeyRef or configMapKeyRef",
            )
        )
    )

    secret_key_ref: SecretKeySelector | None = None
    """A Secret key; the value is masked as *** wherever it shows up in output."""
    config_map_key_ref: ConfigMapKeySelector | None = None
    """A ConfigMap key."""


class Parameter(ApiModel):
    """A declared parameter of the job, available to templates as ``params.<name>``."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "!(has(self.secret) && self.secret)"
                " || (has(self.valueFrom) && has(self.valueFrom.secretKeyRef))",
                "a secret parameter takes its value from a Secret: set valueFrom.secretKeyRef "
                "(never an inline default or argument)",
                field_path=".valueFrom",
            ),
        )
    )

    name: ParameterName
    """Name, a valid identifier."""
    type: Literal["string", "integer", "number", "boolean", "list", "object"] = "string"
    """Type the value must have; arguments are checked against it before any step runs."""
    description: Annotated[str, Field(max_length=1024)] | None = None
    """What the parameter means."""
    required: bool = False
    """The run fails before any step when no argument, default or valueFrom gives a value."""
    default: Any = None
    """Value used when no argument is given. Not allowed for secret parameters (the operator rejects
    such a job with the condition reason InvalidSpec before any step runs)."""
    enum: Annotated[list[Any], Field(max_length=100)] | None = None
    """Allowed values."""
    secret: bool = False
    """The value is secret: it must come from valueFrom.secretKeyRef and is masked in output."""
    value_from: ParameterSource | None = None
    """Take the value from a Secret or ConfigMap key."""


# --- step building blocks -------------------------------------------------------------------
class FileSource(ApiModel):
    """Content for a file transfer: exactly one source."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "[has(self.configMap), has(self.secret), has(self.inline), has(self.workspace)]"
                ".filter(x, x).size() == 1",
                "a file source takes exactly one of configMap, secret, inline or workspace",
            )
        )
    )

    config_map: LocalObjectReference | None = None
    """Every key of a ConfigMap as a file (or one key with ``key``)."""
    secret: LocalObjectReference | None = None
    """Every key of a Secret as a file (or one key with ``key``); never echoed in output."""
    key: Annotated[str, Field(max_length=253)] | None = None
    """With configMap/secret: only this key."""
    inline: Annotated[str, Field(max_length=262144)] | None = None
    """Literal (non-secret) file content, templated."""
    workspace: Annotated[str, Field(max_length=4096, pattern=r"^[^/].*")] | None = None
    """A path in the run's workspace (files downloaded by earlier steps)."""


class HttpBody(ApiModel):
    """A request body: exactly one of json, form or text."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "[has(self.json), has(self.form), has(self.text)].filter(x, x).size() == 1",
                "a body takes exactly one of json, form or text",
            )
        )
    )

    json_: Annotated[dict[str, Any] | None, Field(alias="json")] = None
    """A JSON object (templated strings inside); send arrays as ``text``."""
    form: Annotated[dict[str, Annotated[str, Field(max_length=8192)]], Field(max_length=128)] | None = None
    """URL-encoded form fields."""
    text: Annotated[str, Field(max_length=262144)] | None = None
    """A raw text body; set Content-Type in headers."""


class ResponseAssertion(ApiModel):
    """A check on the response body; the step fails when it does not hold."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "[has(self.equals), has(self.contains), has(self.matches)].filter(x, x).size() == 1",
                "an assertion takes exactly one of equals, contains or matches",
            )
        )
    )

    json_path: Annotated[str, Field(max_length=512, pattern=r"^\$.*")] | None = None
    """Where to look in a JSON body (``$.status``); unset = the whole body as text."""
    equals: Annotated[str, Field(max_length=4096)] | None = None
    """The value must equal this text (numbers and booleans compare as JSON text: ``200``, ``true``)."""
    contains: Annotated[str, Field(max_length=4096)] | None = None
    """The text must contain this."""
    matches: Annotated[str, Field(max_length=1024)] | None = None
    """The text must match this regular expression."""


class HmacSignature(ApiModel):
    """Sign the body with HMAC-SHA256 and send the hex digest in a header."""

    secret_key_ref: SecretKeySelector
    """The signing key."""
    header: Annotated[str, Field(max_length=128, pattern=r"^[A-Za-z0-9-]+$")] = "X-Signature-256"
    """Header carrying ``sha256=<hex>``."""


class RetryPolicy(ApiModel):
    """Retries with exponential backoff."""

    limit: Annotated[int, Field(ge=0, le=20)] = 0
    """Attempts after the first."""
    backoff_seconds: Annotated[int, Field(ge=1, le=3600)] = 5
    """Wait before the first retry; doubles each time."""
    max_backoff_seconds: Annotated[int, Field(ge=1, le=86400)] = 300
    """Upper bound of the wait."""


# --- steps ----------------------------------------------------------------------------------
class StepBase(ApiModel):
    """Fields every step has."""

    name: StepName
    """Unique within the job; the key of the step's status."""
    description: Annotated[str, Field(max_length=1024)] | None = None
    """What the step does."""
    targets: Annotated[list[ObjectName], Field(max_length=MAX_TARGET_NAMES)] | None = None
    """Run on these Targets instead of the job's."""
    target_selector: LabelSelector | None = None
    """Run on the Targets these labels select instead of the job's."""
    when: Expression | None = None
    """Run (per target) only when this Jinja2 expression is true."""
    timeout_seconds: TimeoutSeconds | None = None
    """Per target and attempt; the remote command is stopped when it passes."""
    retries: RetryPolicy | None = None
    """Retry failed attempts."""
    continue_on_error: bool = False
    """A failure of this step does not fail the job."""
    concurrency: Annotated[int, Field(ge=1, le=1000)] | None = None
    """Targets run in parallel for this step (default: the job's)."""
    credential_ref: LocalObjectReference | None = None
    """Log in with this Credential instead of each Target's."""


class ExecFields(ApiModel):
    """Fields of remote command steps."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel("has(self.command) != has(self.script)", "exec steps take exactly one of command or script")
        )
    )

    command: Command | None = None
    """A command line, templated."""
    script: Command | None = None
    """A multi-line script, templated."""
    env: EnvMap | None = None
    """Environment variables for the command."""
    working_dir: RemotePath | None = None
    """Directory to run in."""
    expect_exit_codes: Annotated[list[Annotated[int, Field(ge=0, le=255)]], Field(max_length=32)] | None = (
        None
    )
    """Exit codes that count as success (default [0])."""


class SshExecStep(StepBase, ExecFields):
    """Run a command or script over SSH."""

    type: Literal["ssh.exec"]
    """Step type."""
    shell: Annotated[str, Field(max_length=256)] | None = None
    """Shell for scripts (default /bin/sh)."""
    sudo: bool = False
    """Run through sudo -n."""
    sudo_user: Annotated[str, Field(max_length=64)] | None = None
    """User for sudo -u."""


class WinrmExecStep(StepBase, ExecFields):
    """Run a PowerShell or cmd command over WinRM."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel("has(self.command) != has(self.script)", "exec steps take exactly one of command or script"),
            cel(
                "!has(self.shell) || self.shell != 'cmd' || !has(self.script)",
                "shell cmd runs one command line: use command, or shell powershell for a multi-line script",
                field_path=".script",
            ),
        )
    )

    type: Literal["winrm.exec"]
    """Step type."""
    shell: Literal["powershell", "cmd"] | None = None
    """powershell (default; sent as -EncodedCommand) or cmd."""


class FileTransferFields(ApiModel):
    """Fields of steps that send files to the host."""

    source: FileSource
    """What to send."""
    destination: RemotePath
    """Remote path; a directory when the source has several files."""
    mode: FileMode | None = None
    """Octal permissions for the remote files, e.g. 0644."""


class SshCopyStep(StepBase, FileTransferFields):
    """Copy files to the host with scp."""

    type: Literal["ssh.copy"]
    """Step type."""


class SftpUploadStep(StepBase, FileTransferFields):
    """Upload files over SFTP, preserving permissions and mtimes."""

    type: Literal["sftp.upload"]
    """Step type."""


class SftpSyncStep(StepBase, FileTransferFields):
    """Upload only changed files over SFTP."""

    type: Literal["sftp.sync"]
    """Step type."""
    delete: bool = False
    """Delete remote files the source does not have."""


class SftpDownloadStep(StepBase):
    """Download files from the host into the run's workspace."""

    type: Literal["sftp.download"]
    """Step type."""
    remote_path: RemotePath
    """Remote file or directory."""
    workspace_path: Annotated[str, Field(max_length=4096, pattern=r"^[^/].*")]
    """Destination in the workspace (per target: ``<target>/<workspacePath>``)."""


class WinrmCopyStep(StepBase, FileTransferFields):
    """Copy files to a Windows host over WinRM, chunked and checksum-verified."""

    type: Literal["winrm.copy"]
    """Step type."""


HttpMethod = Literal["http.get", "http.post", "http.put", "http.patch", "http.delete"]


class HttpFields(ApiModel):
    """Fields of HTTP request steps."""

    url: Annotated[str, Field(min_length=1, max_length=8192)]
    """Absolute URL, or a path relative to each HTTP target's base URL."""
    headers: HeaderMap | None = None
    """Request headers (templated); secrets belong in a Credential."""
    query: Annotated[dict[str, Annotated[str, Field(max_length=8192)]], Field(max_length=64)] | None = None
    """Query parameters."""
    body: HttpBody | None = None
    """Request body."""
    expect_status: Annotated[list[Annotated[int, Field(ge=100, le=599)]], Field(max_length=32)] | None = None
    """Status codes that count as success (default 2xx)."""
    assertions: Annotated[list[ResponseAssertion], Field(max_length=32)] | None = None
    """Checks on the response body."""
    follow_redirects: bool = True
    """Follow 3xx redirects."""


class HttpStep(StepBase, HttpFields):
    """An HTTP request (credentials, CA bundle and TLS options come from the Target/Credential)."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "!(self.type in ['http.get', 'http.delete']) || !has(self.body)",
                "GET and DELETE requests take no body",
                field_path=".body",
            )
        )
    )

    type: HttpMethod
    """Step type: the HTTP method."""


class WebhookCallStep(StepBase):
    """POST a JSON payload to a URL, retrying with exponential backoff."""

    type: Literal["webhook.call"]
    """Step type."""
    url: Annotated[str, Field(min_length=1, max_length=8192)]
    """Absolute http(s) URL (templated)."""
    payload: dict[str, Any] | None = None
    """The JSON object to send (templated strings inside)."""
    headers: HeaderMap | None = None
    """Extra request headers."""
    hmac: HmacSignature | None = None
    """Sign the body."""


class WaitStep(StepBase):
    """Pause the run."""

    type: Literal["wait"]
    """Step type."""
    seconds: Annotated[int, Field(ge=1, le=86400)]
    """How long to wait."""


Step = Annotated[
    SshExecStep
    | WinrmExecStep
    | SshCopyStep
    | SftpUploadStep
    | SftpSyncStep
    | SftpDownloadStep
    | WinrmCopyStep
    | HttpStep
    | WebhookCallStep
    | WaitStep,
    Field(discriminator="type"),
]


def step_types() -> list[str]:
    """Every step ``type`` value, in declaration order."""
    names: list[str] = []
    for variant in typing.get_args(typing.get_args(Step)[0]):
        names.extend(typing.get_args(variant.model_fields["type"].annotation))
    return names


# --- job ------------------------------------------------------------------------------------
class FailurePolicy(ApiModel):
    """When target failures fail the step (and the job)."""

    mode: Literal["FailFast", "Continue"] = "FailFast"
    """FailFast: stop starting new targets at the first failure. Continue: run all targets."""
    max_failed_targets: Annotated[int, Field(ge=0)] | None = None
    """The step still succeeds with at most this many failed targets."""
    max_failed_percentage: Annotated[int, Field(ge=0, le=100)] | None = None
    """The step still succeeds with at most this share of failed targets."""


class RunnerSettings(ApiModel):
    """Overrides for the runner pod of this job."""

    image: Annotated[str, Field(min_length=1, max_length=512)] | None = None
    """Runner image (default: the operator's configured runner image)."""
    resources: ResourceRequirements | None = None
    """Runner container resources."""
    node_selector: Annotated[dict[str, Annotated[str, Field(max_length=63)]], Field(max_length=32)] | None = (
        None
    )
    """Node labels the runner pod requires."""
    tolerations: Annotated[list[Toleration], Field(max_length=32)] | None = None
    """Taints the runner pod tolerates."""
    service_account_name: ObjectName | None = None
    """Service account of the runner pod (default: opsconductor-runner)."""


class Dependency(ApiModel):
    """Start only after another run ended."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "has(self.opsJob) != has(self.opsSchedule)",
                "a dependency names exactly one of opsJob or opsSchedule",
            )
        )
    )

    ops_job: ObjectName | None = None
    """An OpsJob in the same namespace."""
    ops_schedule: ObjectName | None = None
    """An OpsSchedule in the same namespace: its next run after this object was created."""
    result: Literal["Succeeded", "Failed", "Any"] = "Succeeded"
    """Which outcome releases this run; any other fails it as DependencyFailed."""
    timeout_seconds: Annotated[int, Field(ge=1, le=604800)] = 86400
    """Fail as DependencyTimeout when the dependency has not ended by then."""


class OpsJobSpec(ApiModel):
    """The desired state of an OpsJob: one run of steps over targets."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "[has(self.target), has(self.targets), has(self.targetSelector)].filter(x, x).size() <= 1",
                "set at most one of target, targets or targetSelector",
            ),
            cel(
                "self.steps.all(s, !has(s.targets) || !has(s.targetSelector))",
                "a step takes at most one of targets or targetSelector",
                field_path=".steps",
            ),
            cel(
                "self.steps.all(s, self.steps.exists_one(t, t.name == s.name))",
                "step names must be unique",
                field_path=".steps",
            ),
            cel(
                "!has(self.parameters)"
                " || self.parameters.all(p, self.parameters.exists_one(q, q.name == p.name))",
                "parameter names must be unique",
                field_path=".parameters",
            ),
        )
    )

    parameters: Annotated[list[Parameter], Field(max_length=64)] | None = None
    """Declared parameters (``params.<name>`` in templates)."""
    arguments: Annotated[dict[str, Any], Field(max_length=64)] | None = None
    """Values for the declared parameters. Secret parameters take no argument (their value comes from
    valueFrom.secretKeyRef); the operator rejects such a job as InvalidSpec before any step runs."""
    target: ObjectName | None = None
    """Run on this one Target."""
    targets: Annotated[list[ObjectName], Field(max_length=MAX_TARGET_NAMES)] | None = None
    """Run on these Targets."""
    target_selector: LabelSelector | None = None
    """Run on the Targets these labels select (a target group)."""
    steps: Annotated[list[Step], Field(min_length=1, max_length=MAX_STEPS)]
    """Steps, run in order; each fans out over its targets."""
    concurrency: Annotated[int, Field(ge=1, le=1000)] | None = None
    """Targets run in parallel per step (default: adaptive, see docs)."""
    failure_policy: FailurePolicy | None = None
    """How target failures count."""
    active_deadline_seconds: Annotated[int, Field(ge=1, le=604800)] | None = None
    """Fail the whole run (DeadlineExceeded) after this long."""
    ttl_seconds_after_finished: Annotated[int, Field(ge=0, le=31536000)] | None = None
    """Delete the OpsJob this long after it finished."""
    cancel: bool = False
    """Set to true to cancel the run; remote commands are stopped. Cannot be undone."""
    runner: RunnerSettings | None = None
    """Runner pod overrides."""
    after: Annotated[list[Dependency], Field(max_length=8)] | None = None
    """Start only after these runs ended as required."""
    notify: Annotated[list[NotifyRule], Field(max_length=16)] | None = None
    """Notifications on outcomes."""


# --- status ---------------------------------------------------------------------------------
RunPhase = Literal["Pending", "Running", "Succeeded", "Failed", "Cancelled"]
TargetPhase = Literal["Pending", "Running", "Succeeded", "Failed", "Skipped", "Cancelled"]


class TargetResult(ApiModel):
    """The result of one step on one target; output is a bounded excerpt."""

    target: Annotated[str, Field(max_length=253)]
    """Target name (or ``local`` for steps without a target)."""
    phase: TargetPhase
    """Where this target is."""
    exit_code: int | None = None
    """Remote exit code (exec steps) or HTTP status (http steps)."""
    attempts: Annotated[int, Field(ge=0)] = 0
    """Attempts made."""
    duration_milliseconds: Annotated[int, Field(ge=0)] | None = None
    """Wall time of the last attempt."""
    stdout: Annotated[str, Field(max_length=8192)] = ""
    """Head and tail of stdout, with a truncation marker; secrets masked."""
    stderr: Annotated[str, Field(max_length=8192)] = ""
    """Head and tail of stderr, with a truncation marker; secrets masked."""
    error: Annotated[str, Field(max_length=4096)] = ""
    """Why it failed, in words a person can act on."""


class PhaseCounts(ApiModel):
    """How many targets are in each phase."""

    pending: int = 0
    """Not started."""
    running: int = 0
    """In progress."""
    succeeded: int = 0
    """Done, successful."""
    failed: int = 0
    """Done, failed."""
    skipped: int = 0
    """Skipped by ``when`` or protocol."""
    cancelled: int = 0
    """Stopped by cancellation."""


class StepStatus(ApiModel):
    """Status of one step; past a threshold of targets only failures are itemised."""

    name: StepName
    """The step's name."""
    phase: TargetPhase
    """Summary phase of the step."""
    start_time: datetime | None = None
    """When the step started."""
    completion_time: datetime | None = None
    """When the step finished."""
    counts: PhaseCounts = PhaseCounts()
    """Targets per phase."""
    targets: Annotated[list[TargetResult], Field(max_length=200)] = []
    """Per-target results (all of them for small runs; the first failures for big ones)."""
    omitted_targets: Annotated[int, Field(ge=0)] = 0
    """Targets whose results were left out to keep the status small (see the runner log)."""
    message: Annotated[str, Field(max_length=4096)] = ""
    """Step-level error (e.g. a template error naming the field)."""


class RunProgress(ApiModel):
    """Short summaries for printer columns."""

    steps: Annotated[str, Field(max_length=32)] = "0/0"
    """Steps done / total."""
    targets: Annotated[str, Field(max_length=32)] = "0/0"
    """Targets ok / failed over all steps."""


class OpsJobStatus(CommonStatus):
    """The observed state of an OpsJob."""

    phase: RunPhase = "Pending"
    """Pending, Running, Succeeded, Failed or Cancelled."""
    start_time: datetime | None = None
    """When the runner started the first step."""
    completion_time: datetime | None = None
    """When the run ended."""
    duration: Annotated[str, Field(max_length=32)] | None = None
    """Human-readable run time, e.g. 1m23s."""
    runner_pod: Annotated[str, Field(max_length=253)] | None = None
    """Name of the runner pod."""
    progress: RunProgress = RunProgress()
    """Steps done/total and targets ok/failed."""
    steps: Annotated[list[StepStatus], Field(max_length=MAX_STEPS)] = []
    """Per-step status, keyed by step name."""
    message: Annotated[str, Field(max_length=4096)] = ""
    """Why the run failed, when it did."""
    notifications: NotificationStatus | None = None
    """Notification deliveries for this run (written by the operator's notifier)."""
