"""Notifications end to end: real runs on the local control plane notify a real SMTP server (STARTTLS +
AUTH) and local HTTP receivers that check the Slack, Teams and webhook formats and the HMAC signature.

These tests run their own operator (namespaces ``nfy-*``) with a controllable clock
(``OPSCONDUCTOR_CLOCK_FILE``) so quiet hours end when the test moves time on, and a short retry
backoff so retries finish within seconds.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from opsconductor import clock
from opsconductor.constants import LABEL_SCHEDULE
from opsconductor.localcluster.cluster import KubeletProcess
from opsconductor.localcluster.controlplane import ControlPlane
from opsconductor.localcluster.operatorprocess import OperatorProcess
from tests.conftest import fresh_namespace, running_operator
from tests.e2e.conftest import wait_phase
from tests.e2e.notify_servers import Receiver, SmtpServer, receiver, smtp_server
from tests.kube import Kubectl, wait_until

PREFIX = "nfy-"
SMTP_PASSWORD = "canary-smtp-pw-5d1e"
WRONG_PASSWORD = "canary-wrong-pw-31b0"
HMAC_KEY = "canary-hmac-key-77aa"
URL_TOKEN = "canary-token-9f3c"


@pytest.fixture(scope="module")
def clock_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("clock") / "now"
    clock.set_fake_time(path, datetime.now(UTC))
    return path


def fake_now(path: Path) -> datetime:
    os.environ[clock.CLOCK_FILE_ENV] = str(path)
    try:
        return clock.now()
    finally:
        del os.environ[clock.CLOCK_FILE_ENV]


@pytest.fixture(scope="module")
def notify_operator(
    control_plane: ControlPlane, kubelet: KubeletProcess, clock_file: Path
) -> Iterator[OperatorProcess]:
    with running_operator(
        control_plane,
        "operator-notify",
        f"{PREFIX}*",
        OPSCONDUCTOR_CLOCK_FILE=str(clock_file),
        OPSCONDUCTOR_NOTIFY_BACKOFF_SECONDS="0.5",
        OPSCONDUCTOR_NOTIFY_MAX_ATTEMPTS="4",
        OPSCONDUCTOR_NOTIFY_MAX_AGE_SECONDS="2592000",
    ) as process:
        yield process


@pytest.fixture
def k(
    kubectl: Kubectl, request: pytest.FixtureRequest, notify_operator: OperatorProcess
) -> Iterator[Kubectl]:
    for namespace in fresh_namespace(kubectl, request, PREFIX):
        yield kubectl.with_namespace(namespace)


@pytest.fixture(scope="module")
def hooks() -> Iterator[Receiver]:
    with receiver() as server:
        yield server


@pytest.fixture(scope="module")
def smtp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SmtpServer]:
    with smtp_server(tmp_path_factory.mktemp("smtp"), "opsconductor", SMTP_PASSWORD) as server:
        yield server


def channel(name: str, kind: str, url: str, hmac_key: str | None = None, headers: str = "") -> str:
    secret = f"url: {url}" + (f"\n  hmac-key: {hmac_key}" if hmac_key else "")
    return f"""
apiVersion: v1
kind: Secret
metadata: {{name: {name}}}
stringData:
  {secret}
---
apiVersion: opsconductor.io/v1alpha1
kind: Credential
metadata: {{name: {name}}}
spec:
  type: {kind}
  secretRef: {{name: {name}}}
  {headers}
---
"""


def failing_job(name: str, notify: str, labels: str = "{}") -> str:
    return f"""
apiVersion: opsconductor.io/v1alpha1
kind: OpsJob
metadata: {{name: {name}, labels: {labels}}}
spec:
  steps:
    - {{name: probe, type: http.get, url: "http://127.0.0.1:1/", timeoutSeconds: 5}}
  notify: {notify}
"""


def passing_job(name: str, notify: str, labels: str = "{}") -> str:
    return f"""
apiVersion: opsconductor.io/v1alpha1
kind: OpsJob
metadata: {{name: {name}, labels: {labels}}}
spec:
  steps:
    - {{name: pause, type: wait, seconds: 1}}
  notify: {notify}
