"""Building a RunPlan: OpsJob + Targets + Credentials + which Secret keys exist → what the runner gets.

This module owns the pure mapping from API objects to a :class:`~opsconductor.plan.RunPlan`, shared by
the operator (which reads the objects from the API server) and ``opsconductor run`` (which reads them
from files). It does no I/O: callers pass the objects and, for Secrets, only which keys exist (never
values; secret values reach the runner as files). It decides:

- which Targets each step runs on (job ``target``/``targets``/``targetSelector``, step overrides;
  ``wait`` and ``webhook.call`` run once without a target unless they name targets);
- each Target's resolved connection settings, default port and Credential (as secret file paths;
  a step's ``credentialRef`` makes a separate plan entry ``<target>@<credential>``, whose
  ``PlanTarget.name`` is still the Target's name);
- parameter values (:func:`~opsconductor.templating.resolve_parameters`) and secret parameter files;
- the Secrets and ConfigMaps the runner pod must mount (:attr:`PlannedRun.volumes`).

Every problem raises :class:`PlanError` with a condition reason and a message naming the object.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import ValidationError
from pydantic.alias_generators import to_snake

from opsconductor.api._base import LabelSelector, SecretKeySelector
from opsconductor.api.credential import SECRET_KEYS, CredentialSpec
from opsconductor.api.opsjob import OpsJobSpec, Step
from opsconductor.api.target import DEFAULT_PORTS, HttpSettings, TargetSpec, WinrmSettings
from opsconductor.plan import (
    CONFIG_MAPS_ROOT,
    SECRETS_ROOT,
    WORKSPACE,
    JobRef,
    PlanCredential,
    PlanStep,
    PlanTarget,
    RunPlan,
    config_map_dir,
    secret_file,
)
from opsconductor.templating import (
    ParameterError,
    TemplateIssue,
    resolve_parameters,
    runs_per_target,
    validate_templates,
)

# Condition reasons (the operator's ``conditions`` module names the same strings).
REASON_INVALID_SPEC = "InvalidSpec"
REASON_INVALID_TEMPLATE = "InvalidTemplate"
REASON_TARGET_NOT_FOUND = "TargetNotFound"
REASON_CREDENTIAL_NOT_FOUND = "CredentialNotFound"
REASON_SECRET_NOT_FOUND = "SecretNotFound"
REASON_CONFIG_MAP_NOT_FOUND = "ConfigMapNotFound"

SQL_PORTS = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}
NEEDS_TARGET_TYPES = frozenset(
    {"ssh.exec", "ssh.copy", "sftp.upload", "sftp.sync", "sftp.download", "winrm.exec", "winrm.copy"}
)


class PlanError(Exception):
    """The job cannot run as specified; ``reason`` is the condition reason to report."""

    def __init__(self, reason: str, message: str, issues: list[TemplateIssue] | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.issues = issues or []


# --- inputs -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class TargetObject:
    """A Target as the planner needs it."""

    name: str
    spec: TargetSpec
    labels: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any]) -> TargetObject:
        """Build from a Target manifest (``metadata.name``, ``metadata.labels``, ``spec``)."""
        metadata = manifest.get("metadata") or {}
        return cls(
            name=str(metadata["name"]),
            spec=TargetSpec.model_validate(manifest.get("spec") or {}),
            labels=dict(metadata.get("labels") or {}),
        )


@dataclass(frozen=True)
class JobObject:
    """An OpsJob as the planner needs it."""

    namespace: str
    name: str
    uid: str
    spec: OpsJobSpec

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any]) -> JobObject:
        """Build from an OpsJob manifest."""
        metadata = manifest.get("metadata") or {}
        return cls(
            namespace=str(metadata.get("namespace") or "default"),
            name=str(metadata["name"]),
            uid=str(metadata.get("uid") or ""),
            spec=OpsJobSpec.model_validate(manifest.get("spec") or {}),
        )


# --- output -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunnerVolume:
    """A Secret or ConfigMap the runner pod mounts read-only."""

    kind: Literal["secret", "configMap"]
    name: str
    mount_path: str


@dataclass(frozen=True)
class PlannedRun:
    """The plan and what the runner pod needs to mount for it."""

    plan: RunPlan
    secrets: tuple[str, ...]
    """Secret names, sorted; each is mounted at ``<secrets_root>/<name>``."""
    config_maps: tuple[str, ...]
    """ConfigMap names, sorted; each is mounted at ``<config_maps_root>/<name>``."""
    secrets_root: str = SECRETS_ROOT
    config_maps_root: str = CONFIG_MAPS_ROOT

    @property
    def volumes(self) -> list[RunnerVolume]:
        """Return every volume, Secrets first."""
        return [RunnerVolume("secret", name, f"{self.secrets_root}/{name}") for name in self.secrets] + [
            RunnerVolume("configMap", name, config_map_dir(name, self.config_maps_root))
            for name in self.config_maps
        ]


# --- pure helpers -------------------------------------------------------------------------------
def selector_matches(selector: LabelSelector, labels: Mapping[str, str]) -> bool:
    """Whether labels satisfy a label selector (``matchLabels`` and ``matchExpressions``, all of them)."""
    for key, wanted in (selector.match_labels or {}).items():
        if labels.get(key) != wanted:
            return False
    for requirement in selector.match_expressions or []:
        present = requirement.key in labels
        value = labels.get(requirement.key)
        if requirement.operator == "In" and not (present and value in requirement.values):
            return False
        if requirement.operator == "NotIn" and present and value in requirement.values:
            return False
        if requirement.operator == "Exists" and not present:
            return False
        if requirement.operator == "DoesNotExist" and present:
            return False
    return True


def default_port(spec: TargetSpec) -> int:
    """Return the Target's port, defaulted per protocol (and scheme / SQL engine)."""
    if spec.port is not None:
        return spec.port
    if spec.protocol == "winrm":
        return 5986 if (spec.winrm or WinrmSettings()).scheme == "https" else 5985
    if spec.protocol == "http":
        return 443 if (spec.http or HttpSettings()).scheme == "https" else 80
    if spec.protocol == "sql" and spec.sql is not None:
        return SQL_PORTS[spec.sql.engine]
    return DEFAULT_PORTS[spec.protocol]


