"""HTTP steps (``http.get|post|put|patch|delete``), ``webhook.call`` and ``wait``.

:class:`HttpSession` sends requests with httpx, one client per TLS configuration for the whole run:

- URLs are absolute, or relative to the HTTP Target's ``{scheme}://{address}:{port}{basePath}``;
- the Target's Credential (BasicAuth, BearerToken, APIKey, ClientCertificate) and TLS settings
  (``ca_bundle_file``, ``insecure_skip_tls_verify``) apply to requests to that Target only: a
  relative URL, or an absolute one whose host is the Target's address. Credentials are never sent
  to other hosts;
- success is ``expectStatus`` (default any 2xx) and every assertion; assertions read a JSONPath
  subset (``$.a.b[0]``, ``$['key']``) evaluated by :func:`json_path`, without a dependency;
- outputs are ``status`` and ``body`` (bounded); stdout is the response body (bounded).

``webhook.call`` POSTs a JSON payload, optionally signed with HMAC-SHA256 (``sha256=<hex>``) using a
key read from a Secret file, and retries connection errors and 5xx answers with exponential backoff.

:class:`WaitSession` runs ``wait`` steps. Every wait in this module ends early on cancellation.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx

from opsconductor.api.opsjob import HttpStep, ResponseAssertion, Step, WaitStep, WebhookCallStep
from opsconductor.plan import PlanCredential, PlanTarget
from opsconductor.runner.protocols.base import StepContext, StepOutcome

HTTP_STEP_TYPES = frozenset({"http.get", "http.post", "http.put", "http.patch", "http.delete"})
WEBHOOK_STEP_TYPE = "webhook.call"
WAIT_STEP_TYPE = "wait"

MAX_BODY_BYTES = 1 << 20
"""Read at most this much of a response body; the rest is discarded."""
BODY_OUTPUT_CHARS = 64 * 1024
"""Longest ``outputs.body`` (for later templates)."""
DEFAULT_REQUEST_TIMEOUT_SECONDS = 300.0
"""Request timeout of steps without ``timeoutSeconds``."""
CANCEL_POLL_SECONDS = 0.1
"""How often a waiting request checks for cancellation."""
WEBHOOK_ATTEMPTS = 5
WEBHOOK_BACKOFF_SECONDS = 1.0
WEBHOOK_MAX_BACKOFF_SECONDS = 30.0
USER_AGENT = "opsconductor-runner"

_ABSOLUTE = re.compile(r"^https?://", re.IGNORECASE)
T = TypeVar("T")


class HttpStepError(Exception):
    """A problem a person must fix in the step, Target or Credential (not worth retrying)."""


# --- JSONPath subset ----------------------------------------------------------------------------
_PATH_TOKEN = re.compile(
    r"""\.(?P<name>[A-Za-z_$][\w$-]*)"""
    r"""|\[(?P<index>-?\d+)\]"""
    r"""|\[\s*'(?P<sq>(?:[^'\\]|\\.)*)'\s*\]"""
    r"""|\[\s*"(?P<dq>(?:[^"\\]|\\.)*)"\s*\]"""
)


class JsonPathError(ValueError):
    """The path is not in the supported subset, or does not exist in the document."""


def parse_json_path(path: str) -> list[str | int]:
    """Split a JSONPath of the supported subset into keys and indexes.

    Supported: ``$``, ``.name``, ``['name']``, ``["name"]``, ``[index]`` (negative counts from the end).

    Args:
        path: e.g. ``$.items[0].status``.

    Returns:
        The steps, e.g. ``["items", 0, "status"]``.

    Raises:
        JsonPathError: the path does not start with ``$`` or uses unsupported syntax.
    """
    if not path.startswith("$"):
        raise JsonPathError(f"JSONPath {path!r} must start with $")
    steps: list[str | int] = []
    position = 1
    while position < len(path):
        match = _PATH_TOKEN.match(path, position)
        if match is None:
            raise JsonPathError(
                f"unsupported JSONPath syntax at {path[position:]!r} in {path!r} "
                "(supported: $.key, $['key'], $[0])"
            )
        if match["name"] is not None:
            steps.append(match["name"])
        elif match["index"] is not None:
            steps.append(int(match["index"]))
        else:
            quoted = match["sq"] if match["sq"] is not None else match["dq"]
            steps.append(re.sub(r"\\(.)", r"\1", quoted))
        position = match.end()
    return steps