"""


def records(k: Kubectl, job: str) -> list[dict[str, Any]]:
    status = k.get("opsjob", job).get("status") or {}
    return list((status.get("notifications") or {}).get("deliveries") or [])


def wait_records(
    k: Kubectl, job: str, states: set[str], count: int = 1, timeout: float = 60
) -> list[dict[str, Any]]:
    def done() -> list[dict[str, Any]] | None:
        found = records(k, job)
        return found if len([r for r in found if r["state"] in states]) >= count else None

    return wait_until(done, timeout=timeout, what=f"{count} notification record(s) of {job} in {states}")


def event_reasons(k: Kubectl, name: str) -> list[tuple[str, str, str]]:
    items = json.loads(
        k.run("get", "events", "--field-selector", f"involvedObject.name={name}", "-o", "json").stdout
    )["items"]
    return [(e["type"], e["reason"], e["message"]) for e in items]


def assert_no_canary(k: Kubectl, operator: OperatorProcess, *names: str) -> None:
    dump = k.run("get", "opsjobs,credentials,events", "-o", "json").stdout + operator.log.read_text()
    for canary in (SMTP_PASSWORD, HMAC_KEY, URL_TOKEN):
        assert canary not in dump


def test_email_over_starttls_with_auth_to_several_recipients(
    k: Kubectl, smtp: SmtpServer, notify_operator: OperatorProcess
) -> None:
    ca = "\n    ".join(smtp.ca_pem.strip().splitlines())
    k.apply(f"""
apiVersion: v1
kind: Secret
metadata: {{name: team-mail}}
stringData:
  username: {smtp.username}
  password: {smtp.password}
  ca.crt: |
    {ca}
---
apiVersion: opsconductor.io/v1alpha1
kind: Credential
metadata: {{name: team-mail}}
spec:
  type: SMTP
  secretRef: {{name: team-mail}}
  smtp: {{host: 127.0.0.1, port: {smtp.port}, security: StartTLS, sender: opsconductor@example.com}}
""")
    before = len(smtp.mails)
    k.apply(
        failing_job(
            "disk-check",
            "[{events: [Failed], channelRef: {name: team-mail}, to: [ops@example.com, dba@example.com]}]",
        )
    )
    assert wait_phase(k, "disk-check")["status"]["phase"] == "Failed"
    (record,) = wait_records(k, "disk-check", {"Sent"})
    mail = smtp.wait_for(before + 1)[before]
    assert mail.tls and mail.login == "opsconductor"
    assert sorted(mail.rcpt_tos) == ["dba@example.com", "ops@example.com"]
    message = mail.message
    assert message["Subject"] == f"[OpsConductor] ❌ {k.namespace}/disk-check failed"
    assert message["From"] == "opsconductor@example.com"
    parts = {
        part.get_content_type(): part.get_content() for part in message.walk() if not part.is_multipart()
    }
    assert set(parts) == {"text/plain", "text/html"}
    assert f"kubectl -n {k.namespace} get opsjob disk-check -o yaml" in parts["text/plain"]
    assert "probe on local" in parts["text/plain"] and "<b>probe</b>" in parts["text/html"]
    assert record["attempts"] == 1 and record["recipients"] == ["dba@example.com", "ops@example.com"]
    assert ("Normal", "NotificationSent") in [(t, r) for t, r, _ in event_reasons(k, "disk-check")]

    # A wrong password: the relay refuses, the record says why, the password appears nowhere.
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "bad-mail"},
        "stringData": {"username": "opsconductor", "password": WRONG_PASSWORD, "ca.crt": smtp.ca_pem},
    }
    k.apply(json.dumps(secret))
    k.apply(f"""
apiVersion: opsconductor.io/v1alpha1
kind: Credential
metadata: {{name: bad-mail}}
spec:
  type: SMTP
  secretRef: {{name: bad-mail}}
  smtp: {{host: 127.0.0.1, port: {smtp.port}, sender: opsconductor@example.com}}
