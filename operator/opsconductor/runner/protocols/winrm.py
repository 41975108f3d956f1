r"""The WinRM protocol: ``winrm.exec`` and ``winrm.copy`` over WS-Management, with pywinrm.

This module owns everything between a rendered WinRM step and a Windows host:

- **Connections.** One ``winrm.Protocol`` per target (and credential), created on first use and
  reused by every later step of the run; :meth:`WinrmSession.close` deletes its shells. Steps reuse
  one remote shell per target; a step with ``env`` or ``workingDir`` gets a shell of its own
  (WinRS sets both per shell) that is deleted after it. A connection that broke is dropped, so a
  retry reconnects; a shell the host no longer knows is replaced once.
- **Login.** ``transport`` ntlm (default), basic, kerberos or credssp with a ``BasicAuth``
  Credential (``DOMAIN\\user`` or ``user@domain`` user names are passed as written), or certificate
  logins with a ``ClientCertificate`` Credential over https. Kerberos and CredSSP need client
  libraries the runner image does not ship; without them the step fails saying so (see
  docs/winrm.md). Secrets are read through ``ctx.secrets``, so they are masked wherever they appear.
- **Encryption and trust.** ``message_encryption`` auto encrypts every message over http with the
  NTLM/Kerberos session key (MS-WSMV 2.2.9.1); over https the server certificate is checked against
  the Target's CA bundle (``ca_bundle_file``), or the system roots; skipping the check needs the
  explicit ``insecure_skip_tls_verify``. Proxies and CA variables from the environment are ignored.
- **Commands.** PowerShell (the default) is sent as ``powershell.exe -EncodedCommand`` (UTF-16LE,
  base64), so no quoting reaches cmd.exe; ``shell: cmd`` sends the command line as is. Output is
  read in Receive loops (UTF-8 code page 65001); each Receive waits at most
  ``min(operationTimeout, RECEIVE_POLL_SECONDS, time left)``, so long commands stream and the step
  timeout and cancellation are noticed within seconds. On timeout or cancellation the remote command
  gets ``ctrl_c`` then ``terminate`` Signals (not abandoned). PowerShell's error streams arrive as
  CLIXML on stderr and are decoded into the text a console would show (:func:`decode_clixml`).
- **Files.** ``winrm.copy`` sends each file through one PowerShell command reading base64 lines from
  stdin (Send requests of :data:`COPY_CHUNK_BYTES`), written to a temporary name and moved into
  place only when its SHA-256, computed on the host, matches the one computed here; parent
  directories are created. ``mode`` has no meaning for NTFS ACLs and is ignored (noted in the log).

:func:`collect_facts` (for Target probes) logs in and runs one PowerShell command returning the
``TargetFacts`` fields.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import re
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import requests
import xmltodict  # type: ignore[import-untyped]
from winrm.exceptions import (
    InvalidCredentialsError,
    WinRMError,
    WinRMOperationTimeoutError,
    WinRMTransportError,
    WSManFaultError,
)
from winrm.protocol import Protocol

from opsconductor.api.opsjob import Step, WinrmCopyStep, WinrmExecStep
from opsconductor.plan import PlanTarget
from opsconductor.runner.protocols.base import SecretStore, StepContext, StepOutcome
from opsconductor.runner.protocols.ssh import (
    HeadTailBuffer,
    LineSplitter,
    SshStepError,
    endpoint,
    resolve_source,
)

STEP_TYPES = frozenset({"winrm.exec", "winrm.copy"})
RESOURCE_URI = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/cmd"
SIGNAL_ACTION = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/Signal"
SIGNAL_CTRL_C = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/signal/ctrl_c"
SHELL_NOT_FOUND = 2150858843
UTF8_CODEPAGE = 65001
DEFAULT_OPERATION_TIMEOUT_SECONDS = 20
RECEIVE_POLL_SECONDS = 5
"""Longest single Receive wait, so a cancellation is noticed within this many seconds."""
READ_TIMEOUT_MARGIN_SECONDS = 10
"""HTTP read timeout beyond the OperationTimeout (the server may block that long on a Receive)."""
STOP_TIMEOUT_SECONDS = 5
"""OperationTimeout of the Signals that stop a command."""
COPY_CHUNK_BYTES = 48 * 1024
"""File bytes per Send request (base64 in an envelope well under the default MaxEnvelopeSize 150 KiB)."""
STDERR_CLIXML_BYTES = 4 << 20
"""stderr kept whole up to this size so CLIXML can be decoded; beyond it, head and tail as text."""
OUTPUT_VALUE_BYTES = 4096
"""``outputs['stdout']`` is set only when the whole stdout is at most this long."""
POWERSHELL_PREAMBLE = "$ProgressPreference = 'SilentlyContinue'\n"
"""Progress records would otherwise arrive as CLIXML noise on stderr."""

FACTS_SCRIPT = """# opsconductor:facts v1
$ProgressPreference = 'SilentlyContinue'
$os = Get-CimInstance -ClassName Win32_OperatingSystem
$cs = Get-CimInstance -ClassName Win32_ComputerSystem
[ordered]@{
    hostname = $env:COMPUTERNAME
    os_name = $os.Caption
    os_version = $os.Version
    kernel = $os.BuildNumber
    domain = $cs.Domain
    architecture = $os.OSArchitecture
    uptime_seconds = [int64]((Get-Date) - $os.LastBootUpTime).TotalSeconds
} | ConvertTo-Json -Compress
"""
FACT_KEYS = ("hostname", "os_name", "os_version", "kernel", "domain", "architecture", "uptime_seconds")


class WinrmStepError(Exception):
    """A step failed in a way a person can act on (never raised out of ``run``)."""

    def __init__(
        self,
        message: str,
        *,
        timed_out: bool = False,
        cancelled: bool = False,
        original: BaseException | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.timed_out = timed_out
        self.cancelled = cancelled
        self.original = original
        """What pywinrm or requests raised (for WS-Man fault codes)."""


# --- pure helpers --------------------------------------------------------------------------------------
def endpoint_url(target: PlanTarget) -> str:
    """``scheme://host:port/path`` of a WinRM target (IPv6 addresses in brackets)."""
    scheme = target.scheme or "http"
    return f"{scheme}://{endpoint(target.address, target.port)}{target.path or '/wsman'}"


