"""Who gets what: from a finished (or started) OpsJob and the rules that apply, the deliveries to make.

Pure functions over plain manifests and API models; no API calls, no clock reads (``now`` is passed
in). The notifier (``handlers/notify.py``) gathers the inputs and records the result in the OpsJob's
``status.notifications``.

What must stay true:
- Each event of a run is evaluated once; its deliveries are grouped per destination, so rules that
  overlap (a job's own rule and a namespace default naming the same channel) send one message, and a
  fan-out over any number of targets is one message per destination.
- Quiet hours only ever delay (Hold) or drop a delivery; an ``urgent`` rule's Failed message goes out
  at once.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from opsconductor.api.notification import (
    DeliveryState,
    NotificationRecord,
    NotifyRule,
    Outcome,
    QuietHours,
    Recipient,
    ScheduleStreak,
)
from opsconductor.planner import selector_matches

Manifest = dict[str, Any]
TERMINAL: dict[str, Outcome] = {"Succeeded": "Succeeded", "Failed": "Failed", "Cancelled": "Cancelled"}
CHANNEL_TYPES = ("SMTP", "SlackWebhook", "TeamsWebhook", "Webhook")
WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


@dataclass(frozen=True)
class RuleSource:
    """Rules from one object: the OpsJob, its OpsSchedule, or a NotificationPolicy."""

    name: str
    """``opsjob``, ``opsschedule/<name>`` or ``policy/<name>``."""
    rules: tuple[NotifyRule, ...]


@dataclass
class RunFacts:
    """What rules look at, derived once from the OpsJob."""

    labels: Mapping[str, str]
    phase: str
    duration_seconds: float | None
    errors: list[str]
    streak: ScheduleStreak | None


def parse_time(value: str | None) -> datetime | None:
    """RFC 3339 → aware datetime (None stays None)."""
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def run_duration_seconds(status: Mapping[str, Any]) -> float | None:
    """Seconds from the run's start to its completion, when both are known."""
    start, end = parse_time(status.get("startTime")), parse_time(status.get("completionTime"))
    return (end - start).total_seconds() if start and end else None


def failed_targets(status: Mapping[str, Any]) -> list[tuple[str, Manifest]]:
    """(step name, target result) of every itemised failed target, in step order."""
    return [
        (step["name"], target)
        for step in status.get("steps") or []
        for target in step.get("targets") or []
        if target.get("phase") == "Failed"
    ]


def run_facts(job: Manifest, streak: ScheduleStreak | None) -> RunFacts:
    """Derive the facts rules test from the OpsJob manifest."""
    status = job.get("status") or {}
    errors = [status.get("message") or ""]
    errors += [t.get("error") or "" for _, t in failed_targets(status)]
    errors += [step.get("message") or "" for step in status.get("steps") or []]
    return RunFacts(
        labels=job["metadata"].get("labels") or {},
        phase=status.get("phase") or "Pending",
        duration_seconds=run_duration_seconds(status),
        errors=[e for e in errors if e],
        streak=streak,
    )


def due_events(job: Manifest) -> list[Outcome]:
    """Events of the run's current phase not yet evaluated.

    Started is due while the run is Running; a run first seen finished gets only its outcome (a
    Started notice after the fact is noise). Recovered and DurationExceeded are judged per rule
    when the outcome is evaluated, so they ride on the terminal event.
    """
    status = job.get("status") or {}
    evaluated = set((status.get("notifications") or {}).get("evaluated") or [])
    phase = status.get("phase")
    if phase == "Running" and "Started" not in evaluated:
        return ["Started"]
    outcome = TERMINAL.get(phase or "")
    if outcome and outcome not in evaluated:
        return [outcome]
    return []


def rule_events(rule: NotifyRule, outcome: Outcome, facts: RunFacts) -> list[Outcome]:
    """Which of the rule's events this outcome fires (Recovered / DurationExceeded included)."""
    fired: list[Outcome] = []
    if outcome in rule.events:
        fired.append(outcome)
    if (
        outcome == "Succeeded"
        and "Recovered" in rule.events
        and facts.streak is not None
        and facts.streak.failures_before > 0
    ):
        fired.append("Recovered")
    if (
        outcome in TERMINAL.values()
        and "DurationExceeded" in rule.events
        and rule.duration_threshold_seconds is not None
        and facts.duration_seconds is not None
        and facts.duration_seconds > rule.duration_threshold_seconds
    ):
        fired.append("DurationExceeded")
    return fired