""")
    k.apply(
        failing_job("bad-login", "[{events: [Failed], channelRef: {name: bad-mail}, to: [ops@example.com]}]")
    )
    (failed,) = wait_records(k, "bad-login", {"Failed"})
    assert failed["attempts"] == 4 and "SMTPAuthenticationError" in failed["lastError"], failed
    assert len(smtp.mails) == before + 1
    dump = k.run("get", "opsjobs,credentials,events", "-o", "json").stdout + notify_operator.log.read_text()
    assert WRONG_PASSWORD not in dump
    assert_no_canary(k, notify_operator)

    # A test message through the email channel, to an address given on the command line.
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "opsconductor.cli",
            "notify",
            "test",
            "team-mail",
            "-n",
            k.namespace,
            "--to",
            "me@example.com",
        ],
        env={**os.environ, "KUBECONFIG": str(k.kubeconfig)},
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert result.returncode == 0 and result.stdout.strip().endswith("Sent"), result.stdout + result.stderr
    test_mail = smtp.wait_for(before + 2)[before + 1]
    assert test_mail.rcpt_tos == ["me@example.com"]
    assert test_mail.message["Subject"] == "[OpsConductor] test notification via team-mail"


def test_slack_teams_and_signed_webhook_payloads(
    k: Kubectl, hooks: Receiver, notify_operator: OperatorProcess
) -> None:
    base = f"{hooks.url}/{k.namespace}"
    k.apply(
        channel("slack", "SlackWebhook", f"{base}/slack/{URL_TOKEN}")
        + channel("teams", "TeamsWebhook", f"{base}/teams/{URL_TOKEN}")
        + channel(
            "hook", "Webhook", f"{base}/hook/{URL_TOKEN}", HMAC_KEY, "webhook: {headers: {X-Team: platform}}"
        )
    )
    k.apply(
        failing_job(
            "api-check",
            "[{events: [Failed], channelRef: {name: slack}}, {events: [Failed], channelRef: {name: teams}},"
            " {events: [Failed], channelRef: {name: hook}}]",
            "{team: platform}",
        )
    )
    wait_phase(k, "api-check")
    (slack,) = hooks.wait_for(f"/{k.namespace}/slack/{URL_TOKEN}")
    payload = json.loads(slack.body)
    assert slack.headers["content-type"] == "application/json"
    assert set(payload) == {"text", "blocks"}
    assert payload["text"].startswith(f"[OpsConductor] ❌ {k.namespace}/api-check failed")
    assert [b["type"] for b in payload["blocks"]] == ["header", "section", "context"]
    assert payload["blocks"][0]["text"]["type"] == "plain_text"
    assert (
        payload["blocks"][1]["text"]["type"] == "mrkdwn"
        and "probe on local" in payload["blocks"][1]["text"]["text"]
    )

    (teams,) = hooks.wait_for(f"/{k.namespace}/teams/{URL_TOKEN}")
    card = json.loads(teams.body)
    assert card["type"] == "message"
    (attachment,) = card["attachments"]
    assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
    content = attachment["content"]
    assert content["type"] == "AdaptiveCard" and content["version"] == "1.4"
    assert content["body"][0]["type"] == "TextBlock" and content["body"][0]["color"] == "Attention"
    assert {"title": "Event", "value": "Failed"} in content["body"][1]["facts"]

    (hook,) = hooks.wait_for(f"/{k.namespace}/hook/{URL_TOKEN}")
    timestamp = hook.headers["x-opsconductor-timestamp"]
    expected = (
        "sha256="
        + hmac.new(HMAC_KEY.encode(), timestamp.encode() + b"." + hook.body, hashlib.sha256).hexdigest()
    )
    assert hmac.compare_digest(hook.headers["x-opsconductor-signature"], expected)
    assert hook.headers["x-team"] == "platform" and hook.headers["x-opsconductor-event"] == "Failed"
    body = json.loads(hook.body)
    job = k.get("opsjob", "api-check")
    assert body["schema"] == "opsconductor.io/notification/v1"
    assert (
        body["deliveryId"]
        == f"{job['metadata']['uid']}/Failed/hook"
        == hook.headers["x-opsconductor-delivery"]
    )
    assert (
        body["event"] == "Failed"
        and body["job"]["name"] == "api-check"
        and body["job"]["labels"] == {"team": "platform"}
    )
    assert body["failedTargets"]["count"] == 1 and body["failedTargets"]["items"][0]["step"] == "probe"
    assert {r["channel"]: r["state"] for r in wait_records(k, "api-check", {"Sent"}, 3)} == {
        "slack": "Sent",
        "teams": "Sent",
        "hook": "Sent",
    }
    assert_no_canary(k, notify_operator)


def test_quiet_hours_hold_until_they_end_drop_and_urgent_failures_break_through(
    k: Kubectl, hooks: Receiver, clock_file: Path
) -> None:
    base = f"{hooks.url}/{k.namespace}"
    k.apply(
        channel("alice", "Webhook", f"{base}/alice")
        + channel("bob", "Webhook", f"{base}/bob")
        + channel("oncall", "Webhook", f"{base}/oncall")
    )
    now = fake_now(clock_file)
    start, end = (now - timedelta(hours=1)).strftime("%H:%M"), (now + timedelta(hours=1)).strftime("%H:%M")
    k.apply(f"""
