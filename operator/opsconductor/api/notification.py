"""Notifications: rules, recipients with preferences, and the delivery records of a run.

Rules live on OpsJobs, OpsSchedules and NotificationPolicies; records in the OpsJob's status.

What must stay true:
- Channel endpoints and passwords are never here: a rule or recipient names a Credential (type SMTP,
  SlackWebhook, TeamsWebhook or Webhook) whose Secret only the operator reads.
- ``NotificationRecord`` is the dedupe ledger: a delivery whose record says Sent is never sent
  again, also after an operator restart. Records are bounded (``MAX_RECORDS``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import ConfigDict, Field

from opsconductor.api._base import (
    ApiModel,
    CommonStatus,
    ConfigMapKeySelector,
    LabelSelector,
    LocalObjectReference,
    ObjectName,
    cel,
    validations,
)

Outcome = Literal["Started", "Succeeded", "Failed", "Cancelled", "Recovered", "DurationExceeded"]
EmailAddress = Annotated[str, Field(min_length=3, max_length=320, pattern=r"^[^@\s]+@[^@\s]+$")]
RecipientName = Annotated[
    str, Field(min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
]
CLOCK = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"
TIME_ZONE = r"^[A-Za-z][A-Za-z0-9_+\-]*(/[A-Za-z0-9_+\-]+){0,2}$"
Weekday = Literal["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
MAX_RECORDS = 64


class NotifyConditions(ApiModel):
    """Extra conditions a run must meet for a rule to fire; all set ones must hold."""

    job_labels: LabelSelector | None = None
    """The OpsJob's labels must match (useful in namespace-wide NotificationPolicy rules)."""
    error_pattern: Annotated[str, Field(min_length=1, max_length=512)] | None = None
    """A regular expression searched in the run's message and failed targets' errors."""
    min_duration_seconds: Annotated[int, Field(ge=0)] | None = None
    """The run took at least this long."""
    min_consecutive_failures: Annotated[int, Field(ge=1, le=1000)] | None = None
    """Escalation: the run's OpsSchedule has failed at least this many times in a row (this run
    included). Runs not created by a schedule never meet it."""


class NotifyRule(ApiModel):
    """Send a notification on one of ``events``, to a channel and/or to named recipients."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "has(self.channelRef) || (has(self.recipients) && size(self.recipients) > 0)",
                "a notify rule needs a channelRef, recipients, or both",
            ),
            cel(
                "!has(self.to) || size(self.to) == 0 || has(self.channelRef)",
                "to (email addresses) applies to the rule's channelRef; set channelRef or use recipients",
                field_path=".to",
            ),
            cel(
                "!has(self.durationThresholdSeconds) || self.events.exists(e, e == 'DurationExceeded')",
                "durationThresholdSeconds applies only to the DurationExceeded event",
                field_path=".durationThresholdSeconds",
            ),
            cel(
                "!self.events.exists(e, e == 'DurationExceeded') || has(self.durationThresholdSeconds)",
                "the DurationExceeded event needs durationThresholdSeconds",
                field_path=".durationThresholdSeconds",
            ),
        )
    )

    name: RecipientName | None = None
    """Shown in delivery records and Events (default: ``rule-<index>``)."""
    events: Annotated[list[Outcome], Field(min_length=1, max_length=6)]
    """Run events that trigger this rule. Recovered = first success of a schedule after failures;
    DurationExceeded = the run took longer than ``durationThresholdSeconds``. (Not named ``on``:
    YAML 1.1 reads an unquoted ``on`` key as the boolean true.)"""
    channel_ref: LocalObjectReference | None = None
    """A Credential of type SMTP, SlackWebhook, TeamsWebhook or Webhook: the channel to use."""
    to: Annotated[list[EmailAddress], Field(max_length=50)] = []
    """Email recipients (SMTP channels only)."""
    recipients: Annotated[list[RecipientName], Field(max_length=32)] = []
    """Recipients declared in a NotificationPolicy of this namespace; each gets the message on
    their own channels, filtered by their preferences and quiet hours."""
    when: NotifyConditions | None = None
    """Conditions on labels, duration, error text and failure streaks."""
    duration_threshold_seconds: Annotated[int, Field(ge=1)] | None = None
    """For DurationExceeded: notify when a run takes longer than this."""
    urgent: bool = False
    """Deliver Failed messages of this rule even during recipients' quiet hours."""
    group_window_seconds: Annotated[int, Field(ge=1, le=3600)] | None = None
    """Collect this rule's messages to a channel for this long and send the runs that ended in the
    meantime as one digest (a burst of failing jobs is one message, not one per job)."""
    template_ref: ConfigMapKeySelector | None = None
    """A Jinja2 template (ConfigMap key) replacing the channel's default message text."""


