"""The notifier: turns OpsJob outcomes into deliveries and delivers them, off the OpsJob path.

Flow: kopf hands every OpsJob event to :meth:`Notifier.job_event`, which only looks at the body and
queues work (it never blocks the object's kopf worker). Evaluator tasks decide the deliveries of a
newly reached event (``notify.rules``) and record them in ``status.notifications`` in one
resourceVersion-guarded patch, together with the event marked as evaluated. One asyncio task per
Pending/Held record delivers it: waits out quiet hours or backoff on ``opsconductor.clock``, sends,
and records the result (Sent / retry / Failed).

What must stay true:
- The record in the OpsJob's status is the ledger: a record that says Sent is never sent again, so a
  restarted operator (which sees every OpsJob again at startup) re-sends nothing it had recorded.
  Delivery is at-least-once: a crash between a channel accepting a message and the record being
  written re-sends it, with the same ``deliveryId`` so receivers can drop the duplicate.
- A failing channel only delays its own records; runs, other records and other channels go on.
- A scheduled run is counted into its OpsSchedule's ``consecutiveFailures`` exactly once
  (``status.lastCountedRun``), before its outcome's rules are evaluated (escalation, recovery).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import httpx
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from opsconductor import clock, kube, metrics
from opsconductor import conditions as c
from opsconductor.api import CREDENTIAL, GROUP, NOTIFICATIONPOLICY, OPSJOB, OPSSCHEDULE, VERSION
from opsconductor.api.notification import (
    MAX_RECORDS,
    NotificationPolicySpec,
    NotificationRecord,
    NotificationStatus,
    NotifyRule,
    Recipient,
    ScheduleStreak,
)
from opsconductor.config import Config
from opsconductor.constants import (
    ANNOTATION_NOTIFY_TEST,
    ANNOTATION_NOTIFY_TEST_RESULT,
    ANNOTATION_NOTIFY_TEST_TO,
    LABEL_SCHEDULE,
)
from opsconductor.notify.channels import (
    Channel,
    DeliveryError,
    channel_type,
    load_channel,
    post_json,
    send_email,
)
from opsconductor.notify.render import (
    DELIVERY_HEADER,
    EVENT_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    Rendered,
    build_context,
    build_digest_context,
    email_message,
    render_digest,
    render_message,
    sign,
    slack_payload,
    teams_payload,
    webhook_body,
    webhook_payload,
)
from opsconductor.notify.rules import (
    TERMINAL,
    RuleSource,
    count_run,
    due_events,
    merge_records,
    parse_time,
    plan_deliveries,
    run_facts,
)

Manifest = dict[str, Any]
log = logging.getLogger(__name__)
REASON_ACCEPTED = "Accepted"
"""NotificationPolicy condition reason: the policy is in use as written."""
CHANNEL_CACHE_SECONDS = 10.0


@dataclass(frozen=True)
class AttemptOutcome:
    """The result of one delivery attempt (for one record, or a digest of several)."""

    kind: str
    """Channel type (metrics)."""
    error: str = ""
    """Why it failed; empty when the channel accepted it."""
    template_error: str = ""
    """Why the custom template was not used."""
    grouped_with: int = 0
    """Other runs reported in the same digest."""


_BatchItem = tuple[Manifest, NotificationRecord, ScheduleStreak | None, "asyncio.Future[AttemptOutcome]"]
"""How long a channel's Credential and Secret are reused (an edited Secret applies after this)."""