def encode_powershell(script: str) -> str:
    """Encode a script for ``powershell.exe -EncodedCommand`` (base64 of UTF-16LE)."""
    return base64.b64encode(script.encode("utf-16-le")).decode("ascii")


def powershell_command(script: str) -> tuple[str, list[str]]:
    """Return the executable and arguments that run ``script`` in Windows PowerShell, non-interactively."""
    return "powershell.exe", [
        "-NoProfile",
        "-NonInteractive",
        "-ExecutionPolicy",
        "Bypass",
        "-EncodedCommand",
        encode_powershell(script),
    ]


_CLIXML_ESCAPE = re.compile(r"_x([0-9A-Fa-f]{4})_")
_CLIXML_PREFIXES = {"warning": "WARNING: ", "verbose": "VERBOSE: ", "debug": "DEBUG: "}


def decode_clixml(text: str) -> str:
    """Turn PowerShell's CLIXML error stream into the text a console would show.

    ``#< CLIXML`` is followed by one or more ``<Objs>`` documents; ``<S S="Error">`` strings are
    error lines, ``warning``/``verbose``/``debug`` strings get their console prefix, progress
    records are dropped. ``_xHHHH_`` escapes (CR, LF, ...) are decoded. Text that is not CLIXML is
    returned unchanged; a document that does not parse is returned as it came.

    Args:
        text: stderr of a PowerShell command.

    Returns:
        Readable text.
    """
    if not text.startswith("#< CLIXML"):
        return text
    body = text[len("#< CLIXML") :].lstrip("\r\n")
    lines: list[str] = []
    documents = re.findall(r"<Objs\b.*?</Objs>", body, flags=re.DOTALL)
    if not documents:
        return text
    for document in documents:
        try:
            root = ET.fromstring(document)
        except ET.ParseError:
            return text
        for element in root.iter():
            if element.tag.rsplit("}", 1)[-1] != "S":
                continue
            stream = element.get("S", "")
            value = _CLIXML_ESCAPE.sub(lambda m: chr(int(m[1], 16)), element.text or "")
            if stream.lower() == "error":
                lines.append(value)
            elif stream.lower() in _CLIXML_PREFIXES:
                lines.append(_CLIXML_PREFIXES[stream.lower()] + value + "\r\n")
    return "".join(lines).replace("\r\n", "\n").rstrip("\n") + ("\n" if lines else "")


def windows_join(directory: str, relative: str) -> str:
    r"""Join a Windows directory and a relative POSIX path (``a/b.txt`` → ``dir\\a\\b.txt``)."""
    return directory.rstrip("\\/") + "\\" + relative.replace("/", "\\")


def ps_literal(value: str) -> str:
    """Quote ``value`` as a PowerShell single-quoted literal."""
    return "'" + "".join(c * 2 if c in "'\u2018\u2019\u201a\u201b" else c for c in value) + "'"