class _Planner:
    """One planning pass; collects the Secrets and ConfigMaps it references."""

    def __init__(
        self,
        job: JobObject,
        targets: Mapping[str, TargetObject],
        credentials: Mapping[str, CredentialSpec],
        secret_keys: Mapping[str, Collection[str]],
        config_maps: Mapping[str, Mapping[str, str]] | None,
        secrets_root: str,
    ) -> None:
        self.job = job
        self.targets = targets
        self.credentials = credentials
        self.secret_keys = secret_keys
        self.config_maps = config_maps
        self.root = secrets_root
        self.used_secrets: set[str] = set()
        self.used_config_maps: set[str] = set()
        self.plan_targets: dict[str, PlanTarget] = {}
        self._plan_credentials: dict[str, PlanCredential] = {}

    # secrets
    def secret_key_file(self, ref: SecretKeySelector, what: str) -> str:
        keys = self.secret_keys.get(ref.name)
        if keys is None:
            raise PlanError(REASON_SECRET_NOT_FOUND, f"Secret {ref.name} ({what}) not found")
        if ref.key not in keys:
            raise PlanError(REASON_SECRET_NOT_FOUND, f"Secret {ref.name} has no key {ref.key} ({what})")
        self.used_secrets.add(ref.name)
        return secret_file(ref.name, ref.key, self.root)

    def credential(self, name: str, used_by: str) -> PlanCredential:
        if name in self._plan_credentials:
            return self._plan_credentials[name]
        spec = self.credentials.get(name)
        if spec is None:
            raise PlanError(REASON_CREDENTIAL_NOT_FOUND, f"Credential {name} ({used_by}) not found")
        secret = spec.secret_ref.name
        present = self.secret_keys.get(secret)
        if present is None:
            raise PlanError(REASON_SECRET_NOT_FOUND, f"Secret {secret} of Credential {name} not found")
        files: dict[str, str] = {}
        for role, (default_key, optional) in SECRET_KEYS[spec.type].items():
            if role == "username" and spec.username:
                continue
            key = getattr(spec.keys, to_snake(role), None) if spec.keys else None
            key = key or default_key
            if key in present:
                files[role] = secret_file(secret, key, self.root)
            elif not optional:
                raise PlanError(
                    REASON_SECRET_NOT_FOUND,
                    f"Secret {secret} has no key {key} (the {role} of {spec.type} Credential {name})",
                )
        self.used_secrets.add(secret)
        header = None
        if spec.type == "APIKey":
            header = spec.api_key.header if spec.api_key else "X-API-Key"
        credential = PlanCredential(
            name=name, type=spec.type, username=spec.username, files=files, api_key_header=header
        )
        self._plan_credentials[name] = credential
        return credential

    # targets
    def plan_target(self, target: TargetObject, credential_name: str | None) -> str:
        """Add a Target (with the given Credential) to the plan; return its key."""
        key = target.name if credential_name is None else f"{target.name}@{credential_name}"
        if key in self.plan_targets:
            return key
        spec = target.spec
        fields: dict[str, Any] = {
            "name": target.name,
            "address": spec.address,
            "port": default_port(spec),
            "protocol": spec.protocol,
            "labels": dict(target.labels),
            "connect_timeout_seconds": spec.connect_timeout_seconds,
        }
        credential = credential_name or (spec.credential_ref.name if spec.credential_ref else None)
        if credential is not None:
            fields["credential"] = self.credential(credential, f"Target {target.name}")
        tls = None
        if spec.protocol == "ssh" and spec.ssh is not None:
            fields["host_keys"] = list(spec.ssh.host_keys)
            fields["insecure_skip_host_key_verification"] = spec.ssh.insecure_skip_host_key_verification
            if spec.ssh.known_hosts_secret_ref is not None:
                what = f"knownHostsSecretRef of Target {target.name}"
                fields["known_hosts_file"] = self.secret_key_file(spec.ssh.known_hosts_secret_ref, what)
        elif spec.protocol == "winrm":
            winrm = spec.winrm or WinrmSettings()
            fields.update(
                scheme=winrm.scheme,
                path=winrm.path,
                transport=winrm.transport,
                message_encryption=winrm.message_encryption,
                operation_timeout_seconds=winrm.operation_timeout_seconds,
            )
            tls = winrm.tls
        elif spec.protocol == "http":
            http = spec.http or HttpSettings()
            fields.update(scheme=http.scheme, base_path=http.base_path)
            tls = http.tls
        elif spec.protocol == "sql" and spec.sql is not None:
            tls = spec.sql.tls
        if tls is not None:
            fields["insecure_skip_tls_verify"] = tls.insecure_skip_tls_verify
            if tls.ca_bundle_secret_ref is not None:
                what = f"caBundleSecretRef of Target {target.name}"
                fields["ca_bundle_file"] = self.secret_key_file(tls.ca_bundle_secret_ref, what)
        self.plan_targets[key] = PlanTarget(**fields)
        return key

    def select(
        self, names: list[str] | None, selector: LabelSelector | None, where: str
    ) -> list[TargetObject]:
        if names is not None:
            missing = [name for name in names if name not in self.targets]
            if missing:
                raise PlanError(REASON_TARGET_NOT_FOUND, f"Target {', '.join(missing)} ({where}) not found")
            return [self.targets[name] for name in dict.fromkeys(names)]
        if selector is not None:
            matched = [t for _, t in sorted(self.targets.items()) if selector_matches(selector, t.labels)]
            if not matched:
                raise PlanError(REASON_TARGET_NOT_FOUND, f"{where} matches no Targets")
            return matched
        return []

    def job_targets(self) -> list[TargetObject]:
        spec = self.job.spec
        names = [spec.target] if spec.target is not None else spec.targets
        where = "spec.target" if spec.target is not None else "spec.targets"
        if names is None:
            where = "spec.targetSelector"
        return self.select(names, spec.target_selector, where)

    def step_targets(
        self, index: int, step: Step, job_targets: list[TargetObject], has_targets: bool
    ) -> list[str]:
        if step.targets is not None or step.target_selector is not None:
            where = f"spec.steps[{index}].{'targets' if step.targets is not None else 'targetSelector'}"
            chosen = self.select(step.targets, step.target_selector, where)
        elif runs_per_target(step, has_targets):
            chosen = job_targets
        else:
            chosen = []
        if not chosen and step.type in NEEDS_TARGET_TYPES:
            raise PlanError(
                REASON_INVALID_SPEC,
                f"step {step.name} ({step.type}) needs targets: set target, targets or targetSelector "
                "on the job or the step",
            )
        credential = step.credential_ref.name if step.credential_ref else None
        return [self.plan_target(target, credential) for target in chosen]

    # parameters and files
    def parameters(self) -> tuple[dict[str, Any], dict[str, str]]:
        spec = self.job.spec
        config_map_values: dict[str, str] = {}
        secret_files: dict[str, str] = {}
        for parameter in spec.parameters or []:
            source = parameter.value_from
            if source is None:
                continue
            if source.secret_key_ref is not None:
                what = f"valueFrom of parameter {parameter.name}"
                secret_files[parameter.name] = self.secret_key_file(source.secret_key_ref, what)
            elif source.config_map_key_ref is not None and self.config_maps is not None:
                ref = source.config_map_key_ref
                data = self.config_maps.get(ref.name)
                if data is None:
                    raise PlanError(
                        REASON_CONFIG_MAP_NOT_FOUND,
                        f"ConfigMap {ref.name} (valueFrom of parameter {parameter.name}) not found",
                    )
                if ref.key in data:
                    config_map_values[parameter.name] = data[ref.key]
        try:
            values = resolve_parameters(spec, secret_values=None, config_map_values=config_map_values)
        except ParameterError as error:
            raise PlanError(REASON_INVALID_SPEC, str(error)) from error
        return values, secret_files

    def file_sources(self) -> None:
        for index, step in enumerate(self.job.spec.steps):
            source = getattr(step, "source", None)
            hmac = getattr(step, "hmac", None)
            where = f"spec.steps[{index}]"
            if source is not None and source.secret is not None:
                name = source.secret.name
                keys = self.secret_keys.get(name)
                if keys is None:
                    raise PlanError(
                        REASON_SECRET_NOT_FOUND, f"Secret {name} ({where}.source.secret) not found"
                    )
                if source.key is not None and source.key not in keys:
                    raise PlanError(
                        REASON_SECRET_NOT_FOUND, f"Secret {name} has no key {source.key} ({where})"
                    )
                self.used_secrets.add(name)
            if source is not None and source.config_map is not None:
                name = source.config_map.name
                if self.config_maps is not None:
                    data = self.config_maps.get(name)
                    if data is None:
                        raise PlanError(
                            REASON_CONFIG_MAP_NOT_FOUND,
                            f"ConfigMap {name} ({where}.source.configMap) not found",
                        )
                    if source.key is not None and source.key not in data:
                        raise PlanError(
                            REASON_CONFIG_MAP_NOT_FOUND, f"ConfigMap {name} has no key {source.key} ({where})"
                        )
                self.used_config_maps.add(name)
            if hmac is not None:
                self.secret_key_file(hmac.secret_key_ref, f"{where}.hmac.secretKeyRef")