@dataclass(frozen=True)
class NotifySettings:
    """Delivery settings, from ``OPSCONDUCTOR_NOTIFY_*`` environment variables.

    Attributes:
        max_attempts: attempts per delivery before it is recorded Failed (``..._MAX_ATTEMPTS``).
        backoff_seconds: first retry delay; doubles per attempt (``..._BACKOFF_SECONDS``).
        max_backoff_seconds: retry delay cap (``..._MAX_BACKOFF_SECONDS``).
        max_age_seconds: outcomes of runs that finished longer ago than this are not notified (an
            operator started after a long outage does not page about yesterday) (``..._MAX_AGE_SECONDS``).
        evaluators: concurrent evaluations (``..._EVALUATORS``).
    """

    max_attempts: int = 6
    backoff_seconds: float = 2.0
    max_backoff_seconds: float = 300.0
    max_age_seconds: float = 3600.0
    evaluators: int = 4

    @classmethod
    def from_env(cls) -> NotifySettings:
        """Read the settings from the environment."""
        env = os.environ
        return cls(
            max_attempts=int(env.get("OPSCONDUCTOR_NOTIFY_MAX_ATTEMPTS", "6")),
            backoff_seconds=float(env.get("OPSCONDUCTOR_NOTIFY_BACKOFF_SECONDS", "2")),
            max_backoff_seconds=float(env.get("OPSCONDUCTOR_NOTIFY_MAX_BACKOFF_SECONDS", "300")),
            max_age_seconds=float(env.get("OPSCONDUCTOR_NOTIFY_MAX_AGE_SECONDS", "3600")),
            evaluators=int(env.get("OPSCONDUCTOR_NOTIFY_EVALUATORS", "4")),
        )

    def backoff(self, attempts: int) -> float:
        """Delay before attempt ``attempts + 1``."""
        return float(min(self.max_backoff_seconds, self.backoff_seconds * 2 ** max(0, attempts - 1)))


async def sleep_until(deadline: datetime) -> None:
    """Sleep until ``clock.now()`` reaches ``deadline`` (polls when the clock is fake, to see jumps)."""
    while (remaining := clock.seconds_until(deadline)) > 0:
        await asyncio.sleep(min(remaining, 0.5) if clock.is_fake() else remaining)


def _dump(model: Any) -> Any:
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)


def post_event(obj: Manifest, event_type: str, reason: str, message: str) -> None:
    """Post a core/v1 Event about ``obj`` (failures to post are logged, never raised)."""
    meta = obj["metadata"]
    stamp = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    body = {
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
        "involvedObject": {
            "apiVersion": obj.get("apiVersion", f"{GROUP}/{VERSION}"),
            "kind": obj.get("kind", OPSJOB.kind),
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta.get("uid"),
        },
        "reason": reason,
        "message": message[:1024],
        "type": event_type,
        "source": {"component": "opsconductor"},
        "reportingComponent": "opsconductor",
        "reportingInstance": "opsconductor",
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }
    try:
        # A plain dict body: the client serialises dicts as they are (annotated for CoreV1Event).
        kube.core().create_namespaced_event(meta["namespace"], body, _preload_content=False)  # type: ignore[arg-type]
    except ApiException as error:
        log.warning("could not post Event %s on %s: %s", reason, meta["name"], error.reason)


def _notifications(job: Manifest) -> NotificationStatus:
    raw = (job.get("status") or {}).get("notifications") or {}
    try:
        return NotificationStatus.model_validate(raw)
    except ValidationError:
        return NotificationStatus()


def _patch_notifications(job: Manifest, state: NotificationStatus) -> bool:
    meta = job["metadata"]
    return kube.patch_status(
        OPSJOB.plural,
        meta["namespace"],
        meta["name"],
        {"status": {"notifications": _dump(state)}},
        meta["resourceVersion"],
    )


def _parse_rules(raw: Any) -> tuple[NotifyRule, ...]:
    rules = []
    for item in raw or []:
        try:
            rules.append(NotifyRule.model_validate(item))
        except ValidationError:
            continue  # admission validated it; an older stored shape is skipped, not fatal
    return tuple(rules)


def _policies(namespace: str) -> list[tuple[str, NotificationPolicySpec]]:
    policies = []
    for item in sorted(
        kube.list_custom(NOTIFICATIONPOLICY.plural, namespace), key=lambda p: p["metadata"]["name"]
    ):
        try:
            policies.append(
                (item["metadata"]["name"], NotificationPolicySpec.model_validate(item.get("spec") or {}))
            )
        except ValidationError:
            continue
    return policies


