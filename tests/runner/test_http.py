"""HTTP, webhook and wait steps against real HTTP(S) servers on loopback (no mocks of httpx)."""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import TypeAdapter

from opsconductor.api.opsjob import Step
from opsconductor.plan import JobRef, PlanCredential, PlanTarget, RunPlan
from opsconductor.runner.protocols.base import StepContext, StepOutcome
from opsconductor.runner.protocols.http import (
    BODY_OUTPUT_CHARS,
    MAX_BODY_BYTES,
    HttpSession,
    JsonPathError,
    WaitSession,
    json_path,
    resolve_url,
)
from opsconductor.runner.secrets import FileSecretStore
from tests.runner.servers import LoopbackServer, Pki, Recorded, as_json, make_pki, serve, text

STEP: TypeAdapter[Any] = TypeAdapter(Step)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def session() -> Iterator[HttpSession]:
    s = HttpSession(webhook_backoff=0.01, webhook_max_backoff=0.02)
    yield s
    s.close()


@pytest.fixture
def secrets() -> FileSecretStore:
    return FileSecretStore()


def step(**fields: Any) -> Any:
    fields.setdefault("name", "s")
    return STEP.validate_python(fields)


def http_target(port: int, *, scheme: str = "http", base_path: str = "/api", **extra: Any) -> PlanTarget:
    return PlanTarget(
        name="api01",
        address="127.0.0.1",
        port=port,
        protocol="http",
        scheme=scheme,
        base_path=base_path,
        connect_timeout_seconds=5,
        **extra,
    )


def make_ctx(
    secrets: FileSecretStore,
    target: PlanTarget | None = None,
    *,
    timeout: float | None = None,
    cancel: threading.Event | None = None,
    secret_dirs: dict[str, str] | None = None,
) -> StepContext:
    plan = RunPlan(job=JobRef(namespace="ns", name="job", uid="u"), steps=[], secret_dirs=secret_dirs or {})
    return StepContext(
        plan=plan,
        target=target,
        secrets=secrets,
        workspace=Path("/nonexistent"),
        cancel=cancel or threading.Event(),
        deadline=None if timeout is None else time.monotonic() + timeout,
    )


def secret_files(tmp_path: Path, **values: str) -> dict[str, str]:
    paths = {}
    for role, value in values.items():
        path = tmp_path / role
        path.write_text(value)
        paths[role] = str(path)
    return paths


# --- requests -----------------------------------------------------------------------------------
def test_get_relative_url_with_query_headers_and_outputs(
    session: HttpSession, secrets: FileSecretStore
) -> None:
    with serve(
        {"/api/healthz": lambda r: as_json({"status": "ok", "checks": [{"name": "db", "ok": True}]})}
    ) as srv:
        outcome = session.run(
            step(
                type="http.get",
                url="healthz",
                query={"verbose": "1"},
                headers={"X-Trace": "abc"},
                assertions=[
                    {"jsonPath": "$.status", "equals": "ok"},
                    {"jsonPath": "$.checks[0].ok", "equals": "true"},
                    {"jsonPath": "$['checks'][-1].name", "matches": "^d.$"},
                    {"contains": '"status"'},
                ],
            ),
            make_ctx(secrets, http_target(srv.port)),
        )
    assert outcome.ok, outcome.error
    assert outcome.exit_code == 200
    assert outcome.outputs["status"] == "200"
    assert '"status": "ok"' in outcome.outputs["body"]
    assert outcome.stdout == outcome.outputs["body"]
    [request] = srv.requests
    assert (request.method, request.path, request.query) == ("GET", "/api/healthz", {"verbose": ["1"]})
    assert request.headers["X-Trace"] == "abc"


