"""``python -m opsconductor.runner probe``: one connection test of one Target, run in a probe pod.

Reads a :class:`~opsconductor.probemodels.ProbeRequest` from ``$OPSCONDUCTOR_PROBE_REQUEST``,
dispatches on the Target's protocol, and writes a :class:`~opsconductor.probemodels.ProbeReport` to
the termination log (``$OPSCONDUCTOR_TERMINATION_LOG``, default ``/dev/termination-log``).

Per protocol:

- **ssh**: the runner's own connection code (``protocols.ssh.connect``: host-key check before
  login, the Credential's key or password), then one command collecting facts from ``hostname``,
  ``uname -srm``, ``/etc/os-release`` and ``/proc/uptime``. Latency = connect + login + that command.
- **http**: a GET of the base path with the Target's TLS settings and no credentials; reachable
  means an HTTP answer came back, whatever its status (a 401 still proves the endpoint is up).
- **winrm**: :func:`winrm_collect_facts`: login and one PowerShell facts command (domain included).

Every probe function returns a facts dict keyed by ``TargetFacts`` snake_case field names and raises
:class:`ProbeError` (or ``RuntimeError``) with a message a person can act on. Every message is
masked with the secret store before it leaves the pod.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import ssl
import sys
import threading
import time
from pathlib import Path

import httpx
import paramiko

from opsconductor.plan import TERMINATION_LOG, JobRef, PlanTarget, RunPlan
from opsconductor.probemodels import (
    PROBE_REQUEST_ENV,
    REASON_AUTHENTICATION_FAILED,
    REASON_CONNECTED,
    REASON_CONNECTION_FAILED,
    REASON_CONNECTION_REFUSED,
    REASON_CREDENTIAL_INVALID,
    REASON_HOST_KEY_MISMATCH,
    REASON_NAME_RESOLUTION_FAILED,
    REASON_NOT_SUPPORTED,
    REASON_PROBE_FAILED,
    REASON_TIMEOUT,
    REASON_TLS_ERROR,
    ProbeReport,
    ProbeRequest,
)
from opsconductor.runner.protocols import ssh
from opsconductor.runner.protocols.base import SecretStore, StepContext
from opsconductor.runner.secrets import FileSecretStore

log = logging.getLogger("opsconductor.runner.probe")

Facts = dict[str, str | int]
FACT_LIMITS = {"hostname": 253, "architecture": 64}
"""Longest value per fact (``TargetFacts``); others are cut at 256."""
SSH_FACTS_COMMAND = (
    "echo @@hostname; hostname 2>/dev/null || cat /proc/sys/kernel/hostname; "
    "echo @@uname; uname -srm; echo @@os-release; cat /etc/os-release 2>/dev/null; "
    "echo @@uptime; cat /proc/uptime 2>/dev/null; echo @@end"
)


class ProbeError(RuntimeError):
    """The probe failed; ``reason`` (optional) overrides the reason guessed from the message."""

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason


class ProbeNotSupported(ProbeError):
    """The protocol cannot be probed by this build."""

    def __init__(self, message: str) -> None:
        super().__init__(message, REASON_NOT_SUPPORTED)


# --- pure helpers ---------------------------------------------------------------------------------
def classify(message: str) -> str:
    """Guess the Reachable reason from a failure message (the protocol modules' wording)."""
    text = message.lower()
    rules = (
        (("timed out", "no progress within", "timeout"), REASON_TIMEOUT),
        (("host key", "host's identity"), REASON_HOST_KEY_MISMATCH),
        (
            ("authentication failed", "does not accept", "requires more", "unauthorized"),
            REASON_AUTHENTICATION_FAILED,
        ),
        (("credential", "private key", "passphrase"), REASON_CREDENTIAL_INVALID),
        (("certificate", "tls", "ssl"), REASON_TLS_ERROR),
        (("refused",), REASON_CONNECTION_REFUSED),
        (("resolve", "name or service not known", "nodename nor servname"), REASON_NAME_RESOLUTION_FAILED),
    )
    for needles, reason in rules:
        if any(needle in text for needle in needles):
            return reason
    return REASON_CONNECTION_FAILED


def _cut(facts: Facts) -> Facts:
    return {
        k: (v[: FACT_LIMITS.get(k, 256)] if isinstance(v, str) else v) for k, v in facts.items() if v != ""
    }


def _os_release(lines: list[str]) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in lines:
        key, sep, value = line.partition("=")
        if sep and re.fullmatch(r"[A-Z_]+", key):
            values[key] = value.strip().strip("\"'")
    return values


def parse_ssh_facts(output: str) -> Facts:
    """Facts from the output of :data:`SSH_FACTS_COMMAND`.

    Returns:
        ``hostname``, ``os_name`` (``uname -s``), ``kernel`` (``uname -r``), ``architecture``
        (``uname -m``), ``distribution`` (os-release ``PRETTY_NAME``, else ``NAME``), ``os_version``
        (os-release ``VERSION_ID``) and ``uptime_seconds``, each when the host told it.
    """
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in output.splitlines():
        if line.startswith("@@"):
            current = sections.setdefault(line[2:].strip(), [])
        elif current is not None and line.strip():
            current.append(line.strip())
    facts: Facts = {}
    if sections.get("hostname"):
        facts["hostname"] = sections["hostname"][0]
    uname = (sections.get("uname") or [""])[0].split()
    if len(uname) >= 1:
        facts["os_name"] = uname[0]
    if len(uname) >= 2:
        facts["kernel"] = uname[1]
    if len(uname) >= 3:
        facts["architecture"] = uname[2]
    release = _os_release(sections.get("os-release") or [])
    distribution = release.get("PRETTY_NAME") or release.get("NAME")
    if distribution:
        facts["distribution"] = distribution
    if release.get("VERSION_ID"):
        facts["os_version"] = release["VERSION_ID"]
    uptime = (sections.get("uptime") or [""])[0].split()
    if uptime:
        with contextlib.suppress(ValueError):
            facts["uptime_seconds"] = max(0, int(float(uptime[0])))
    return _cut(facts)


def http_url(target: PlanTarget) -> str:
    """Return the URL a probe GETs: scheme, address (IPv6 in brackets), port and base path."""
    host = target.address.strip("[]")
    host = f"[{host}]" if ":" in host else host
    return f"{target.scheme or 'https'}://{host}:{target.port}{target.base_path or '/'}"


# --- protocols ------------------------------------------------------------------------------------
def _step_context(target: PlanTarget, secrets: SecretStore, timeout: float) -> StepContext:
    plan = RunPlan(job=JobRef(namespace="", name=f"probe-{target.name}", uid=""), steps=[])
    return StepContext(
        plan=plan,
        target=target,
        secrets=secrets,
        workspace=Path("/tmp"),
        cancel=threading.Event(),
        deadline=time.monotonic() + timeout,
    )


def probe_ssh(
    target: PlanTarget, secrets: SecretStore, timeout: float, collect_facts: bool
) -> tuple[Facts, str]:
    """Log in over SSH and (optionally) collect facts; the note names the user and host key."""
    ctx = _step_context(target, secrets, timeout)
    try:
        connection = ssh.connect(target, ctx)
    except ssh.SshStepError as error:
        raise ProbeError(str(error), REASON_TIMEOUT if error.timed_out else None) from None
    where = ssh.endpoint(target.address, target.port)
    try:
        remaining = max(1.0, ctx.remaining() or timeout)
        channel = connection.transport.open_session(timeout=remaining)
        channel.settimeout(remaining)
        channel.exec_command(SSH_FACTS_COMMAND if collect_facts else "true")
        output = channel.makefile("rb").read().decode("utf-8", "replace")
        channel.recv_exit_status()
    except TimeoutError:
        raise ProbeError(
            f"ssh {where}: logged in, but the facts command did not finish in time", REASON_TIMEOUT
        ) from None
    except (OSError, EOFError, paramiko.SSHException) as error:
        raise ProbeError(f"ssh {where}: logged in, but running a command failed: {error}") from None
    finally:
        connection.close()
    note = f"logged in as {connection.username} (host key {connection.server_key.describe()})"
    return (parse_ssh_facts(output) if collect_facts else {}), note


def _cause(error: BaseException, kind: type[BaseException]) -> BaseException | None:
    """Find the first ``kind`` exception in the cause/context chain (httpx wraps httpcore's)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, kind):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def probe_http(
    target: PlanTarget, secrets: SecretStore, timeout: float, collect_facts: bool
) -> tuple[Facts, str]:
    """GET the base path; any HTTP answer proves the endpoint reachable.

    Returns:
        No facts (an HTTP endpoint does not tell its OS), and the status line as the note.
    """
    url = http_url(target)
    context: ssl.SSLContext | bool = False  # plain http: loading the CA store would only cost time
    if url.startswith("https:"):
        try:
            context = ssl.create_default_context(cafile=target.ca_bundle_file)
        except (OSError, ssl.SSLError) as error:
            raise ProbeError(
                f"GET {url}: cannot load the CA bundle {target.ca_bundle_file}: {error}", REASON_TLS_ERROR
            ) from None
        if target.insecure_skip_tls_verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
    connect = min(float(target.connect_timeout_seconds), timeout)
    try:
        with httpx.Client(verify=context, timeout=httpx.Timeout(timeout, connect=connect)) as client:
            response = client.get(url, headers={"User-Agent": "opsconductor-probe"})
    except httpx.TimeoutException:
        raise ProbeError(f"GET {url}: no answer within {timeout:g}s", REASON_TIMEOUT) from None
    except httpx.HTTPError as error:
        cause = _cause(error, ssl.SSLCertVerificationError)
        if isinstance(cause, ssl.SSLCertVerificationError):
            raise ProbeError(
                f"GET {url}: the server's TLS certificate is not trusted ({cause.verify_message}); set the "
                "Target's http.tls.caBundleSecretRef",
                REASON_TLS_ERROR,
            ) from None
        raise ProbeError(f"GET {url}: {error or type(error).__name__}") from None
    return {}, f"GET {target.base_path or '/'}: HTTP {response.status_code} {response.reason_phrase}".strip()


def winrm_collect_facts(target: PlanTarget, secrets: SecretStore, timeout: float) -> Facts:
    """WinRM facts (hostname, OS, build, domain, architecture, uptime) through the WinRM session.

    ``RuntimeError`` from the session (login refused, unreachable, TLS) becomes an unreachable report.
    """
    from opsconductor.runner.protocols import winrm  # paramiko-only probes never import pywinrm

    return winrm.collect_facts(target, secrets, timeout)


def probe(request: ProbeRequest, secrets: SecretStore) -> ProbeReport:
    """Run one probe and describe its outcome (never raises for a failure of the remote side)."""
    target = request.target
    timeout = float(request.timeout_seconds)
    started = time.monotonic()
    try:
        if target.protocol == "ssh":
            facts, message = probe_ssh(target, secrets, timeout, request.collect_facts)
        elif target.protocol == "http":
            facts, message = probe_http(target, secrets, timeout, request.collect_facts)
        elif target.protocol == "winrm":
            facts = winrm_collect_facts(target, secrets, timeout)
            facts, message = (facts if request.collect_facts else {}), ""
        else:
            raise ProbeNotSupported(f"probes of {target.protocol} targets are not implemented yet")
    except ProbeError as error:
        text = secrets.mask(str(error))
        return ProbeReport(reachable=False, reason=error.reason or classify(text), message=text)
    except RuntimeError as error:  # the WinRM module's failure convention
        text = secrets.mask(str(error))
        return ProbeReport(reachable=False, reason=classify(text), message=text)
    latency = int((time.monotonic() - started) * 1000)
    return ProbeReport(
        reachable=True,
        reason=REASON_CONNECTED,
        message=secrets.mask(message),
        latency_milliseconds=latency,
        facts={k: (secrets.mask(v) if isinstance(v, str) else v) for k, v in _cut(facts).items()},
    )


def main() -> int:
    """Probe the requested Target; write the report; exit 0 when a report was written."""
    logging.basicConfig(
        level=os.environ.get("OPSCONDUCTOR_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    secrets = FileSecretStore()
    try:
        request = ProbeRequest.model_validate_json(os.environ.get(PROBE_REQUEST_ENV) or "")
    except ValueError as error:
        report = ProbeReport(
            reachable=False, reason=REASON_PROBE_FAILED, message=f"invalid probe request: {error}"
        )
    else:
        try:
            report = probe(request, secrets)
        except Exception as error:  # a bug must still end as a report, not a silent crash
            log.exception("probe failed")
            text = secrets.mask(f"{type(error).__name__}: {error}")
            report = ProbeReport(reachable=False, reason=REASON_PROBE_FAILED, message=text)
    data = report.to_json()
    print(data, flush=True)
    path = Path(os.environ.get("OPSCONDUCTOR_TERMINATION_LOG") or TERMINATION_LOG)
    try:
        path.write_text(data)
    except OSError as error:
        log.error("cannot write the probe report to %s: %s", path, error)
        return 1
    return 0