def count_scheduled_run(job: Manifest) -> ScheduleStreak | None:
    """Count a finished scheduled run into its OpsSchedule, once; return the streak it sees."""
    meta = job["metadata"]
    schedule_name = (meta.get("labels") or {}).get(LABEL_SCHEDULE)
    if not schedule_name:
        return None
    for _ in range(5):
        schedule = kube.get_custom(OPSSCHEDULE.plural, meta["namespace"], schedule_name)
        if schedule is None:
            return None
        patch, streak = count_run(schedule.get("status") or {}, job)
        if patch is None:
            return streak
        if kube.patch_status(
            OPSSCHEDULE.plural,
            meta["namespace"],
            schedule_name,
            {"status": patch},
            schedule["metadata"]["resourceVersion"],
        ):
            return streak
    raise RuntimeError(f"OpsSchedule {schedule_name} kept changing while counting run {meta['name']}")


class Notifier:
    """Evaluates OpsJob events and delivers notifications on the operator's event loop."""

    def __init__(self, settings: NotifySettings) -> None:
        self.settings = settings
        self._queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        self._queued: set[tuple[str, str]] = set()
        self._inflight: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._client: httpx.AsyncClient | None = None
        self._policy_namespaces: set[str] = set()
        self._channels: dict[tuple[str, str], tuple[float, Channel]] = {}
        self._batches: dict[tuple[str, str, str, tuple[str, ...]], list[_BatchItem]] = {}
        self._flushers: set[asyncio.Task[None]] = set()
        self._latest: dict[tuple[str, str], Manifest] = {}
        """The newest body of each queued job (saves a read when its evaluation starts)."""
        self._nothing_to_do: set[tuple[str, tuple[str, ...]]] = set()
        """(uid, events) found to have no rules: later events of the same phase skip evaluation."""

    # --- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        """Start the evaluator tasks (on the running loop)."""
        self._client = httpx.AsyncClient()
        # kopf may run startup handlers side by side: make sure the client is configured.
        await asyncio.to_thread(kube.load_configuration)
        items = await asyncio.to_thread(
            kube.list_custom_watched, NOTIFICATIONPOLICY.plural, Config.from_env().namespaces
        )
        self._policy_namespaces |= {p["metadata"]["namespace"] for p in items}
        self._tasks = [asyncio.create_task(self._evaluator()) for _ in range(self.settings.evaluators)]

    async def stop(self) -> None:
        """Cancel evaluators and deliveries (unsent records stay Pending for the next start)."""
        tasks = self._tasks + list(self._inflight.values()) + list(self._flushers)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()

    def policy_event(self, namespace: str, name: str, deleted: bool) -> None:
        """Track which namespaces have NotificationPolicies (a cheap filter for job events)."""
        if not deleted:
            self._policy_namespaces.add(namespace)
        self._nothing_to_do.clear()  # a new or changed policy may bring rules to running jobs

    # --- job events (called by kopf for every OpsJob event; must stay cheap) ---------------
    def job_event(self, job: Manifest) -> None:
        """Queue an evaluation when the job reached a new event; start tasks for open records."""
        meta, status = job["metadata"], job.get("status") or {}
        key = (meta["namespace"], meta["name"])
        state = status.get("notifications") or {}
        scheduled = LABEL_SCHEDULE in (meta.get("labels") or {})
        has_rules = (
            bool(job.get("spec", {}).get("notify"))
            or scheduled
            or meta["namespace"] in self._policy_namespaces
        )
        uncounted = scheduled and status.get("phase") in TERMINAL and not state.get("streak")
        due = tuple(due_events(job))
        if has_rules and (meta["uid"], due) in self._nothing_to_do:
            has_rules = False
        if (has_rules and due) or uncounted:
            self._latest[key] = job
            if key not in self._queued:
                self._queued.add(key)
                self._queue.put_nowait(key)
        # An event's copy of the job may predate a delivery this process already recorded: the
        # delivery re-reads the job before sending.
        self._start_deliveries(job, fresh=False)

    def _start_deliveries(self, job: Manifest, fresh: bool) -> None:
        """Start a task for every open record of the job that has none yet."""
        meta = job["metadata"]
        state = (job.get("status") or {}).get("notifications") or {}
        for record in state.get("deliveries") or []:
            if record.get("state") in ("Pending", "Held"):
                self._ensure_delivery(
                    meta["namespace"], meta["name"], meta["uid"], record["key"], job if fresh else None
                )

    def _ensure_delivery(self, namespace: str, name: str, uid: str, key: str, job: Manifest | None) -> None:
        task_key = (uid, key)
        if task_key not in self._inflight:
            task = asyncio.create_task(self._deliver(namespace, name, uid, key, job))
            self._inflight[task_key] = task
            task.add_done_callback(lambda _: self._inflight.pop(task_key, None))

    async def _evaluator(self) -> None:
        while True:
            namespace, name = await self._queue.get()
            self._queued.discard((namespace, name))
            try:
                seen = self._latest.pop((namespace, name), None)
                job = await asyncio.to_thread(self.evaluate, namespace, name, seen)
            except Exception:
                log.exception("evaluating notifications of %s/%s failed; retrying in 5 s", namespace, name)
                await asyncio.sleep(5)
                if (namespace, name) not in self._queued:
                    self._queued.add((namespace, name))
                    self._queue.put_nowait((namespace, name))
                continue
            if job is not None:
                # Only deliveries: re-queueing here would loop on a run that cannot be counted
                # (its OpsSchedule is gone); the job's next event queues it again if needed.
                self._start_deliveries(job, fresh=True)  # the copy this evaluation just wrote

    # --- evaluation (worker thread) ---------------------------------------------------------
    def evaluate(self, namespace: str, name: str, seen: Manifest | None = None) -> Manifest | None:
        """Count a scheduled run, decide the deliveries of newly reached events, record them.

        Returns:
            The job as this evaluation recorded it, when it added delivery records (their tasks
            start from this copy), else None.
        """
        for _ in range(8):
            # The first pass trusts the job as the event delivered it: a stale copy fails the
            # resourceVersion-guarded patch and the next pass reads it afresh.
            job = seen if seen is not None else kube.read_opsjob(namespace, name)
            seen = None
            if job is None:
                return None
            status = job.get("status") or {}
            state = _notifications(job)
            phase = status.get("phase")
            streak = state.streak
            if phase in TERMINAL and streak is None:
                streak = count_scheduled_run(job)
            events = due_events(job)
            completed = parse_time(status.get("completionTime"))
            if completed and (clock.now() - completed).total_seconds() > self.settings.max_age_seconds:
                events = []  # too old to notify about (e.g. after a long operator outage)
            sources = self._sources(job)
            has_rules = any(source.rules for source in sources)
            if not events or not has_rules:
                if not has_rules:
                    if len(self._nothing_to_do) > 10000:
                        self._nothing_to_do.clear()
                    self._nothing_to_do.add((job["metadata"]["uid"], tuple(due_events(job))))
                if (
                    streak is not None
                    and state.streak is None
                    and not _patch_notifications(job, state.model_copy(update={"streak": streak}))
                ):
                    continue
                return None  # no new records (open ones are started from the job's events)
            policies = _policies(namespace)
            recipients: dict[str, Recipient] = {}
            for _, policy in policies:
                for recipient in policy.recipients or []:
                    recipients.setdefault(recipient.name, recipient)
            channels = {
                rule.channel_ref.name
                for source in sources
                for rule in source.rules
                if rule.channel_ref is not None
            } | {c.channel_ref.name for r in recipients.values() for c in r.channels}
            types = {channel: self._channel_type(namespace, channel) for channel in channels}
            facts = run_facts(job, streak)
            new: list[NotificationRecord] = []
            problems: list[str] = []
            for event in events:
                plan = plan_deliveries(event, facts, sources, recipients, types, clock.now())
                new += plan.records
                problems += plan.problems
            updated = NotificationStatus(
                evaluated=[*state.evaluated, *events],
                streak=streak,
                deliveries=merge_records(list(state.deliveries), new, MAX_RECORDS),
            )
            if not _patch_notifications(job, updated):
                continue
            self._report_plan(job, new, problems)
            job.setdefault("status", {})["notifications"] = _dump(updated)
            return job
        raise RuntimeError(f"OpsJob {namespace}/{name} kept changing while recording notifications")

    def _sources(self, job: Manifest) -> list[RuleSource]:
        meta = job["metadata"]
        sources = [RuleSource("opsjob", _parse_rules(job.get("spec", {}).get("notify")))]
        schedule_name = (meta.get("labels") or {}).get(LABEL_SCHEDULE)
        if schedule_name:
            schedule = kube.get_custom(OPSSCHEDULE.plural, meta["namespace"], schedule_name)
            if schedule is not None:
                sources.append(
                    RuleSource(
                        f"opsschedule/{schedule_name}", _parse_rules(schedule.get("spec", {}).get("notify"))
                    )
                )
        if meta["namespace"] in self._policy_namespaces:
            for policy_name, policy in _policies(meta["namespace"]):
                sources.append(RuleSource(f"policy/{policy_name}", tuple(policy.rules or ())))
        return sources

    def _report_plan(self, job: Manifest, new: list[NotificationRecord], problems: list[str]) -> None:
        for record in new:
            who = ", ".join(record.recipients) or record.channel
            if record.state == "Held":
                metrics.count_notification("any", "held")
                until = record.not_before.isoformat() if record.not_before else "later"
                post_event(
                    job,
                    "Normal",
                    "NotificationHeld",
                    f"{record.event} notification to {who} held until {until} (quiet hours)",
                )
            elif record.state == "Dropped":
                metrics.count_notification("any", "dropped")
                post_event(
                    job,
                    "Normal",
                    "NotificationDropped",
                    f"{record.event} notification to {who} dropped (quiet hours)",
                )
        for problem in problems:
            post_event(job, "Warning", "NotificationMisconfigured", problem)

    # --- delivery (asyncio task per record) --------------------------------------------------
    def _channel(self, namespace: str, name: str) -> Channel:
        """Load a channel, cached for ``CHANNEL_CACHE_SECONDS`` (a burst of runs reads it once).

        Raises:
            DeliveryError: as :func:`load_channel`.
        """
        now = time.monotonic()
        cached = self._channels.get((namespace, name))
        if cached is not None and cached[0] > now:
            return cached[1]
        channel = load_channel(namespace, name)
        self._channels[(namespace, name)] = (now + CHANNEL_CACHE_SECONDS, channel)
        return channel

    def _channel_type(self, namespace: str, name: str) -> str | None:
        try:
            return self._channel(namespace, name).type
        except DeliveryError:
            return channel_type(namespace, name)  # exists but unusable: delivery reports why

    async def _deliver(
        self, namespace: str, name: str, uid: str, key: str, seen: Manifest | None = None
    ) -> None:
        try:
            while True:
                # The first pass uses the job as the evaluation recorded it; later passes re-read.
                job = seen if seen is not None else await asyncio.to_thread(kube.read_opsjob, namespace, name)
                seen = None
                if job is None or job["metadata"]["uid"] != uid:
                    return
                state = _notifications(job)
                record = next((r for r in state.deliveries if r.key == key), None)
                if record is None or record.state not in ("Pending", "Held"):
                    return
                if record.not_before is not None and clock.seconds_until(record.not_before) > 0:
                    await sleep_until(record.not_before)
                    continue
                if record.group_window_seconds:
                    outcome = await self._grouped(job, record, state.streak)
                else:
                    outcome = await self._attempt(job, record, state.streak)
                done = await asyncio.to_thread(self._record_attempt, namespace, name, uid, key, outcome)
                if done:
                    return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("delivering %s of %s/%s failed unexpectedly", key, namespace, name)

    async def _attempt(
        self, job: Manifest, record: NotificationRecord, streak: ScheduleStreak | None
    ) -> AttemptOutcome:
        """One try. Returns (channel type, error or "", template error or "")."""
        namespace = job["metadata"]["namespace"]
        kind = "unknown"
        template_error = ""
        try:
            channel = await asyncio.to_thread(self._channel, namespace, record.channel)
            kind = channel.type
            custom = None
            if record.template:
                config_map, _, map_key = record.template.partition("/")
                data = await asyncio.to_thread(kube.config_map_data, namespace, config_map)
                custom = (data or {}).get(map_key)
                if custom is None:
                    template_error = f"template {record.template} not found (ConfigMap or key missing)"
            context = build_context(job, record.event, streak)
            message = render_message(context, custom)
            template_error = template_error or message.template_error
            delivery_id = f"{job['metadata']['uid']}/{record.key}"
            await self._send(channel, context, message, record, delivery_id)
        except DeliveryError as error:
            return AttemptOutcome(kind, str(error), template_error)
        return AttemptOutcome(kind, "", template_error)

    async def _grouped(
        self, job: Manifest, record: NotificationRecord, streak: ScheduleStreak | None
    ) -> AttemptOutcome:
        """Join (or open) the digest of this record's destination; its outcome is this record's."""
        batch_key = (job["metadata"]["namespace"], record.channel, record.event, tuple(record.recipients))
        batch = self._batches.get(batch_key)
        if batch is None:
            batch = self._batches[batch_key] = []
            flusher = asyncio.create_task(self._flush_later(batch_key, record.group_window_seconds or 0))
            self._flushers.add(flusher)
            flusher.add_done_callback(self._flushers.discard)
        future: asyncio.Future[AttemptOutcome] = asyncio.get_running_loop().create_future()
        batch.append((job, record, streak, future))
        return await future

    async def _flush_later(self, batch_key: tuple[str, str, str, tuple[str, ...]], window: int) -> None:
        await sleep_until(clock.now() + timedelta(seconds=window))
        items = self._batches.pop(batch_key, [])
        live = [item for item in items if not item[3].done()]
        if not live:
            return
        try:
            if len(live) == 1:
                job, record, streak, _ = live[0]
                outcome = await self._attempt(job, record, streak)
            else:
                outcome = await self._attempt_digest(live)
        except Exception as error:  # never leave a waiting delivery hanging
            log.exception("sending a digest failed")
            outcome = AttemptOutcome("unknown", f"digest failed: {type(error).__name__}")
        for *_, future in live:
            if not future.done():
                future.set_result(outcome)

    async def _attempt_digest(self, items: list[_BatchItem]) -> AttemptOutcome:
        """Send one message for several runs to one destination."""
        first_job, first_record = items[0][0], items[0][1]
        namespace = first_job["metadata"]["namespace"]
        try:
            channel = await asyncio.to_thread(self._channel, namespace, first_record.channel)
            runs = [build_context(job, record.event, streak) for job, record, streak, _ in items]
            context = build_digest_context(runs, first_record.event)
            uids = ",".join(sorted(job["metadata"]["uid"] for job, *_ in items))
            delivery_id = "digest/" + hashlib.sha256(f"{uids}/{first_record.key}".encode()).hexdigest()[:24]
            await self._send(channel, context, render_digest(context), first_record, delivery_id)
        except DeliveryError as error:
            return AttemptOutcome("unknown", str(error), "", len(items) - 1)
        return AttemptOutcome(channel.type, "", "", len(items) - 1)

    async def _send(
        self,
        channel: Channel,
        context: dict[str, Any],
        message: Rendered,
        record: NotificationRecord,
        delivery_id: str,
    ) -> None:
        assert self._client is not None
        if channel.type == "SMTP":
            assert channel.spec.smtp is not None
            to = [r for r in record.recipients if "@" in r]
            if not to:
                raise DeliveryError(f"SMTP {channel.name!r}: no email address to send to")
            await send_email(channel, email_message(message, channel.spec.smtp.sender, to, delivery_id))
            return
        headers = {EVENT_HEADER: record.event, DELIVERY_HEADER: delivery_id}
        if channel.type == "SlackWebhook":
            body = webhook_body(slack_payload(context, message))
        elif channel.type == "TeamsWebhook":
            body = webhook_body(teams_payload(context, message))
        else:
            now = clock.now()
            body = webhook_body(webhook_payload(context, message, delivery_id, now.isoformat()))
            timestamp = str(int(now.timestamp()))
            headers[TIMESTAMP_HEADER] = timestamp
            if channel.spec.webhook and channel.spec.webhook.headers:
                headers = {**channel.spec.webhook.headers, **headers}
            if channel.values.get("hmacKey"):
                headers[SIGNATURE_HEADER] = sign(channel.values["hmacKey"].encode(), timestamp, body)
        await post_json(channel, self._client, body, headers)

    def _record_attempt(self, namespace: str, name: str, uid: str, key: str, outcome: AttemptOutcome) -> bool:
        """Write the attempt's result into the record; True when the record is final."""
        kind, error, template_error = outcome.kind, outcome.error, outcome.template_error
        now = clock.now()
        for _ in range(8):
            job = kube.read_opsjob(namespace, name)
            if job is None or job["metadata"]["uid"] != uid:
                return True
            state = _notifications(job)
            index = next((i for i, r in enumerate(state.deliveries) if r.key == key), None)
            if index is None:
                return True
            record = state.deliveries[index]
            attempts = record.attempts + 1
            if not error:
                changed = record.model_copy(
                    update={
                        "state": "Sent",
                        "attempts": attempts,
                        "sent_time": now,
                        "last_error": "",
                        "not_before": None,
                        "template_error": template_error,
                        "grouped_with": outcome.grouped_with,
                    }
                )
            elif attempts >= self.settings.max_attempts:
                changed = record.model_copy(
                    update={
                        "state": "Failed",
                        "attempts": attempts,
                        "last_error": error[:1024],
                        "not_before": None,
                        "template_error": template_error,
                    }
                )
            else:
                retry_at = now + timedelta(seconds=self.settings.backoff(attempts))
                changed = record.model_copy(
                    update={
                        "state": "Pending",
                        "attempts": attempts,
                        "last_error": error[:1024],
                        "not_before": retry_at,
                        "template_error": template_error,
                    }
                )
            deliveries = list(state.deliveries)
            deliveries[index] = changed
            if not _patch_notifications(job, state.model_copy(update={"deliveries": deliveries})):
                continue
            self._report_attempt(job, changed, kind, template_error)
            return changed.state != "Pending"
        return False

    def _report_attempt(
        self, job: Manifest, record: NotificationRecord, kind: str, template_error: str
    ) -> None:
        who = ", ".join(record.recipients) or record.channel
        if template_error:
            metrics.count_notification(kind, "template_error")
            post_event(
                job,
                "Warning",
                "NotificationTemplateError",
                f"custom template {record.template} failed, sent the default instead: {template_error}",
            )
        if record.state == "Sent":
            metrics.count_notification(kind, "sent")
            post_event(
                job,
                "Normal",
                "NotificationSent",
                f"{record.event} notification sent via {record.channel} to {who}"
                + (f" in a digest with {record.grouped_with} other run(s)" if record.grouped_with else ""),
            )
        elif record.state == "Failed":
            metrics.count_notification(kind, "failed")
            post_event(
                job,
                "Warning",
                "NotificationFailed",
                f"{record.event} notification via {record.channel} failed after {record.attempts} "
                f"attempts: {record.last_error}",
            )
        else:
            metrics.count_notification(kind, "retry")
            log.info(
                "%s notification via %s: attempt %d failed, retrying: %s",
                record.event,
                record.channel,
                record.attempts,
                record.last_error,
            )

    # --- test notifications -----------------------------------------------------------------
    def credential_event(self, credential: Manifest) -> None:
        """Send a test notification when ``notify-test`` carries a nonce not yet answered."""
        annotations = credential["metadata"].get("annotations") or {}
        nonce = annotations.get(ANNOTATION_NOTIFY_TEST)
        if not nonce:
            return
        answered = annotations.get(ANNOTATION_NOTIFY_TEST_RESULT, "").split(" ", 1)[0]
        task_key = (credential["metadata"]["uid"], f"test/{nonce}")
        if answered == nonce or task_key in self._inflight:
            return
        task = asyncio.create_task(self._send_test(credential, nonce))
        self._inflight[task_key] = task
        task.add_done_callback(lambda _: self._inflight.pop(task_key, None))

    async def _send_test(self, credential: Manifest, nonce: str) -> None:
        meta = credential["metadata"]
        annotations = meta.get("annotations") or {}
        to = [a.strip() for a in annotations.get(ANNOTATION_NOTIFY_TEST_TO, "").split(",") if a.strip()]
        job = {
            "metadata": {"name": "notification-test", "namespace": meta["namespace"], "uid": meta["uid"]},
            "status": {"phase": "Succeeded", "message": f"Test notification for channel {meta['name']}."},
        }
        record = NotificationRecord(
            key=f"test/{nonce}",
            rule="test",
            event="Succeeded",
            channel=meta["name"],
            recipients=to,
            state="Pending",
        )
        kind, error = "unknown", ""
        try:
            channel = await asyncio.to_thread(load_channel, meta["namespace"], meta["name"])
            kind = channel.type
            context = build_context(job, "Succeeded", None)
            message = render_message(context)
            message = replace(message, subject=f"[OpsConductor] test notification via {meta['name']}")
            await self._send(channel, context, message, record, f"{meta['uid']}/test/{nonce}")
        except DeliveryError as failure:
            error = str(failure)
        metrics.count_notification(kind, "failed" if error else "sent")
        result = f"{nonce} Failed: {error}" if error else f"{nonce} Sent"
        await asyncio.to_thread(self._answer_test, credential, result, error)

    @staticmethod
    def _answer_test(credential: Manifest, result: str, error: str) -> None:
        meta = credential["metadata"]
        kube.custom().patch_namespaced_custom_object(
            GROUP,
            VERSION,
            meta["namespace"],
            CREDENTIAL.plural,
            meta["name"],
            {"metadata": {"annotations": {ANNOTATION_NOTIFY_TEST_RESULT: result[:1024]}}},
            _content_type="application/merge-patch+json",
        )
        credential = {**credential, "apiVersion": f"{GROUP}/{VERSION}", "kind": CREDENTIAL.kind}
        if error:
            post_event(credential, "Warning", "TestNotificationFailed", error)
        else:
            post_event(credential, "Normal", "TestNotificationSent", "test notification sent")


