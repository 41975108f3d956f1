"""The WinRM test server's stand-in for Windows: paths, services, facts and a small PowerShell mapping.

No Windows host runs here, so the decoded ``-EncodedCommand`` script is executed by a **documented
mapping**, not by PowerShell. It is deliberately small and strict: a statement it does not know
fails the way PowerShell fails for an unknown command (``CommandNotFoundException`` on the error
stream as CLIXML, exit code 1), so a test can never pass by the server guessing.

What it runs (case-insensitive; statements separated by newlines or ``;``; ``#`` comments):

=====================================================  ==============================================
statement                                              effect
=====================================================  ==============================================
``$ErrorActionPreference = 'Stop'``                    the first error ends the script (exit 1)
``$ProgressPreference = ...``                          ignored
``$name = <value>`` / ``$env:NAME = <value>``          variable / environment variable
``Set-Location [-LiteralPath] <path>``                 working directory (must exist)
``Write-Output <value>`` / ``echo`` / a bare value     a line on stdout
``Write-Host <value>``                                 a line on stdout (host output goes there too)
``Write-Error [-Message] <value>``                     an error record (CLIXML on stderr)
``Write-Warning <value>``                              a warning record (CLIXML on stderr)
``Start-Sleep [-Seconds] <n>`` / ``-Milliseconds <n>``  waits; a Signal interrupts it
``Restart-/Start-/Stop-Service [-Name] <name>``        changes the emulated service (recorded)
``Get-Service [-Name] <name>``                         ``Status Name`` line
``(Get-Service [-Name] <name>).Status``                ``Running`` / ``Stopped``
``(Get-CimInstance Win32_OperatingSystem).<Prop>``     Caption, Version, BuildNumber, OSArchitecture
``hostname`` / ``$env:COMPUTERNAME``                   this machine's host name (upper case)
``Get-Content [-LiteralPath] <path>``                  the file's lines
``Test-Path [-LiteralPath] <path>``                    ``True`` / ``False``
``exit [<n>]``                                         ends the script with that exit code
=====================================================  ==============================================

Values: ``'single-quoted'`` (``''`` escapes a quote), ``"double-quoted"`` (``$env:X``, ``$var``
and `` `n`` expanded), integers, bare words (argument mode) and ``$variables``.

Two whole scripts the runner sends are recognised by their first line and executed as *recipes*
that implement what the script does on Windows (the script text is still decoded and its
parameters parsed from it): ``# opsconductor:facts v1`` (prints the facts JSON) and
``# opsconductor:receive-file v1`` (reads base64 lines from stdin, writes ``$path`` through a
temporary file, verifies the SHA-256 against ``$expected``).

The exit code follows ``powershell -EncodedCommand``: ``exit n``; else 1 when the last statement
failed; else 0.

Windows paths map into a directory of this machine: ``C:\\dir\\file`` → ``<root>/C/dir/file``; a
path leaving the root is an error.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import platform
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

CLIXML_HEADER = "#< CLIXML\r\n"
_PS_NS = "http://schemas.microsoft.com/powershell/2004/04"


@dataclass
class WindowsPaths:
    """Maps Windows paths to a directory on this machine."""

    root: Path

    def local(self, windows_path: str, cwd: str = "C:\\") -> Path:
        """The local path of a Windows path (relative paths are relative to ``cwd``).

        Raises:
            ValueError: the path is not a drive path, or escapes the root.
        """
        path = windows_path.replace("/", "\\")
        if not re.match(r"^[A-Za-z]:\\", path):
            path = cwd.rstrip("\\") + "\\" + path
        drive, rest = path[0].upper(), path[3:]
        parts = [p for p in rest.split("\\") if p and p != "."]
        resolved: list[str] = []
        for part in parts:
            if part == "..":
                if not resolved:
                    raise ValueError(f"path {windows_path!r} leaves the drive")
                resolved.pop()
            else:
                resolved.append(part)
        return self.root.joinpath(drive, *resolved)


def clixml(records: list[tuple[str, str]]) -> str:
    """Serialise error/warning/verbose records as PowerShell writes them to a redirected stderr.

    Args:
        records: (stream, text) with stream ``Error``, ``warning``, ``verbose`` or ``debug``.

    Returns:
        ``#< CLIXML`` and one ``<Objs>`` document; CR/LF and XML-special characters escaped as
        PowerShell does (``_x000D__x000A_``, ``&lt;``...).
    """

    def escape(text: str) -> str:
        text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        return text.replace("\r", "_x000D_").replace("\n", "_x000A_")

    body = "".join(f'<S S="{stream}">{escape(text)}</S>' for stream, text in records)
    return f'{CLIXML_HEADER}<Objs Version="1.1.0.1" xmlns="{_PS_NS}">{body}</Objs>'


@dataclass
class WindowsHost:
    """The emulated machine behind one WinRM test server: drive, services and what was done."""

    paths: WindowsPaths
    services: dict[str, str] = field(default_factory=lambda: {"W3SVC": "Running", "Spooler": "Running"})
    service_calls: list[str] = field(default_factory=list)
    """``Restart-Service W3SVC`` etc., in order (what the example tests check)."""
    boot_time: float = field(default_factory=time.time)
    corrupt_uploads: bool = False
    """Fault injection: flip the first byte of every received chunk (the checksum must catch it)."""
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def hostname(self) -> str:
        return socket.gethostname().split(".")[0].upper()

    def os_properties(self) -> dict[str, str]:
        """What ``Win32_OperatingSystem`` reports here: this machine's system, marked as emulated."""
        return {
            "Caption": f"OpsConductor WinRM test server on {platform.system()}",
            "Version": platform.release(),
            "BuildNumber": platform.release().split("-")[0],
            "OSArchitecture": "64-bit" if platform.machine() in ("x86_64", "AMD64", "aarch64") else "32-bit",
        }

    def facts(self) -> dict[str, str | int]:
        """The facts recipe's answer (keys as the runner expects them)."""
        props = self.os_properties()
        return {
            "hostname": self.hostname,
            "os_name": props["Caption"],
            "os_version": props["Version"],
            "kernel": props["BuildNumber"],
            "domain": "WORKGROUP",
            "architecture": props["OSArchitecture"],
            "uptime_seconds": int(time.time() - self.boot_time),
        }