def json_path(document: Any, path: str) -> Any:
    """Evaluate a JSONPath of the supported subset (see :func:`parse_json_path`).

    Args:
        document: parsed JSON.
        path: the path.

    Returns:
        The value at the path.

    Raises:
        JsonPathError: unsupported syntax, or a key/index that is not there.
    """
    value = document
    walked = "$"
    for step in parse_json_path(path):
        if isinstance(step, int):
            if not isinstance(value, list):
                raise JsonPathError(f"{walked} is not a list")
            if not -len(value) <= step < len(value):
                raise JsonPathError(f"{walked} has {len(value)} item(s), no index {step}")
            value = value[step]
            walked += f"[{step}]"
        else:
            if not isinstance(value, dict):
                raise JsonPathError(f"{walked} is not an object")
            if step not in value:
                raise JsonPathError(f"{walked} has no key {step!r}")
            value = value[step]
            walked += f".{step}"
    return value


def json_text(value: Any) -> str:
    """Return the text an assertion compares: strings as they are, anything else as compact JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def check_assertion(assertion: ResponseAssertion, body: str) -> str | None:
    """Check one assertion against a response body.

    Args:
        assertion: the assertion.
        body: the response body text.

    Returns:
        None when it holds, else why not.
    """
    where = assertion.json_path or "body"
    if assertion.json_path:
        try:
            text = json_text(json_path(json.loads(body), assertion.json_path))
        except json.JSONDecodeError:
            return f"{where}: the response body is not JSON"
        except JsonPathError as error:
            return f"{where}: {error}"
    else:
        text = body
    shown = text if len(text) <= 200 else text[:200] + "…"
    if assertion.equals is not None and text != assertion.equals:
        return f"{where} equals {assertion.equals!r}: got {shown!r}"
    if assertion.contains is not None and assertion.contains not in text:
        return f"{where} contains {assertion.contains!r}: got {shown!r}"
    if assertion.matches is not None:
        try:
            pattern = re.compile(assertion.matches)
        except re.error as error:
            return f"{where} matches {assertion.matches!r}: not a valid regular expression ({error})"
        if pattern.search(text) is None:
            return f"{where} matches {assertion.matches!r}: got {shown!r}"
    return None


# --- URLs and TLS -------------------------------------------------------------------------------
def _host(address: str) -> str:
    return f"[{address}]" if ":" in address and not address.startswith("[") else address


def target_base_url(target: PlanTarget) -> str:
    """Return ``{scheme}://{address}:{port}{base_path}`` of an HTTP Target."""
    scheme = target.scheme or ("https" if target.port == 443 else "http")
    return f"{scheme}://{_host(target.address)}:{target.port}{target.base_path or '/'}"


def resolve_url(url: str, target: PlanTarget | None) -> str:
    """Make a step URL absolute.

    Args:
        url: absolute ``http(s)://`` URL, or a path relative to the Target's base URL.
        target: the current target.

    Returns:
        The absolute URL.

    Raises:
        HttpStepError: a relative URL without an HTTP Target.
    """
    if _ABSOLUTE.match(url):
        return url
    if target is None or target.protocol != "http":
        what = "no target" if target is None else f"Target {target.name} (protocol {target.protocol})"
        raise HttpStepError(
            f"URL {url!r} is relative, but the step runs on {what}: use an absolute http(s):// URL "
            "or run the step on an http Target"
        )
    return target_base_url(target).rstrip("/") + "/" + url.lstrip("/")