@pytest.mark.parametrize(
    ("method", "body", "expected_type", "expected_body"),
    [
        ("post", {"json": {"a": [1, "x"]}}, "application/json", b'{"a":[1,"x"]}'),
        ("put", {"form": {"k": "v w", "z": "&"}}, "application/x-www-form-urlencoded", b"k=v+w&z=%26"),
        ("patch", {"text": "raw text"}, None, b"raw text"),
        ("delete", None, None, b""),
    ],
)
def test_methods_and_bodies(
    session: HttpSession,
    secrets: FileSecretStore,
    method: str,
    body: dict[str, Any] | None,
    expected_type: str | None,
    expected_body: bytes,
) -> None:
    with serve({"/things": lambda r: text("done", 201)}) as srv:
        fields: dict[str, Any] = {"type": f"http.{method}", "url": f"{srv.url}/things"}
        if body is not None:
            fields["body"] = body
        outcome = session.run(step(**fields), make_ctx(secrets))
    assert outcome.ok, outcome.error
    assert outcome.exit_code == 201
    [request] = srv.requests
    assert request.method == method.upper()
    assert request.body.replace(b" ", b"") == expected_body.replace(b" ", b"")
    if expected_type:
        assert request.headers["Content-Type"].startswith(expected_type)


def test_expect_status_and_failed_assertions(session: HttpSession, secrets: FileSecretStore) -> None:
    routes = {
        "/down": lambda r: as_json({"status": "degraded"}, 503),
        "/ok": lambda r: as_json({"status": "degraded"}),
    }
    with serve(routes) as srv:
        down = session.run(step(type="http.get", url=f"{srv.url}/down"), make_ctx(secrets))
        expected = session.run(
            step(type="http.get", url=f"{srv.url}/down", expectStatus=[503]), make_ctx(secrets)
        )
        wrong = session.run(step(type="http.get", url=f"{srv.url}/ok", expectStatus=[204]), make_ctx(secrets))
        asserted = session.run(
            step(
                type="http.get",
                url=f"{srv.url}/ok",
                assertions=[
                    {"jsonPath": "$.status", "equals": "ok"},
                    {"jsonPath": "$.missing", "contains": "x"},
                ],
            ),
            make_ctx(secrets),
        )
        bad_regex = session.run(
            step(type="http.get", url=f"{srv.url}/ok", assertions=[{"matches": "("}]), make_ctx(secrets)
        )
    assert not down.ok and down.exit_code == 503 and "HTTP 503, expected a 2xx status" in down.error
    assert expected.ok
    assert not wrong.ok and "expected 204" in wrong.error
    assert not asserted.ok
    assert "$.status equals 'ok': got 'degraded'" in asserted.error
    assert "$ has no key 'missing'" in asserted.error
    assert "not a valid regular expression" in bad_regex.error


def test_redirects(session: HttpSession, secrets: FileSecretStore) -> None:
    routes = {"/old": lambda r: (302, {"Location": "/new"}, b""), "/new": lambda r: text("arrived")}
    with serve(routes) as srv:
        followed = session.run(step(type="http.get", url=f"{srv.url}/old"), make_ctx(secrets))
        kept = session.run(
            step(type="http.get", url=f"{srv.url}/old", followRedirects=False, expectStatus=[302]),
            make_ctx(secrets),
        )
    assert followed.ok and followed.stdout == "arrived"
    assert kept.ok and kept.exit_code == 302


def test_big_bodies_are_bounded(session: HttpSession, secrets: FileSecretStore) -> None:
    big = b"y" * (3 * MAX_BODY_BYTES)
    with serve({"/big": lambda r: (200, {}, big)}) as srv:
        outcome = session.run(step(type="http.get", url=f"{srv.url}/big"), make_ctx(secrets))
    assert outcome.ok
    assert len(outcome.outputs["body"]) == BODY_OUTPUT_CHARS
    assert len(outcome.stdout) < MAX_BODY_BYTES + 200
    assert f"body cut at {MAX_BODY_BYTES} of {len(big)} bytes" in outcome.stdout


