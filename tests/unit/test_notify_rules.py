"""Pure notification logic: due events, rule matching, quiet hours, grouping, schedule streaks, payloads."""

from __future__ import annotations

import email
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from opsconductor.api.notification import NotifyRule, QuietHours, Recipient, ScheduleStreak
from opsconductor.notify.render import (
    build_context,
    email_message,
    render_message,
    sign,
    slack_payload,
    teams_payload,
    webhook_body,
    webhook_payload,
)
from opsconductor.notify.rules import (
    RuleSource,
    count_run,
    due_events,
    merge_records,
    plan_deliveries,
    quiet_until,
    run_facts,
)

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)  # a Tuesday


def job(
    phase: str = "Failed", labels: dict[str, str] | None = None, targets: int = 0, **status: Any
) -> dict[str, Any]:
    failed = [
        {"target": f"web{i:03d}", "phase": "Failed", "exitCode": 1, "error": "exit 1", "stderr": f"boom {i}"}
        for i in range(min(targets, 200))
    ]
    return {
        "metadata": {"name": "nightly", "namespace": "ops", "uid": "u1", "labels": labels or {}},
        "spec": {},
        "status": {
            "phase": phase,
            "startTime": "2026-03-10T11:59:00Z",
            "completionTime": "2026-03-10T11:59:30Z",
            "duration": "30s",
            "message": "step restart failed on 2 targets" if phase == "Failed" else "",
            "steps": [{"name": "restart", "phase": phase, "counts": {"failed": targets}, "targets": failed}],
            **status,
        },
    }


def rule(**fields: Any) -> NotifyRule:
    return NotifyRule.model_validate({"channelRef": {"name": "team-slack"}, "events": ["Failed"], **fields})


SLACK = {"team-slack": "SlackWebhook", "team-mail": "SMTP", "pager": "Webhook"}


def plan(
    outcome: str,
    the_job: dict[str, Any],
    *rules: NotifyRule,
    streak: ScheduleStreak | None = None,
    recipients: dict[str, Recipient] | None = None,
    now: datetime = NOW,
) -> Any:
    return plan_deliveries(
        outcome,  # type: ignore[arg-type]
        run_facts(the_job, streak),
        [RuleSource("opsjob", rules)],
        recipients or {},
        SLACK,
        now,
    )


def test_due_events_follow_the_phase_and_are_evaluated_once() -> None:
    assert due_events(job("Running")) == ["Started"]
    assert due_events(job("Failed")) == ["Failed"]
    assert due_events(job("Pending")) == []
    assert due_events(job("Failed", notifications={"evaluated": ["Failed"]})) == []
    assert due_events(job("Running", notifications={"evaluated": ["Started"]})) == []


def test_a_fan_out_failure_over_200_targets_is_one_message_per_destination() -> None:
    result = plan("Failed", job(targets=200), rule(), rule(name="again"))
    assert len(result.records) == 1
    (record,) = result.records
    assert record.state == "Pending" and record.channel == "team-slack"
    assert record.rule == "opsjob/again,opsjob/rule-0"
    context = build_context(job(targets=200), "Failed", None)
    assert context["failed"]["count"] == 200 and len(context["failed"]["targets"]) == 10
    assert "and 190 more" in render_message(context).text


def test_conditions_on_labels_duration_error_text_and_streak() -> None:
    the_job = job(labels={"team": "web"})
    assert plan("Failed", the_job, rule(when={"jobLabels": {"matchLabels": {"team": "web"}}})).records
    assert not plan("Failed", the_job, rule(when={"jobLabels": {"matchLabels": {"team": "db"}}})).records
    assert plan("Failed", the_job, rule(when={"errorPattern": "failed on [0-9]+ targets"})).records
    assert not plan("Failed", the_job, rule(when={"errorPattern": "timeout"})).records
    assert plan("Failed", the_job, rule(when={"minDurationSeconds": 30})).records
    assert not plan("Failed", the_job, rule(when={"minDurationSeconds": 31})).records
    escalate = rule(when={"minConsecutiveFailures": 3})
    assert not plan("Failed", the_job, escalate).records  # not a scheduled run
    assert not plan(
        "Failed", the_job, escalate, streak=ScheduleStreak(failures_before=1, failures_after=2)
    ).records
    assert plan(
        "Failed", the_job, escalate, streak=ScheduleStreak(failures_before=2, failures_after=3)
    ).records


def test_recovered_fires_on_the_first_success_after_failures_only() -> None:
    recovered = rule(events=["Recovered"])
    ok = job("Succeeded")
    assert not plan("Succeeded", ok, recovered).records
    assert not plan("Succeeded", ok, recovered, streak=ScheduleStreak(failures_before=0)).records
    (record,) = plan("Succeeded", ok, recovered, streak=ScheduleStreak(failures_before=2)).records
    assert record.event == "Recovered"