def _strip_brackets(host: str) -> str:
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def addresses_target(url: str, target: PlanTarget | None) -> bool:
    """Whether ``url`` goes to ``target`` (an http Target, same host): its Credential and TLS apply."""
    if target is None or target.protocol != "http":
        return False
    host = urlsplit(url).hostname or ""
    return host.lower() == _strip_brackets(target.address).lower()


@dataclass(frozen=True)
class TlsConfig:
    """How to verify the server and which client certificate to present."""

    ca_file: str | None = None
    insecure: bool = False
    cert_file: str | None = None
    key_file: str | None = None

    def context(self) -> ssl.SSLContext:
        """Return an SSL context for this configuration."""
        context = ssl.create_default_context(cafile=self.ca_file)
        if self.insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if self.cert_file and self.key_file:
            context.load_cert_chain(self.cert_file, self.key_file)
        return context


def tls_config(target: PlanTarget | None, applies: bool) -> TlsConfig:
    """Return the TLS configuration of a request (the Target's only when ``applies``)."""
    if target is None or not applies:
        return TlsConfig()
    credential = target.credential
    cert = key = ca = None
    if credential is not None and credential.type == "ClientCertificate":
        cert = credential.files.get("certificate")
        key = credential.files.get("privateKey")
        ca = credential.files.get("ca")
    return TlsConfig(
        ca_file=target.ca_bundle_file or ca,
        insecure=target.insecure_skip_tls_verify,
        cert_file=cert,
        key_file=key,
    )


def credential_auth(credential: PlanCredential, ctx: StepContext) -> dict[str, str]:
    """Return the request headers carrying a Credential (values read from their secret files).

    Args:
        credential: the Target's Credential.
        ctx: the step context (its SecretStore registers the values for masking).

    Returns:
        Headers to add (empty for ClientCertificate, which authenticates in TLS).

    Raises:
        HttpStepError: a Credential type that cannot authenticate HTTP requests.
    """

    def value(role: str) -> str:
        path = credential.files.get(role)
        if path is None:
            raise HttpStepError(f"Credential {credential.name} has no {role} in its Secret")
        return ctx.secrets.read(path).rstrip("\r\n")

    if credential.type == "BasicAuth":
        user = credential.username or value("username").strip()
        token = base64.b64encode(f"{user}:{value('password')}".encode()).decode()
        return {"Authorization": f"Basic {token}"}
    if credential.type == "BearerToken":
        return {"Authorization": f"Bearer {value('token').strip()}"}
    if credential.type == "APIKey":
        return {credential.api_key_header or "X-API-Key": value("key").strip()}
    if credential.type == "ClientCertificate":
        return {}
    raise HttpStepError(
        f"Credential {credential.name} is of type {credential.type}, which cannot authenticate HTTP "
        "requests (use BasicAuth, BearerToken, APIKey or ClientCertificate)"
    )


# --- running requests interruptibly -----------------------------------------------------------
@dataclass
class Response:
    """What was read of a response."""

    status: int
    headers: httpx.Headers
    body: bytes
    body_bytes: int
    """Full size of the body (more than ``len(body)`` when it was cut at MAX_BODY_BYTES)."""
    encoding: str | None = None

    def text(self) -> str:
        """Return the (possibly cut) body decoded as text."""
        return self.body.decode(self.encoding or "utf-8", errors="replace")


class Interrupted(Exception):
    """The attempt was cancelled or ran out of time while waiting."""

    def __init__(self, cancelled: bool) -> None:
        super().__init__("cancelled" if cancelled else "timed out")
        self.cancelled = cancelled


@dataclass
class _Call:
    done: threading.Event = field(default_factory=threading.Event)
    abandon: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None