def policy_status_patch(policy: Manifest) -> Manifest | None:
    """Ready/Stalled of a NotificationPolicy: its quiet-hours time zones must exist.

    Returns:
        The status patch, or None when nothing changes.
    """
    status = policy.get("status") or {}
    generation = policy["metadata"].get("generation")
    problems = []
    for recipient in (policy.get("spec") or {}).get("recipients") or []:
        for quiet in recipient.get("quietHours") or []:
            zone = quiet.get("timeZone", "UTC")
            try:
                ZoneInfo(zone)
            except (ZoneInfoNotFoundError, ValueError):
                problems.append(
                    f"recipient {recipient.get('name')}: unknown time zone {zone!r} (read as UTC)"
                )
    conditions: list[Manifest] = list(status.get("conditions") or [])
    if problems:
        message = "; ".join(problems)
        conditions = c.set_condition(conditions, c.READY, "False", c.REASON_INVALID_SPEC, message, generation)
        conditions = c.set_condition(
            conditions, c.STALLED, "True", c.REASON_INVALID_SPEC, message, generation
        )
    else:
        conditions = c.set_condition(conditions, c.READY, "True", REASON_ACCEPTED, "", generation)
        conditions = c.set_condition(conditions, c.STALLED, "False", REASON_ACCEPTED, "", generation)
    conditions = c.set_condition(conditions, c.RECONCILING, "False", REASON_ACCEPTED, "", generation)
    patch = {"observedGeneration": generation, "conditions": conditions}
    if status.get("observedGeneration") == generation and _strip(status.get("conditions")) == _strip(
        conditions
    ):
        return None
    return {"status": patch}


def _strip(conditions: list[Manifest] | None) -> list[Manifest]:
    return [{k: v for k, v in item.items() if k != "lastTransitionTime"} for item in conditions or []]