def receive_file_script(path: str, sha256: str) -> str:
    """Build the PowerShell command that receives one file on stdin (base64 lines) and verifies it.

    It writes ``<path>.opsc-partial``, compares the SHA-256 it computed with ``sha256``, and only
    then moves the file into place; prints ``sha256:<hex>``; exit code 2 on a mismatch.
    """
    return f"""# opsconductor:receive-file v1
begin {{
    $ErrorActionPreference = 'Stop'
    $ProgressPreference = 'SilentlyContinue'
    $path = {ps_literal(path)}
    $expected = {ps_literal(sha256)}
    $partial = $path + '.opsc-partial'
    $parent = [System.IO.Path]::GetDirectoryName($path)
    if ($parent) {{ [void][System.IO.Directory]::CreateDirectory($parent) }}
    $fd = [System.IO.File]::Create($partial)
    $sha = [System.Security.Cryptography.SHA256]::Create()
}}
process {{
    if ($input) {{
        $bytes = [System.Convert]::FromBase64String([string]$input)
        [void]$sha.TransformBlock($bytes, 0, $bytes.Length, $bytes, 0)
        $fd.Write($bytes, 0, $bytes.Length)
    }}
}}
end {{
    [void]$sha.TransformFinalBlock([byte[]]::new(0), 0, 0)
    $fd.Close()
    $actual = [System.BitConverter]::ToString($sha.Hash).Replace('-', '').ToLowerInvariant()
    if ($actual -ne $expected) {{
        Remove-Item -LiteralPath $partial -Force
        [Console]::Error.WriteLine("checksum mismatch for ${{path}}: expected $expected, got $actual")
        exit 2
    }}
    Move-Item -LiteralPath $partial -Destination $path -Force
    Write-Output "sha256:$actual"
}}
"""


def describe_error(exc: BaseException, target: PlanTarget, user: str = "") -> str:
    """Explain a failure talking to a WinRM host in a message a person can act on.

    Args:
        exc: what pywinrm or requests raised.
        target: the target (address, port, transport, TLS settings).
        user: the user name that logged in (for bad credentials).

    Returns:
        ``winrm <host:port>: <what failed> — <what to check>``.
    """
    where = f"winrm {endpoint(target.address, target.port)}"
    transport = target.transport or "ntlm"
    if isinstance(exc, InvalidCredentialsError):
        return (
            f"{where}: the server rejected the credentials of user '{user}' ({transport}, HTTP 401) — check "
            "the Credential's user name (DOMAIN\\user or user@domain) and password, that the account may use "
            "WinRM (Remote Management Users or Administrators), and that the Target's winrm.transport is one "
            "the host accepts"
        )
    if isinstance(exc, WSManFaultError):
        code = exc.wsman_fault_code
        return f"{where}: WS-Management fault{f' {code}' if code else ''}: {(exc.reason or '').strip()}"
    if isinstance(exc, WinRMTransportError):
        text = re.sub(r"\s+", " ", exc.response_text or "")[:300]
        if exc.code == 404:
            return (
                f"{where}: HTTP 404 for {target.path or '/wsman'} — check the Target's winrm.path (the "
                "WS-Management endpoint is /wsman unless the listener was configured otherwise)"
            )
        return f"{where}: the WinRM service answered HTTP {exc.code}{f': {text}' if text else ''}"
    if isinstance(exc, requests.exceptions.SSLError):
        detail = str(exc)
        if "CERTIFICATE_VERIFY_FAILED" in detail or "certificate verify failed" in detail:
            reason = re.search(r"certificate verify failed: ([^(\)'\"]+)", detail)
            return (
                f"{where}: TLS certificate verification failed"
                f"{f' ({reason[1].strip()})' if reason else ''} — set the Target's "
                "winrm.tls.caBundleSecretRef to the CA that issued the host's certificate (the "
                "certificate must name the Target's address); winrm.tls.insecureSkipTlsVerify: true "
                "skips the check (test hosts only)"
            )
        if "WRONG_VERSION_NUMBER" in detail or "wrong version number" in detail:
            return f"{where}: TLS handshake failed: the port does not speak TLS — is it the http listener?"
        return f"{where}: TLS handshake failed: {_first_line(detail)}"
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return (
            f"{where}: no connection within {target.connect_timeout_seconds}s — is the host up, the address "
            "right, and the port open in firewalls?"
        )
    if isinstance(exc, requests.exceptions.ReadTimeout):
        return f"{where}: the WinRM service did not answer in time — the host may be overloaded"
    if isinstance(exc, requests.exceptions.ConnectionError):
        detail = str(exc)
        if "Connection refused" in detail or "ConnectionRefused" in detail:
            return (
                f"{where}: connection refused — is WinRM listening on this port (5985 http, 5986 https; "
                "`winrm quickconfig` on the host) and the port open in the firewall?"
            )
        if "Name or service not known" in detail or "NameResolution" in detail or "getaddrinfo" in detail:
            return f"{where}: cannot resolve {target.address!r} — check spec.address and the runner's DNS"
        if "No route to host" in detail or "Network is unreachable" in detail:
            return f"{where}: no route to the host — check the address and the network"
        if "RemoteDisconnected" in detail or "Connection aborted" in detail or "reset by peer" in detail:
            return (
                f"{where}: the server closed the connection — is this a WinRM listener, with the scheme "
                f"({target.scheme or 'http'}) it expects?"
            )
        return f"{where}: cannot connect: {_first_line(detail)}"
    if isinstance(exc, WinRMError):
        return f"{where}: {exc}"
    return f"{where}: {type(exc).__name__}: {exc}"


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0][:300] if text.strip() else ""