def run_interruptibly(function: Callable[[threading.Event], T], ctx: StepContext) -> T:
    """Run ``function(abandon)`` in a helper thread; return early on cancel or deadline.

    Args:
        function: the blocking call; it should stop soon after ``abandon`` is set.
        ctx: the step context (cancel event and deadline).

    Returns:
        The function's result.

    Raises:
        Interrupted: cancellation or the deadline came first (``abandon`` is then set).
        BaseException: whatever the function raised.
    """
    call = _Call()

    def body() -> None:
        try:
            call.result = function(call.abandon)
        except BaseException as error:  # handed to the caller
            call.error = error
        finally:
            call.done.set()

    threading.Thread(target=body, name="http-request", daemon=True).start()
    while not call.done.wait(CANCEL_POLL_SECONDS):
        remaining = ctx.remaining()
        if ctx.cancel.is_set() or (remaining is not None and remaining <= 0):
            call.abandon.set()
            raise Interrupted(cancelled=ctx.cancel.is_set())
    if call.error is not None:
        raise call.error
    return call.result  # type: ignore[no-any-return]


def interruptible_sleep(seconds: float, ctx: StepContext) -> None:
    """Sleep, ending early on cancellation or at the deadline.

    Raises:
        Interrupted: cancellation or the deadline came first.
    """
    remaining = ctx.remaining()
    wait = seconds if remaining is None else min(seconds, remaining)
    if ctx.cancel.wait(wait):
        raise Interrupted(cancelled=True)
    if remaining is not None and remaining < seconds:
        raise Interrupted(cancelled=False)


def describe_error(error: httpx.HTTPError, method: str, url: str) -> str:
    """Return an actionable message for a failed request."""
    where = f"{method} {url}"
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return (
                f"{where}: the server's TLS certificate is not trusted ({cause.verify_message}); set the "
                "Target's http.tls.caBundleSecretRef to the CA that signed it"
            )
        if isinstance(cause, ssl.SSLError):
            return f"{where}: TLS handshake failed ({cause.reason or cause}); check the client certificate"
        cause = cause.__cause__ or cause.__context__
    if isinstance(error, httpx.ConnectTimeout):
        return f"{where}: connection timed out; check that the host is up and the port is open"
    if isinstance(error, httpx.ConnectError):
        return f"{where}: cannot connect ({error}); check the address, the port and that the server runs"
    if isinstance(error, httpx.TimeoutException):
        return f"{where}: no answer in time ({type(error).__name__})"
    if isinstance(error, httpx.TooManyRedirects):
        return f"{where}: too many redirects"
    return f"{where}: {type(error).__name__}: {error}"