def test_relative_url_needs_an_http_target(session: HttpSession, secrets: FileSecretStore) -> None:
    outcome = session.run(step(type="http.get", url="/x"), make_ctx(secrets))
    assert not outcome.ok and "relative" in outcome.error
    target = http_target(8443, scheme="https", base_path="/v1/")
    assert resolve_url("/items?x=1", target) == "https://127.0.0.1:8443/v1/items?x=1"
    ipv6 = target.model_copy(update={"address": "::1"})
    assert resolve_url("items", ipv6) == "https://[::1]:8443/v1/items"


def test_connection_refused_names_the_url(session: HttpSession, secrets: FileSecretStore) -> None:
    with serve() as srv:
        port = srv.port
    outcome = session.run(step(type="http.get", url=f"http://127.0.0.1:{port}/x"), make_ctx(secrets))
    assert not outcome.ok
    assert f"GET http://127.0.0.1:{port}/x: cannot connect" in outcome.error


# --- credentials ----------------------------------------------------------------------------------
def auth_header(r: Recorded) -> tuple[int, dict[str, str], bytes]:
    return text(r.headers.get("Authorization", "") + "|" + r.headers.get("X-Api-Token", ""))


@pytest.mark.parametrize(
    ("credential", "files", "expected"),
    [
        ("BasicAuth", {"password": "s3cret\n"}, "Basic b3BzOnMzY3JldA==|"),  # ops:s3cret
        ("BearerToken", {"token": "tok-123\n"}, "Bearer tok-123|"),
        ("APIKey", {"key": "k-456"}, "|k-456"),
    ],
)
def test_credentials_are_sent_to_the_target_only(
    session: HttpSession,
    secrets: FileSecretStore,
    tmp_path: Path,
    credential: str,
    files: dict[str, str],
    expected: str,
) -> None:
    plan_credential = PlanCredential(
        name="c",
        type=credential,
        username="ops" if credential == "BasicAuth" else None,
        files=secret_files(tmp_path, **files),
        api_key_header="X-Api-Token" if credential == "APIKey" else None,
    )
    with serve({"/api/who": auth_header, "/who": auth_header}) as srv:
        target = http_target(srv.port, credential=plan_credential)
        to_target = session.run(step(type="http.get", url="/who"), make_ctx(secrets, target))
        absolute_same_host = session.run(
            step(type="http.get", url=f"{srv.url}/who"), make_ctx(secrets, target)
        )
        other_host = session.run(
            step(type="http.get", url=f"http://localhost:{srv.port}/who"), make_ctx(secrets, target)
        )
    assert to_target.stdout == expected
    assert absolute_same_host.stdout == expected
    assert other_host.stdout == "|", "credentials must not go to another host"
    assert secrets.mask(f"x {next(iter(files.values())).strip()} y") == "x *** y"


def test_wrong_credential_type_is_explained(
    session: HttpSession, secrets: FileSecretStore, tmp_path: Path
) -> None:
    credential = PlanCredential(name="k", type="SSHKey", files=secret_files(tmp_path, privateKey="x"))
    with serve({"/api/x": lambda r: text("ok")}) as srv:
        outcome = session.run(
            step(type="http.get", url="x"), make_ctx(secrets, http_target(srv.port, credential=credential))
        )
    assert not outcome.ok and "cannot authenticate HTTP requests" in outcome.error


# --- TLS ------------------------------------------------------------------------------------------
def test_https_with_a_private_ca(session: HttpSession, secrets: FileSecretStore, pki: Pki) -> None:
    with serve({"/api/x": lambda r: text("secure")}, tls=pki.server_context()) as srv:
        untrusted = session.run(
            step(type="http.get", url="x"), make_ctx(secrets, http_target(srv.port, scheme="https"))
        )
        wrong_ca = session.run(
            step(type="http.get", url="x"),
            make_ctx(secrets, http_target(srv.port, scheme="https", ca_bundle_file=str(pki.other_ca))),
        )
        trusted = session.run(
            step(type="http.get", url="x"),
            make_ctx(secrets, http_target(srv.port, scheme="https", ca_bundle_file=str(pki.ca))),
        )
        insecure = session.run(
            step(type="http.get", url="x"),
            make_ctx(secrets, http_target(srv.port, scheme="https", insecure_skip_tls_verify=True)),
        )
    assert not untrusted.ok and "not trusted" in untrusted.error and "caBundleSecretRef" in untrusted.error
    assert not wrong_ca.ok and "not trusted" in wrong_ca.error
    assert trusted.ok and trusted.stdout == "secure"
    assert insecure.ok