# --- connections -------------------------------------------------------------------------------------------
@dataclass
class _Login:
    username: str
    password: str | None = None
    cert_pem: str | None = None
    cert_key_pem: str | None = None


def _load_login(target: PlanTarget, secrets: SecretStore) -> _Login:
    where = f"winrm {endpoint(target.address, target.port)}"
    credential = target.credential
    if credential is None:
        raise WinrmStepError(
            f"{where}: target {target.name} has no credential: set spec.credentialRef on the Target (or "
            "credentialRef on the step) to a BasicAuth Credential (DOMAIN\\user or user@domain, password)"
        )
    transport = target.transport or "ntlm"
    allowed = {"ClientCertificate"} if transport == "certificate" else {"BasicAuth", "Kerberos"}
    if credential.type == "ClientCertificate" and (target.scheme or "http") == "https":
        allowed.add("ClientCertificate")
    if credential.type not in allowed:
        raise WinrmStepError(
            f"{where}: Credential {credential.name} is of type {credential.type}; WinRM {transport} "
            "logins need a BasicAuth (or Kerberos) Credential"
        )

    def read(role: str) -> str:
        path = credential.files.get(role)
        if path is None:
            raise WinrmStepError(f"{where}: Credential {credential.name} has no {role} value in its Secret")
        try:
            return secrets.read(path).rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            raise WinrmStepError(
                f"{where}: cannot read the {role} of Credential {credential.name} from {path}: {exc}"
            ) from None

    if credential.type == "ClientCertificate":
        return _Login(
            "", cert_pem=credential.files.get("certificate"), cert_key_pem=credential.files.get("privateKey")
        )
    username = credential.username or read("username")
    if not username:
        raise WinrmStepError(f"{where}: Credential {credential.name} has an empty user name")
    password = read("password") if "password" in credential.files else None
    if password is None and transport != "kerberos":
        raise WinrmStepError(f"{where}: Credential {credential.name} has no password for {transport} logins")
    return _Login(username, password)


def _check_transport_available(target: PlanTarget) -> None:
    import winrm.transport as winrm_transport

    where = f"winrm {endpoint(target.address, target.port)}"
    transport = target.transport or "ntlm"
    if transport == "kerberos" and not winrm_transport.HAVE_KERBEROS:
        raise WinrmStepError(
            f"{where}: the kerberos transport needs the pykerberos library (pywinrm[kerberos]) and a "
            "krb5.conf for the realm in the runner image, and this image has none; build a runner "
            "image with them (docs/winrm.md) or use transport ntlm"
        )
    if transport == "credssp" and not winrm_transport.HAVE_CREDSSP:
        raise WinrmStepError(
            f"{where}: the credssp transport needs the requests-credssp library (pywinrm[credssp]) in the "
            "runner image, and this image has none; build a runner image with it (docs/winrm.md) or use "
            "transport ntlm"
        )


def open_protocol(
    target: PlanTarget, secrets: SecretStore, *, read_timeout: float | None = None
) -> tuple[Protocol, str]:
    """Create the pywinrm ``Protocol`` for a target (nothing is sent yet).

    Returns:
        The protocol and the user name it logs in as.

    Raises:
        WinrmStepError: no usable credential, or the transport's library is missing.
    """
    login = _load_login(target, secrets)
    _check_transport_available(target)
    operation_timeout = target.operation_timeout_seconds or DEFAULT_OPERATION_TIMEOUT_SECONDS
    transport = target.transport or "ntlm"
    if login.cert_pem:
        transport = "certificate"
    try:
        options: dict[str, Any] = dict(
            transport=transport,
            username=login.username or None,
            password=login.password,
            cert_pem=login.cert_pem,
            cert_key_pem=login.cert_key_pem,
            server_cert_validation="ignore" if target.insecure_skip_tls_verify else "validate",
            ca_trust_path=target.ca_bundle_file,  # None: the system roots, never environment variables
            message_encryption=target.message_encryption or "auto",
            read_timeout_sec=operation_timeout + READ_TIMEOUT_MARGIN_SECONDS,
            operation_timeout_sec=operation_timeout,
            proxy=None,
        )
        protocol = Protocol(endpoint_url(target), **options)
    except WinRMError as exc:
        raise WinrmStepError(describe_error(exc, target, login.username)) from None
    # requests takes (connect, read): an unreachable host fails within the Target's connect timeout.
    http: Any = protocol.transport
    http.read_timeout_sec = (
        float(target.connect_timeout_seconds),
        float(read_timeout or operation_timeout + READ_TIMEOUT_MARGIN_SECONDS),
    )
    return protocol, login.username


_CALL_ERRORS = (WinRMError, WinRMTransportError, requests.exceptions.RequestException, OSError)
_NOT_WSMAN_ERRORS = (ET.ParseError, StopIteration, KeyError, AttributeError, AssertionError)
"""What pywinrm raises when the answer is not a WS-Management reply (an HTTP server of another kind)."""


