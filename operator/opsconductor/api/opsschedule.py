"""OpsSchedule: cron with a time zone that creates OpsJobs from a template (like a CronJob)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import ConfigDict, Field

from opsconductor.api._base import ApiModel, CommonStatus, ObjectName, cel, validations
from opsconductor.api.notification import NotifyRule
from opsconductor.api.opsjob import OpsJobSpec, RetryPolicy

# Five cron fields (minute hour day-of-month month day-of-week; numbers, names, * , - /) or a macro.
_CRON_FIELD = r"[0-9A-Za-z*?/,\-]+"
CRON = rf"^(@(yearly|annually|monthly|weekly|daily|midnight|hourly)|{_CRON_FIELD}( {_CRON_FIELD}){{4}})$"
# IANA zone names: "UTC", "Japan", "EST5EDT", "Europe/Berlin", "America/Argentina/Buenos_Aires",
# "Etc/GMT+5". Whether the zone exists is checked by the operator (condition reason InvalidSpec).
TIME_ZONE = r"^[A-Za-z][A-Za-z0-9_+\-]*(/[A-Za-z0-9_+\-]+){0,2}$"
CLOCK = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"
Weekday = Literal["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]


class WeeklyRange(ApiModel):
    """A time range on given weekdays; ``end`` before ``start`` spans midnight."""

    days: Annotated[list[Weekday], Field(min_length=1, max_length=7)]
    """Weekdays the range starts on."""
    start: Annotated[str, Field(pattern=CLOCK)]
    """Start, HH:MM wall-clock time."""
    end: Annotated[str, Field(pattern=CLOCK)]
    """End, HH:MM wall-clock time."""


class TimeWindow(ApiModel):
    """A recurring window: weekly ranges, or a cron expression plus a duration."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "has(self.weekly) != has(self.cron)",
                "a window takes exactly one of weekly or cron",
            ),
            cel(
                "has(self.cron) == has(self.durationMinutes)",
                "a cron window needs durationMinutes (and durationMinutes needs cron)",
                field_path=".durationMinutes",
            ),
        )
    )

    name: Annotated[str, Field(max_length=63)] | None = None
    """Shown in Events when the window skips or defers a fire."""
    weekly: Annotated[list[WeeklyRange], Field(max_length=14)] | None = None
    """Weekly ranges."""
    cron: Annotated[str, Field(max_length=256, pattern=CRON)] | None = None
    """Window starts."""
    duration_minutes: Annotated[int, Field(ge=1, le=10080)] | None = None
    """Length of a cron window."""
    time_zone: Annotated[str, Field(max_length=64, pattern=TIME_ZONE)] | None = None
    """IANA time zone of the window (default: the schedule's)."""


class WindowRef(ApiModel):
    """A shared MaintenanceWindow the schedule also obeys."""

    name: ObjectName
    """The MaintenanceWindow's name."""
    scope: Literal["Namespace", "Cluster"] = "Namespace"
    """Namespace: in the schedule's namespace. Cluster: in the operator's shared-windows namespace
    (``OPSCONDUCTOR_SHARED_WINDOWS_NAMESPACE``, default opsconductor-system), for windows every team obeys."""


class MaintenanceWindows(ApiModel):
    """When fires may run."""

    blackout: Annotated[list[TimeWindow], Field(max_length=16)] | None = None
    """Fires inside these windows are skipped or deferred (``blackoutPolicy``)."""
    allowed: Annotated[list[TimeWindow], Field(max_length=16)] | None = None
    """If set, fires run only inside one of these windows (outside: per ``blackoutPolicy``)."""
    blackout_policy: Literal["Skip", "Defer"] = "Skip"
    """Skip the fire, or defer it to the window's end."""
    refs: Annotated[list[WindowRef], Field(max_length=8)] | None = None
    """Shared MaintenanceWindows whose blackout and allowed windows add to these."""


class JobTemplateMetadata(ApiModel):
    """Labels and annotations copied onto each OpsJob."""

    labels: Annotated[dict[str, Annotated[str, Field(max_length=63)]], Field(max_length=64)] | None = None
    """Labels of created OpsJobs."""
    annotations: Annotated[dict[str, Annotated[str, Field(max_length=4096)]], Field(max_length=64)] | None = (
        None
    )
    """Annotations of created OpsJobs."""


class JobTemplate(ApiModel):
    """What each fire creates."""

    metadata: JobTemplateMetadata | None = None
    """Labels and annotations of created OpsJobs."""
    spec: OpsJobSpec
    """The OpsJob spec; ``arguments`` override parameter defaults per schedule."""


class ScheduleDependency(ApiModel):
    """Run after another schedule's run ends."""

    ops_schedule: ObjectName
    """The OpsSchedule (same namespace) whose runs release this one."""
    result: Literal["Succeeded", "Failed", "Any"] = "Succeeded"
    """Which outcome releases a run."""
    timeout_seconds: Annotated[int, Field(ge=1, le=604800)] = 86400
    """Give up waiting (and record a skipped fire) after this long."""