apiVersion: opsconductor.io/v1alpha1
kind: NotificationPolicy
metadata: {{name: team}}
spec:
  recipients:
    - name: alice
      channels: [{{channelRef: {{name: alice}}}}]
      quietHours: [{{start: "{start}", end: "{end}", timeZone: UTC, action: Hold}}]
    - name: bob
      channels: [{{channelRef: {{name: bob}}}}]
      quietHours: [{{start: "{start}", end: "{end}", timeZone: UTC, action: Drop}}]
    - name: oncall
      channels: [{{channelRef: {{name: oncall}}}}]
      quietHours: [{{start: "{start}", end: "{end}", timeZone: UTC, action: Hold}}]
  rules:
    - {{name: team, events: [Failed], recipients: [alice, bob]}}
    - {{name: pager, events: [Failed], recipients: [oncall], urgent: true}}
""")
    wait_until(
        lambda: k.get("notificationpolicy", "team").get("status", {}).get("observedGeneration"),
        what="the policy's status",
    )
    k.apply(failing_job("nightly", "[]"))
    wait_phase(k, "nightly")
    hooks.wait_for(f"/{k.namespace}/oncall")  # urgent: through the quiet hours
    found = {r["channel"]: r for r in wait_records(k, "nightly", {"Sent", "Held", "Dropped"}, 3)}
    assert {c: r["state"] for c, r in found.items()} == {"alice": "Held", "bob": "Dropped", "oncall": "Sent"}
    held_until = datetime.fromisoformat(found["alice"]["notBefore"].replace("Z", "+00:00"))
    assert abs((held_until - (now + timedelta(hours=1))).total_seconds()) < 120
    assert hooks.at(f"/{k.namespace}/alice") == [] and hooks.at(f"/{k.namespace}/bob") == []
    reasons = [r for _, r, _ in event_reasons(k, "nightly")]
    assert "NotificationHeld" in reasons and "NotificationDropped" in reasons

    clock.set_fake_time(clock_file, now + timedelta(hours=1, minutes=5))  # the quiet hours end
    (alice,) = hooks.wait_for(f"/{k.namespace}/alice")
    assert json.loads(alice.body)["event"] == "Failed"
    wait_records(k, "nightly", {"Sent"}, 2)
    assert hooks.at(f"/{k.namespace}/bob") == []


def test_escalation_after_repeated_failures_and_recovery_notice(k: Kubectl, hooks: Receiver) -> None:
    base = f"{hooks.url}/{k.namespace}"
    k.apply(channel("team", "Webhook", f"{base}/team") + channel("managers", "Webhook", f"{base}/managers"))
    k.apply("""
apiVersion: opsconductor.io/v1alpha1
kind: OpsSchedule
metadata: {name: backup}
spec:
  schedules: ["0 3 * * *"]
  suspend: true
  jobTemplate:
    spec:
      steps: [{name: pause, type: wait, seconds: 1}]
  notify:
    - {name: team, events: [Failed, Recovered], channelRef: {name: team}}
    - {name: escalate, events: [Failed], channelRef: {name: managers}, when: {minConsecutiveFailures: 2}}