# --- sessions -----------------------------------------------------------------------------------
class HttpSession:
    """Runs ``http.*`` and ``webhook.call`` steps; one httpx client per TLS configuration."""

    step_types = HTTP_STEP_TYPES | {WEBHOOK_STEP_TYPE}

    def __init__(
        self,
        *,
        webhook_attempts: int = WEBHOOK_ATTEMPTS,
        webhook_backoff: float = WEBHOOK_BACKOFF_SECONDS,
        webhook_max_backoff: float = WEBHOOK_MAX_BACKOFF_SECONDS,
    ) -> None:
        """Create the session.

        Args:
            webhook_attempts: tries per webhook.call attempt (connection errors and 5xx).
            webhook_backoff: first wait between webhook tries; doubles each time.
            webhook_max_backoff: upper bound of that wait.
        """
        self.webhook_attempts = webhook_attempts
        self.webhook_backoff = webhook_backoff
        self.webhook_max_backoff = webhook_max_backoff
        self._clients: dict[TlsConfig, httpx.Client] = {}
        self._lock = threading.Lock()

    def client(self, tls: TlsConfig) -> httpx.Client:
        """Return the shared client for a TLS configuration."""
        with self._lock:
            client = self._clients.get(tls)
            if client is None:
                client = httpx.Client(verify=tls.context(), headers={"User-Agent": USER_AGENT})
                self._clients[tls] = client
            return client

    def close(self) -> None:
        """Close every client."""
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            client.close()

    def run(self, step: Step, ctx: StepContext) -> StepOutcome:
        """Run one attempt of an http.* or webhook.call step."""
        try:
            if isinstance(step, HttpStep):
                return self._http(step, ctx)
            if isinstance(step, WebhookCallStep):
                return self._webhook(step, ctx)
            return StepOutcome(ok=False, error=f"HttpSession cannot run {step.type} steps")
        except Interrupted as interrupted:
            return _interrupted(interrupted, ctx)
        except HttpStepError as error:
            return StepOutcome(ok=False, error=str(error))
        except OSError as error:  # secret or certificate files
            return StepOutcome(ok=False, error=f"cannot read a file the request needs: {error}")

    # http.*
    def _timeout(self, ctx: StepContext) -> httpx.Timeout:
        remaining = ctx.remaining()
        total = DEFAULT_REQUEST_TIMEOUT_SECONDS if remaining is None else max(0.001, remaining)
        connect = min(total, float(ctx.target.connect_timeout_seconds)) if ctx.target else total
        return httpx.Timeout(total, connect=connect)

    def _send(
        self,
        tls: TlsConfig,
        ctx: StepContext,
        *,
        method: str,
        url: str,
        follow_redirects: bool = True,
        **kwargs: Any,
    ) -> Response:
        client = self.client(tls)
        timeout = self._timeout(ctx)

        def call(abandon: threading.Event) -> Response:
            with client.stream(
                method, url, timeout=timeout, follow_redirects=follow_redirects, **kwargs
            ) as response:
                chunks: list[bytes] = []
                kept = total = 0
                for chunk in response.iter_bytes():
                    if abandon.is_set():
                        break
                    total += len(chunk)
                    if kept < MAX_BODY_BYTES:
                        piece = chunk[: MAX_BODY_BYTES - kept]
                        chunks.append(piece)
                        kept += len(piece)
                body = b"".join(chunks)
                return Response(
                    response.status_code, response.headers, body, total, response.charset_encoding
                )

        return run_interruptibly(call, ctx)

    def _http(self, step: HttpStep, ctx: StepContext) -> StepOutcome:
        method = step.type.removeprefix("http.").upper()
        url = resolve_url(step.url, ctx.target)
        applies = addresses_target(url, ctx.target)
        headers: dict[str, str] = {}
        if applies and ctx.target is not None and ctx.target.credential is not None:
            headers.update(credential_auth(ctx.target.credential, ctx))
        headers.update(step.headers or {})
        kwargs: dict[str, Any] = {"headers": headers, "params": step.query or None}
        if step.body is not None:
            if step.body.json_ is not None:
                kwargs["json"] = step.body.json_
            elif step.body.form is not None:
                kwargs["data"] = step.body.form
            elif step.body.text is not None:
                kwargs["content"] = step.body.text.encode()
        try:
            response = self._send(
                tls_config(ctx.target, applies),
                ctx,
                method=method,
                url=url,
                follow_redirects=step.follow_redirects,
                **kwargs,
            )
        except httpx.TimeoutException as error:
            return StepOutcome(ok=False, timed_out=True, error=describe_error(error, method, url))
        except httpx.HTTPError as error:
            return StepOutcome(ok=False, error=describe_error(error, method, url))
        except ssl.SSLError as error:
            return StepOutcome(ok=False, error=f"{method} {url}: TLS setup failed: {error}")
        return http_outcome(step, method, url, response)

    # webhook.call
    def _webhook(self, step: WebhookCallStep, ctx: StepContext) -> StepOutcome:
        url = step.url
        if not _ABSOLUTE.match(url):
            raise HttpStepError(f"webhook URL {url!r} must be an absolute http(s):// URL")
        body = json.dumps(step.payload or {}, separators=(",", ":"), ensure_ascii=False).encode()
        headers = {"Content-Type": "application/json", **(step.headers or {})}
        if step.hmac is not None:
            ref = step.hmac.secret_key_ref
            directory = ctx.plan.secret_dirs.get(ref.name)
            if directory is None:
                raise HttpStepError(f"Secret {ref.name} (hmac.secretKeyRef) is not mounted in the runner")
            key = ctx.secrets.read_bytes(str(Path(directory) / ref.key)).rstrip(b"\r\n")
            headers[step.hmac.header] = "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()
        errors: list[str] = []
        backoff = self.webhook_backoff
        for attempt in range(1, self.webhook_attempts + 1):
            try:
                response = self._send(TlsConfig(), ctx, method="POST", url=url, content=body, headers=headers)
            except httpx.HTTPError as error:
                errors.append(describe_error(error, "POST", url))
            else:
                if response.status < 500:
                    return webhook_outcome(url, response, attempt)
                errors.append(f"POST {url}: HTTP {response.status}")
            if attempt < self.webhook_attempts:
                interruptible_sleep(backoff, ctx)
                backoff = min(backoff * 2, self.webhook_max_backoff)
        return StepOutcome(
            ok=False, error=f"webhook failed after {self.webhook_attempts} tries; last: {errors[-1]}"
        )


