"""Messages: the template context of a run, default templates per channel, and the wire payloads.

Templates are Jinja2 in the same sandbox as step templates (``templating.make_environment``:
sandboxed, StrictUndefined). A custom template (ConfigMap key) replaces the message text; when it
fails to render, the default is sent and the error is returned for the delivery record and an Event,
never swallowed.

Payload shapes (documented in docs/notifications.md; tests check them byte for byte where it matters):
- Slack incoming webhook: ``{"text": <plain fallback>, "blocks": [header, section(mrkdwn), context]}``.
- Teams (incoming / workflow webhook): ``{"type": "message", "attachments": [{"contentType":
  "application/vnd.microsoft.card.adaptive", "content": <AdaptiveCard 1.4>}]}``.
- Generic webhook: :data:`WEBHOOK_SCHEMA` JSON, signed with HMAC-SHA256 over ``<timestamp>.<body>``.
- Email: multipart/alternative, plain text and HTML.

What must stay true: output excerpts are bounded here (messages stay small whatever the run size),
and nothing secret enters a context (status output is already masked by the runner).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any

from jinja2 import Template, TemplateError

from opsconductor.api.notification import ScheduleStreak
from opsconductor.constants import LABEL_SCHEDULE
from opsconductor.notify.rules import failed_targets, run_duration_seconds
from opsconductor.templating import make_environment

Manifest = dict[str, Any]
WEBHOOK_SCHEMA = "opsconductor.io/notification/v1"
SIGNATURE_HEADER = "X-OpsConductor-Signature"
TIMESTAMP_HEADER = "X-OpsConductor-Timestamp"
EVENT_HEADER = "X-OpsConductor-Event"
DELIVERY_HEADER = "X-OpsConductor-Delivery"
MAX_FAILED_LISTED = 10
EXCERPT_CHARS = 400

HEADLINES = {
    "Started": "started",
    "Succeeded": "succeeded",
    "Failed": "failed",
    "Cancelled": "was cancelled",
    "Recovered": "recovered (succeeded after failures)",
    "DurationExceeded": "ran longer than expected",
}
ICONS = {
    "Started": "▶",
    "Succeeded": "✅",
    "Failed": "❌",
    "Cancelled": "⏹",
    "Recovered": "✅",
    "DurationExceeded": "⏱",
}

# Shared body text; Slack reads *bold* and `code`, Teams and email read the same plain lines.
_BODY = """\
{{ job.namespace }}/{{ job.name }} {{ headline }}{% if job.duration %} after {{ job.duration }}{% endif %}.
{%- if job.message %}
{{ job.message }}
{%- endif %}
{%- if schedule.name %}
Schedule {{ schedule.name }}: {{ schedule.consecutiveFailures }} failed run(s) in a row.
{%- endif %}
{%- if failed.count %}
Failed targets ({{ failed.count }}):
{%- for t in failed.targets %}
- {{ t.step }} on {{ t.target }}
{%- if t.exitCode is not none %} (exit {{ t.exitCode }}){% endif %}: {{ t.error or t.excerpt }}
{%- endfor %}
{%- if failed.more %}
- … and {{ failed.more }} more
{%- endif %}
{%- endif %}
See more: {{ kubectl }}
"""

DEFAULT_TEMPLATES: dict[str, str] = {
    "subject": "[OpsConductor] {{ icon }} {{ job.namespace }}/{{ job.name }} {{ headline }}",
    "text": _BODY,
    "html": """\
<h3>{{ icon }} {{ job.namespace | e }}/{{ job.name | e }} {{ headline | e }}</h3>
<p>Phase <b>{{ job.phase | e }}</b>{% if job.duration %}, duration {{ job.duration | e }}{% endif %}.
{% if job.message %}<br>{{ job.message | e }}{% endif %}</p>
{% if schedule.name %}<p>Schedule <b>{{ schedule.name | e }}</b>: {{ schedule.consecutiveFailures }}
failed run(s) in a row.</p>{% endif %}
{% if failed.count %}<p>Failed targets ({{ failed.count }}):</p><ul>
{% for t in failed.targets %}<li><b>{{ t.step | e }}</b> on <b>{{ t.target | e }}</b>
{% if t.exitCode is not none %}(exit {{ t.exitCode }}){% endif %}: {{ t.error | e }}
{% if t.excerpt %}<pre>{{ t.excerpt | e }}</pre>{% endif %}</li>
{% endfor %}{% if failed.more %}<li>… and {{ failed.more }} more</li>{% endif %}</ul>{% endif %}
<p>See more: <code>{{ kubectl | e }}</code></p>
""",
}


_DIGEST = {
    "subject": "[OpsConductor] {{ icon }} {{ runs | length }} runs {{ headline }} in {{ job.namespace }}",
    "text": """\
{{ runs | length }} runs {{ headline }} in {{ job.namespace }}:
{%- for r in runs %}
- {{ r.job.name }}{% if r.job.duration %} ({{ r.job.duration }}){% endif %}
{%- if r.failed.count %}, {{ r.failed.count }} failed target(s){% endif %}
{%- if r.job.message %}: {{ r.job.message }}{% endif %}
{%- endfor %}
See more: {{ kubectl }}
""",
    "html": """\