class ScriptExit(Exception):
    """``exit n`` or a terminating error."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


class StatementError(Exception):
    """A non-terminating error record of one statement."""


@dataclass
class ScriptIO:
    """Where a running script writes, and how it learns it was signalled."""

    write_stdout: Callable[[bytes], None]
    stdin_lines: Callable[[], Iterator[bytes]]
    stopped: threading.Event
    encoding: str = "utf-8"


def split_statements(script: str) -> list[str]:
    """Split a script into statements: newlines and ``;`` outside quotes, parentheses and braces."""
    statements: list[str] = []
    current: list[str] = []
    quote: str | None = None
    depth = 0
    i = 0
    text = re.sub(r"<#.*?#>", "", script, flags=re.DOTALL)
    while i < len(text):
        char = text[i]
        if quote:
            current.append(char)
            if char == quote:
                if i + 1 < len(text) and text[i + 1] == quote:
                    current.append(text[i + 1])
                    i += 1
                else:
                    quote = None
        elif char in "'\"":
            quote = char
            current.append(char)
        elif char == "#":
            while i < len(text) and text[i] != "\n":
                i += 1
            continue
        elif char in "({":
            depth += 1
            current.append(char)
        elif char in ")}":
            depth -= 1
            current.append(char)
        elif char in ";\n" and depth <= 0:
            statements.append("".join(current).strip())
            current = []
        else:
            current.append(char)
        i += 1
    statements.append("".join(current).strip())
    return [s for s in statements if s]


_VALUE = r"('(?:[^']|'')*'|\"(?:[^\"`]|`.)*\"|\$[\w:]+|[^\s'\"]+)"


class PowerShellMapping:
    """Runs one decoded script against a :class:`WindowsHost` (see the module docstring)."""

    def __init__(self, host: WindowsHost, env: dict[str, str], cwd: str, io: ScriptIO) -> None:
        self.host = host
        self.env = dict(env)
        self.cwd = cwd
        self.io = io
        self.variables: dict[str, str] = {}
        self.stop_on_error = False
        self.records: list[tuple[str, str]] = []

    # --- values --------------------------------------------------------------------------------
    def value(self, token: str) -> str:
        token = token.strip()
        if token.startswith("'") and token.endswith("'") and len(token) >= 2:
            return token[1:-1].replace("''", "'")
        if token.startswith('"') and token.endswith('"') and len(token) >= 2:
            inner = token[1:-1]
            inner = re.sub(r"`(.)", lambda m: {"n": "\n", "r": "\r", "t": "\t"}.get(m[1], m[1]), inner)
            return re.sub(r"\$(env:)?(\w+)", lambda m: self.lookup(m[0]), inner)
        if token.startswith("$"):
            return self.lookup(token)
        return token

    def lookup(self, reference: str) -> str:
        name = reference.lstrip("$")
        if name.lower().startswith("env:"):
            key = name[4:]
            if key.upper() == "COMPUTERNAME":
                return self.host.hostname
            return next((v for k, v in self.env.items() if k.upper() == key.upper()), "")
        return self.variables.get(name.lower(), "")

    # --- output --------------------------------------------------------------------------------
    def out(self, text: str) -> None:
        self.io.write_stdout((text + "\r\n").encode(self.io.encoding, errors="replace"))

    def error(self, message: str, category: str) -> None:
        self.records.append(("Error", f"{message}\r\n    + CategoryInfo          : {category}\r\n"))
        raise StatementError(message)

    # --- running -------------------------------------------------------------------------------
    def run(self, script: str) -> int:
        """Run the script; returns its exit code. Error records are in :attr:`records`."""
        first = script.lstrip().split("\n", 1)[0].strip().lower()
        try:
            if first == "# opsconductor:facts v1":
                self.out(json.dumps(self.host.facts()))
                return 0
            if first == "# opsconductor:receive-file v1":
                return self.receive_file(script)
            failed = False
            for statement in split_statements(script):
                if self.io.stopped.is_set():
                    return 1
                try:
                    self.statement(statement)
                    failed = False
                except StatementError:
                    failed = True
                    if self.stop_on_error:
                        return 1
            return 1 if failed else 0
        except ScriptExit as done:
            return done.code

    def statement(self, text: str) -> None:
        def match(pattern: str) -> re.Match[str] | None:
            return re.fullmatch(pattern, text, flags=re.IGNORECASE | re.DOTALL)

        if m := match(r"\$(ErrorActionPreference|ProgressPreference)\s*=\s*" + _VALUE):
            if m[1].lower() == "erroractionpreference":
                self.stop_on_error = self.value(m[2]).lower() == "stop"
        elif m := match(r"\$env:(\w+)\s*=\s*" + _VALUE):
            self.env[m[1]] = self.value(m[2])
        elif m := match(r"\$(\w+)\s*=\s*" + _VALUE):
            self.variables[m[1].lower()] = self.value(m[2])
        elif m := match(r"(?:Set-Location|cd|sl)\s+(?:-(?:Literal)?Path\s+)?" + _VALUE):
            target = self.value(m[1])
            local = self.host.paths.local(target, self.cwd)
            if not local.is_dir():
                self.error(
                    f"Set-Location : Cannot find path '{target}' because it does not exist.",
                    f"ObjectNotFound: ({target}:String) [Set-Location], ItemNotFoundException",
                )
            self.cwd = target
        elif m := match(r"(?:Write-Output|Write-Host|echo|write)\s+" + _VALUE):
            self.out(self.value(m[1]))
        elif m := match(r"Write-Error\s+(?:-Message\s+)?" + _VALUE):
            message = self.value(m[1])
            self.error(f"{message}", "NotSpecified: (:) [Write-Error], WriteErrorException")
        elif m := match(r"Write-Warning\s+(?:-Message\s+)?" + _VALUE):
            self.records.append(("warning", self.value(m[1])))
        elif m := match(r"exit(?:\s+(-?\d+))?"):
            raise ScriptExit(int(m[1]) if m[1] else 0)
        elif m := match(r"Start-Sleep\s+(?:-(Seconds|s|Milliseconds|m)\s+)?(\d+(?:\.\d+)?)"):
            seconds = float(m[2]) / (1000 if (m[1] or "").lower() in ("milliseconds", "m") else 1)
            if self.io.stopped.wait(seconds):
                raise ScriptExit(1)
        elif m := match(r"(Restart|Start|Stop)-Service\s+(?:-Name\s+)?" + _VALUE + r"(?:\s+-Force)?"):
            name = self.service(self.value(m[2]), f"{m[1].capitalize()}-Service")
            with self.host.lock:
                self.host.service_calls.append(f"{m[1].capitalize()}-Service {name}")
                self.host.services[name] = "Stopped" if m[1].lower() == "stop" else "Running"
        elif m := match(r"\(\s*Get-Service\s+(?:-Name\s+)?" + _VALUE + r"\s*\)\.Status"):
            name = self.service(self.value(m[1]), "Get-Service")
            self.out(self.host.services[name])
        elif m := match(r"Get-Service\s+(?:-Name\s+)?" + _VALUE):
            name = self.service(self.value(m[1]), "Get-Service")
            self.out(f"{self.host.services[name]:<8} {name}")
        elif m := match(
            r"\(\s*Get-(?:CimInstance|WmiObject)\s+(?:-Class(?:Name)?\s+)?Win32_OperatingSystem\s*\)\.(\w+)"
        ):
            props = {k.lower(): v for k, v in self.host.os_properties().items()}
            self.out(props.get(m[1].lower(), ""))
        elif match(r"hostname(?:\.exe)?"):
            self.out(self.host.hostname)
        elif m := match(r"Get-Content\s+(?:-(?:Literal)?Path\s+)?" + _VALUE):
            target = self.value(m[1])
            local = self.host.paths.local(target, self.cwd)
            if not local.is_file():
                self.error(
                    f"Get-Content : Cannot find path '{target}' because it does not exist.",
                    f"ObjectNotFound: ({target}:String) [Get-Content], ItemNotFoundException",
                )
            for line in local.read_text(errors="replace").splitlines():
                self.out(line)
        elif m := match(r"Test-Path\s+(?:-(?:Literal)?Path\s+)?" + _VALUE):
            self.out(str(self.host.paths.local(self.value(m[1]), self.cwd).exists()))
        elif match(_VALUE) and (text[0] in "'\"$" or text.lstrip("-").isdigit()):
            self.out(self.value(text))
        else:
            word = text.split()[0]
            self.error(
                f"{word} : The term '{word}' is not recognized as the name of a cmdlet, function, script "
                "file, or operable program. Check the spelling of the name, or if a path was included, "
                "verify that the path is correct and try again.",
                f"ObjectNotFound: ({word}:String) [], CommandNotFoundException",
            )

    def service(self, name: str, cmdlet: str) -> str:
        found = next((s for s in self.host.services if s.lower() == name.lower()), None)
        if found is None:
            self.error(
                f"{cmdlet} : Cannot find any service with service name '{name}'.",
                f"ObjectNotFound: ({name}:String) [{cmdlet}], ServiceCommandException",
            )
        assert found is not None
        return found

    # --- recipes -------------------------------------------------------------------------------
    def receive_file(self, script: str) -> int:
        """The receive-file recipe: base64 lines on stdin → ``$path``, checked against ``$expected``."""
        params: dict[str, str] = {}
        for name in ("path", "expected"):
            if m := re.search(
                rf"^\s*\${name}\s*=\s*('(?:[^']|'')*')\s*$", script, re.IGNORECASE | re.MULTILINE
            ):
                params[name] = self.value(m[1])
        if "path" not in params or "expected" not in params:
            self.records.append(("Error", "receive-file script without $path or $expected"))
            return 1
        try:
            local = self.host.paths.local(params["path"])
        except ValueError as exc:
            self.records.append(("Error", str(exc)))
            return 1
        local.parent.mkdir(parents=True, exist_ok=True)
        partial = local.with_name(local.name + ".opsc-partial")
        digest = hashlib.sha256()
        with partial.open("wb") as stream:
            for line in self.io.stdin_lines():
                line = line.strip()
                if not line:
                    continue
                data = base64.b64decode(line)
                if self.host.corrupt_uploads and data:
                    data = bytes([data[0] ^ 0xFF]) + data[1:]
                digest.update(data)
                stream.write(data)
        actual = digest.hexdigest()
        if actual != params["expected"].lower():
            partial.unlink(missing_ok=True)
            self.records.append(
                (
                    "Error",
                    f"checksum mismatch for {params['path']}: expected {params['expected']}, got {actual}",
                )
            )
            return 2
        os.replace(partial, local)
        self.out(f"sha256:{actual}")
        return 0