def conditions_hold(rule: NotifyRule, facts: RunFacts) -> bool:
    """Whether the rule's ``when`` conditions all hold for this run."""
    when = rule.when
    if when is None:
        return True
    if when.job_labels is not None and not selector_matches(when.job_labels, facts.labels):
        return False
    if when.min_duration_seconds is not None and (
        facts.duration_seconds is None or facts.duration_seconds < when.min_duration_seconds
    ):
        return False
    if when.min_consecutive_failures is not None and (
        facts.streak is None or facts.streak.failures_after < when.min_consecutive_failures
    ):
        return False
    if when.error_pattern is not None:
        try:
            pattern = re.compile(when.error_pattern)
        except re.error:
            return False
        if not any(pattern.search(error) for error in facts.errors):
            return False
    return True


def quiet_until(quiet_hours: Iterable[QuietHours], now: datetime) -> tuple[str, datetime] | None:
    """If ``now`` falls in quiet hours: (action, when they end, UTC); else None.

    Quiet hours are read in their own time zone (an unknown zone counts as UTC); ``end`` before
    ``start`` spans midnight, and ``days`` names the day they start on.
    """
    for quiet in quiet_hours:
        try:
            zone: Any = ZoneInfo(quiet.time_zone)
        except (ZoneInfoNotFoundError, ValueError):
            zone = UTC
        local = now.astimezone(zone)
        start_clock = time.fromisoformat(quiet.start)
        end_clock = time.fromisoformat(quiet.end)
        for offset in (0, -1):
            day = local.date() + timedelta(days=offset)
            if quiet.days is not None and WEEKDAYS[day.weekday()] not in quiet.days:
                continue
            start = datetime.combine(day, start_clock, zone)
            end = datetime.combine(day, end_clock, zone)
            if end <= start:
                end = datetime.combine(day + timedelta(days=1), end_clock, zone)
            if start <= local < end:
                return quiet.action, end.astimezone(UTC)
    return None


@dataclass
class _Candidate:
    event: Outcome
    rule: str
    channel: str
    recipient: str | None
    email: str | None
    hold_until: datetime | None = None
    drop: bool = False
    template: str | None = None
    error: str = ""
    group_window: int | None = None


@dataclass
class Plan:
    """New delivery records, and the problems found (each becomes a Warning Event)."""

    records: list[NotificationRecord] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _template_name(rule: NotifyRule) -> str | None:
    ref = rule.template_ref
    return f"{ref.name}/{ref.key}" if ref else None


def plan_deliveries(
    outcome: Outcome,
    facts: RunFacts,
    sources: Iterable[RuleSource],
    recipients: Mapping[str, Recipient],
    channel_types: Mapping[str, str | None],
    now: datetime,
) -> Plan:
    """Deliveries for one evaluated event of a run.

    Args:
        outcome: the event evaluated (Started, Succeeded, Failed or Cancelled).
        facts: the run's labels, duration, errors and schedule streak.
        sources: rules of the OpsJob, its OpsSchedule and the namespace's NotificationPolicies.
        recipients: recipients by name, from the namespace's NotificationPolicies.
        channel_types: Credential name → its type (None when the Credential does not exist).
        now: the operator's clock (quiet hours).

    Returns:
        One record per event and destination, plus problems (unknown recipients, bad channels).
    """
    plan = Plan()
    candidates: list[_Candidate] = []
    for source in sources:
        for index, rule in enumerate(source.rules):
            rule_id = f"{source.name}/{rule.name or f'rule-{index}'}"
            events = rule_events(rule, outcome, facts)
            if not events or not conditions_hold(rule, facts):
                continue
            for event in events:
                if rule.channel_ref is not None:
                    emails: list[str | None] = [*rule.to] or [None]
                    for email in emails:
                        candidates.append(
                            _Candidate(
                                event,
                                rule_id,
                                rule.channel_ref.name,
                                None,
                                email,
                                None,
                                False,
                                _template_name(rule),
                                group_window=rule.group_window_seconds,
                            )
                        )
                for name in rule.recipients:
                    recipient = recipients.get(name)
                    if recipient is None:
                        plan.problems.append(
                            f"{rule_id}: recipient {name!r} is not declared in any "
                            "NotificationPolicy of this namespace"
                        )
                        continue
                    if recipient.events is not None and event not in recipient.events:
                        continue
                    quiet = None
                    if not (rule.urgent and event == "Failed"):
                        quiet = quiet_until(recipient.quiet_hours or [], now)
                    for channel in recipient.channels:
                        candidates.append(
                            _Candidate(
                                event,
                                rule_id,
                                channel.channel_ref.name,
                                name,
                                channel.email,
                                hold_until=quiet[1] if quiet and quiet[0] == "Hold" else None,
                                drop=bool(quiet and quiet[0] == "Drop"),
                                template=_template_name(rule),
                                group_window=rule.group_window_seconds,
                            )
                        )
    plan.records = _group(candidates, channel_types, plan.problems)
    return plan