<h3>{{ icon }} {{ runs | length }} runs {{ headline | e }} in {{ job.namespace | e }}</h3><ul>
{% for r in runs %}<li><b>{{ r.job.name | e }}</b>
{% if r.job.duration %} ({{ r.job.duration | e }}){% endif %}
{% if r.failed.count %}, {{ r.failed.count }} failed target(s){% endif %}
{% if r.job.message %}: {{ r.job.message | e }}{% endif %}</li>
{% endfor %}</ul><p>See more: <code>{{ kubectl | e }}</code></p>
""",
}


@dataclass(frozen=True)
class Rendered:
    """A message in its channel-neutral parts."""

    subject: str
    text: str
    html: str
    template_error: str = ""


def _excerpt(target: Mapping[str, Any]) -> str:
    text = (target.get("stderr") or target.get("stdout") or "").strip()
    return text if len(text) <= EXCERPT_CHARS else "…" + text[-EXCERPT_CHARS:]


def build_context(job: Manifest, event: str, streak: ScheduleStreak | None) -> dict[str, Any]:
    """Build the variables templates see (documented in docs/notifications.md)."""
    meta, status = job["metadata"], job.get("status") or {}
    failed = failed_targets(status)
    failed_total = sum(int((s.get("counts") or {}).get("failed") or 0) for s in status.get("steps") or [])
    failed_total = max(failed_total, len(failed))
    listed = [
        {
            "step": step,
            "target": target.get("target", ""),
            "exitCode": target.get("exitCode"),
            "error": (target.get("error") or "")[:EXCERPT_CHARS],
            "excerpt": _excerpt(target),
        }
        for step, target in failed[:MAX_FAILED_LISTED]
    ]
    seconds = run_duration_seconds(status)
    labels = meta.get("labels") or {}
    return {
        "event": event,
        "headline": HEADLINES.get(event, event),
        "icon": ICONS.get(event, ""),
        "job": {
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta.get("uid", ""),
            "labels": labels,
            "phase": status.get("phase", "Pending"),
            "message": status.get("message", ""),
            "startTime": status.get("startTime"),
            "completionTime": status.get("completionTime"),
            "duration": status.get("duration") or "",
            "durationSeconds": seconds,
        },
        "steps": [
            {"name": s.get("name"), "phase": s.get("phase"), "counts": s.get("counts") or {}}
            for s in status.get("steps") or []
        ],
        "failed": {"count": failed_total, "targets": listed, "more": failed_total - len(listed)},
        "schedule": {
            "name": labels.get(LABEL_SCHEDULE),
            "consecutiveFailures": streak.failures_after if streak else 0,
            "failuresBefore": streak.failures_before if streak else 0,
        },
        "kubectl": f"kubectl -n {meta['namespace']} get opsjob {meta['name']} -o yaml",
        "results": f"opsconductor results opsjob/{meta['name']} -n {meta['namespace']}",
    }


@functools.lru_cache(maxsize=128)
def _compile(source: str) -> Template:
    """Compile once per distinct source (compiling costs far more than rendering)."""
    return make_environment().from_string(source)


def build_digest_context(runs: list[dict[str, Any]], event: str) -> dict[str, Any]:
    """Build the context of a digest: ``runs`` holds each run's :func:`build_context`."""
    namespace = runs[0]["job"]["namespace"]
    return {
        "event": event,
        "headline": HEADLINES.get(event, event),
        "icon": ICONS.get(event, ""),
        "job": {
            "name": f"{len(runs)} runs",
            "namespace": namespace,
            "uid": "",
            "labels": {},
            "phase": event,
            "message": "",
            "startTime": None,
            "completionTime": None,
            "duration": "",
            "durationSeconds": None,
        },
        "runs": runs,
        "steps": [],
        "failed": {"count": sum(r["failed"]["count"] for r in runs), "targets": [], "more": 0},
        "schedule": {"name": None, "consecutiveFailures": 0, "failuresBefore": 0},
        "kubectl": f"kubectl -n {namespace} get opsjobs",
        "results": f"kubectl -n {namespace} get opsjobs",
    }


def render_digest(context: Mapping[str, Any]) -> Rendered:
    """Render the digest of several runs (custom templates apply to single-run messages only)."""
    return Rendered(
        _render(_DIGEST["subject"], context),
        _render(_DIGEST["text"], context),
        _render(_DIGEST["html"], context),
    )