""")
    schedule = k.get("opsschedule", "backup")
    owner = (
        f"ownerReferences: [{{apiVersion: opsconductor.io/v1alpha1, kind: OpsSchedule, name: backup,"
        f" uid: {schedule['metadata']['uid']}, controller: true}}]"
    )

    def run(name: str, manifest: str, failures: int) -> None:
        manifest = manifest.replace("metadata: {", f"metadata: {{{owner}, ", 1)
        k.apply(manifest)
        wait_phase(k, name)
        wait_until(
            lambda: (
                (k.get("opsschedule", "backup").get("status") or {}).get("lastCountedRun", {}).get("name")
                == name
            ),
            what=f"{name} counted",
        )
        assert k.get("opsschedule", "backup")["status"]["consecutiveFailures"] == failures

    labels = f"{{{LABEL_SCHEDULE}: backup}}"
    run("backup-1", failing_job("backup-1", "[]", labels), 1)
    hooks.wait_for(f"/{k.namespace}/team", 1)
    run("backup-2", failing_job("backup-2", "[]", labels), 2)
    (escalation,) = hooks.wait_for(f"/{k.namespace}/managers", 1)
    assert json.loads(escalation.body)["schedule"] == {
        "name": "backup",
        "consecutiveFailures": 2,
        "failuresBefore": 1,
    }
    hooks.wait_for(f"/{k.namespace}/team", 2)
    run("backup-3", passing_job("backup-3", "[]", labels), 0)
    recovered = hooks.wait_for(f"/{k.namespace}/team", 3)[2]
    assert recovered.headers["x-opsconductor-event"] == "Recovered"
    assert json.loads(recovered.body)["job"]["name"] == "backup-3"
    assert len(hooks.at(f"/{k.namespace}/managers")) == 1  # escalation only after the 2nd failure in a row
    # A re-delivered event never counts a run twice.
    k.run("annotate", "opsjob", "backup-3", "touch=1")
    k.run("annotate", "opsjob", "backup-2", "touch=1")
    wait_until(lambda: k.get("opsjob", "backup-2")["metadata"]["annotations"].get("touch"), what="annotation")
    assert k.get("opsschedule", "backup")["status"]["consecutiveFailures"] == 0


def test_retries_with_backoff_and_a_failing_channel_does_not_block_others(
    k: Kubectl, hooks: Receiver
) -> None:
    base = f"{hooks.url}/{k.namespace}"
    hooks.fail[f"/{k.namespace}/flaky"] = 2
    hooks.fail[f"/{k.namespace}/down"] = 100
    k.apply(
        channel("flaky", "Webhook", f"{base}/flaky")
        + channel("down", "Webhook", f"{base}/down")
        + channel("fine", "Webhook", f"{base}/fine")
    )
    notify = (
        "[{events: [Failed], channelRef: {name: flaky}}, {events: [Failed], channelRef: {name: down}},"
        " {events: [Failed], channelRef: {name: fine}}]"
    )
    k.apply(failing_job("retry", notify))
    wait_phase(k, "retry")
    hooks.wait_for(f"/{k.namespace}/fine")
    hooks.wait_for(f"/{k.namespace}/flaky", 3)
    found = {r["channel"]: r for r in wait_records(k, "retry", {"Sent", "Failed"}, 3)}
    assert (found["flaky"]["state"], found["flaky"]["attempts"]) == ("Sent", 3)
    assert (found["fine"]["state"], found["fine"]["attempts"]) == ("Sent", 1)
    assert (found["down"]["state"], found["down"]["attempts"]) == ("Failed", 4)
    assert "HTTP 500" in found["down"]["lastError"]
    assert len(hooks.at(f"/{k.namespace}/down")) == 4
    assert ("Warning", "NotificationFailed") in [(t, r) for t, r, _ in event_reasons(k, "retry")]
    # The run itself was never held up by its notifications.
    assert k.get("opsjob", "retry")["status"]["phase"] == "Failed"


def test_operator_restart_after_sending_sends_nothing_twice_and_resumes_pending(
    k: Kubectl, hooks: Receiver, notify_operator: OperatorProcess
) -> None:
    base = f"{hooks.url}/{k.namespace}"
    hooks.fail[f"/{k.namespace}/later"] = 1000
    k.apply(channel("now", "Webhook", f"{base}/now") + channel("later", "Webhook", f"{base}/later"))
    k.apply(failing_job("first", "[{events: [Failed], channelRef: {name: now}}]"))
    wait_records(k, "first", {"Sent"})
    k.apply(failing_job("pending", "[{events: [Failed], channelRef: {name: later}}]"))
    hooks.wait_for(f"/{k.namespace}/later", 1)
    # Crash only once the failed attempt is in status: the receiver answering is not yet the operator
    # recording it, and a crash in between would leave an honest record of no attempt at all.
    wait_until(
        lambda: any(r.get("attempts", 0) >= 1 for r in records(k, "pending")),
        what="the failed attempt recorded in the pending job's status",
    )
    notify_operator.kill()
    hooks.fail[f"/{k.namespace}/later"] = 0
    notify_operator.start()
    (record,) = wait_records(k, "pending", {"Sent"})  # resumed from its Pending record
    assert record["attempts"] >= 2
    k.apply(failing_job("second", "[{events: [Failed], channelRef: {name: now}}]"))
    wait_records(k, "second", {"Sent"})
    # The operator saw every job again at startup; "first" was recorded Sent and is not sent again.
    assert [json.loads(h.body)["job"]["name"] for h in hooks.at(f"/{k.namespace}/now")] == ["first", "second"]


def test_started_and_duration_exceeded_notices(k: Kubectl, hooks: Receiver) -> None:
    k.apply(channel("team", "Webhook", f"{hooks.url}/{k.namespace}/team"))
    k.apply("""