class QuietHours(ApiModel):
    """When a recipient does not want to be disturbed, in their time zone."""

    start: Annotated[str, Field(pattern=CLOCK)]
    """Start, HH:MM wall-clock time."""
    end: Annotated[str, Field(pattern=CLOCK)]
    """End, HH:MM; before ``start`` means the quiet hours span midnight."""
    time_zone: Annotated[str, Field(max_length=64, pattern=TIME_ZONE)] = "UTC"
    """IANA time zone of ``start`` and ``end``."""
    days: Annotated[list[Weekday], Field(min_length=1, max_length=7)] | None = None
    """Weekdays the quiet hours start on (default: every day)."""
    action: Literal["Hold", "Drop"] = "Hold"
    """Hold messages until the quiet hours end, or Drop them."""


class RecipientChannel(ApiModel):
    """One way to reach a recipient."""

    channel_ref: LocalObjectReference
    """A Credential of type SMTP, SlackWebhook, TeamsWebhook or Webhook."""
    email: EmailAddress | None = None
    """The recipient's address, for an SMTP channel."""


class Recipient(ApiModel):
    """A person or team and what they want to hear about."""

    name: RecipientName
    """Referenced by rules' ``recipients``."""
    channels: Annotated[list[RecipientChannel], Field(min_length=1, max_length=8)]
    """Where to reach them."""
    events: Annotated[list[Outcome], Field(min_length=1, max_length=6)] | None = None
    """Which outcomes they want (default: whatever the rule sends)."""
    quiet_hours: Annotated[list[QuietHours], Field(max_length=8)] | None = None
    """When to hold or drop their messages (urgent failures break through)."""


class NotificationPolicySpec(ApiModel):
    """Namespace-wide notification defaults and recipients."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "!has(self.recipients)"
                " || self.recipients.all(r, self.recipients.exists_one(q, q.name == r.name))",
                "recipient names must be unique",
                field_path=".recipients",
            ),
        )
    )

    recipients: Annotated[list[Recipient], Field(max_length=64)] | None = None
    """Named recipients with their channels and preferences."""
    rules: Annotated[list[NotifyRule], Field(max_length=32)] | None = None
    """Rules applied to every OpsJob of the namespace (narrow them with ``when.jobLabels``)."""


class NotificationPolicyStatus(CommonStatus):
    """The observed state of a NotificationPolicy."""


# --- delivery records (OpsJob status) --------------------------------------------------------
DeliveryState = Literal["Pending", "Sent", "Failed", "Held", "Dropped"]


class NotificationRecord(ApiModel):
    """One delivery of one event to one destination: the ledger that prevents re-sends."""

    key: Annotated[str, Field(max_length=512)]
    """Stable identity: event, rule and destination."""
    rule: Annotated[str, Field(max_length=128)]
    """The rule that produced it (``<source>/<rule name>``)."""
    event: Outcome
    """The run event."""
    channel: ObjectName
    """The channel Credential."""
    recipients: Annotated[list[Annotated[str, Field(max_length=320)]], Field(max_length=64)] = []
    """Recipient names and email addresses it goes to."""
    state: DeliveryState
    """Pending, Sent, Failed (gave up), Held (quiet hours) or Dropped (quiet hours)."""
    attempts: Annotated[int, Field(ge=0)] = 0
    """Delivery attempts made."""
    last_error: Annotated[str, Field(max_length=1024)] = ""
    """Why the last attempt failed."""
    not_before: datetime | None = None
    """Held until this instant."""
    sent_time: datetime | None = None
    """When the channel accepted it."""
    template: Annotated[str, Field(max_length=507)] | None = None
    """``<ConfigMap>/<key>`` of the custom template, if the rule named one."""
    template_error: Annotated[str, Field(max_length=1024)] = ""
    """Why the custom template failed (the default template was sent instead)."""
    group_window_seconds: Annotated[int, Field(ge=1, le=3600)] | None = None
    """Sent as part of a digest of the runs ending within this window (from the rule)."""
    grouped_with: Annotated[int, Field(ge=0)] = 0
    """How many other runs the digest that carried this message reported."""


class ScheduleStreak(ApiModel):
    """The schedule's failure streak as this run was counted (for escalation and recovery)."""

    failures_before: Annotated[int, Field(ge=0)] = 0
    """Consecutive failures before this run."""
    failures_after: Annotated[int, Field(ge=0)] = 0
    """Consecutive failures including this run."""


class NotificationStatus(ApiModel):
    """What the operator notified about one OpsJob."""

    evaluated: Annotated[list[Outcome], Field(max_length=6)] = []
    """Events whose rules were evaluated (each exactly once)."""
    streak: ScheduleStreak | None = None
    """The schedule's failure streak, for scheduled runs."""
    deliveries: Annotated[list[NotificationRecord], Field(max_length=MAX_RECORDS)] = []
    """One record per event and destination."""