def test_duration_exceeded_compares_with_the_threshold() -> None:
    slow = rule(events=["DurationExceeded"], durationThresholdSeconds=20)
    assert [r.event for r in plan("Succeeded", job("Succeeded"), slow).records] == ["DurationExceeded"]
    relaxed = rule(events=["DurationExceeded"], durationThresholdSeconds=60)
    assert not plan("Succeeded", job("Succeeded"), relaxed).records


def test_quiet_hours_span_midnight_in_the_recipients_zone() -> None:
    night = QuietHours(start="22:00", end="07:00", time_zone="Europe/Berlin")
    # 23:30 Berlin (UTC+1 in March before DST) on Tuesday → quiet until 07:00 Berlin = 06:00 UTC.
    action, until = quiet_until([night], datetime(2026, 3, 10, 22, 30, tzinfo=UTC)) or ("", None)
    assert action == "Hold" and until == datetime(2026, 3, 11, 6, 0, tzinfo=UTC)
    # 02:00 Berlin the next morning: still the same quiet hours (started the day before).
    assert quiet_until([night], datetime(2026, 3, 11, 1, 0, tzinfo=UTC)) == (
        "Hold",
        datetime(2026, 3, 11, 6, 0, tzinfo=UTC),
    )
    assert quiet_until([night], datetime(2026, 3, 11, 6, 0, tzinfo=UTC)) is None
    weekend = QuietHours(start="00:00", end="23:59", days=["Sat", "Sun"], action="Drop")
    assert quiet_until([weekend], NOW) is None
    assert quiet_until([weekend], NOW + timedelta(days=4))[0] == "Drop"  # type: ignore[index]


def test_recipients_preferences_quiet_hours_and_urgent_failures() -> None:
    alice = Recipient.model_validate(
        {
            "name": "alice",
            "channels": [{"channelRef": {"name": "team-mail"}, "email": "alice@example.com"}],
            "events": ["Failed", "Recovered"],
            "quietHours": [{"start": "11:00", "end": "13:00", "timeZone": "UTC"}],
        }
    )
    bob = Recipient.model_validate(
        {
            "name": "bob",
            "channels": [{"channelRef": {"name": "team-mail"}, "email": "bob@example.com"}],
            "quietHours": [{"start": "11:00", "end": "13:00", "action": "Drop"}],
        }
    )
    carol = Recipient.model_validate(
        {"name": "carol", "channels": [{"channelRef": {"name": "team-mail"}, "email": "carol@example.com"}]}
    )
    people = {"alice": alice, "bob": bob, "carol": carol}
    to_all = NotifyRule.model_validate(
        {"events": ["Failed", "Succeeded"], "recipients": ["alice", "bob", "carol"]}
    )
    records = {r.state: r for r in plan("Failed", job(), to_all, recipients=people).records}
    assert records["Pending"].recipients == ["carol", "carol@example.com"]
    assert records["Held"].recipients == ["alice", "alice@example.com"]
    assert records["Held"].not_before == datetime(2026, 3, 10, 13, 0, tzinfo=UTC)
    assert records["Dropped"].recipients == ["bob", "bob@example.com"]
    # alice does not want Succeeded at all.
    assert all(
        "alice" not in r.recipients
        for r in plan("Succeeded", job("Succeeded"), to_all, recipients=people).records
    )
    urgent = NotifyRule.model_validate({"events": ["Failed"], "recipients": ["alice", "bob"], "urgent": True})
    (record,) = plan("Failed", job(), urgent, recipients=people).records
    assert record.state == "Pending" and record.recipients == [
        "alice",
        "alice@example.com",
        "bob",
        "bob@example.com",
    ]


def test_misconfigured_rules_become_failed_records_and_problems() -> None:
    result = plan(
        "Failed",
        job(),
        rule(channelRef={"name": "nope"}),
        NotifyRule.model_validate({"events": ["Failed"], "recipients": ["ghost"]}),
    )
    assert [r.state for r in result.records] == ["Failed"]
    assert "does not exist" in result.records[0].last_error
    assert any("ghost" in p for p in result.problems)
    result = plan("Failed", job(), rule(channelRef={"name": "team-slack"}, to=["x@example.com"]))
    assert result.records[0].state == "Failed" and "SMTP only" in result.records[0].last_error