def test_client_certificate(session: HttpSession, secrets: FileSecretStore, pki: Pki) -> None:
    credential = PlanCredential(
        name="client",
        type="ClientCertificate",
        files={"certificate": str(pki.client.cert), "privateKey": str(pki.client.key), "ca": str(pki.ca)},
    )
    with serve({"/api/x": lambda r: text(f"hello {r.client_cn}")}, tls=pki.server_context(True)) as srv:
        without = session.run(
            step(type="http.get", url="x"),
            make_ctx(secrets, http_target(srv.port, scheme="https", ca_bundle_file=str(pki.ca))),
        )
        with_cert = session.run(
            step(type="http.get", url="x"),
            make_ctx(secrets, http_target(srv.port, scheme="https", credential=credential)),
        )
    assert not without.ok
    assert with_cert.ok, with_cert.error
    assert with_cert.stdout == "hello runner-client"


# --- timeouts and cancellation ------------------------------------------------------------------
def test_request_timeout_stops_waiting(session: HttpSession, secrets: FileSecretStore) -> None:
    with LoopbackServer() as srv:
        srv.routes["/slow"] = srv.blocking()
        started = time.monotonic()
        outcome = session.run(step(type="http.get", url=f"{srv.url}/slow"), make_ctx(secrets, timeout=0.5))
        elapsed = time.monotonic() - started
    assert outcome.timed_out and not outcome.ok
    assert elapsed < 5


def test_cancellation_interrupts_a_request(session: HttpSession, secrets: FileSecretStore) -> None:
    cancel = threading.Event()
    with LoopbackServer() as srv:
        srv.routes["/slow"] = srv.blocking()

        def cancel_when_arrived() -> None:
            if srv.arrived.wait(10):
                cancel.set()

        canceller = threading.Thread(target=cancel_when_arrived)
        canceller.start()
        outcome = session.run(step(type="http.get", url=f"{srv.url}/slow"), make_ctx(secrets, cancel=cancel))
        canceller.join()
    assert outcome.cancelled and not outcome.ok


# --- webhook.call ---------------------------------------------------------------------------------
def test_webhook_signs_the_exact_body(session: HttpSession, secrets: FileSecretStore, tmp_path: Path) -> None:
    (tmp_path / "hooks").mkdir()
    (tmp_path / "hooks" / "hmac-key").write_text("k3y-material\n")
    with serve({"/hook": lambda r: text("thanks")}) as srv:
        outcome = session.run(
            step(
                type="webhook.call",
                url=f"{srv.url}/hook",
                payload={"job": "nightly", "ok": True, "n": [1, 2]},
                headers={"X-Source": "opsconductor"},
                hmac={"secretKeyRef": {"name": "hooks", "key": "hmac-key"}},
            ),
            make_ctx(secrets, secret_dirs={"hooks": str(tmp_path / "hooks")}),
        )
    assert outcome.ok, outcome.error
    [request] = srv.requests
    expected = "sha256=" + hmac.new(b"k3y-material", request.body, hashlib.sha256).hexdigest()
    assert request.headers["X-Signature-256"] == expected
    assert request.json() == {"job": "nightly", "ok": True, "n": [1, 2]}
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["X-Source"] == "opsconductor"
    assert secrets.mask("key k3y-material") == "key ***"