def _state_of(candidate: _Candidate) -> tuple[DeliveryState, datetime | None]:
    if candidate.drop:
        return "Dropped", None
    if candidate.hold_until is not None:
        return "Held", candidate.hold_until
    return "Pending", None


def _group(
    candidates: list[_Candidate], channel_types: Mapping[str, str | None], problems: list[str]
) -> list[NotificationRecord]:
    """One record per (event, channel, delivery state): one message each, never one per rule."""
    groups: dict[tuple[Outcome, str, DeliveryState, datetime | None], list[_Candidate]] = {}
    for candidate in candidates:
        state, until = _state_of(candidate)
        channel_type = channel_types.get(candidate.channel)
        if channel_type != "SMTP" and state != "Pending":
            # A shared webhook channel goes out when any of its recipients is awake.
            awake = any(
                _state_of(c)[0] == "Pending"
                for c in candidates
                if c.channel == candidate.channel and c.event == candidate.event
            )
            if awake:
                state, until = "Pending", None
        groups.setdefault((candidate.event, candidate.channel, state, until), []).append(candidate)
    records = []
    for (event, channel, state, until), members in groups.items():
        channel_type = channel_types.get(channel)
        error = ""
        final_state: DeliveryState = state
        if channel_type is None:
            error = f"Credential {channel!r} (notify channel) does not exist"
        elif channel_type not in CHANNEL_TYPES:
            error = (
                f"Credential {channel!r} has type {channel_type}; a notify channel needs one of "
                + ", ".join(CHANNEL_TYPES)
            )
        elif channel_type != "SMTP" and any(m.email for m in members if m.recipient is None):
            error = f"Credential {channel!r} is a {channel_type} channel: 'to' addresses apply to SMTP only"
        elif channel_type == "SMTP" and not any(m.email for m in members):
            error = f"Credential {channel!r} is an SMTP channel but no email address was given"
        if error:
            problems.append(error)
            final_state = "Failed"
        names = sorted({m.recipient for m in members if m.recipient} | {m.email for m in members if m.email})
        suffix = "" if state == "Pending" else f"/{state.lower()}"
        if until is not None:
            suffix += f"-{int(until.timestamp())}"
        records.append(
            NotificationRecord(
                key=f"{event}/{channel}{suffix}"[:512],
                rule=",".join(sorted({m.rule for m in members}))[:128],
                event=event,
                channel=channel,
                recipients=names[:64],
                state=final_state,
                last_error=error,
                not_before=until,
                template=next((m.template for m in members if m.template), None),
                group_window_seconds=max((m.group_window for m in members if m.group_window), default=None),
            )
        )
    return records


def merge_records(
    existing: list[NotificationRecord], new: list[NotificationRecord], limit: int
) -> list[NotificationRecord]:
    """Append new records (same key: keep the existing one); past ``limit`` drop the oldest finished."""
    keys = {r.key for r in existing}
    merged = existing + [r for r in new if r.key not in keys]
    while len(merged) > limit:
        finished = next((i for i, r in enumerate(merged) if r.state in ("Sent", "Dropped", "Failed")), 0)
        merged.pop(finished)
    return merged


def count_run(schedule_status: Mapping[str, Any], job: Manifest) -> tuple[Manifest | None, ScheduleStreak]:
    """Count a finished scheduled run into its schedule's ``consecutiveFailures``, once.

    Args:
        schedule_status: the OpsSchedule's status.
        job: the finished OpsJob.

    Returns:
        (the schedule status patch, or None when this run was counted already or finished before
        the last counted run; the streak as this run sees it).
    """
    meta, status = job["metadata"], job.get("status") or {}
    failures = int(schedule_status.get("consecutiveFailures") or 0)
    last = schedule_status.get("lastCountedRun") or {}
    if last.get("uid") == meta["uid"]:
        return None, ScheduleStreak(
            failures_before=int(last.get("failuresBefore") or 0), failures_after=failures
        )
    completed = parse_time(status.get("completionTime"))
    last_completed = parse_time(last.get("completionTime"))
    if completed and last_completed and completed < last_completed:
        return None, ScheduleStreak(failures_before=failures, failures_after=failures)
    phase = status.get("phase")
    after = failures + 1 if phase == "Failed" else 0 if phase == "Succeeded" else failures
    patch = {
        "consecutiveFailures": after,
        "lastCountedRun": {
            "name": meta["name"],
            "uid": meta["uid"],
            "completionTime": status.get("completionTime"),
            "failuresBefore": failures,
        },
    }
    return patch, ScheduleStreak(failures_before=failures, failures_after=after)