def test_schedule_streak_counts_each_run_once_and_ignores_older_runs() -> None:
    failed = job("Failed")
    patch, streak = count_run({"consecutiveFailures": 2}, failed)
    assert (
        patch is not None
        and patch["consecutiveFailures"] == 3
        and streak == ScheduleStreak(failures_before=2, failures_after=3)
    )
    counted = {"consecutiveFailures": 3, "lastCountedRun": patch["lastCountedRun"]}
    again, streak_again = count_run(counted, failed)
    assert again is None and streak_again == streak
    newer = job("Succeeded", completionTime="2026-03-10T12:30:00Z")
    newer["metadata"]["uid"] = "u2"
    patch, streak = count_run(counted, newer)
    assert patch is not None and patch["consecutiveFailures"] == 0 and streak.failures_before == 3
    older = job("Failed", completionTime="2026-03-10T10:00:00Z")
    older["metadata"]["uid"] = "u0"
    assert count_run(counted, older)[0] is None


def test_merge_keeps_existing_records_and_bounds_the_list() -> None:
    first = plan("Failed", job(), rule()).records
    assert merge_records(first, first, 64) == first
    many = [first[0].model_copy(update={"key": f"k{i}", "state": "Sent"}) for i in range(70)]
    merged = merge_records(many, first, 64)
    assert len(merged) == 64 and merged[-1].key == first[0].key


def test_payload_shapes_and_signature() -> None:
    context = build_context(job(targets=3), "Failed", ScheduleStreak(failures_before=1, failures_after=2))
    message = render_message(context)
    slack = slack_payload(context, message)
    assert slack["text"].startswith("[OpsConductor]") and [b["type"] for b in slack["blocks"]] == [
        "header",
        "section",
        "context",
    ]
    teams = teams_payload(context, message)
    assert teams["type"] == "message"
    (attachment,) = teams["attachments"]
    assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
    assert attachment["content"]["type"] == "AdaptiveCard"
    payload = webhook_payload(context, message, "u1/Failed/pager", "2026-03-10T12:00:00+00:00")
    body = webhook_body(payload)
    assert json.loads(body)["failedTargets"]["count"] == 3
    assert sign(b"k", "1700000000", body).startswith("sha256=") and len(sign(b"k", "1", body)) == 71
    mail = email.message_from_bytes(bytes(email_message(message, "ops@example.com", ["a@example.com"], "id")))
    assert [p.get_content_type() for p in mail.walk()] == ["multipart/alternative", "text/plain", "text/html"]


def test_a_broken_custom_template_falls_back_to_the_default_and_says_why() -> None:
    context = build_context(job(), "Failed", None)
    good = render_message(context, "{{ job.name }} is {{ job.phase }}")
    assert good.text == "nightly is Failed" and not good.template_error
    broken = render_message(context, "{{ job.nmae }}")
    assert "nmae" in broken.template_error and broken.text == render_message(context).text
    sandboxed = render_message(context, "{{ ''.__class__.__mro__ }}")
    assert sandboxed.template_error


@pytest.mark.parametrize("missing", ["channelRef", "events"])
def test_rules_need_a_destination_and_events(missing: str) -> None:
    fields: dict[str, Any] = {"channelRef": {"name": "x"}, "events": ["Failed"]}
    del fields[missing]
    if missing == "channelRef":
        NotifyRule.model_validate(fields)  # CEL (admission) rejects this; the model alone accepts it
    else:
        with pytest.raises(ValueError):
            NotifyRule.model_validate(fields)


def test_a_digest_lists_every_run() -> None:
    from opsconductor.notify.render import build_digest_context, render_digest

    runs = []
    for index in range(3):
        the_job = job(targets=index + 1)
        the_job["metadata"]["name"] = f"host-{index}"
        runs.append(build_context(the_job, "Failed", None))
    context = build_digest_context(runs, "Failed")
    message = render_digest(context)
    assert message.subject == "[OpsConductor] ❌ 3 runs failed in ops"
    assert [line.split()[1] for line in message.text.splitlines()[1:4]] == ["host-0", "host-1", "host-2"]
    payload = webhook_payload(context, message, "digest/x", "2026-03-10T12:00:00+00:00")
    assert payload["digest"] is True and [r["job"]["name"] for r in payload["runs"]] == [
        "host-0",
        "host-1",
        "host-2",
    ]
    assert [r["failedTargets"]["count"] for r in payload["runs"]] == [1, 2, 3]
    assert slack_payload(context, message)["blocks"][0]["text"]["text"] == message.subject


def test_rules_carry_their_group_window_into_the_record() -> None:
    (record,) = plan("Failed", job(), rule(groupWindowSeconds=30), rule(name="plain")).records
    assert record.group_window_seconds == 30