@dataclass
class _Connection:
    """One target's Protocol, its reusable shell, and a lock (one step thread uses it at a time)."""

    protocol: Any
    target: PlanTarget
    user: str = ""
    shell_id: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def call(self, what: Callable[[], Any], operation_timeout: float | None = None) -> Any:
        """Run one WS-Man request; errors become WinrmStepError with an actionable message.

        Args:
            what: the pywinrm call.
            operation_timeout: the request's OperationTimeout (default: the Target's), whole seconds.
        """
        configured = self.target.operation_timeout_seconds or DEFAULT_OPERATION_TIMEOUT_SECONDS
        self.protocol.operation_timeout_sec = max(1, int(operation_timeout or configured))
        try:
            return what()
        except WinRMOperationTimeoutError:
            raise
        except _CALL_ERRORS as exc:
            raise WinrmStepError(describe_error(exc, self.target, self.user), original=exc) from None
        except _NOT_WSMAN_ERRORS as exc:
            where = f"winrm {endpoint(self.target.address, self.target.port)}"
            raise WinrmStepError(
                f"{where}: the answer is not a WS-Management reply ({type(exc).__name__}) — is this port a "
                f"WinRM listener, and {self.target.path or '/wsman'} its path?",
                original=exc,
            ) from None

    def open_shell(self, env: dict[str, str] | None = None, working_dir: str | None = None) -> str:
        return str(
            self.call(
                lambda: self.protocol.open_shell(
                    working_directory=working_dir,
                    env_vars=env or None,
                    codepage=UTF8_CODEPAGE,
                    noprofile=True,
                )
            )
        )

    def default_shell(self) -> str:
        if self.shell_id is None:
            self.shell_id = self.open_shell()
        return self.shell_id

    def close_shell(self, shell_id: str) -> None:
        with contextlib.suppress(WinrmStepError):
            self.call(lambda: self.protocol.close_shell(shell_id, close_session=False), STOP_TIMEOUT_SECONDS)

    def close(self) -> None:
        if self.shell_id is not None:
            self.close_shell(self.shell_id)
            self.shell_id = None
        with contextlib.suppress(Exception):
            self.protocol.transport.close_session()


@dataclass
class _Streams:
    """stdout/stderr of one command: head+tail buffers, log lines, CLIXML-aware stderr."""

    log: Callable[[str], None]
    stdout: HeadTailBuffer = field(default_factory=HeadTailBuffer)
    stderr: HeadTailBuffer = field(default_factory=HeadTailBuffer)
    stderr_raw: bytearray = field(default_factory=bytearray)
    out_lines: LineSplitter = field(default_factory=LineSplitter)
    err_lines: LineSplitter = field(default_factory=LineSplitter)
    clixml: bool | None = None

    def feed(self, out: bytes, err: bytes) -> None:
        if out:
            self.stdout.feed(out)
            for line in self.out_lines.feed(out):
                self.log(f"stdout: {line}")
        if err:
            self.stderr.feed(err)
            if len(self.stderr_raw) < STDERR_CLIXML_BYTES:
                self.stderr_raw += err
            if self.clixml is None and len(self.stderr_raw) >= 9:
                self.clixml = bytes(self.stderr_raw[:9]) == b"#< CLIXML"
            if self.clixml is False:
                for line in self.err_lines.feed(err):
                    self.log(f"stderr: {line}")

    def finish(self) -> tuple[str, str]:
        """Flush the log lines; return (stdout, stderr) as text, CLIXML decoded."""
        for line in self.out_lines.flush():
            self.log(f"stdout: {line}")
        if self.clixml is None and self.stderr_raw:  # too short to be CLIXML: plain text, not logged yet
            self.clixml = False
            for line in self.err_lines.feed(bytes(self.stderr_raw)):
                self.log(f"stderr: {line}")
        if self.clixml and self.stderr.total <= STDERR_CLIXML_BYTES:
            stderr = decode_clixml(self.stderr_raw.decode("utf-8", errors="replace"))
            for line in stderr.splitlines():
                self.log(f"stderr: {line}")
            return self.stdout.text(), stderr
        if self.clixml:
            self.log(f"stderr: ({self.stderr.total} bytes of CLIXML, too large to decode; kept as is)")
        for line in self.err_lines.flush():
            self.log(f"stderr: {line}")
        return self.stdout.text(), self.stderr.text()


def _send_stdin(connection: _Connection, shell_id: str, command_id: str, chunk: bytes, *, end: bool) -> None:
    """Send one chunk as a base64 line on the command's stdin (``end`` closes stdin)."""
    line = base64.b64encode(chunk) + b"\r\n" if chunk else b""
    connection.call(lambda: connection.protocol.send_command_input(shell_id, command_id, line, end=end))


@dataclass
class _Result:
    exit_code: int | None
    stdout: str
    stderr: str
    stop: str = ""
    stdout_bytes: int = 0