apiVersion: opsconductor.io/v1alpha1
kind: OpsJob
metadata: {name: slow}
spec:
  steps: [{name: pause, type: wait, seconds: 6}]
  notify:
    - {events: [Started], channelRef: {name: team}}
    - {events: [DurationExceeded], durationThresholdSeconds: 3, channelRef: {name: team}}
    - {events: [DurationExceeded], durationThresholdSeconds: 60, channelRef: {name: team}}
""")
    (started,) = hooks.wait_for(f"/{k.namespace}/team")
    assert json.loads(started.body)["event"] == "Started"
    assert k.get("opsjob", "slow")["status"]["phase"] == "Running"  # told while it runs
    wait_phase(k, "slow")
    hits = hooks.wait_for(f"/{k.namespace}/team", 2)
    assert [h.headers["x-opsconductor-event"] for h in hits] == ["Started", "DurationExceeded"]
    wait_records(k, "slow", {"Sent"}, 2)
    assert len(hooks.at(f"/{k.namespace}/team")) == 2  # the 60 s threshold was not exceeded


def test_a_fan_out_failure_over_many_targets_is_one_message(k: Kubectl, hooks: Receiver) -> None:
    k.apply(channel("team", "Webhook", f"{hooks.url}/{k.namespace}/team"))
    targets = "\n---\n".join(
        "apiVersion: opsconductor.io/v1alpha1\nkind: Target\n"
        f"metadata: {{name: web{i:03d}, labels: {{role: web}}}}\n"
        "spec: {address: 127.0.0.1, protocol: http, port: 1}"
        for i in range(60)
    )
    k.apply(targets)
    k.apply("""
apiVersion: opsconductor.io/v1alpha1
kind: OpsJob
metadata: {name: fanout}
spec:
  targetSelector: {matchLabels: {role: web}}
  failurePolicy: {mode: Continue}
  steps:
    - {name: health, type: http.get, url: /healthz, timeoutSeconds: 5}
  notify: [{events: [Failed], channelRef: {name: team}}]
""")
    done = wait_phase(k, "fanout", timeout=120)
    assert done["status"]["phase"] == "Failed"
    wait_records(k, "fanout", {"Sent"})
    (hit,) = hooks.at(f"/{k.namespace}/team")
    body = json.loads(hit.body)
    assert body["failedTargets"]["count"] == 60 and len(body["failedTargets"]["items"]) == 10
    assert "and 50 more" in body["text"]


def test_a_burst_of_failing_jobs_is_grouped_into_digests(k: Kubectl, hooks: Receiver) -> None:
    k.apply(channel("team", "SlackWebhook", f"{hooks.url}/{k.namespace}/team"))
    k.apply(channel("audit", "Webhook", f"{hooks.url}/{k.namespace}/audit"))
    k.apply("""
apiVersion: opsconductor.io/v1alpha1
kind: NotificationPolicy
metadata: {name: burst}
spec:
  rules:
    - {events: [Failed], channelRef: {name: team}, groupWindowSeconds: 20}
    - {events: [Failed], channelRef: {name: audit}, groupWindowSeconds: 20}
