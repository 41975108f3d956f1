"""The custom resource kinds: names, printer columns and rules that live above the spec.

``opsconductor.crdgen`` turns each :class:`Kind` into a CustomResourceDefinition; handlers use
the same objects for group/version/plural, so names are defined once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from opsconductor.api._base import GROUP, VERSION, ApiModel, cel
from opsconductor.api.credential import CredentialSpec, CredentialStatus
from opsconductor.api.notification import NotificationPolicySpec, NotificationPolicyStatus
from opsconductor.api.opsjob import OpsJobSpec, OpsJobStatus
from opsconductor.api.opsschedule import (
    MaintenanceWindowSpec,
    MaintenanceWindowStatus,
    OpsScheduleSpec,
    OpsScheduleStatus,
)
from opsconductor.api.target import TargetSpec, TargetStatus

CATEGORY = "opsconductor"


@dataclass(frozen=True)
class PrinterColumn:
    """An ``additionalPrinterColumns`` entry."""

    name: str
    json_path: str
    type: str = "string"
    priority: int = 0
    description: str = ""


@dataclass(frozen=True)
class Kind:
    """One custom resource kind and how it is served."""

    kind: str
    plural: str
    short_names: tuple[str, ...]
    spec: type[ApiModel]
    status: type[ApiModel]
    description: str
    columns: tuple[PrinterColumn, ...]
    spec_rules: tuple[dict[str, str], ...] = ()
    """CEL rules on ``.spec`` that only apply to the top-level kind (not where the spec is embedded)."""
    immutable_spec_except: frozenset[str] | None = None
    """If set, every spec field but these is immutable after creation (rules are generated)."""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def singular(self) -> str:
        """Lower-case singular name."""
        return self.kind.lower()

    @property
    def group(self) -> str:
        """API group."""
        return GROUP

    @property
    def version(self) -> str:
        """Served and stored version."""
        return VERSION


def _condition(condition_type: str) -> str:
    return f'.status.conditions[?(@.type=="{condition_type}")].status'


AGE = PrinterColumn("Age", ".metadata.creationTimestamp", "date")

TARGET = Kind(
    kind="Target",
    plural="targets",
    short_names=("tgt",),
    spec=TargetSpec,
    status=TargetStatus,
    description="A host reached over WinRM, SSH, HTTP, SQL or SNMP.",
    columns=(
        PrinterColumn("Address", ".spec.address"),
        PrinterColumn("Protocol", ".spec.protocol"),
        PrinterColumn("OS", ".status.facts.osName"),
        PrinterColumn("Reachable", _condition("Reachable")),
        AGE,
        PrinterColumn("Hostname", ".status.facts.hostname", priority=1),
        PrinterColumn("Version", ".status.facts.osVersion", priority=1),
        PrinterColumn("Latency", ".status.lastProbe.latencyMilliseconds", "integer", priority=1),
    ),
)

CREDENTIAL = Kind(
    kind="Credential",
    plural="credentials",
    short_names=("cred",),
    spec=CredentialSpec,
    status=CredentialStatus,
    description="How to log in somewhere; the values live in a referenced Secret.",
    columns=(
        PrinterColumn("Type", ".spec.type"),
        PrinterColumn("Secret", ".spec.secretRef.name"),
        PrinterColumn("Ready", _condition("Ready")),
        PrinterColumn("Expires", ".status.expires", "date"),
        AGE,
        PrinterColumn("Fingerprint", ".status.publicKeyFingerprint", priority=1),
    ),
)

OPSJOB = Kind(
    kind="OpsJob",
    plural="opsjobs",
    short_names=("oj",),
    spec=OpsJobSpec,
    status=OpsJobStatus,
    description="One run of parameterised steps against targets.",
    columns=(
        PrinterColumn("Status", ".status.phase"),
        PrinterColumn("Steps", ".status.progress.steps", description="done/total"),
        PrinterColumn("Targets", ".status.progress.targets", description="ok/failed"),
        PrinterColumn("Duration", ".status.duration"),
        AGE,
        PrinterColumn("Runner", ".status.runnerPod", priority=1),
        PrinterColumn("Message", ".status.message", priority=1),
    ),
    spec_rules=(
        cel(
            "!(has(oldSelf.cancel) && oldSelf.cancel) || (has(self.cancel) && self.cancel)",
            "a cancelled OpsJob cannot be un-cancelled",
            field_path=".cancel",
        ),
    ),
    immutable_spec_except=frozenset({"cancel"}),
)

OPSSCHEDULE = Kind(
    kind="OpsSchedule",
    plural="opsschedules",
    short_names=("osch",),
    spec=OpsScheduleSpec,
    status=OpsScheduleStatus,
    description="Creates OpsJobs on a cron schedule in a time zone.",
    columns=(
        PrinterColumn("Schedule", ".spec.schedules"),
        PrinterColumn("TimeZone", ".spec.timeZone"),
        PrinterColumn("Suspend", ".spec.suspend", "boolean"),
        PrinterColumn("Active", ".status.activeCount", "integer"),
        PrinterColumn("Last", ".status.lastScheduleTime", "date"),
        # A string, not a date: kubectl prints a date in the future as <invalid> (it shows ages).
        PrinterColumn("Next", ".status.nextScheduleTime"),
        PrinterColumn("Last Result", ".status.lastResult"),
        AGE,
    ),
)

NOTIFICATIONPOLICY = Kind(
    kind="NotificationPolicy",
    plural="notificationpolicies",
    short_names=("notifypol",),
    spec=NotificationPolicySpec,
    status=NotificationPolicyStatus,
    description="Namespace-wide notification rules and recipients with their preferences.",
    columns=(
        PrinterColumn("Recipients", ".spec.recipients[*].name"),
        AGE,
    ),
)

MAINTENANCEWINDOW = Kind(
    kind="MaintenanceWindow",
    plural="maintenancewindows",
    short_names=("mw",),
    spec=MaintenanceWindowSpec,
    status=MaintenanceWindowStatus,
    description="Blackout and allowed windows that OpsSchedules share by reference.",
    columns=(
        PrinterColumn("TimeZone", ".spec.timeZone"),
        PrinterColumn("Description", ".spec.description"),
        AGE,
    ),
)

KINDS: tuple[Kind, ...] = (TARGET, CREDENTIAL, OPSJOB, OPSSCHEDULE, MAINTENANCEWINDOW, NOTIFICATIONPOLICY)