def _stop_reason(ctx: StepContext) -> str:
    if ctx.cancel.is_set():
        return "cancelled"
    if ctx.deadline is not None and time.monotonic() >= ctx.deadline:
        return "timed out"
    return ""


class WinrmSession:
    """Runs ``winrm.exec`` and ``winrm.copy`` for a whole run (implements ``ProtocolSession``)."""

    step_types = STEP_TYPES

    def __init__(self) -> None:
        self._connections: dict[str, _Connection] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        """Delete the shells and close the connections."""
        with self._lock:
            connections, self._connections = list(self._connections.values()), {}
        for connection in connections:
            connection.close()

    def run(self, step: Step, ctx: StepContext) -> StepOutcome:
        """Run one attempt of a winrm step on ``ctx.target``; failures become outcomes."""
        target = ctx.target
        if target is None:
            return StepOutcome(ok=False, error=f"{step.type} steps need a Target")
        logs: list[str] = ctx.log
        prefix = f"[{target.name}] "

        def log(line: str) -> None:
            logs.append(prefix + ctx.secrets.mask(line))

        try:
            connection = self._connection(target, ctx)
            with connection.lock:
                if isinstance(step, WinrmExecStep):
                    return self._exec(step, ctx, connection, log)
                if isinstance(step, WinrmCopyStep):
                    return self._copy(step, ctx, connection, log)
            return StepOutcome(ok=False, error=f"{step.type} is not a WinRM step")
        except WinrmStepError as exc:
            if not (exc.timed_out or exc.cancelled):
                self._discard(target)
            return StepOutcome(
                ok=False,
                error=ctx.secrets.mask(exc.message),
                timed_out=exc.timed_out,
                cancelled=exc.cancelled,
            )

    # --- connections ------------------------------------------------------------------------------------
    def _connection(self, target: PlanTarget, ctx: StepContext) -> _Connection:
        key = f"{target.name}@{target.credential.name if target.credential else ''}"
        with self._lock:
            connection = self._connections.get(key)
            if connection is None:
                protocol, user = open_protocol(target, ctx.secrets)
                connection = _Connection(protocol, target, user)
                self._connections[key] = connection
            return connection

    def _discard(self, target: PlanTarget) -> None:
        key = f"{target.name}@{target.credential.name if target.credential else ''}"
        with self._lock:
            connection = self._connections.pop(key, None)
        if connection is not None:
            with contextlib.suppress(Exception):
                connection.protocol.transport.close_session()

    # --- running one command ----------------------------------------------------------------------------
    def _run_command(
        self,
        ctx: StepContext,
        connection: _Connection,
        executable: str,
        arguments: list[str],
        log: Callable[[str], None],
        *,
        env: dict[str, str] | None = None,
        working_dir: str | None = None,
        stdin: Callable[[str, str], None] | None = None,
    ) -> _Result:
        """Start a command (in the default shell, or a shell of its own for env/workingDir), stream it."""
        stop = _stop_reason(ctx)
        if stop:
            where = f"winrm {endpoint(connection.target.address, connection.target.port)}"
            raise WinrmStepError(
                f"{where}: {stop} before the command started",
                timed_out=stop == "timed out",
                cancelled=stop == "cancelled",
            )
        own_shell = bool(env or working_dir)
        shell_id = connection.open_shell(env, working_dir) if own_shell else connection.default_shell()
        try:
            try:
                command_id = str(
                    connection.call(lambda: connection.protocol.run_command(shell_id, executable, arguments))
                )
            except WinrmStepError as exc:
                fault = exc.original
                if (
                    own_shell
                    or not isinstance(fault, WSManFaultError)
                    or fault.wsman_fault_code != SHELL_NOT_FOUND
                ):
                    raise
                log("the host no longer knew the shell; opening a new one")
                connection.shell_id = None
                shell_id = connection.default_shell()
                command_id = str(
                    connection.call(lambda: connection.protocol.run_command(shell_id, executable, arguments))
                )
            return self._follow(ctx, connection, shell_id, command_id, log, stdin)
        finally:
            if own_shell:
                connection.close_shell(shell_id)

    def _follow(
        self,
        ctx: StepContext,
        connection: _Connection,
        shell_id: str,
        command_id: str,
        log: Callable[[str], None],
        stdin: Callable[[str, str], None] | None,
    ) -> _Result:
        streams = _Streams(log)
        protocol = connection.protocol
        operation_timeout = connection.target.operation_timeout_seconds or DEFAULT_OPERATION_TIMEOUT_SECONDS
        exit_code: int | None = None
        stop = ""
        try:
            if stdin is not None:
                stdin(shell_id, command_id)
            while True:
                stop = _stop_reason(ctx)
                if stop:
                    break
                left = ctx.remaining()
                wait = min(
                    operation_timeout, RECEIVE_POLL_SECONDS, left if left is not None else operation_timeout
                )
                try:
                    out, err, code, done = connection.call(
                        lambda: protocol.get_command_output_raw(shell_id, command_id), max(1.0, wait)
                    )
                except WinRMOperationTimeoutError:
                    continue  # nothing new within the OperationTimeout: the command still runs
                streams.feed(out, err)
                if done:
                    exit_code = int(code)
                    break
        except WinrmStepError as exc:
            if exc.timed_out or exc.cancelled:
                stop = "timed out" if exc.timed_out else "cancelled"
            else:
                raise
        finally:
            if stop or exit_code is not None:
                self._end_command(connection, shell_id, command_id, stop, log)
        stdout, stderr = streams.finish()
        return _Result(exit_code, stdout, stderr, stop, streams.stdout.total)

    @staticmethod
    def _end_command(
        connection: _Connection, shell_id: str, command_id: str, stop: str, log: Callable[[str], None]
    ) -> None:
        """Signal the command: ctrl_c then terminate when stopping it, terminate (cleanup) when done."""
        protocol = connection.protocol
        if stop:
            log(f"{stop}: sending ctrl_c and terminate to the remote command")
            message_id = uuid.uuid4()
            header = protocol.build_wsman_header(
                action=SIGNAL_ACTION, resource_uri=RESOURCE_URI, shell_id=shell_id, message_id=message_id
            )
            body = header.setdefault("env:Body", {}).setdefault("rsp:Signal", {})
            body["@CommandId"] = command_id
            body["rsp:Code"] = SIGNAL_CTRL_C
            with contextlib.suppress(WinrmStepError):
                connection.call(
                    lambda: protocol.send_message(xmltodict.unparse({"env:Envelope": header})),
                    STOP_TIMEOUT_SECONDS,
                )
        with contextlib.suppress(WinrmStepError):
            connection.call(lambda: protocol.cleanup_command(shell_id, command_id), STOP_TIMEOUT_SECONDS)

    # --- winrm.exec -------------------------------------------------------------------------------------
    def _exec(
        self, step: WinrmExecStep, ctx: StepContext, connection: _Connection, log: Callable[[str], None]
    ) -> StepOutcome:
        shell = step.shell or "powershell"
        where = f"winrm {endpoint(connection.target.address, connection.target.port)}"
        if shell == "cmd":
            if step.script is not None:
                raise WinrmStepError(
                    f"{where}: shell cmd runs one command line; put multi-line scripts in a powershell step"
                )
            executable, arguments = step.command or "", list[str]()
        else:
            executable, arguments = powershell_command(
                POWERSHELL_PREAMBLE + (step.command or step.script or "")
            )
        result = self._run_command(
            ctx,
            connection,
            executable,
            arguments,
            log,
            env=dict(step.env or {}),
            working_dir=step.working_dir,
        )
        mask = ctx.secrets.mask
        stdout, stderr = mask(result.stdout), mask(result.stderr)
        outputs = {"stdoutBytes": str(result.stdout_bytes)}
        if result.exit_code is not None:
            outputs["exitCode"] = str(result.exit_code)
        if result.stdout_bytes <= OUTPUT_VALUE_BYTES:
            outputs["stdout"] = stdout.strip()
        if result.stop:
            what = (
                f"timed out after {step.timeout_seconds}s"
                if result.stop == "timed out" and step.timeout_seconds
                else result.stop
            )
            return StepOutcome(
                ok=False,
                exit_code=result.exit_code,
                stdout=stdout,
                stderr=stderr,
                error=f"{where}: {what}; the remote command was stopped (ctrl_c, terminate)",
                timed_out=result.stop == "timed out",
                cancelled=result.stop == "cancelled",
                outputs=outputs,
            )
        expected = step.expect_exit_codes or [0]
        ok = result.exit_code in expected
        error = ""
        if not ok:
            first = next((line for line in stderr.splitlines() if line.strip()), "")
            error = f"{where}: exit code {result.exit_code} (expected {', '.join(map(str, expected))})"
            if first:
                error += f": {first.strip()[:300]}"
        return StepOutcome(
            ok=ok, exit_code=result.exit_code, stdout=stdout, stderr=stderr, error=error, outputs=outputs
        )

    # --- winrm.copy -------------------------------------------------------------------------------------
    def _copy(
        self, step: WinrmCopyStep, ctx: StepContext, connection: _Connection, log: Callable[[str], None]
    ) -> StepOutcome:
        where = f"winrm {endpoint(connection.target.address, connection.target.port)}"
        try:
            sources = resolve_source(
                step.source, plan=ctx.plan, workspace=ctx.workspace, secrets=ctx.secrets, mode=None
            )
        except SshStepError as exc:
            raise WinrmStepError(f"{where}: {exc.message}") from None
        if step.mode:
            log(f"mode {step.mode} is not applied: Windows files get the ACLs of their directory")
        into_directory = sources.into_directory or step.destination.endswith(("\\", "/"))
        summary: list[str] = []
        total = 0
        for source in sources.files:
            name = source.name or "file"
            destination = windows_join(step.destination, name) if into_directory else step.destination
            digest = hashlib.sha256()
            with source.open() as stream:
                while chunk := stream.read(1 << 20):
                    digest.update(chunk)
            sha256 = digest.hexdigest()
            executable, arguments = powershell_command(receive_file_script(destination, sha256))

            def send(shell_id: str, command_id: str, source: Any = source) -> None:
                with source.open() as stream:
                    chunk = stream.read(COPY_CHUNK_BYTES)
                    while True:
                        following = stream.read(COPY_CHUNK_BYTES)
                        stop = _stop_reason(ctx)
                        if stop:
                            raise WinrmStepError(
                                stop, timed_out=stop == "timed out", cancelled=stop == "cancelled"
                            )
                        _send_stdin(connection, shell_id, command_id, chunk, end=not following)
                        if not following:
                            return
                        chunk = following

            result = self._run_command(ctx, connection, executable, arguments, log, stdin=send)
            if result.stop:
                return StepOutcome(
                    ok=False,
                    exit_code=result.exit_code,
                    error=f"{where}: {result.stop} while copying {sources.label} to {destination}",
                    timed_out=result.stop == "timed out",
                    cancelled=result.stop == "cancelled",
                )
            confirmed = f"sha256:{sha256}" in result.stdout
            if result.exit_code != 0 or not confirmed:
                detail = ctx.secrets.mask((result.stderr or result.stdout).strip())[:500]
                return StepOutcome(
                    ok=False,
                    exit_code=result.exit_code,
                    stdout="\n".join(summary),
                    stderr=ctx.secrets.mask(result.stderr),
                    error=f"{where}: copying {sources.label} to {destination} failed "
                    f"(exit code {result.exit_code})"
                    + (f": {detail}" if detail else "; the host did not confirm the checksum"),
                )
            total += source.size
            line = f"{destination} ({source.size} bytes, sha256 {sha256[:16]}…)"
            summary.append(line)
            log(f"copied {line}")
        return StepOutcome(
            ok=True,
            exit_code=0,
            stdout="\n".join(summary) + "\n",
            outputs={"files": str(len(summary)), "bytes": str(total)},
        )