""")
    names = [f"host-{i:02d}" for i in range(12)]
    k.apply("\n---\n".join(failing_job(name, "[]") for name in names))
    for name in names:
        wait_records(k, name, {"Sent"}, 2, timeout=120)
    digests = [json.loads(h.body) for h in hooks.at(f"/{k.namespace}/audit")]
    reported = sorted(run["job"]["name"] for digest in digests for run in digest["runs"] or [digest["job"]])
    assert reported == names  # every run reported exactly once
    assert len(digests) < len(names) / 2  # ... in a few messages, not one per run
    assert any(d["digest"] for d in digests)
    slack = [json.loads(h.body) for h in hooks.at(f"/{k.namespace}/team")]
    assert len(slack) == len(digests)
    assert any(" runs failed in " in m["blocks"][0]["text"]["text"] for m in slack)
    grouped = [r for name in names for r in records(k, name) if r["channel"] == "audit"]
    assert sum(1 for r in grouped if not r.get("groupedWith")) <= len(digests)


def test_namespace_defaults_custom_templates_and_fallback(k: Kubectl, hooks: Receiver) -> None:
    base = f"{hooks.url}/{k.namespace}"
    k.apply(channel("team", "SlackWebhook", f"{base}/team") + channel("audit", "Webhook", f"{base}/audit"))
    k.apply("""
apiVersion: v1
kind: ConfigMap
metadata: {name: templates}
data:
  short: "{{ job.name }} {{ event }} ({{ failed.count }} failed)"
  broken: "{{ job.nmae }}"
---
apiVersion: opsconductor.io/v1alpha1
kind: NotificationPolicy
metadata: {name: defaults}
spec:
  rules:
    - name: web-team
      events: [Failed, Succeeded]
      channelRef: {name: team}
      when: {jobLabels: {matchLabels: {team: web}}}
      templateRef: {name: templates, key: short}
    - {name: audit, events: [Failed], channelRef: {name: audit}, templateRef: {name: templates, key: broken}}