def test_webhook_retries_5xx_then_succeeds(session: HttpSession, secrets: FileSecretStore) -> None:
    replies = iter([text("busy", 503), text("oops", 500), text("ok", 202)])
    with serve({"/hook": lambda r: next(replies)}) as srv:
        outcome = session.run(step(type="webhook.call", url=f"{srv.url}/hook"), make_ctx(secrets))
    assert outcome.ok and outcome.exit_code == 202
    assert len(srv.requests) == 3


def test_webhook_gives_up_and_does_not_retry_4xx(session: HttpSession, secrets: FileSecretStore) -> None:
    with serve({"/down": lambda r: text("no", 502), "/bad": lambda r: text("no", 400)}) as srv:
        down = session.run(step(type="webhook.call", url=f"{srv.url}/down"), make_ctx(secrets))
        down_tries = len(srv.requests)
        bad = session.run(step(type="webhook.call", url=f"{srv.url}/bad"), make_ctx(secrets))
    assert not down.ok and down_tries == session.webhook_attempts
    assert "failed after 5 tries; last: POST" in down.error and "HTTP 502" in down.error
    assert not bad.ok and bad.exit_code == 400 and len(srv.requests) == down_tries + 1


def test_webhook_retries_connection_errors(secrets: FileSecretStore) -> None:
    with serve() as srv:
        port = srv.port
    session = HttpSession(webhook_attempts=3, webhook_backoff=0.01)
    outcome = session.run(step(type="webhook.call", url=f"http://127.0.0.1:{port}/h"), make_ctx(secrets))
    session.close()
    assert not outcome.ok and "failed after 3 tries" in outcome.error and "cannot connect" in outcome.error


def test_webhook_backoff_is_interrupted_by_cancel(secrets: FileSecretStore) -> None:
    cancel = threading.Event()
    session = HttpSession(webhook_attempts=3, webhook_backoff=60)

    def reply(r: Recorded) -> tuple[int, dict[str, str], bytes]:
        cancel.set()
        return text("busy", 503)

    with serve({"/hook": reply}) as srv:
        started = time.monotonic()
        outcome = session.run(
            step(type="webhook.call", url=f"{srv.url}/hook"), make_ctx(secrets, cancel=cancel)
        )
    session.close()
    assert outcome.cancelled
    assert time.monotonic() - started < 10


def test_webhook_without_mounted_hmac_secret(session: HttpSession, secrets: FileSecretStore) -> None:
    outcome = session.run(
        step(
            type="webhook.call",
            url="http://127.0.0.1:9/h",
            hmac={"secretKeyRef": {"name": "nope", "key": "k"}},
        ),
        make_ctx(secrets),
    )
    assert not outcome.ok and "Secret nope" in outcome.error


# --- wait -------------------------------------------------------------------------------------------
def test_wait_is_interrupted_by_cancel_and_bounded_by_the_deadline(secrets: FileSecretStore) -> None:
    waiter = WaitSession()
    cancel = threading.Event()
    cancel.set()
    cancelled: StepOutcome = waiter.run(step(type="wait", seconds=3600), make_ctx(secrets, cancel=cancel))
    assert cancelled.cancelled
    started = time.monotonic()
    timed_out = waiter.run(step(type="wait", seconds=3600), make_ctx(secrets, timeout=0.2))
    assert timed_out.timed_out and time.monotonic() - started < 5
    done = waiter.run(step(type="wait", seconds=1), make_ctx(secrets))
    assert done.ok


# --- JSONPath subset --------------------------------------------------------------------------------
def test_json_path_subset() -> None:
    doc = {"a": {"b": [10, {"c d": "x"}]}, "e.f": True}
    assert json_path(doc, "$") == doc
    assert json_path(doc, "$.a.b[0]") == 10
    assert json_path(doc, "$.a.b[-1]['c d']") == "x"
    assert json_path(doc, '$["e.f"]') is True
    for bad in ("a.b", "$.a.b[5]", "$.a..b", "$.a.b[*]", "$.a.b.c", "$.nope"):
        with pytest.raises(JsonPathError):
            json_path(doc, bad)
