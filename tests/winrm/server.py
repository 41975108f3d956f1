"""A WS-Management (WinRM) test server on loopback that the real pywinrm client talks to.

It is a test fixture, not a product feature: it speaks the wire protocol a Windows host speaks, so
the runner's real client code path (HTTP auth, NTLM message encryption, TLS, the shell lifecycle,
streams, exit codes, faults) is what the tests exercise. What it implements:

- **HTTP/1.1 with keep-alive**, on ``http`` or ``https`` (a certificate the fixture issues).
- **Authentication** per connection, like IIS/HTTP.sys: ``Basic`` (when enabled) and ``Negotiate``
  / ``NTLM`` with pyspnego as the NTLM acceptor (its user store is the file named by
  ``NTLM_USER_FILE``; :func:`register_users` maintains one per test process). Over HTTPS the NTLM
  channel binding (``tls-server-end-point``) is checked. A failed login is ``401``; a login by a
  user the server does not know is ``401`` too.
- **NTLM message encryption** (MS-WSMV 2.2.9.1.1): ``multipart/encrypted;
  protocol="application/HTTP-SPNEGO-session-encrypted"`` request bodies are unwrapped with the
  connection's NTLM context and their length checked; replies to encrypted requests are encrypted
  the same way. Plain bodies over HTTP are refused unless ``allow_unencrypted`` (Windows'
  ``AllowUnencrypted``) is set, as Windows does.
- **The shell lifecycle** (MS-WSMV 3.1.4.x) pywinrm uses: Create (``WorkingDirectory``,
  ``Environment``, ``WINRS_CODEPAGE``), Command (``WINRS_SKIP_CMD_SHELL``), Send (stdin, ``End``),
  Receive (base64 ``Stream`` chunks of at most :data:`STREAM_CHUNK` bytes, at most
  :data:`RECEIVE_BYTES` per reply so big output takes several Receives; ``CommandState`` Running
  or Done with ``ExitCode``), Signal (``ctrl_c``: SIGINT to the process group; ``terminate``:
  SIGKILL), Delete. A Receive with nothing to say within the request's ``OperationTimeout`` is the
  ``w:TimedOut`` fault (code 2150858793) clients loop on; an unknown ShellId is the fault Windows
  sends (2150858843).
- **Commands**: ``powershell[.exe] ... -EncodedCommand <base64 UTF-16LE>`` is decoded and run by the
  PowerShell mapping in :mod:`tests.winrm.powershell`; anything else is a cmd-style command line
  run by ``/bin/sh -c`` on this machine (in the shell's working directory mapped under the
  emulated drive, with the shell's environment).

Everything a test wants to check is recorded: :attr:`WinrmServer.requests` (action per request and
whether it was encrypted), :attr:`WinrmServer.commands`, the emulated :class:`WindowsHost`.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import signal
import socket
import ssl
import struct
import subprocess
import tempfile
import threading
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import spnego
import spnego.channel_bindings
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding

from tests.winrm.powershell import PowerShellMapping, ScriptIO, WindowsHost, WindowsPaths, clixml

NS = {
    "s": "http://www.w3.org/2003/05/soap-envelope",
    "a": "http://schemas.xmlsoap.org/ws/2004/08/addressing",
    "w": "http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd",
    "rsp": "http://schemas.microsoft.com/wbem/wsman/1/windows/shell",
    "x": "http://schemas.xmlsoap.org/ws/2004/09/transfer",
}
SHELL = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell"
ACTIONS = {
    "http://schemas.xmlsoap.org/ws/2004/09/transfer/Create": "Create",
    "http://schemas.xmlsoap.org/ws/2004/09/transfer/Delete": "Delete",
    f"{SHELL}/Command": "Command",
    f"{SHELL}/Receive": "Receive",
    f"{SHELL}/Send": "Send",
    f"{SHELL}/Signal": "Signal",
}
ENCRYPTED_PROTOCOL = "application/HTTP-SPNEGO-session-encrypted"
BOUNDARY = b"--Encrypted Boundary"
STREAM_CHUNK = 16 * 1024
"""Largest decoded ``Stream`` element in a Receive reply."""
RECEIVE_BYTES = 96 * 1024
"""Most output bytes in one Receive reply (Windows keeps replies under MaxEnvelopeSize)."""
TIMED_OUT = 2150858793
SHELL_NOT_FOUND = 2150858843
ACCESS_DENIED = 5

_users_lock = threading.Lock()
_user_file: Path | None = None


def register_users(users: dict[str, str]) -> None:
    """Add users to this process's NTLM user store (``NTLM_USER_FILE``, read by pyspnego's acceptor).

    ``DOMAIN\\user`` becomes ``DOMAIN:user:password``; ``user@domain`` and plain names
    ``:name:password`` (how pyspnego matches the name a client sends).
    """
    global _user_file
    with _users_lock:
        if _user_file is None:
            _user_file = Path(tempfile.mkdtemp(prefix="opsc-winrm-ntlm-")) / "users"
            _user_file.touch(mode=0o600)
        lines = []
        for name, password in users.items():
            domain, _, user = name.rpartition("\\")
            lines.append(f"{domain}:{user}:{password}\n")
        with _user_file.open("a") as f:
            f.writelines(lines)
        os.environ["NTLM_USER_FILE"] = str(_user_file)


def tls_server_end_point(cert_der: bytes) -> bytes:
    """The RFC 5929 channel binding data of a server certificate (what requests-ntlm sends)."""
    cert = x509.load_der_x509_certificate(cert_der)
    algorithm = cert.signature_hash_algorithm
    if algorithm is None or algorithm.name in ("md5", "sha1"):
        algorithm = hashes.SHA256()
    digest = hashes.Hash(algorithm)
    digest.update(cert_der)
    return digest.finalize()


class Fault(Exception):
    """A WS-Management fault reply."""

    def __init__(self, code: int, subcode: str, reason: str, status: int = 500) -> None:
        super().__init__(reason)
        self.code = code
        self.subcode = subcode
        self.reason = reason
        self.status = status


# --- commands ---------------------------------------------------------------------------------------
@dataclass
class Command:
    """One running command and its not-yet-received output."""

    command_id: str
    command_line: str
    kind: str
    """``powershell`` or ``cmd``."""
    script: str = ""
    """The decoded PowerShell script (powershell commands)."""
    signals: list[str] = field(default_factory=list)
    exit_code: int | None = None
    stdin_bytes: int = 0
    cond: threading.Condition = field(default_factory=threading.Condition)
    pending: list[tuple[str, bytes]] = field(default_factory=list)
    streams_open: int = 2
    stopped: threading.Event = field(default_factory=threading.Event)
    process: subprocess.Popen[bytes] | None = None
    stdin_chunks: list[bytes | None] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return self.exit_code is not None and self.streams_open == 0

    def emit(self, stream: str, data: bytes) -> None:
        if data:
            with self.cond:
                self.pending.append((stream, data))
                self.cond.notify_all()

    def close_stream(self) -> None:
        with self.cond:
            self.streams_open -= 1
            self.cond.notify_all()

    def finish(self, code: int) -> None:
        with self.cond:
            self.exit_code = code
            self.cond.notify_all()

    def feed_stdin(self, data: bytes, end: bool) -> None:
        self.stdin_bytes += len(data)
        if self.process is not None and self.process.stdin is not None:
            try:
                if data:
                    self.process.stdin.write(data)
                    self.process.stdin.flush()
                if end:
                    self.process.stdin.close()
            except (BrokenPipeError, ValueError):
                pass
            return
        with self.cond:
            if data:
                self.stdin_chunks.append(data)
            if end:
                self.stdin_chunks.append(None)
            self.cond.notify_all()

    def stdin_lines(self) -> Any:
        """Lines sent on stdin until End (for the PowerShell mapping)."""
        buffer = b""
        while True:
            with self.cond:
                self.cond.wait_for(lambda: self.stdin_chunks or self.stopped.is_set())
                if self.stopped.is_set():
                    return
                chunk = self.stdin_chunks.pop(0)
            if chunk is None:
                if buffer:
                    yield buffer
                return
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            yield from lines

    def take(self, limit: int) -> list[tuple[str, bytes]]:
        """Output to send now (at most ``limit`` bytes); the caller holds ``cond``."""
        taken: list[tuple[str, bytes]] = []
        size = 0
        while self.pending and size < limit:
            stream, data = self.pending[0]
            room = limit - size
            if len(data) > room:
                self.pending[0] = (stream, data[room:])
                data = data[:room]
            else:
                self.pending.pop(0)
            taken.append((stream, data))
            size += len(data)
        return taken

    def signal(self, code: str) -> None:
        self.signals.append(code)
        self.stopped.set()
        with self.cond:
            self.cond.notify_all()
        if self.process is not None and self.process.poll() is None:
            sig = signal.SIGINT if code == "ctrl_c" else signal.SIGKILL
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)


@dataclass
class Shell:
    """One remote shell (Create ... Delete)."""

    shell_id: str
    working_directory: str
    environment: dict[str, str]
    codepage: int
    commands: dict[str, Command] = field(default_factory=dict)


# --- the server -----------------------------------------------------------------------------------------
@dataclass
class RequestRecord:
    """What one WS-Man request was (for assertions)."""

    action: str
    encrypted: bool
    user: str
    tls: bool


class WinrmServer:
    """A WinRM endpoint on ``address:port`` (see the module docstring)."""

    def __init__(
        self,
        *,
        users: dict[str, str],
        address: str = "127.0.0.1",
        port: int = 0,
        path: str = "/wsman",
        basic: bool = False,
        ntlm: bool = True,
        allow_unencrypted: bool = False,
        tls: ssl.SSLContext | None = None,
        certificate_pem: bytes | None = None,
        drive_root: Path | None = None,
        host: WindowsHost | None = None,
    ) -> None:
        self.users = users
        self.path = path
        self.basic = basic
        self.ntlm = ntlm
        self.allow_unencrypted = allow_unencrypted
        self.tls = tls
        self._own_root = drive_root is None
        root = drive_root or Path(tempfile.mkdtemp(prefix="opsc-winrm-drive-"))
        self.host = host or WindowsHost(WindowsPaths(root))
        for drive_dir in ("C/Windows/Temp", "C/Users"):
            (self.host.paths.root / drive_dir).mkdir(parents=True, exist_ok=True)
        self.shells: dict[str, Shell] = {}
        self.commands: list[Command] = []
        self.requests: list[RequestRecord] = []
        self.lock = threading.Lock()
        self.certificate_der = (
            x509.load_pem_x509_certificate(certificate_pem).public_bytes(Encoding.DER)
            if certificate_pem
            else None
        )
        """The server certificate, for the NTLM channel binding check over HTTPS."""
        if ntlm:
            register_users(users)
        handler = _handler_class(self)
        self._httpd = _Server((address, port), handler, tls)
        self.address = address
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True, name="winrm-server")

    @property
    def scheme(self) -> str:
        return "https" if self.tls is not None else "http"

    @property
    def endpoint(self) -> str:
        return f"{self.scheme}://{self.address}:{self.port}{self.path}"

    def start(self) -> WinrmServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        for command in self.commands:
            command.signal("terminate")
        if self._own_root:
            import shutil

            shutil.rmtree(self.host.paths.root, ignore_errors=True)

    def actions(self) -> list[str]:
        with self.lock:
            return [r.action for r in self.requests]

    # --- WS-Management ------------------------------------------------------------------------------
    def handle(self, envelope: bytes, user: str) -> tuple[str, str]:
        """Answer one SOAP request; returns (action, reply envelope). Raises Fault."""
        try:
            root = ET.fromstring(envelope)
        except ET.ParseError as exc:
            raise Fault(2150858817, "w:InvalidMessageInformationHeader", f"invalid XML: {exc}", 400) from None
        header = root.find("s:Header", NS)
        body = root.find("s:Body", NS)
        if header is None or body is None:
            raise Fault(2150858817, "w:InvalidMessageInformationHeader", "no SOAP header or body", 400)
        action_uri = (header.findtext("a:Action", "", NS) or "").strip()
        message_id = (header.findtext("a:MessageID", "", NS) or "").strip()
        action = ACTIONS.get(action_uri)
        if action is None:
            raise Fault(2150858817, "w:ActionNotSupported", f"action {action_uri} is not supported")
        timeout = _duration(header.findtext("w:OperationTimeout", "PT60S", NS) or "PT60S")
        shell_id = next(
            (
                s.text or ""
                for s in header.iterfind("w:SelectorSet/w:Selector", NS)
                if s.get("Name") == "ShellId"
            ),
            "",
        )
        options = {o.get("Name", ""): (o.text or "") for o in header.iterfind("w:OptionSet/w:Option", NS)}
        reply = getattr(self, f"_{action.lower()}")(body, shell_id, options, timeout, user)
        return action, _envelope(action_uri + "Response", message_id, reply)

    def _shell(self, shell_id: str) -> Shell:
        with self.lock:
            shell = self.shells.get(shell_id)
        if shell is None:
            raise Fault(
                SHELL_NOT_FOUND,
                "w:InvalidSelectors",
                f"The request for the Windows Remote Shell with ShellId {shell_id} failed because the shell "
                "was not found on the server. Possible causes are: the specified ShellId is incorrect or the "
                "shell no longer exists on the server. Provide the correct ShellId or create a new shell and "
                "retry the operation.",
            )
        return shell

    def _create(self, body: ET.Element, _shell: str, options: dict[str, str], _t: float, user: str) -> str:
        element = body.find("rsp:Shell", NS)
        if element is None:
            raise Fault(2150858817, "w:InvalidMessageInformationHeader", "Create without rsp:Shell", 400)
        environment = {
            v.get("Name", ""): v.text or "" for v in element.iterfind("rsp:Environment/rsp:Variable", NS)
        }
        name = user.rpartition("\\")[2].split("@")[0]
        working = element.findtext("rsp:WorkingDirectory", "", NS) or f"C:\\Users\\{name}"
        self.host.paths.local(working).mkdir(parents=True, exist_ok=True)
        shell = Shell(
            str(uuid.uuid4()).upper(), working, environment, int(options.get("WINRS_CODEPAGE", "437") or 437)
        )
        with self.lock:
            self.shells[shell.shell_id] = shell
        return (
            "<x:ResourceCreated><a:Address>http://localhost/wsman</a:Address><a:ReferenceParameters>"
            f"<w:ResourceURI>{SHELL}/cmd</w:ResourceURI><w:SelectorSet>"
            f'<w:Selector Name="ShellId">{shell.shell_id}</w:Selector></w:SelectorSet>'
            "</a:ReferenceParameters></x:ResourceCreated>"
        )

    def _delete(self, _body: ET.Element, shell_id: str, _o: dict[str, str], _t: float, _u: str) -> str:
        shell = self._shell(shell_id)
        with self.lock:
            self.shells.pop(shell_id, None)
        for command in shell.commands.values():
            if not command.done:
                command.signal("terminate")
        return ""

    def _command(self, body: ET.Element, shell_id: str, options: dict[str, str], _t: float, user: str) -> str:
        shell = self._shell(shell_id)
        line = body.find("rsp:CommandLine", NS)
        if line is None:
            raise Fault(
                2150858817, "w:InvalidMessageInformationHeader", "Command without rsp:CommandLine", 400
            )
        executable = (line.findtext("rsp:Command", "", NS) or "").strip()
        arguments = (line.findtext("rsp:Arguments", "", NS) or "").strip()
        command_line = f"{executable} {arguments}".strip()
        command = Command(str(uuid.uuid4()).upper(), command_line, "cmd")
        shell.commands[command.command_id] = command
        with self.lock:
            self.commands.append(command)
        encoding = "utf-8" if shell.codepage == 65001 else f"cp{shell.codepage}"
        encoded = re.search(r"-(?:e|ec|enc|encodedcommand)\s+([A-Za-z0-9+/=]+)", command_line, re.IGNORECASE)
        if re.match(r"^powershell(\.exe)?\b", command_line, re.IGNORECASE) and encoded:
            command.kind = "powershell"
            command.script = base64.b64decode(encoded[1]).decode("utf-16-le")
            threading.Thread(
                target=self._run_script, args=(shell, command, encoding, user), daemon=True
            ).start()
        else:
            self._start_process(shell, command, command_line)
        return (
            f"<rsp:CommandResponse><rsp:CommandId>{command.command_id}</rsp:CommandId></rsp:CommandResponse>"
        )

    def _run_script(self, shell: Shell, command: Command, encoding: str, user: str) -> None:
        env = {"USERNAME": user.rpartition("\\")[2], **shell.environment}
        io = ScriptIO(
            write_stdout=lambda data: command.emit("stdout", data),
            stdin_lines=command.stdin_lines,
            stopped=command.stopped,
            encoding=encoding,
        )
        mapping = PowerShellMapping(self.host, env, shell.working_directory, io)
        try:
            code = mapping.run(command.script)
        except Exception as exc:  # a bug in the mapping shows as an error record, not a hung command
            mapping.records.append(("Error", f"test server error: {exc!r}"))
            code = 1
        if mapping.records:
            command.emit("stderr", clixml(mapping.records).encode(encoding, errors="replace"))
        command.close_stream()
        command.close_stream()
        command.finish(code)

    def _start_process(self, shell: Shell, command: Command, command_line: str) -> None:
        cwd = self.host.paths.local(shell.working_directory)
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "COMPUTERNAME": self.host.hostname,
            **shell.environment,
        }
        process = subprocess.Popen(
            ["/bin/sh", "-c", command_line],
            cwd=cwd,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        command.process = process

        def pump(stream: Any, name: str) -> None:
            while data := os.read(stream.fileno(), 65536):
                command.emit(name, data)
            command.close_stream()

        def wait() -> None:
            code = process.wait()
            command.finish(code if code >= 0 else 128 - code)

        for stream, name in ((process.stdout, "stdout"), (process.stderr, "stderr")):
            threading.Thread(target=pump, args=(stream, name), daemon=True).start()
        threading.Thread(target=wait, daemon=True).start()

    def _find_command(self, shell: Shell, command_id: str) -> Command:
        command = shell.commands.get(command_id)
        if command is None:
            raise Fault(
                2150858843,
                "w:InvalidSelectors",
                f"The command {command_id} does not exist in shell {shell.shell_id}.",
            )
        return command

    def _receive(self, body: ET.Element, shell_id: str, _o: dict[str, str], timeout: float, _u: str) -> str:
        shell = self._shell(shell_id)
        desired = body.find("rsp:Receive/rsp:DesiredStream", NS)
        command = self._find_command(shell, desired.get("CommandId", "") if desired is not None else "")
        with command.cond:
            ready = command.cond.wait_for(lambda: command.pending or command.done, timeout)
            if not ready:
                raise Fault(
                    TIMED_OUT,
                    "w:TimedOut",
                    "The WS-Management service cannot complete the operation within the time specified in "
                    "OperationTimeout.",
                )
            taken = command.take(RECEIVE_BYTES)
            done = command.done and not command.pending
            exit_code = command.exit_code
        parts = []
        cid = command.command_id
        for stream, data in taken:
            for start in range(0, len(data), STREAM_CHUNK):
                chunk = base64.b64encode(data[start : start + STREAM_CHUNK]).decode()
                parts.append(f'<rsp:Stream Name="{stream}" CommandId="{cid}">{chunk}</rsp:Stream>')
        if done:
            parts.append(f'<rsp:Stream Name="stdout" CommandId="{cid}" End="true"></rsp:Stream>')
            parts.append(f'<rsp:Stream Name="stderr" CommandId="{cid}" End="true"></rsp:Stream>')
            parts.append(
                f'<rsp:CommandState CommandId="{cid}" State="{SHELL}/CommandState/Done">'
                f"<rsp:ExitCode>{exit_code}</rsp:ExitCode></rsp:CommandState>"
            )
        else:
            parts.append(f'<rsp:CommandState CommandId="{cid}" State="{SHELL}/CommandState/Running"/>')
        return f"<rsp:ReceiveResponse>{''.join(parts)}</rsp:ReceiveResponse>"

    def _send(self, body: ET.Element, shell_id: str, _o: dict[str, str], _t: float, _u: str) -> str:
        shell = self._shell(shell_id)
        for stream in body.iterfind("rsp:Send/rsp:Stream", NS):
            command = self._find_command(shell, stream.get("CommandId", ""))
            data = base64.b64decode(stream.text or "")
            command.feed_stdin(data, stream.get("End", "false").lower() == "true")
        return "<rsp:SendResponse/>"

    def _signal(self, body: ET.Element, shell_id: str, _o: dict[str, str], _t: float, _u: str) -> str:
        shell = self._shell(shell_id)
        element = body.find("rsp:Signal", NS)
        if element is None:
            raise Fault(2150858817, "w:InvalidMessageInformationHeader", "Signal without rsp:Signal", 400)
        command = self._find_command(shell, element.get("CommandId", ""))
        code = (element.findtext("rsp:Code", "", NS) or "").rsplit("/", 1)[-1]
        command.signal(code)
        if code == "terminate":
            shell.commands.pop(command.command_id, None)
        return "<rsp:SignalResponse/>"


def _duration(text: str) -> float:
    match = re.fullmatch(r"PT(?:(\d+(?:\.\d+)?)M)?(?:(\d+(?:\.\d+)?)S)?", text.strip())
    if not match:
        return 60.0
    return float(match[1] or 0) * 60 + float(match[2] or 0)


def _envelope(action: str, relates_to: str, body: str) -> str:
    return (
        f'<s:Envelope xmlns:s="{NS["s"]}" xmlns:a="{NS["a"]}" xmlns:w="{NS["w"]}" xmlns:rsp="{NS["rsp"]}" '
        f'xmlns:x="{NS["x"]}"><s:Header><a:Action>{action}</a:Action>'
        f"<a:MessageID>uuid:{uuid.uuid4()}</a:MessageID>"
        "<a:To>http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous</a:To>"
        f"<a:RelatesTo>{escape(relates_to)}</a:RelatesTo></s:Header><s:Body>{body}</s:Body></s:Envelope>"
    )


def fault_envelope(fault: Fault) -> str:
    return (
        f'<s:Envelope xmlns:s="{NS["s"]}" xmlns:a="{NS["a"]}" xmlns:w="{NS["w"]}"><s:Header>'
        "<a:Action>http://schemas.dmtf.org/wbem/wsman/1/wsman/fault</a:Action></s:Header><s:Body><s:Fault>"
        f"<s:Code><s:Value>s:Receiver</s:Value><s:Subcode><s:Value>{fault.subcode}</s:Value></s:Subcode></s:Code>"
        f'<s:Reason><s:Text xml:lang="en-US">{escape(fault.reason)}</s:Text></s:Reason><s:Detail>'
        f'<f:WSManFault xmlns:f="http://schemas.microsoft.com/wbem/wsman/1/wsmanfault" Code="{fault.code}" '
        f'Machine="localhost"><f:Message>{escape(fault.reason)}</f:Message></f:WSManFault>'
        "</s:Detail></s:Fault></s:Body></s:Envelope>"
    )


# --- HTTP, authentication and encryption -------------------------------------------------------------------
class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: Any, tls: ssl.SSLContext | None) -> None:
        self.tls_context = tls
        super().__init__(address, handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        if self.tls_context is not None:
            try:
                request = self.tls_context.wrap_socket(request, server_side=True)
            except (ssl.SSLError, OSError):
                return  # the client refused our certificate (or spoke plain HTTP)
        super().finish_request(request, client_address)


def _unwrap_body(context: Any, body: bytes) -> bytes:
    """Decrypt a ``multipart/encrypted`` body as pywinrm builds it (MS-WSMV 2.2.9.1.1)."""
    parts = [p for p in body.split(BOUNDARY + b"\r\n") if p]
    message = b""
    for index in range(0, len(parts) - 1, 2):
        header, payload = parts[index].strip(), parts[index + 1]
        expected = int(header.split(b"Length=")[1])
        if payload.endswith(BOUNDARY + b"--\r\n"):
            payload = payload[: -len(BOUNDARY + b"--\r\n")]
        data = payload.replace(b"\tContent-Type: application/octet-stream\r\n", b"", 1)
        signature_length = struct.unpack("<i", data[:4])[0]
        signature = data[4 : 4 + signature_length]
        plain: bytes = context.unwrap(signature + data[4 + signature_length :]).data
        if len(plain) != expected:
            raise ValueError(f"decrypted length {len(plain)} is not the declared {expected}")
        message += plain
    return message


def _wrap_body(context: Any, message: bytes) -> bytes:
    wrapped = context.wrap(message, encrypt=True).data
    signature, sealed = wrapped[:16], wrapped[16:]
    return (
        BOUNDARY + b"\r\n"
        b"\tContent-Type: " + ENCRYPTED_PROTOCOL.encode() + b"\r\n"
        b"\tOriginalContent: type=application/soap+xml;charset=UTF-8;Length="
        + str(len(message)).encode()
        + b"\r\n"
        + BOUNDARY
        + b"\r\n"
        b"\tContent-Type: application/octet-stream\r\n"
        + struct.pack("<i", len(signature))
        + signature
        + sealed
        + BOUNDARY
        + b"--\r\n"
    )


def _handler_class(server: WinrmServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        ntlm_context: Any = None
        ntlm_user: str = ""

        def log_message(self, format: str, *args: object) -> None:
            pass

        def setup(self) -> None:
            super().setup()
            # Headers and body go out in separate writes: without this, Nagle's algorithm and the
            # client's delayed ACK add ~40 ms to every reply (Windows' HTTP.sys does not stall).
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def _reply(
            self, status: int, body: bytes = b"", headers: list[tuple[str, str]] | None = None
        ) -> None:
            self.send_response(status)
            for name, value in headers or []:
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _challenge(self, token: str | None = None, scheme: str = "Negotiate") -> None:
            headers = []
            if token is not None:
                headers.append(("WWW-Authenticate", f"{scheme} {token}"))
            else:
                if server.ntlm:
                    headers.append(("WWW-Authenticate", "Negotiate"))
                if server.basic:
                    headers.append(("WWW-Authenticate", 'Basic realm="WSMAN"'))
            self._reply(401, b"", headers)

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            if self.path.split("?")[0] != server.path:
                self._reply(404)
                return
            user = self._authenticate()
            if user is None:
                return
            content_type = self.headers.get("Content-Type", "")
            encrypted = "multipart/encrypted" in content_type
            if encrypted:
                if self.ntlm_context is None or ENCRYPTED_PROTOCOL not in content_type:
                    self._challenge()
                    return
                try:
                    body = _unwrap_body(self.ntlm_context, body)
                except Exception:
                    self._reply(400)
                    return
            if not body:  # pywinrm's empty POST that sets up the encryption context
                self._reply(200)
                return
            if not encrypted and server.tls is None and not server.allow_unencrypted:
                fault = Fault(
                    ACCESS_DENIED,
                    "w:AccessDenied",
                    "Unencrypted traffic is currently disabled in the client "
                    "configuration (the server's AllowUnencrypted is false).",
                    400,
                )
                self._reply(
                    fault.status, fault_envelope(fault).encode(), [("Content-Type", "application/soap+xml")]
                )
                return
            try:
                action, reply = server.handle(body, user)
                status = 200
            except Fault as fault:
                action, reply, status = "Fault", fault_envelope(fault), fault.status
            with server.lock:
                server.requests.append(RequestRecord(action, encrypted, user, server.tls is not None))
            payload = reply.encode("utf-8")
            if encrypted:
                payload = _wrap_body(self.ntlm_context, payload)
                content = f'multipart/encrypted;protocol="{ENCRYPTED_PROTOCOL}";boundary="Encrypted Boundary"'
            else:
                content = "application/soap+xml;charset=UTF-8"
            self._reply(status, payload, [("Content-Type", content)])

        def _authenticate(self) -> str | None:
            header = self.headers.get("Authorization", "")
            scheme, _, token = header.partition(" ")
            if scheme.lower() == "basic" and server.basic:
                try:
                    name, _, password = base64.b64decode(token).decode("utf-8").partition(":")
                except ValueError:
                    name, password = "", ""
                known = {u.lower(): p for u, p in server.users.items()}
                if known.get(name.lower()) == password:
                    return name
                self._challenge()
                return None
            if scheme.lower() in ("negotiate", "ntlm") and server.ntlm and token:
                if self.ntlm_context is None or self.ntlm_context.complete:
                    bindings = None
                    if server.certificate_der is not None:
                        bindings = spnego.channel_bindings.GssChannelBindings(
                            application_data=b"tls-server-end-point:"
                            + tls_server_end_point(server.certificate_der)
                        )
                    self.ntlm_context = spnego.server(protocol="ntlm", channel_bindings=bindings)
                    self.ntlm_user = ""
                try:
                    answer = self.ntlm_context.step(base64.b64decode(token))
                except Exception:
                    self.ntlm_context = None
                    self._challenge()
                    return None
                if not self.ntlm_context.complete:
                    self._challenge(base64.b64encode(answer or b"").decode(), scheme)
                    return None
                principal = self.ntlm_context.client_principal or ""
                known = {u.lower() for u in server.users}
                if principal.lower() not in known:
                    self.ntlm_context = None
                    self._challenge()
                    return None
                self.ntlm_user = principal
                return principal
            if self.ntlm_context is not None and self.ntlm_context.complete and self.ntlm_user:
                return self.ntlm_user
            self._challenge()
            return None

    return Handler