""")
    k.apply(failing_job("web-job", "[]", "{team: web}"))
    k.apply(passing_job("db-job", "[]", "{team: db}"))
    wait_phase(k, "db-job")
    (team,) = hooks.wait_for(f"/{k.namespace}/team")
    assert json.loads(team.body)["blocks"][1]["text"]["text"] == "web-job Failed (1 failed)"
    (audit,) = hooks.wait_for(f"/{k.namespace}/audit")
    assert "web-job failed" in json.loads(audit.body)["text"]  # the default text
    found = {r["channel"]: r for r in wait_records(k, "web-job", {"Sent"}, 2)}
    assert "nmae" in found["audit"]["templateError"] and not found["team"].get("templateError")
    warnings = [(r, m) for t, r, m in event_reasons(k, "web-job") if t == "Warning"]
    assert any(r == "NotificationTemplateError" and "nmae" in m for r, m in warnings)
    assert records(k, "db-job") == []  # db-job's labels do not match the web team's rule
    assert len(hooks.at(f"/{k.namespace}/team")) == 1


def test_notify_test_command_sends_a_test_message(k: Kubectl, hooks: Receiver) -> None:
    k.apply(
        channel("team", "TeamsWebhook", f"{hooks.url}/{k.namespace}/team")
        + channel("gone", "Webhook", "http://127.0.0.1:1/x")
    )
    env = {**os.environ, "KUBECONFIG": str(k.kubeconfig)}
    command = [sys.executable, "-m", "opsconductor.cli", "notify", "test", "-n", k.namespace]
    result = subprocess.run([*command, "team"], env=env, capture_output=True, text=True, timeout=90)
    assert result.returncode == 0, result.stderr
    assert "Sent" in result.stdout
    (hit,) = hooks.wait_for(f"/{k.namespace}/team")
    assert (
        "test notification via team" in json.loads(hit.body)["attachments"][0]["content"]["body"][0]["text"]
    )
    result = subprocess.run([*command, "gone"], env=env, capture_output=True, text=True, timeout=90)
    assert result.returncode == 1 and "ConnectError" in result.stdout + result.stderr


EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "notifications"


def _repoint(doc: dict[str, Any], hooks: Receiver, smtp: SmtpServer, namespace: str) -> dict[str, Any]:
    """Point an example at the local receivers (the rest of the example stays as written)."""
    name = doc["metadata"]["name"]
    if doc["kind"] == "Secret" and "url" in doc["stringData"]:
        doc["stringData"]["url"] = f"{hooks.url}/{namespace}/{name}"
    elif doc["kind"] == "Secret":
        doc["stringData"].update(username=smtp.username, password=smtp.password, **{"ca.crt": smtp.ca_pem})
    elif doc["kind"] == "Credential" and doc["spec"]["type"] == "SMTP":
        doc["spec"]["smtp"].update(host=smtp.host, port=smtp.port)
    elif doc["kind"] == "OpsJob":
        doc["spec"]["steps"][0]["url"] = "http://127.0.0.1:1/"  # connection refused: the run fails
    elif doc["kind"] == "OpsSchedule":
        doc["spec"]["suspend"] = True  # runs are created by the test, as the scheduler would
    return doc


def test_notification_examples_deliver_to_every_channel(
    k: Kubectl, hooks: Receiver, smtp: SmtpServer, clock_file: Path
) -> None:
    # A weekday noon in Berlin: nobody's quiet hours apply.
    noon = datetime.now(UTC).replace(hour=11, minute=0, second=0, microsecond=0)
    while noon.weekday() >= 5:
        noon -= timedelta(days=1)
    clock.set_fake_time(clock_file, noon)
    docs = [
        _repoint(doc, hooks, smtp, k.namespace)
        for path in sorted(EXAMPLES.glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]
    assert {d["kind"] for d in docs} >= {
        "Secret",
        "Credential",
        "NotificationPolicy",
        "OpsSchedule",
        "OpsJob",
    }
    before = len(smtp.mails)
    k.apply(yaml.safe_dump_all([d for d in docs if d["kind"] != "OpsJob"]))
    k.apply(yaml.safe_dump_all([d for d in docs if d["kind"] == "OpsJob"]))
    assert wait_phase(k, "cert-expiry-check")["status"]["phase"] == "Failed"
    # One email (the job's addresses and the policy's recipients), one Slack message (custom
    # template), one signed webhook for on-call (urgent pager rule matching "refused").
    mail = smtp.wait_for(before + 1)[before]
    assert sorted(mail.rcpt_tos) == [
        "alice@example.com",
        "bob@example.com",
        "ops@example.com",
        "web-team@example.com",
    ]
    (slack,) = hooks.wait_for(f"/{k.namespace}/team-slack")
    text = json.loads(slack.body)["blocks"][1]["text"]["text"]
    assert text.startswith("❌ *cert-expiry-check* failed in") and "• probe on local:" in text
    (page,) = hooks.wait_for(f"/{k.namespace}/incident-hook")
    assert page.headers["x-source"] == "opsconductor" and page.headers["x-opsconductor-signature"].startswith(
        "sha256="
    )
    found = wait_records(k, "cert-expiry-check", {"Sent"}, 3)
    assert sorted(r["channel"] for r in found) == ["incident-hook", "team-mail", "team-slack"]
    wait_until(
        lambda: (k.get("notificationpolicy", "web-team").get("status") or {}).get("conditions"),
        what="the policy's conditions",
    )
    policy = k.get("notificationpolicy", "web-team")
    assert {c["type"]: c["status"] for c in policy["status"]["conditions"]}["Ready"] == "True"

    # The schedule example escalates to the managers' Teams channel on the 3rd failure in a row.
    schedule = k.get("opsschedule", "nightly-api-check")
    for run in (1, 2, 3):
        name = f"nightly-api-check-{run}"
        k.apply(
            json.dumps(
                {
                    "apiVersion": "opsconductor.io/v1alpha1",
                    "kind": "OpsJob",
                    "metadata": {
                        "name": name,
                        "labels": {LABEL_SCHEDULE: "nightly-api-check"},
                        "ownerReferences": [
                            {
                                "apiVersion": "opsconductor.io/v1alpha1",
                                "kind": "OpsSchedule",
                                "name": "nightly-api-check",
                                "uid": schedule["metadata"]["uid"],
                                "controller": True,
                            }
                        ],
                    },
                    "spec": {
                        "steps": [{"name": "healthz", "type": "http.get", "url": "http://127.0.0.1:1/"}]
                    },
                }
            )
        )
        wait_phase(k, name)
        hooks.wait_for(f"/{k.namespace}/team-slack", 1 + run)
        if run < 3:
            assert hooks.at(f"/{k.namespace}/team-teams") == []
    teams_hits = hooks.wait_for(f"/{k.namespace}/team-teams")
    assert len(teams_hits) == 1, [(h.headers, h.body[:3000]) for h in teams_hits]
    (teams,) = teams_hits
    assert json.loads(teams.body)["type"] == "message"
    assert k.get("opsschedule", "nightly-api-check")["status"]["consecutiveFailures"] == 3