class OpsScheduleSpec(ApiModel):
    """The desired state of an OpsSchedule."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "has(self.schedules) || has(self.after)",
                "a schedule needs schedules (cron), after (dependencies), or both",
            ),
        )
    )

    schedules: (
        Annotated[
            list[Annotated[str, Field(max_length=256, pattern=CRON)]], Field(min_length=1, max_length=10)
        ]
        | None
    ) = None
    """Cron expressions (5 fields or @hourly-style macros); a fire is due when any matches."""
    time_zone: Annotated[str, Field(max_length=64, pattern=TIME_ZONE)] = "UTC"
    """IANA time zone the cron expressions are read in."""
    suspend: bool = False
    """Stop creating runs (active runs continue)."""
    concurrency_policy: Literal["Allow", "Forbid", "Replace"] = "Forbid"
    """Allow overlapping runs, Forbid (skip the fire; the default, unlike CronJob), or Replace the running one."""  # noqa: E501 -- CRD description: a line break would show in the generated CRD
    starting_deadline_seconds: Annotated[int, Field(ge=0)] | None = None
    """A fire not started within this many seconds of its time is skipped."""
    missed_runs: Literal["RunLatest", "RunAll", "Skip"] = "RunLatest"
    """After operator downtime: run the latest missed fire, all of them (up to maxMissedRuns), or none."""
    max_missed_runs: Annotated[int, Field(ge=1, le=100)] = 10
    """Bound for missedRuns RunAll."""
    successful_jobs_history_limit: Annotated[int, Field(ge=0, le=1000)] = 3
    """Succeeded OpsJobs to keep."""
    failed_jobs_history_limit: Annotated[int, Field(ge=0, le=1000)] = 1
    """Failed OpsJobs to keep."""
    windows: MaintenanceWindows | None = None
    """Maintenance windows."""
    retry: RetryPolicy | None = None
    """Re-create failed runs as new attempts with exponential backoff."""
    after: Annotated[list[ScheduleDependency], Field(max_length=8)] | None = None
    """Run after these schedules' runs end (with or without a cron of its own)."""
    job_template: JobTemplate
    """The OpsJob each fire creates."""
    notify: Annotated[list[NotifyRule], Field(max_length=16)] | None = None
    """Notifications on run outcomes (escalation and recovery use the schedule's history)."""


class ActiveRun(ApiModel):
    """An OpsJob of this schedule that has not finished."""

    name: ObjectName
    """OpsJob name."""
    scheduled_time: datetime | None = None
    """The fire it belongs to."""


class CountedRun(ApiModel):
    """The last finished run counted into ``consecutiveFailures`` (so no run is counted twice)."""

    name: ObjectName
    """OpsJob name."""
    uid: Annotated[str, Field(max_length=64)]
    """OpsJob uid."""
    completion_time: datetime | None = None
    """When it finished; runs finishing earlier than this are not counted."""
    failures_before: Annotated[int, Field(ge=0)] = 0
    """``consecutiveFailures`` before this run was counted."""


class OpsScheduleStatus(CommonStatus):
    """The observed state of an OpsSchedule."""

    last_schedule_time: datetime | None = None
    """The last fire that created a run."""
    last_successful_time: datetime | None = None
    """When the last successful run finished."""
    next_schedule_time: datetime | None = None
    """The next fire (after windows)."""
    active: Annotated[list[ActiveRun], Field(max_length=100)] = []
    """Runs in progress."""
    active_count: Annotated[int, Field(ge=0)] = 0
    """Number of runs in progress (printer column)."""
    last_result: Literal["Succeeded", "Failed", "Cancelled"] | None = None
    """Outcome of the last finished run."""
    evaluated_time: datetime | None = None
    """Fires up to this instant are decided (run, skipped, or superseded by an edit); after a restart
    missed-run handling starts after it."""
    last_trigger: Annotated[str, Field(max_length=256)] | None = None
    """The last manual trigger token handled (``opsconductor.io/trigger`` annotation)."""
    consecutive_failures: Annotated[int, Field(ge=0)] = 0
    """Failed runs in a row (escalation rules use it)."""
    last_counted_run: CountedRun | None = None
    """The run last counted into ``consecutiveFailures`` (written by the notifier)."""


class MaintenanceWindowSpec(ApiModel):
    """A set of windows shared by several OpsSchedules (referenced from ``spec.windows.refs``)."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "has(self.blackout) || has(self.allowed)",
                "a MaintenanceWindow needs blackout or allowed windows",
            ),
        )
    )

    description: Annotated[str, Field(max_length=1024)] | None = None
    """What the windows are for (shown in Events)."""
    time_zone: Annotated[str, Field(max_length=64, pattern=TIME_ZONE)] = "UTC"
    """IANA time zone of windows that set none."""
    blackout: Annotated[list[TimeWindow], Field(max_length=16)] | None = None
    """Fires inside these windows are skipped or deferred (per the schedule's ``blackoutPolicy``)."""
    allowed: Annotated[list[TimeWindow], Field(max_length=16)] | None = None
    """Fires run only inside one of these."""


class MaintenanceWindowStatus(CommonStatus):
    """The observed state of a MaintenanceWindow (the operator writes nothing here yet)."""