# --- facts ------------------------------------------------------------------------------------------------
def collect_facts(target: PlanTarget, secrets: SecretStore, timeout: float) -> dict[str, str | int]:
    """Log in to a WinRM target and collect its system facts with one PowerShell command.

    Args:
        target: the target (connection settings and credential).
        secrets: reads (and masks) the credential's values.
        timeout: seconds for the whole exchange.

    Returns:
        ``hostname``, ``os_name``, ``os_version``, ``kernel`` (the build), ``domain``, ``architecture``
        (strings) and ``uptime_seconds`` (int): the ``TargetFacts`` field names.

    Raises:
        RuntimeError: any failure, with a message a person can act on (secrets masked).
    """
    ctx = StepContext(
        plan=None,  # type: ignore[arg-type]
        target=target,
        secrets=secrets,
        workspace=None,  # type: ignore[arg-type]
        cancel=threading.Event(),
        deadline=time.monotonic() + timeout,
    )
    try:
        protocol, user = open_protocol(target, secrets, read_timeout=max(1.0, timeout))
    except WinrmStepError as exc:
        raise RuntimeError(secrets.mask(exc.message)) from None
    connection = _Connection(protocol, target, user)
    session = WinrmSession()
    try:
        executable, arguments = powershell_command(FACTS_SCRIPT)
        result = session._run_command(ctx, connection, executable, arguments, lambda _line: None)
    except WinrmStepError as exc:
        raise RuntimeError(secrets.mask(exc.message)) from None
    finally:
        connection.close()
    where = f"winrm {endpoint(target.address, target.port)}"
    if result.stop:
        raise RuntimeError(f"{where}: collecting facts {result.stop} after {timeout:g}s")
    if result.exit_code != 0:
        detail = secrets.mask(result.stderr.strip())[:300]
        raise RuntimeError(f"{where}: the facts command failed (exit code {result.exit_code}): {detail}")
    line = next((raw for raw in reversed(result.stdout.splitlines()) if raw.strip().startswith("{")), "")
    try:
        raw = json.loads(line)
    except json.JSONDecodeError:
        raise RuntimeError(
            f"{where}: the facts command printed no JSON: {result.stdout.strip()[:200]!r}"
        ) from None
    if not isinstance(raw, dict):
        raise RuntimeError(f"{where}: the facts command printed {type(raw).__name__}, not an object")
    facts: dict[str, str | int] = {}
    for key in FACT_KEYS:
        value = raw.get(key)
        if value is None or value == "":
            continue
        if key == "uptime_seconds":
            try:
                facts[key] = max(0, int(value))
            except (TypeError, ValueError):
                continue
        else:
            facts[key] = str(value)
    return facts