def _as_target(item: TargetObject | Mapping[str, Any]) -> TargetObject:
    return item if isinstance(item, TargetObject) else TargetObject.from_manifest(item)


def _as_credential(item: CredentialSpec | Mapping[str, Any]) -> CredentialSpec:
    if isinstance(item, CredentialSpec):
        return item
    spec = item.get("spec") if "spec" in item else item
    return CredentialSpec.model_validate(spec)


def build_run_plan(
    job: JobObject | Mapping[str, Any],
    targets: Iterable[TargetObject | Mapping[str, Any]],
    credentials: Mapping[str, CredentialSpec | Mapping[str, Any]],
    secret_keys: Mapping[str, Collection[str]],
    config_maps: Mapping[str, Mapping[str, str]] | None = None,
    *,
    secrets_root: str = SECRETS_ROOT,
    config_maps_root: str = CONFIG_MAPS_ROOT,
    workspace: str = WORKSPACE,
) -> PlannedRun:
    """Build the runner's plan for an OpsJob.

    Args:
        job: the OpsJob (:class:`JobObject` or its manifest).
        targets: the Targets of the job's namespace (objects or manifests); the job's names and
            selectors are resolved against them.
        credentials: Credential name → spec (or manifest) for the namespace.
        secret_keys: Secret name → the keys it holds (no values). A Secret missing here is
            reported as not found.
        config_maps: ConfigMap name → data, for ``valueFrom.configMapKeyRef`` parameters and to
            check file sources; None skips those checks (parameters from ConfigMaps then resolve
            to their defaults).
        secrets_root: where the runner sees Secret volumes (a temp dir for local runs).
        config_maps_root: where the runner sees ConfigMap volumes.
        workspace: the runner's workspace directory.

    Returns:
        The plan and the Secrets/ConfigMaps to mount.

    Raises:
        PlanError: a missing object or key, an invalid argument, a template error, or a step that
            needs targets but has none; ``reason`` is the condition reason.
    """
    job_object = job if isinstance(job, JobObject) else JobObject.from_manifest(job)
    try:
        target_objects = {t.name: t for t in map(_as_target, targets)}
        credential_specs = {name: _as_credential(item) for name, item in credentials.items()}
    except ValidationError as error:
        raise PlanError(REASON_INVALID_SPEC, f"invalid Target or Credential: {error}") from error
    issues = validate_templates(job_object.spec)
    if issues:
        shown = "; ".join(str(issue) for issue in issues[:5])
        more = f" (and {len(issues) - 5} more)" if len(issues) > 5 else ""
        raise PlanError(REASON_INVALID_TEMPLATE, f"template errors: {shown}{more}", issues)
    planner = _Planner(job_object, target_objects, credential_specs, secret_keys, config_maps, secrets_root)
    parameters, secret_parameters = planner.parameters()
    job_targets = planner.job_targets()
    spec = job_object.spec
    has_targets = spec.target is not None or spec.targets is not None or spec.target_selector is not None
    steps = [
        PlanStep(step=step, targets=planner.step_targets(index, step, job_targets, has_targets))
        for index, step in enumerate(spec.steps)
    ]
    planner.file_sources()
    secrets = tuple(sorted(planner.used_secrets))
    config_map_names = tuple(sorted(planner.used_config_maps))
    plan = RunPlan(
        job=JobRef(namespace=job_object.namespace, name=job_object.name, uid=job_object.uid),
        parameters=parameters,
        secret_parameters=secret_parameters,
        targets=planner.plan_targets,
        steps=steps,
        concurrency=spec.concurrency,
        failure_policy=spec.failure_policy or RunPlan.model_fields["failure_policy"].default,
        active_deadline_seconds=spec.active_deadline_seconds,
        secret_dirs={name: f"{secrets_root}/{name}" for name in secrets},
        config_map_dirs={name: config_map_dir(name, config_maps_root) for name in config_map_names},
        workspace=workspace,
    )
    return PlannedRun(plan, secrets, config_map_names, secrets_root, config_maps_root)


def plan_probe_target(
    target: TargetObject | Mapping[str, Any],
    credentials: Mapping[str, CredentialSpec | Mapping[str, Any]],
    secret_keys: Mapping[str, Collection[str]],
    *,
    secrets_root: str = SECRETS_ROOT,
) -> tuple[PlanTarget, tuple[str, ...]]:
    """Resolve one Target (and its Credential) for a probe pod, exactly as a run would.

    Returns:
        The resolved target and the Secrets its pod must mount.

    Raises:
        PlanError: a missing Credential, Secret or key (reasons as for :func:`build_run_plan`).
    """
    target_object = _as_target(target)
    credential_specs = {name: _as_credential(item) for name, item in credentials.items()}
    probe_job = JobObject(
        namespace="",
        name=f"probe-{target_object.name}",
        uid="",
        spec=OpsJobSpec.model_validate({"steps": [{"name": "probe", "type": "wait", "seconds": 1}]}),
    )
    planner = _Planner(probe_job, {}, credential_specs, secret_keys, None, secrets_root)
    key = planner.plan_target(target_object, None)
    return planner.plan_targets[key], tuple(sorted(planner.used_secrets))