def _render(source: str, context: Mapping[str, Any]) -> str:
    return _compile(source).render(context).strip()


def render_message(context: Mapping[str, Any], custom: str | None = None) -> Rendered:
    """Subject, text and HTML; a custom template replaces the text (and the HTML, as preformatted text).

    Args:
        context: from :func:`build_context`.
        custom: a custom template's source, or None.

    Returns:
        The message; ``template_error`` says why the custom template was not used.
    """
    subject = _render(DEFAULT_TEMPLATES["subject"], context)
    if custom is not None:
        try:
            text = _render(custom, context)
        except (TemplateError, TypeError, ValueError, ArithmeticError, LookupError) as error:
            message = f"{type(error).__name__}: {error}"
            return Rendered(
                subject,
                _render(_BODY, context),
                _render(DEFAULT_TEMPLATES["html"], context),
                template_error=message[:1024],
            )
        from html import escape

        return Rendered(subject, text, f"<pre>{escape(text)}</pre>")
    return Rendered(subject, _render(_BODY, context), _render(DEFAULT_TEMPLATES["html"], context))


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def slack_payload(context: Mapping[str, Any], message: Rendered) -> Manifest:
    """Slack incoming-webhook body: blocks plus a plain ``text`` fallback (notifications, old clients)."""
    return {
        "text": _clip(f"{message.subject}\n{message.text}", 3000),
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": _clip(message.subject, 150)}},
            {"type": "section", "text": {"type": "mrkdwn", "text": _clip(message.text, 3000)}},
            {
                "type": "context",
                "elements": [{"type": "mrkdwn", "text": _clip(f"`{context['kubectl']}`", 3000)}],
            },
        ],
    }


def teams_payload(context: Mapping[str, Any], message: Rendered) -> Manifest:
    """Teams webhook body: a message with one Adaptive Card attachment."""
    event = context["event"]
    color = {"Failed": "Attention", "DurationExceeded": "Warning", "Cancelled": "Warning"}.get(event, "Good")
    job = context["job"]
    facts = [
        {"title": "Job", "value": f"{job['namespace']}/{job['name']}"},
        {"title": "Event", "value": event},
        {"title": "Phase", "value": job["phase"]},
    ]
    if job["duration"]:
        facts.append({"title": "Duration", "value": job["duration"]})
    return {
        "type": "message",
        "attachments": [
            {
                "contentType": "application/vnd.microsoft.card.adaptive",
                "contentUrl": None,
                "content": {
                    "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                    "type": "AdaptiveCard",
                    "version": "1.4",
                    "body": [
                        {
                            "type": "TextBlock",
                            "size": "Medium",
                            "weight": "Bolder",
                            "color": color,
                            "wrap": True,
                            "text": message.subject,
                        },
                        {"type": "FactSet", "facts": facts},
                        {"type": "TextBlock", "wrap": True, "text": _clip(message.text, 20000)},
                    ],
                },
            }
        ],
    }


def webhook_payload(
    context: Mapping[str, Any], message: Rendered, delivery_id: str, sent_at: str
) -> Manifest:
    """Build the generic webhook body (schema ``opsconductor.io/notification/v1``, docs/notifications.md)."""
    return {
        "schema": WEBHOOK_SCHEMA,
        "deliveryId": delivery_id,
        "sentAt": sent_at,
        "event": context["event"],
        "job": context["job"],
        "schedule": context["schedule"],
        "steps": context["steps"],
        "failedTargets": {"count": context["failed"]["count"], "items": context["failed"]["targets"]},
        "subject": message.subject,
        "text": message.text,
        "kubectl": context["kubectl"],
        "digest": "runs" in context,
        "runs": [
            {
                "job": run["job"],
                "schedule": run["schedule"],
                "failedTargets": {"count": run["failed"]["count"], "items": run["failed"]["targets"]},
            }
            for run in context.get("runs", [])
        ],
    }


def sign(key: bytes, timestamp: str, body: bytes) -> str:
    """``sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">`` (the timestamp guards against replays)."""
    return "sha256=" + hmac.new(key, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def webhook_body(payload: Manifest) -> bytes:
    """Serialise a payload: these exact bytes are sent and signed."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def email_message(message: Rendered, sender: str, to: list[str], delivery_id: str) -> EmailMessage:
    """multipart/alternative: plain text first, HTML second (clients show the last they can)."""
    mail = EmailMessage()
    mail["Subject"] = message.subject
    mail["From"] = sender
    mail["To"] = ", ".join(to)
    mail[DELIVERY_HEADER] = delivery_id
    mail.set_content(message.text + "\n")
    mail.add_alternative(f"<html><body>{message.html}</body></html>\n", subtype="html")
    return mail