def _interrupted(interrupted: Interrupted, ctx: StepContext) -> StepOutcome:
    if interrupted.cancelled:
        return StepOutcome(ok=False, cancelled=True, error="cancelled")
    return StepOutcome(ok=False, timed_out=True, error="timed out")


def _outputs(response: Response) -> dict[str, str]:
    return {"status": str(response.status), "body": response.text()[:BODY_OUTPUT_CHARS]}


def http_outcome(step: HttpStep, method: str, url: str, response: Response) -> StepOutcome:
    """Judge an HTTP response against ``expectStatus`` and the assertions.

    Args:
        step: the rendered step.
        method: the HTTP method.
        url: the absolute URL requested.
        response: what was read.

    Returns:
        The outcome; ``exit_code`` is the HTTP status, stdout the body.
    """
    text = response.text()
    problems: list[str] = []
    expected = step.expect_status
    if expected is not None and response.status not in expected:
        problems.append(f"HTTP {response.status}, expected {', '.join(map(str, expected))}")
    elif expected is None and not 200 <= response.status < 300:
        problems.append(f"HTTP {response.status}, expected a 2xx status")
    if not problems:
        for assertion in step.assertions or []:
            problem = check_assertion(assertion, text)
            if problem is not None:
                problems.append(f"assertion failed: {problem}")
    if response.body_bytes > len(response.body):
        text += f"\n… [body cut at {MAX_BODY_BYTES} of {response.body_bytes} bytes]"
    error = f"{method} {url}: " + "; ".join(problems) if problems else ""
    return StepOutcome(
        ok=not problems, exit_code=response.status, stdout=text, error=error, outputs=_outputs(response)
    )


def webhook_outcome(url: str, response: Response, tries: int) -> StepOutcome:
    """Judge a webhook response: any 2xx is success."""
    ok = 200 <= response.status < 300
    error = "" if ok else f"POST {url}: HTTP {response.status}, expected a 2xx status"
    stderr = f"delivered after {tries} tries\n" if tries > 1 and ok else ""
    return StepOutcome(
        ok=ok,
        exit_code=response.status,
        stdout=response.text(),
        stderr=stderr,
        error=error,
        outputs=_outputs(response),
    )


class WaitSession:
    """Runs ``wait`` steps: pauses, ending early on cancellation."""

    step_types = frozenset({WAIT_STEP_TYPE})

    def run(self, step: Step, ctx: StepContext) -> StepOutcome:
        """Wait ``step.seconds`` (cut short by the step timeout or cancellation)."""
        if not isinstance(step, WaitStep):
            return StepOutcome(ok=False, error=f"WaitSession cannot run {step.type} steps")
        started = time.monotonic()
        try:
            interruptible_sleep(float(step.seconds), ctx)
        except Interrupted as interrupted:
            waited = time.monotonic() - started
            outcome = _interrupted(interrupted, ctx)
            outcome.error = f"{outcome.error} after waiting {waited:.1f}s of {step.seconds}s"
            return outcome
        return StepOutcome(ok=True, stdout=f"waited {step.seconds}s\n")

    def close(self) -> None:
        """Nothing to close."""
