"""The SSH protocol: ``ssh.exec``, ``ssh.copy`` (scp), ``sftp.upload``, ``sftp.sync`` and ``sftp.download``.

This module owns everything between a rendered SSH step and the remote host:

- **Connections.** One paramiko ``Transport`` per target (and credential), opened on first use,
  reused by every later step of the run and closed by :meth:`SshSession.close`. Threads running
  different targets connect in parallel; a thread needing a target another thread is connecting to
  waits for that connection instead of opening a second one.
- **Trust.** The server's host key is checked against the target's declared ``host_keys``
  (authorized_keys-style lines) and/or its ``known_hosts_file`` (plain, wildcard, negated,
  ``[host]:port`` and hashed ``|1|`` entries; ``@revoked`` honoured) *before* any credential is
  sent. Only the declared key types are negotiated, so a host with several keys presents the one we
  know. Nothing declared and no explicit ``insecure_skip_host_key_verification`` is an error.
- **Login.** ``SSHKey`` credentials (RSA, ECDSA, Ed25519; OpenSSH or PEM/PKCS#8; optionally
  passphrase-protected) or ``BasicAuth`` passwords (falling back to keyboard-interactive when the
  server only offers that). Never an agent or ``~/.ssh``. Every secret is read through
  ``ctx.secrets`` so it is masked wherever it appears.
- **Remote commands.** See :func:`build_remote_command`: the command runs under the user's login
  shell (POSIX syntax expected: sh, bash, dash, ksh, zsh), which first reports its PID on stderr.
  sshd starts that shell as a session and process-group leader, so on timeout or cancellation a
  second channel sends ``SIGTERM`` to the whole process group, waits up to
  :data:`KILL_GRACE_SECONDS`, then ``SIGKILL`` s what is left. Scripts are sent on stdin and read
  by the interpreter (``shell``, default ``/bin/sh``) through ``/dev/fd/3``; the script's own
  commands get ``/dev/null`` as stdin, so a ``read`` or ``cat`` in the script cannot swallow the
  rest of it, and no temporary file is left behind.
- **Output.** stdout and stderr are read separately; the outcome keeps the first and last
  :data:`OUTPUT_HEAD_BYTES` / :data:`OUTPUT_TAIL_BYTES` of each plus byte counts, while every line goes
  (masked) to the run log ``ctx.log``.
- **Files.** ``ssh.copy`` speaks the scp sink protocol (``scp -t``) like ``scp -rp``; the sftp steps
  write each file to a temporary name, set its mode and mtime, then rename it into place.

Pure helpers (host-key parsing and matching, command building and quoting, the PID-marker filter,
the head/tail buffer, file-source resolution) are separate from the I/O so they can be unit tested.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import hmac
import io
import os
import posixpath
import re
import select
import shlex
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import paramiko
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from paramiko.ssh_exception import PartialAuthentication

from opsconductor.api.opsjob import (
    FileSource,
    SftpDownloadStep,
    SftpSyncStep,
    SftpUploadStep,
    SshCopyStep,
    SshExecStep,
    Step,
)
from opsconductor.plan import PlanCredential, PlanTarget, RunPlan
from opsconductor.runner.protocols.base import SecretStore, StepContext, StepOutcome

STEP_TYPES = frozenset({"ssh.exec", "ssh.copy", "sftp.upload", "sftp.download", "sftp.sync"})

OUTPUT_HEAD_BYTES = 64 * 1024
"""Bytes kept from the start of each output stream."""
OUTPUT_TAIL_BYTES = 64 * 1024
"""Bytes kept from the end of each output stream."""
KILL_GRACE_SECONDS = 1.0
"""Between SIGTERM and SIGKILL of a remote process group."""
EXIT_DRAIN_SECONDS = 2.0
"""After the remote shell exited: stop reading once its output was quiet this long but not closed
(background processes still hold it open, as ``ssh host 'daemon &'`` would hang on)."""
EXIT_DRAIN_LIMIT_SECONDS = 30.0
"""After the remote shell exited: stop reading after this long even if output keeps coming."""
LOG_LINE_BYTES = 16 * 1024
"""Longer output lines go to the log in pieces of this size."""
KEEPALIVE_SECONDS = 30
HANDSHAKES_PER_ENDPOINT = 4
"""Connections being opened at once to one ``address:port``. sshd's default ``MaxStartups 10:30:100``
drops unauthenticated connections beyond 10, so Targets that share one sshd (several Target names for
one host, hosts behind one NAT address and port) must not all connect at once."""
CHUNK = 32 * 1024
DEFAULT_SHELL = "/bin/sh"
DEFAULT_DIR_MODE = 0o755
OUTPUT_VALUE_BYTES = 4096
"""``outputs['stdout']`` is set only when the whole stdout is at most this long."""
_POLL = 0.1

# Host key algorithms paramiko may negotiate for each key type, in preference order.
_HOST_KEY_ALGORITHMS: dict[str, tuple[str, ...]] = {
    "ssh-ed25519": ("ssh-ed25519",),
    "ecdsa-sha2-nistp256": ("ecdsa-sha2-nistp256",),
    "ecdsa-sha2-nistp384": ("ecdsa-sha2-nistp384",),
    "ecdsa-sha2-nistp521": ("ecdsa-sha2-nistp521",),
    "ssh-rsa": ("rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"),
}
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class SshStepError(Exception):
    """A step failed in a way a person can act on; ``message`` says how (never raised out of ``run``)."""

    def __init__(self, message: str, *, timed_out: bool = False, cancelled: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.timed_out = timed_out
        self.cancelled = cancelled


def endpoint(address: str, port: int) -> str:
    """``host:port`` as people write it (IPv6 addresses in brackets)."""
    host = address.strip("[]")
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# --- host keys (pure) ---------------------------------------------------------------------------
@dataclass(frozen=True)
class HostKey:
    """An SSH public key: its type name and its wire-format blob."""

    key_type: str
    blob: bytes

    @classmethod
    def parse(cls, line: str) -> HostKey:
        """Parse ``<type> <base64> [comment]`` (one authorized_keys / ssh-keyscan line).

        Args:
            line: the line; surrounding whitespace is ignored.

        Returns:
            The key.

        Raises:
            ValueError: the line is not a public key, or its base64 data is of another key type.
        """
        parts = line.split()
        if len(parts) < 2:
            raise ValueError(f"not an SSH public key line: {line[:60]!r}")
        key_type, data = parts[0], parts[1]
        try:
            blob = base64.b64decode(data, validate=True)
        except ValueError as exc:
            raise ValueError(f"invalid base64 in {key_type} key: {exc}") from None
        if _blob_key_type(blob) != key_type:
            raise ValueError(f"the key data is not of type {key_type} (it says {_blob_key_type(blob)!r})")
        return cls(key_type, blob)

    @property
    def fingerprint(self) -> str:
        """``SHA256:<base64>``, as ``ssh-keygen -lf`` prints it."""
        return sha256_fingerprint(self.blob)

    def describe(self) -> str:
        """``<type> <fingerprint>``, for messages."""
        return f"{self.key_type} {self.fingerprint}"

    def line(self) -> str:
        """Format the key as a ``hostKeys`` entry."""
        return f"{self.key_type} {base64.b64encode(self.blob).decode()}"


def sha256_fingerprint(blob: bytes) -> str:
    """Compute the OpenSSH SHA256 fingerprint of a public key blob."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def _blob_key_type(blob: bytes) -> str | None:
    if len(blob) < 4:
        return None
    size = int.from_bytes(blob[:4], "big")
    if size > len(blob) - 4:
        return None
    try:
        return blob[4 : 4 + size].decode("ascii")
    except UnicodeDecodeError:
        return None


@dataclass(frozen=True)
class KnownHostsEntry:
    """One line of a known_hosts file."""

    hosts: str
    """Comma-separated patterns, or one hashed name (``|1|salt|hash``)."""
    key: HostKey
    marker: str | None = None
    """``@revoked`` or ``@cert-authority`` (certificate authorities are not supported and never match)."""

    def matches(self, name: str) -> bool:
        """Whether this entry is for host ``name`` (see :func:`known_hosts_name`)."""
        return host_matches(self.hosts, name)


def known_hosts_name(address: str, port: int) -> str:
    """How known_hosts names a host: ``address`` on port 22, ``[address]:port`` otherwise."""
    host = address.strip("[]")
    return host if port == 22 else f"[{host}]:{port}"


def host_matches(hosts: str, name: str) -> bool:
    """Match a known_hosts host field against a host name, as OpenSSH does.

    Args:
        hosts: the first field of a known_hosts line: ``|1|<salt>|<hash>`` (hashed), or
            comma-separated patterns with ``*``/``?`` wildcards, ``!`` negations and ``[host]:port``.
        name: the name looked up, from :func:`known_hosts_name`.

    Returns:
        True when a positive pattern (or the hash) matches and no negated pattern does.
    """
    if hosts.startswith("|1|"):
        parts = hosts.split("|")
        if len(parts) != 4:
            return False
        try:
            salt = base64.b64decode(parts[2], validate=True)
            expected = base64.b64decode(parts[3], validate=True)
        except ValueError:
            return False
        digest = hmac.new(salt, name.encode(), hashlib.sha1).digest()
        return hmac.compare_digest(digest, expected)
    matched = False
    for raw in hosts.split(","):
        pattern = raw.strip()
        negated = pattern.startswith("!")
        if negated:
            pattern = pattern[1:]
        if pattern and _glob_match(pattern, name):
            if negated:
                return False
            matched = True
    return matched


def _glob_match(pattern: str, name: str) -> bool:
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, name, flags=re.IGNORECASE) is not None


def parse_known_hosts(text: str) -> list[KnownHostsEntry]:
    """Parse a known_hosts file; blank, comment and malformed lines are skipped (as OpenSSH does).

    Args:
        text: the file's content.

    Returns:
        The entries in file order.
    """
    entries: list[KnownHostsEntry] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        marker = None
        if line.startswith("@"):
            marker, _, line = line.partition(" ")
            line = line.strip()
        hosts, _, rest = line.partition(" ")
        try:
            key = HostKey.parse(rest)
        except ValueError:
            continue
        entries.append(KnownHostsEntry(hosts, key, marker))
    return entries


@dataclass(frozen=True)
class HostKeyPolicy:
    """Which host keys a target may present."""

    where: str
    """``host:port``, for messages."""
    accepted: tuple[HostKey, ...] = ()
    revoked: tuple[HostKey, ...] = ()
    insecure: bool = False
    """Accept any key (explicit opt-in only)."""

    @classmethod
    def for_target(cls, target: PlanTarget, known_hosts: str | None = None) -> HostKeyPolicy:
        """Build the policy of a target: its ``host_keys`` plus the entries of ``known_hosts`` for it.

        Args:
            target: the target.
            known_hosts: content of ``target.known_hosts_file``, if it has one.

        Returns:
            The policy.

        Raises:
            SshStepError: a declared host key line is malformed.
        """
        where = endpoint(target.address, target.port)
        accepted: list[HostKey] = []
        for line in target.host_keys:
            try:
                accepted.append(HostKey.parse(line))
            except ValueError as exc:
                raise SshStepError(f"ssh {where}: invalid entry in spec.ssh.hostKeys: {exc}") from None
        revoked: list[HostKey] = []
        if known_hosts:
            name = known_hosts_name(target.address, target.port)
            for entry in parse_known_hosts(known_hosts):
                if not entry.matches(name):
                    continue
                if entry.marker == "@revoked":
                    revoked.append(entry.key)
                elif entry.marker is None:
                    accepted.append(entry.key)
        return cls(
            where, tuple(dict.fromkeys(accepted)), tuple(revoked), target.insecure_skip_host_key_verification
        )

    def missing_keys_error(self, target: PlanTarget) -> str | None:
        """Explain what to do when a target declares no usable host key (None when it is fine)."""
        if self.accepted or self.insecure:
            return None
        source = (
            f"its known_hosts file has no entry for {known_hosts_name(target.address, target.port)}"
            if target.known_hosts_file
            else "no host keys are declared"
        )
        return (
            f"ssh {self.where}: cannot verify the host's identity: {source}. Declare the host's keys in "
            f"the Target's spec.ssh.hostKeys (`ssh-keyscan -p {target.port} {target.address.strip('[]')}` "
            "prints them) or spec.ssh.knownHostsSecretRef; to skip verification (test hosts only) set "
            "spec.ssh.insecureSkipHostKeyVerification: true explicitly"
        )

    def algorithms(self, available: Sequence[str]) -> list[str] | None:
        """Host key algorithms to offer: only those of the accepted keys' types.

        Args:
            available: the algorithms the client supports, in preference order.

        Returns:
            The subset to negotiate, or None to leave the client's default (no restriction).
        """
        if self.insecure and not self.accepted:
            return None
        wanted = {
            alg for key in self.accepted for alg in _HOST_KEY_ALGORITHMS.get(key.key_type, (key.key_type,))
        }
        chosen = [alg for alg in available if alg in wanted]
        return chosen or None

    def check(self, offered: HostKey) -> str | None:
        """Verify the key the server presented.

        Args:
            offered: the server's host key.

        Returns:
            None when the key may be trusted, else the message explaining the failure and the fix.
        """
        if offered in self.revoked:
            return (
                f"ssh {self.where}: the server presented host key {offered.describe()}, which the "
                "known_hosts file marks @revoked; refusing to connect"
            )
        if self.insecure or offered in self.accepted:
            return None
        declared = ", ".join(key.describe() for key in self.accepted)
        return (
            f"ssh {self.where}: host key verification failed: the server presented {offered.describe()}, "
            f"which is not among the keys declared for this target ({declared}). If the host was "
            "reinstalled or its keys rotated, update the Target's spec.ssh.hostKeys (or its known_hosts "
            "Secret) with what `ssh-keyscan` prints; otherwise someone may be intercepting the connection"
        )


# --- remote commands (pure) -----------------------------------------------------------------------
@dataclass(frozen=True)
class ExecSpec:
    """What to run for an ``ssh.exec`` step."""

    command: str | None = None
    script: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    working_dir: str | None = None
    shell: str = DEFAULT_SHELL
    sudo: bool = False
    sudo_user: str | None = None

    @classmethod
    def from_step(cls, step: SshExecStep) -> ExecSpec:
        """Take the spec from a rendered step (``sudoUser`` implies ``sudo``)."""
        return cls(
            command=step.command,
            script=step.script,
            env=dict(step.env or {}),
            working_dir=step.working_dir,
            shell=step.shell or DEFAULT_SHELL,
            sudo=step.sudo or step.sudo_user is not None,
            sudo_user=step.sudo_user,
        )

    @property
    def expected_pid_reports(self) -> int:
        """How many PID lines the wrapper prints (the login shell, and the shell under sudo)."""
        return 2 if self.sudo else 1


def pid_marker(nonce: str) -> str:
    """Return the prefix of the PID lines the wrapper prints on stderr (unique per execution)."""
    return f"OPSC-PID-{nonce}:"


def build_remote_command(spec: ExecSpec, nonce: str) -> str:
    """Build the command line sent in the SSH ``exec`` request.

    The login shell runs it (POSIX shells). It first prints ``<marker><pid>`` on stderr so the pid
    (sshd made this shell a process-group leader) can be killed later, then exports ``env``
    (quoted; no reliance on sshd's AcceptEnv), changes to ``working_dir`` and runs:

    - a ``command`` via ``eval`` in the login shell (so it is parsed only after the PID report);
    - a ``script`` with ``exec <shell> /dev/fd/3 3<&0 </dev/null``: the interpreter reads the
      script from stdin through fd 3 while the script's commands get ``/dev/null`` as stdin (under
      sudo, ``cat`` first copies stdin into a pipe the sudo user may reopen).

    With ``sudo``, the login shell reports its pid and ``exec``s ``sudo -n [-u user] -- /bin/sh -c``
    with the rest, and that inner shell reports its own pid as well.

    Args:
        spec: what to run.
        nonce: a random token making the marker unique.

    Returns:
        The command line.

    Raises:
        SshStepError: an ``env`` name is not a shell variable name.
    """
    marker = shlex.quote(pid_marker(nonce))
    report = f"printf '%s%s\\n' {marker} \"$$\" >&2"
    parts = [report]
    if spec.env:
        bad = [name for name in spec.env if not _ENV_NAME.match(name)]
        if bad:
            raise SshStepError(
                f"env name(s) {', '.join(repr(b) for b in bad)} are not valid shell variable names "
                "(letters, digits and _; not starting with a digit)"
            )
        parts.append("export " + " ".join(f"{name}={shlex.quote(value)}" for name, value in spec.env.items()))
    if spec.working_dir:
        parts.append(f"cd {shlex.quote(spec.working_dir)} || exit 1")
    if spec.script is not None and spec.sudo:
        # The sshd pipe belongs to the login user; another user may not reopen it through /dev/fd,
        # so copy it into a pipe this (sudo) shell creates.
        parts.append(f"cat | {{ exec {spec.shell} /dev/fd/3 3<&0 </dev/null; }}")
    elif spec.script is not None:
        parts.append(f"exec {spec.shell} /dev/fd/3 3<&0 </dev/null")
    else:
        parts.append(f"eval {shlex.quote(spec.command or ':')}")
    inner = "; ".join(parts)
    if not spec.sudo:
        return inner
    return f"{report}; exec {sudo_prefix(spec.sudo_user)} /bin/sh -c {shlex.quote(inner)}"


def sudo_prefix(user: str | None) -> str:
    """``sudo -n [-u user] --``: non-interactive, so a password prompt fails instead of hanging."""
    return "sudo -n " + (f"-u {shlex.quote(user)} " if user else "") + "--"


def build_kill_command(
    pids: Sequence[int], *, sudo: bool, sudo_user: str | None, grace_seconds: float
) -> str:
    """Build the command that stops a remote command: TERM its process groups, wait, KILL the rest.

    Each pid is tried as a process group first (``kill -TERM -<pid>``) and as a single process
    when it is not a group leader. The command exits once nothing is left.

    Args:
        pids: the pids the wrapper reported.
        sudo: run the killer with the same ``sudo -n`` as the command (it may run as another user).
        sudo_user: the command's ``sudoUser``.
        grace_seconds: time between TERM and KILL.

    Returns:
        The command line.
    """
    ids = " ".join(str(int(p)) for p in pids)
    rounds = max(1, round(grace_seconds / 0.1))
    script = (
        f"for p in {ids}; do kill -TERM -$p 2>/dev/null || kill -TERM $p 2>/dev/null; done; "
        f"i=0; while [ $i -lt {rounds} ]; do a=; "
        f"for p in {ids}; do kill -0 -$p 2>/dev/null && a=1; kill -0 $p 2>/dev/null && a=1; done; "
        '[ -z "$a" ] && exit 0; sleep 0.1; i=$((i+1)); done; '
        f"for p in {ids}; do kill -KILL -$p 2>/dev/null; kill -KILL $p 2>/dev/null; done; exit 0"
    )
    command = f"/bin/sh -c {shlex.quote(script)}"
    return f"{sudo_prefix(sudo_user)} {command}" if sudo else command


class PidMarkerFilter:
    """Takes the wrapper's PID lines off the start of stderr; passes everything else through.

    Lines before the markers (a chatty ``.bashrc``) are kept as output. Gives up looking after
    ``limit`` bytes without a complete line.
    """

    def __init__(self, nonce: str, expected: int, limit: int = 64 * 1024) -> None:
        self._marker = pid_marker(nonce).encode()
        self._expected = expected
        self._limit = limit
        self._buffer = b""
        self._at_line_start = True
        self.pids: list[int] = []
        self.done = expected <= 0

    def feed(self, data: bytes) -> bytes:
        """Consume stderr bytes; returns the bytes that are real output."""
        if self.done:
            return data
        buf = self._buffer + data
        out = bytearray()
        while not self.done:
            newline = buf.find(b"\n")
            if not self._at_line_start:
                if newline < 0:
                    out += buf
                    buf = b""
                    break
                out += buf[: newline + 1]
                buf = buf[newline + 1 :]
                self._at_line_start = True
                continue
            if newline < 0:
                head = buf[: len(self._marker)]
                if self._marker.startswith(head) and len(buf) < self._limit:
                    break  # may still become a marker line
                out += buf
                buf = b""
                self._at_line_start = False
                break
            line, buf = buf[: newline + 1], buf[newline + 1 :]
            pid = self._parse(line)
            if pid is None:
                out += line
            else:
                self.pids.append(pid)
                self.done = len(self.pids) >= self._expected
        if self.done:
            out += buf
            buf = b""
        self._buffer = buf
        return bytes(out)

    def flush(self) -> bytes:
        """Return the bytes held back at the end of the stream."""
        data, self._buffer = self._buffer, b""
        return data

    def _parse(self, line: bytes) -> int | None:
        if not line.startswith(self._marker):
            return None
        value = line[len(self._marker) :].strip()
        return int(value) if value.isdigit() else None


class HeadTailBuffer:
    """Keeps the first and the last bytes of a stream, and how many bytes there were."""

    def __init__(self, head: int = OUTPUT_HEAD_BYTES, tail: int = OUTPUT_TAIL_BYTES) -> None:
        self._head_limit = head
        self._tail_limit = tail
        self._head = bytearray()
        self._tail = bytearray()
        self.total = 0

    def feed(self, data: bytes) -> None:
        """Add bytes from the stream."""
        self.total += len(data)
        room = self._head_limit - len(self._head)
        if room > 0:
            self._head += data[:room]
            data = data[room:]
        if data:
            self._tail += data
            if len(self._tail) > 2 * self._tail_limit:
                del self._tail[: len(self._tail) - self._tail_limit]

    @property
    def truncated(self) -> bool:
        """Whether bytes in the middle were dropped."""
        return self.total > len(self._head) + min(len(self._tail), self._tail_limit)

    @property
    def omitted(self) -> int:
        """How many bytes were dropped."""
        return max(0, self.total - len(self._head) - min(len(self._tail), self._tail_limit))

    def text(self) -> str:
        """Return the kept bytes as text, with a marker saying how much was left out in between."""
        tail = bytes(self._tail[-self._tail_limit :]) if self._tail_limit else b""
        if not self.truncated:
            return (bytes(self._head) + tail).decode("utf-8", errors="replace")
        # Do not start the tail in the middle of a UTF-8 sequence.
        skip = 0
        while skip < min(3, len(tail)) and 0x80 <= tail[skip] <= 0xBF:
            skip += 1
        head = bytes(self._head).decode("utf-8", errors="replace")
        return (
            f"{head}\n... [{self.omitted} bytes omitted] ...\n{tail[skip:].decode('utf-8', errors='replace')}"
        )


class LineSplitter:
    """Splits a byte stream into text lines for the log; over-long lines are cut into pieces."""

    def __init__(self, max_line: int = LOG_LINE_BYTES) -> None:
        self._max = max_line
        self._partial = bytearray()

    def feed(self, data: bytes) -> list[str]:
        """Add bytes; returns the lines completed by them."""
        self._partial += data
        lines: list[str] = []
        while True:
            newline = self._partial.find(b"\n")
            if newline < 0:
                if len(self._partial) < self._max:
                    break
                newline = self._max - 1
                piece = bytes(self._partial[: newline + 1])
            else:
                piece = bytes(self._partial[:newline])
            del self._partial[: newline + 1]
            lines.append(piece.decode("utf-8", errors="replace").rstrip("\r"))
        return lines

    def flush(self) -> list[str]:
        """Return the unterminated last line, if any."""
        if not self._partial:
            return []
        line = bytes(self._partial).decode("utf-8", errors="replace").rstrip("\r")
        self._partial.clear()
        return [line]


# --- file sources (local side) -----------------------------------------------------------------------
@dataclass(frozen=True)
class SourceFile:
    """One file to send."""

    name: str
    """Relative POSIX path inside a destination directory (the base name for single files)."""
    size: int
    mode: int
    mtime: float | None
    """None when the content has no meaningful time (inline text): sync compares content instead."""
    path: Path | None = None
    data: bytes | None = None

    def open(self) -> BinaryIO:
        """Open a binary reader of the content."""
        if self.data is not None:
            return io.BytesIO(self.data)
        assert self.path is not None
        return self.path.open("rb")

    def read(self) -> bytes:
        """Read the whole content (small files only)."""
        with self.open() as f:
            return f.read()


@dataclass(frozen=True)
class SourceSet:
    """What a FileSource resolved to."""

    files: tuple[SourceFile, ...]
    directories: tuple[tuple[str, int], ...] = ()
    """Relative subdirectories (with their modes), parents first."""
    into_directory: bool = False
    """The destination is a directory (several files, or a whole directory)."""
    label: str = ""
    """What the source was, for messages."""


def resolve_source(
    source: FileSource,
    *,
    plan: RunPlan,
    workspace: Path,
    secrets: SecretStore,
    mode: str | None,
) -> SourceSet:
    """Resolve a step's FileSource to files in the runner.

    Args:
        source: the step's source.
        plan: the run plan (where ConfigMaps and Secrets are mounted).
        workspace: the run's workspace root (``workspace`` sources are relative to it).
        secrets: the secret store; Secret contents are read through it so they are masked.
        mode: the step's octal ``mode`` (applies to every file), or None for the defaults: 0600 for
            Secret keys, 0644 for ConfigMap keys and inline text, the local mode for workspace files.

    Returns:
        The files, and whether the destination is a directory.

    Raises:
        SshStepError: the source does not exist or is not usable.
    """
    forced = int(mode, 8) if mode else None
    if source.inline is not None:
        data = source.inline.encode("utf-8")
        return SourceSet(
            (SourceFile("", len(data), forced or 0o644, None, data=data),), label="inline content"
        )
    if source.config_map is not None or source.secret is not None:
        is_secret = source.secret is not None
        ref = source.secret if source.secret is not None else source.config_map
        assert ref is not None
        kind = "Secret" if is_secret else "ConfigMap"
        dirs = plan.secret_dirs if is_secret else plan.config_map_dirs
        base = dirs.get(ref.name)
        if base is None or not Path(base).is_dir():
            raise SshStepError(
                f"{kind} {ref.name} is not mounted in the runner (the run plan has no directory for it)"
            )
        default_mode = 0o600 if is_secret else 0o644
        keys = (
            [source.key]
            if source.key
            else sorted(p.name for p in Path(base).iterdir() if not p.name.startswith("..") and p.is_file())
        )
        files = []
        for key in keys:
            path = Path(base) / key
            if not path.is_file():
                raise SshStepError(f"{kind} {ref.name} has no key {key!r}")
            st = path.stat()
            if is_secret:
                data = secrets.read_bytes(str(path))
                files.append(SourceFile(key, len(data), forced or default_mode, st.st_mtime, data=data))
            else:
                files.append(SourceFile(key, st.st_size, forced or default_mode, st.st_mtime, path=path))
        if not files:
            raise SshStepError(f"{kind} {ref.name} has no keys to send")
        label = f"{kind} {ref.name}" + (f" key {source.key}" if source.key else "")
        return SourceSet(tuple(files), into_directory=source.key is None, label=label)
    assert source.workspace is not None
    root = workspace.resolve()
    path = (workspace / source.workspace).resolve()
    if not path.is_relative_to(root):
        raise SshStepError(f"workspace path {source.workspace!r} points outside the run's workspace")
    if path.is_file():
        st = path.stat()
        one = SourceFile(path.name, st.st_size, forced or stat.S_IMODE(st.st_mode), st.st_mtime, path=path)
        return SourceSet((one,), label=f"workspace file {source.workspace}")
    if not path.is_dir():
        raise SshStepError(
            f"workspace path {source.workspace!r} does not exist (download it in an earlier sftp.download "
            "step; downloads land under <target name>/<workspacePath>)"
        )
    files = []
    directories: list[tuple[str, int]] = []
    for current, dirnames, filenames in os.walk(path):
        dirnames.sort()
        rel_dir = Path(current).relative_to(path).as_posix()
        if rel_dir != ".":
            directories.append((rel_dir, stat.S_IMODE(os.stat(current).st_mode)))
        for filename in sorted(filenames):
            file_path = Path(current) / filename
            if not file_path.is_file():
                continue  # dangling links, sockets, ...
            st = file_path.stat()
            rel = file_path.relative_to(path).as_posix()
            files.append(
                SourceFile(rel, st.st_size, forced or stat.S_IMODE(st.st_mode), st.st_mtime, path=file_path)
            )
    return SourceSet(
        tuple(files), tuple(directories), into_directory=True, label=f"workspace directory {source.workspace}"
    )


def plan_destinations(sources: SourceSet, destination: str) -> list[tuple[SourceFile, str]]:
    """Where each source file goes on the host.

    Args:
        sources: the resolved source.
        destination: the step's destination; a directory when the source has several files or when it
            ends with ``/``, the file's path otherwise.

    Returns:
        ``(file, remote path)`` pairs.

    Raises:
        SshStepError: inline content with a directory destination.
    """
    if not sources.into_directory and not destination.endswith("/"):
        return [(sources.files[0], destination)]
    base = destination.rstrip("/") or "/"
    pairs = []
    for f in sources.files:
        if not f.name:
            raise SshStepError(
                f"destination {destination!r} is a directory, but inline content needs a file path"
            )
        pairs.append((f, posixpath.join(base, f.name)))
    return pairs


def destination_root(sources: SourceSet, destination: str) -> str:
    """Return the remote directory files go into (the destination, or its parent for one file)."""
    if sources.into_directory or destination.endswith("/"):
        return destination.rstrip("/") or "/"
    return posixpath.dirname(destination.rstrip("/")) or "."


# --- credentials ------------------------------------------------------------------------------
class KeyLoadError(ValueError):
    """A private key cannot be used; the message says why."""


def _strip_newline(value: str) -> str:
    if value.endswith("\r\n"):
        return value[:-2]
    return value[:-1] if value.endswith("\n") else value


def _is_encrypted(data: bytes) -> bool:
    if b"BEGIN OPENSSH PRIVATE KEY" in data:
        body = b"".join(line for line in data.splitlines() if line and not line.startswith(b"-----"))
        try:
            raw = base64.b64decode(body)
        except ValueError:
            return False
        magic = b"openssh-key-v1\x00"
        if not raw.startswith(magic) or len(raw) < len(magic) + 4:
            return False
        size = int.from_bytes(raw[len(magic) : len(magic) + 4], "big")
        return raw[len(magic) + 4 : len(magic) + 4 + size] != b"none"
    return b"ENCRYPTED" in data


def load_private_key(text: str, passphrase: str | None = None) -> Any:
    """Load a private key for paramiko from its text.

    Args:
        text: OpenSSH (``BEGIN OPENSSH PRIVATE KEY``) or PEM (PKCS#1 RSA, SEC1 EC, PKCS#8, also
            encrypted) text of an RSA, ECDSA (P-256/384/521) or Ed25519 key.
        passphrase: decrypts an encrypted key; ignored for an unencrypted one.

    Returns:
        A ``paramiko.PKey``.

    Raises:
        KeyLoadError: the key cannot be parsed or decrypted, or its type is unsupported.
    """
    data = text.encode("utf-8")
    encrypted = _is_encrypted(data)
    if encrypted and not passphrase:
        raise KeyLoadError(
            "the private key is encrypted but the Credential's Secret has no passphrase "
            "(add it under the key named by keys.passphrase, 'passphrase' by default)"
        )
    password = passphrase.encode("utf-8") if encrypted and passphrase else None
    key: Any
    try:
        if b"BEGIN OPENSSH PRIVATE KEY" in data:
            key = serialization.load_ssh_private_key(data, password)
        else:
            key = serialization.load_pem_private_key(data, password)
    except (ValueError, TypeError) as exc:
        if encrypted:
            raise KeyLoadError(
                "the passphrase in the Credential's Secret does not decrypt the private key"
            ) from None
        raise KeyLoadError(
            f"the private key cannot be parsed ({str(exc).split('. See')[0]}); expected an OpenSSH or PEM "
            "private key of type RSA, ECDSA or Ed25519"
        ) from None
    except UnsupportedAlgorithm as exc:
        raise KeyLoadError(f"unsupported private key algorithm: {exc}") from None
    if isinstance(key, rsa.RSAPrivateKey):
        return paramiko.RSAKey(key=key)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if key.curve.name not in ("secp256r1", "secp384r1", "secp521r1"):
            raise KeyLoadError(f"unsupported ECDSA curve {key.curve.name}; SSH uses P-256, P-384 or P-521")
        return paramiko.ECDSAKey(vals=(key, key.public_key()))
    if isinstance(key, ed25519.Ed25519PrivateKey):
        openssh = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
        )
        return paramiko.Ed25519Key(file_obj=io.StringIO(openssh.decode("ascii")))
    raise KeyLoadError(
        f"unsupported private key type {type(key).__name__.lstrip('_')}; use Ed25519, ECDSA or RSA "
        "(DSA is obsolete)"
    )


@dataclass(frozen=True)
class _Login:
    username: str
    password: str | None = None
    key: Any = None  # paramiko.PKey

    def method(self) -> str:
        if self.key is not None:
            return f"key {self.key.fingerprint} ({self.key.get_name()})"
        return "a password"


def _load_login(credential: PlanCredential | None, target: PlanTarget, secrets: SecretStore) -> _Login:
    where = endpoint(target.address, target.port)
    if credential is None:
        raise SshStepError(
            f"ssh {where}: target {target.name} has no credential: set spec.credentialRef on the Target "
            "(or credentialRef on the step) to an SSHKey or BasicAuth Credential"
        )
    if credential.type not in ("SSHKey", "BasicAuth"):
        raise SshStepError(
            f"ssh {where}: Credential {credential.name} is of type {credential.type}; SSH logins need an "
            "SSHKey or BasicAuth Credential"
        )

    def read(role: str) -> str:
        path = credential.files.get(role)
        if path is None:
            raise SshStepError(
                f"ssh {where}: Credential {credential.name} ({credential.type}) has no {role} value "
                "in its Secret"
            )
        try:
            return secrets.read(path)
        except (OSError, UnicodeDecodeError) as exc:
            raise SshStepError(
                f"ssh {where}: cannot read the {role} of Credential {credential.name} from {path}: {exc}"
            ) from None

    username = credential.username or _strip_newline(read("username"))
    if not username:
        raise SshStepError(f"ssh {where}: Credential {credential.name} has an empty user name")
    if credential.type == "BasicAuth":
        return _Login(username, password=_strip_newline(read("password")))
    passphrase = _strip_newline(read("passphrase")) if "passphrase" in credential.files else None
    try:
        key = load_private_key(read("privateKey"), passphrase)
    except KeyLoadError as exc:
        raise SshStepError(f"ssh {where}: Credential {credential.name}: {exc}") from None
    return _Login(username, key=key)


# --- connections ----------------------------------------------------------------------------
@dataclass
class _Budget:
    """The time limits of one blocking phase: the connect timeout, the step deadline, cancellation."""

    ctx: StepContext
    give_up_at: float
    timeout: float
    where: str

    def check(self, phase: str) -> float:
        """Seconds left in this phase; raises when cancelled or out of time."""
        if self.ctx.cancel.is_set():
            raise SshStepError(f"ssh {self.where}: cancelled while {phase}", cancelled=True)
        now = time.monotonic()
        if (
            self.ctx.deadline is not None
            and now >= self.ctx.deadline
            and self.ctx.deadline <= self.give_up_at
        ):
            raise SshStepError(f"ssh {self.where}: the step timed out while {phase}", timed_out=True)
        left = self.give_up_at - now
        if left <= 0:
            raise SshStepError(f"ssh {self.where}: {_phase_timeout_message(phase, self.timeout)}")
        return left


def _phase_timeout_message(phase: str, timeout: float) -> str:
    hints = {
        "connecting": "is the host up, the address right, and the port open in firewalls?",
        "waiting for the SSH banner": "is this port an SSH server? An overloaded sshd (MaxStartups) also "
        "delays the banner",
        "negotiating the SSH session": "the server or the network is very slow",
        "logging in": "the server may be slow to authenticate (PAM, UseDNS) or overloaded",
    }
    return f"no progress within {timeout:g}s while {phase} — {hints.get(phase, 'check the host')}"


@dataclass
class _Connection:
    transport: Any  # paramiko.Transport
    where: str
    username: str
    server_key: HostKey

    @property
    def alive(self) -> bool:
        return bool(self.transport.is_active() and self.transport.is_authenticated())

    def close(self) -> None:
        with contextlib.suppress(Exception):  # closing a broken transport
            self.transport.close()


def _tcp_connect(address: str, port: int, budget: _Budget) -> socket.socket:
    host = address.strip("[]")
    where = budget.where
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise SshStepError(
            f"ssh {where}: cannot resolve host name {host!r} ({exc.strerror}) — check spec.address and the "
            "runner's DNS"
        ) from None
    last: str = ""
    for family, socktype, proto, _, sockaddr in infos:
        sock = socket.socket(family, socktype, proto)
        try:
            sock.setblocking(False)
            code = sock.connect_ex(sockaddr)
            while code in (errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EALREADY):
                left = budget.check("connecting")
                _, writable, _ = select.select([], [sock], [], min(_POLL, left))
                if writable:
                    code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code == 0:
                sock.setblocking(True)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                return sock
            last = _socket_error_message(where, code)
        except BaseException:
            sock.close()
            raise
        sock.close()
    raise SshStepError(last or f"ssh {where}: cannot connect")


def _socket_error_message(where: str, code: int) -> str:
    if code == errno.ECONNREFUSED:
        return f"ssh {where}: connection refused — is sshd running and the port right?"
    if code in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return f"ssh {where}: no route to the host ({os.strerror(code)}) — check the address and the network"
    if code == errno.ETIMEDOUT:
        return f"ssh {where}: connection timed out — is the host up and the port open in firewalls?"
    return f"ssh {where}: cannot connect: {os.strerror(code)}"


def _wait_event(event: threading.Event, transport: Any, budget: _Budget, phase: str) -> None:
    while not event.is_set():
        left = budget.check(phase)
        if not transport.is_active():
            return
        event.wait(min(_POLL, left))


def _handshake_error(where: str, exc: BaseException | None, policy: HostKeyPolicy) -> str:
    text = str(exc) if exc is not None else ""
    if "no acceptable host key" in text or ("Incompatible" in text and "host key" in text):
        declared = ", ".join(sorted({k.key_type for k in policy.accepted}))
        return (
            f"ssh {where}: the server has no host key of the declared type(s) ({declared}) — update the "
            "Target's spec.ssh.hostKeys with what `ssh-keyscan` prints"
        )
    if "banner" in text.lower():
        return (
            f"ssh {where}: did not receive an SSH banner ({text}) — is this port an SSH server? An "
            "overloaded sshd (MaxStartups) drops new connections too"
        )
    if isinstance(exc, EOFError) or not text:
        return (
            f"ssh {where}: the server closed the connection during the handshake — sshd may be refusing "
            "connections (MaxStartups, tcp wrappers, fail2ban) or this is not an SSH server"
        )
    return f"ssh {where}: SSH negotiation failed: {text}"


def _auth_error(where: str, login: _Login, exc: BaseException | None) -> str:
    user = login.username
    if isinstance(exc, paramiko.BadAuthenticationType):
        allowed = ", ".join(exc.allowed_types) or "nothing"
        kind = "public key" if login.key is not None else "password"
        return (
            f"ssh {where}: the server does not accept {kind} authentication for user {user!r} (it allows: "
            f"{allowed}) — use a Credential of a type it accepts or change sshd's configuration"
        )
    if isinstance(exc, PartialAuthentication):
        return (
            f"ssh {where}: user {user!r} authenticated with {login.method()}, but the server requires more "
            f"({', '.join(exc.allowed_types)}); multi-factor logins are not supported"
        )
    if login.key is not None:
        return (
            f"ssh {where}: authentication failed for user {user!r} with {login.method()} — check the "
            "Credential (user name and key) and that its public key is in the user's authorized_keys"
        )
    return (
        f"ssh {where}: authentication failed for user {user!r} with a password — check the Credential's "
        "user name and password"
    )


def _authenticate(transport: Any, login: _Login, budget: _Budget) -> None:
    """Log in with the key or the password (falling back to keyboard-interactive for passwords)."""
    where = budget.where
    done = threading.Event()
    if login.key is not None:
        transport.auth_publickey(login.username, login.key, event=done)
    else:
        transport.auth_password(login.username, login.password, event=done)
    _wait_event(done, transport, budget, "logging in")
    if transport.is_authenticated():
        return
    failure: BaseException | None = transport.get_exception()
    if (
        login.password is not None
        and isinstance(failure, paramiko.BadAuthenticationType)
        and "keyboard-interactive" in failure.allowed_types
        and transport.is_active()
    ):
        transport.auth_timeout = budget.check("logging in")
        password = login.password

        def answer(_title: str, _instructions: str, prompts: list[tuple[str, bool]]) -> list[str]:
            return [password for _ in prompts]

        try:
            transport.auth_interactive(login.username, answer)
        except paramiko.BadAuthenticationType:
            pass  # keep the first failure: it lists what the server allows
        except paramiko.AuthenticationException as retry_failure:
            failure = retry_failure
    if transport.is_authenticated():
        return
    if not transport.is_active() and failure is None:
        raise SshStepError(f"ssh {where}: the server closed the connection during login")
    raise SshStepError(_auth_error(where, login, failure))


def connect(target: PlanTarget, ctx: StepContext, log: Callable[[str], None] | None = None) -> _Connection:
    """Open, verify and authenticate an SSH connection to a target.

    Args:
        target: the target (address, port, host keys, credential, connect timeout).
        ctx: the step context (secrets, cancellation, deadline).
        log: where to note the connection (already masked by the caller).

    Returns:
        The connection.

    Raises:
        SshStepError: with a message naming the host and what to check.
    """
    where = endpoint(target.address, target.port)
    known_hosts = None
    if target.known_hosts_file:
        try:
            known_hosts = ctx.secrets.read(target.known_hosts_file)
        except (OSError, UnicodeDecodeError) as exc:
            raise SshStepError(
                f"ssh {where}: cannot read the known_hosts file {target.known_hosts_file}: {exc}"
            ) from None
    policy = HostKeyPolicy.for_target(target, known_hosts)
    missing = policy.missing_keys_error(target)
    if missing:
        raise SshStepError(missing)
    login = _load_login(target.credential, target, ctx.secrets)

    started = time.monotonic()
    timeout = float(target.connect_timeout_seconds)
    budget = _Budget(ctx, started + timeout, timeout, where)
    sock = _tcp_connect(target.address, target.port, budget)
    transport = paramiko.Transport(sock)
    ok = False
    try:
        left = budget.check("connecting")
        transport.banner_timeout = left
        transport.handshake_timeout = left
        transport.auth_timeout = left
        options = transport.get_security_options()
        algorithms = policy.algorithms(list(options.key_types))
        if algorithms:
            options.key_types = algorithms
        done = threading.Event()
        transport.start_client(event=done)
        try:
            _wait_event(done, transport, budget, "negotiating the SSH session")
        except SshStepError as exc:
            if exc.cancelled or exc.timed_out or transport.remote_version:
                raise
            raise SshStepError(
                f"ssh {where}: {_phase_timeout_message('waiting for the SSH banner', timeout)}"
            ) from None
        if not transport.is_active():
            raise SshStepError(_handshake_error(where, transport.get_exception(), policy))
        raw = transport.get_remote_server_key()
        offered = HostKey(raw.get_name(), raw.asbytes())
        problem = policy.check(offered)
        if problem:
            raise SshStepError(problem)

        _authenticate(transport, login, budget)
        transport.set_keepalive(KEEPALIVE_SECONDS)
        ok = True
    except SshStepError:
        raise
    except (paramiko.SSHException, OSError, EOFError) as exc:
        raise SshStepError(_handshake_error(where, exc, policy)) from None
    finally:
        if not ok:
            transport.close()
            sock.close()
    if log is not None:
        log(
            f"connected to {where} as {login.username} (host key {offered.describe()}) in "
            f"{(time.monotonic() - started) * 1000:.0f} ms"
        )
    return _Connection(transport, where, login.username, offered)


def _acquire(lock: threading.Lock | threading.BoundedSemaphore, ctx: StepContext, where: str) -> None:
    """Wait for a lock or semaphore, honouring cancellation and the step deadline."""
    while not lock.acquire(timeout=_POLL):
        if ctx.cancel.is_set():
            raise SshStepError(f"ssh {where}: cancelled while waiting for the connection", cancelled=True)
        if ctx.deadline is not None and time.monotonic() >= ctx.deadline:
            raise SshStepError(f"ssh {where}: the step timed out waiting for the connection", timed_out=True)


@dataclass
class _Slot:
    lock: threading.Lock = field(default_factory=threading.Lock)
    connection: _Connection | None = None


class TransportPool:
    """One authenticated transport per (target, credential), shared by all threads of a run."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._slots: dict[tuple[str, str], _Slot] = {}
        self._handshakes: dict[tuple[str, int], threading.BoundedSemaphore] = {}
        self._closed = False

    @staticmethod
    def key(target: PlanTarget) -> tuple[str, str]:
        """Return the pool key: the target's name and its credential's name."""
        return (target.name, target.credential.name if target.credential else "")

    def get(
        self, target: PlanTarget, ctx: StepContext, log: Callable[[str], None] | None = None
    ) -> _Connection:
        """Return the live connection to ``target``, connecting first when there is none.

        Args:
            target: the target.
            ctx: the step context; waiting for another thread's connection attempt honours its
                cancellation and deadline.
            log: passed to :func:`connect`.

        Returns:
            The connection.

        Raises:
            SshStepError: connecting failed, or the session is closed.
        """
        with self._lock:
            if self._closed:
                raise SshStepError("the SSH session is closed")
            slot = self._slots.setdefault(self.key(target), _Slot())
            handshakes = self._handshakes.setdefault(
                (target.address, target.port), threading.BoundedSemaphore(HANDSHAKES_PER_ENDPOINT)
            )
        where = endpoint(target.address, target.port)
        _acquire(slot.lock, ctx, where)
        try:
            if slot.connection is not None and slot.connection.alive:
                return slot.connection
            if slot.connection is not None:
                slot.connection.close()
                slot.connection = None
            _acquire(handshakes, ctx, where)
            try:
                slot.connection = connect(target, ctx, log)
            finally:
                handshakes.release()
            with self._lock:
                closed = self._closed
            if closed:
                slot.connection.close()
                raise SshStepError("the SSH session is closed")
            return slot.connection
        finally:
            slot.lock.release()

    def discard(self, target: PlanTarget, connection: _Connection) -> None:
        """Forget a broken connection (the next :meth:`get` reconnects)."""
        with self._lock:
            slot = self._slots.get(self.key(target))
        connection.close()
        if slot is not None and slot.connection is connection:
            slot.connection = None

    def close(self) -> None:
        """Close every transport; later :meth:`get` calls fail."""
        with self._lock:
            self._closed = True
            slots = list(self._slots.values())
        for slot in slots:
            connection = slot.connection
            if connection is not None:
                connection.close()

    def __len__(self) -> int:
        """How many live connections the pool holds."""
        with self._lock:
            return sum(1 for s in self._slots.values() if s.connection is not None and s.connection.alive)


# --- the session --------------------------------------------------------------------------------
class _Logger:
    """Masked lines for ``ctx.log``, prefixed with the target name."""

    def __init__(self, ctx: StepContext, target: str) -> None:
        self._ctx = ctx
        self._prefix = f"[{target}] "

    def __call__(self, line: str) -> None:
        self._ctx.log.append(self._ctx.secrets.mask(self._prefix + line))


class SshSession:
    """Runs the SSH step types for a whole run; implements ``ProtocolSession``.

    Thread-safe: the engine may call :meth:`run` from several threads at once (different targets,
    or the same target, which then share one transport).
    """

    step_types: frozenset[str] = STEP_TYPES

    def __init__(self, *, kill_grace_seconds: float = KILL_GRACE_SECONDS) -> None:
        """Create a session without connections.

        Args:
            kill_grace_seconds: time between SIGTERM and SIGKILL when stopping a remote command.
        """
        self.pool = TransportPool()
        self._kill_grace = kill_grace_seconds

    def close(self) -> None:
        """Close every connection of the run."""
        self.pool.close()

    def run(self, step: Step, ctx: StepContext) -> StepOutcome:
        """Execute one attempt of a rendered SSH step on ``ctx.target``.

        Args:
            step: an ``ssh.exec``, ``ssh.copy``, ``sftp.upload``, ``sftp.sync`` or ``sftp.download`` step.
            ctx: the attempt's context.

        Returns:
            The outcome; failures of the remote side are reported in it, never raised.
        """
        target = ctx.target
        if target is None:
            return StepOutcome(ok=False, error=f"{step.type} steps need a target")
        log = _Logger(ctx, target.name)
        try:
            if isinstance(step, SshExecStep):
                return self._exec(step, ctx, target, log)
            if isinstance(step, SshCopyStep):
                return self._scp(step, ctx, target, log)
            if isinstance(step, SftpSyncStep):
                return self._sftp_put(step, ctx, target, log, sync=True, delete=step.delete)
            if isinstance(step, SftpUploadStep):
                return self._sftp_put(step, ctx, target, log, sync=False, delete=False)
            if isinstance(step, SftpDownloadStep):
                return self._sftp_get(step, ctx, target, log)
            return StepOutcome(ok=False, error=f"step type {step.type} is not an SSH step")
        except SshStepError as exc:
            message = ctx.secrets.mask(exc.message)
            log(f"{step.name}: {message}")
            return StepOutcome(ok=False, error=message, timed_out=exc.timed_out, cancelled=exc.cancelled)

    # --- plumbing ---
    def _channel(self, target: PlanTarget, ctx: StepContext, log: _Logger) -> tuple[_Connection, Any]:
        """Open a session channel on the target's transport (reconnecting once if it died)."""
        for attempt in (1, 2):
            conn = self.pool.get(target, ctx, log)
            try:
                timeout = float(target.connect_timeout_seconds)
                left = ctx.remaining()
                if left is not None:
                    timeout = max(0.1, min(timeout, left))
                return conn, conn.transport.open_session(timeout=timeout)
            except paramiko.ChannelException as exc:
                raise SshStepError(
                    f"ssh {conn.where}: the server refused a new session ({exc}) — too many sessions on one "
                    "connection (sshd MaxSessions)?"
                ) from None
            except (paramiko.SSHException, OSError, EOFError) as exc:
                self.pool.discard(target, conn)
                if attempt == 2:
                    raise SshStepError(
                        f"ssh {conn.where}: cannot open a session: {exc or type(exc).__name__}"
                    ) from None
                log(f"connection to {conn.where} was lost ({exc or type(exc).__name__}); reconnecting")
        raise AssertionError("unreachable")

    @staticmethod
    def _stop_reason(ctx: StepContext) -> str | None:
        if ctx.cancel.is_set():
            return "cancelled"
        if ctx.deadline is not None and time.monotonic() >= ctx.deadline:
            return "timed out"
        return None

    # --- ssh.exec ---
    def _exec(self, step: SshExecStep, ctx: StepContext, target: PlanTarget, log: _Logger) -> StepOutcome:
        spec = ExecSpec.from_step(step)
        nonce = os.urandom(6).hex()
        remote_command = build_remote_command(spec, nonce)
        expected = set(step.expect_exit_codes or [0])
        conn, chan = self._channel(target, ctx, log)
        markers = PidMarkerFilter(nonce, spec.expected_pid_reports)
        out, err = HeadTailBuffer(), HeadTailBuffer()
        out_lines, err_lines = LineSplitter(), LineSplitter()

        def on_stdout(data: bytes) -> None:
            out.feed(data)
            for line in out_lines.feed(data):
                log(f"stdout: {line}")

        def on_stderr(data: bytes) -> None:
            data = markers.feed(data)
            if data:
                err.feed(data)
                for line in err_lines.feed(data):
                    log(f"stderr: {line}")

        stop: str | None = None
        note = ""
        try:
            chan.exec_command(remote_command)
            stdin = spec.script.encode("utf-8") if spec.script is not None else b""
            sent = 0
            if not stdin:
                chan.shutdown_write()
            exited_at: float | None = None
            quiet_since: float | None = None
            while True:
                progressed = _drain(chan, on_stdout, on_stderr)
                if sent < len(stdin) and chan.send_ready():
                    sent += chan.send(stdin[sent : sent + CHUNK])
                    progressed = True
                    if sent >= len(stdin):
                        chan.shutdown_write()
                if chan.closed or (chan.eof_received and chan.exit_status_ready()):
                    _drain(chan, on_stdout, on_stderr)
                    break
                if chan.exit_status_ready():
                    now = time.monotonic()
                    exited_at = exited_at or now
                    quiet_since = now if progressed or quiet_since is None else quiet_since
                    if now - quiet_since > EXIT_DRAIN_SECONDS or now - exited_at > EXIT_DRAIN_LIMIT_SECONDS:
                        note = (
                            "the command exited, but background processes kept its output open; "
                            "stopped reading"
                        )
                        break
                stop = self._stop_reason(ctx)
                if stop:
                    break
                if not progressed:
                    left = ctx.remaining()
                    select.select([chan], [], [], _POLL if left is None else max(0.0, min(_POLL, left)))
            if stop:
                note = self._stop_remote(conn, chan, spec, markers, stop, log, on_stdout, on_stderr)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            self.pool.discard(target, conn)
            raise SshStepError(
                f"ssh {conn.where}: the connection broke while running the command: {exc}"
            ) from None
        finally:
            rest = markers.flush()
            if rest:
                err.feed(rest)
                for line in err_lines.feed(rest):
                    log(f"stderr: {line}")
            for line in out_lines.flush():
                log(f"stdout: {line}")
            for line in err_lines.flush():
                log(f"stderr: {line}")
            exit_code: int | None = None
            if chan.exit_status_ready() and chan.status_event.is_set():
                code = int(chan.recv_exit_status())
                exit_code = code if code >= 0 else None
            chan.close()

        mask = ctx.secrets.mask
        stdout_text, stderr_text = mask(out.text()), mask(err.text())
        outputs = {"stdoutBytes": str(out.total), "stderrBytes": str(err.total)}
        if exit_code is not None:
            outputs["exitCode"] = str(exit_code)
        if out.total <= OUTPUT_VALUE_BYTES:
            outputs["stdout"] = stdout_text.strip()
        if stop:
            timeout = step.timeout_seconds
            what = f"timed out after {timeout}s" if stop == "timed out" and timeout else stop
            return StepOutcome(
                ok=False,
                exit_code=exit_code,
                stdout=stdout_text,
                stderr=stderr_text,
                error=mask(f"ssh {conn.where}: {what}; {note}"),
                timed_out=stop == "timed out",
                cancelled=stop == "cancelled",
                outputs=outputs,
            )
        ok = exit_code is not None and exit_code in expected
        error = ""
        if not ok:
            error = _exit_error(conn.where, exit_code, expected, stderr_text, spec)
        if note:
            log(note)
        log(f"exit code {exit_code if exit_code is not None else 'none'}")
        return StepOutcome(
            ok=ok,
            exit_code=exit_code,
            stdout=stdout_text,
            stderr=stderr_text,
            error=mask(error),
            outputs=outputs,
        )

    def _stop_remote(
        self,
        conn: _Connection,
        chan: Any,
        spec: ExecSpec,
        markers: PidMarkerFilter,
        reason: str,
        log: _Logger,
        on_stdout: Callable[[bytes], None],
        on_stderr: Callable[[bytes], None],
    ) -> str:
        """Kill the remote command's process group(s) over a second channel; returns what happened."""
        # The PID report is the wrapper's first action; give a slow login shell a moment to send it.
        waited_until = time.monotonic() + 1.0
        while not markers.done and not chan.closed and time.monotonic() < waited_until:
            if not _drain(chan, on_stdout, on_stderr):
                select.select([chan], [], [], _POLL)
        if chan.closed:
            return "the remote command had already ended"
        if not markers.pids:
            chan.close()
            return (
                "the remote command did not report its process id (is the login shell POSIX?), so it may "
                "still be running; the channel was closed"
            )
        pids = markers.pids
        log(f"{reason}: stopping remote process group(s) {', '.join(map(str, pids))} (TERM, then KILL)")
        command = build_kill_command(
            pids, sudo=spec.sudo, sudo_user=spec.sudo_user, grace_seconds=self._kill_grace
        )
        killed = False
        try:
            killer = conn.transport.open_session(timeout=5)
            try:
                killer.exec_command(command)
                killer.shutdown_write()
                limit = time.monotonic() + self._kill_grace + 5
                while not killer.exit_status_ready() and time.monotonic() < limit:
                    killer.status_event.wait(_POLL)
                    _drain(chan, on_stdout, on_stderr)
                killed = killer.exit_status_ready() and killer.recv_exit_status() == 0
            finally:
                killer.close()
        except (paramiko.SSHException, OSError, EOFError) as exc:
            log(f"could not run the kill command: {exc}")
        limit = time.monotonic() + 3
        while not chan.closed and time.monotonic() < limit:
            if not _drain(chan, on_stdout, on_stderr):
                select.select([chan], [], [], _POLL)
        _drain(chan, on_stdout, on_stderr)
        pid_text = ", ".join(map(str, pids))
        if killed:
            return f"the remote command was stopped (process group {pid_text} killed)"
        return f"stopping the remote command (process group {pid_text}) could not be confirmed"

    # --- ssh.copy ---
    def _scp(self, step: SshCopyStep, ctx: StepContext, target: PlanTarget, log: _Logger) -> StepOutcome:
        sources = resolve_source(
            step.source, plan=ctx.plan, workspace=ctx.workspace, secrets=ctx.secrets, mode=step.mode
        )
        pairs = plan_destinations(sources, step.destination)
        into_dir = sources.into_directory or step.destination.endswith("/")
        root = destination_root(sources, step.destination)
        sink = root if into_dir else step.destination
        flags = "-r -d -p -t" if into_dir else "-p -t"
        command = f"mkdir -p -- {shlex.quote(root)} && exec scp {flags} -- {shlex.quote(sink)}"
        conn, chan = self._channel(target, ctx, log)
        io_ = _ChannelIO(chan, ctx, conn.where)
        sent_bytes = 0
        try:
            chan.exec_command(command)
            io_.expect_ack("starting scp")
            current: list[str] = []
            dir_modes = dict(sources.directories)
            for source, _remote in pairs:
                parts = source.name.split("/")[:-1] if into_dir else []
                while current and current != parts[: len(current)]:
                    io_.send(b"E\n")
                    io_.expect_ack("leaving a directory")
                    current.pop()
                for part in parts[len(current) :]:
                    current.append(part)
                    mode = dir_modes.get("/".join(current), DEFAULT_DIR_MODE)
                    io_.send(f"D{mode:04o} 0 {part}\n".encode())
                    io_.expect_ack(f"creating directory {'/'.join(current)}")
                name = posixpath.basename(source.name) or posixpath.basename(step.destination) or "file"
                mtime = int(source.mtime if source.mtime is not None else time.time())
                io_.send(f"T{mtime} 0 {mtime} 0\n".encode())
                io_.expect_ack(f"setting the time of {name}")
                io_.send(f"C{source.mode & 0o7777:04o} {source.size} {name}\n".encode())
                io_.expect_ack(f"creating {name}")
                with source.open() as f:
                    while chunk := f.read(CHUNK):
                        io_.send(chunk)
                        sent_bytes += len(chunk)
                io_.send(b"\x00")
                io_.expect_ack(f"writing {name}")
            while current:
                io_.send(b"E\n")
                io_.expect_ack("leaving a directory")
                current.pop()
            chan.shutdown_write()
        except SshStepError as exc:
            chan.close()
            detail = io_.stderr_text()
            raise SshStepError(
                f"{exc.message}{'; ' + detail if detail else ''}",
                timed_out=exc.timed_out,
                cancelled=exc.cancelled,
            ) from None
        except (paramiko.SSHException, OSError, EOFError) as exc:
            chan.close()
            self.pool.discard(target, conn)
            raise SshStepError(f"ssh {conn.where}: the connection broke during scp: {exc}") from None
        chan.close()
        log(f"scp: sent {len(pairs)} file(s), {sent_bytes} bytes from {sources.label} to {step.destination}")
        return StepOutcome(ok=True, outputs={"uploaded": str(len(pairs)), "bytes": str(sent_bytes)})

    # --- sftp ---
    @contextlib.contextmanager
    def _sftp_session(self, target: PlanTarget, conn: _Connection, sftp: Any) -> Iterator[None]:
        """Map SFTP failures to step errors (dropping a broken connection) and close the client."""
        try:
            yield
        except SshStepError:
            raise
        except OSError as exc:
            raise SshStepError(_sftp_error(conn.where, exc)) from None
        except (paramiko.SSHException, EOFError) as exc:
            self.pool.discard(target, conn)
            raise SshStepError(f"ssh {conn.where}: the connection broke during SFTP: {exc}") from None
        finally:
            sftp.close()

    def _sftp(self, target: PlanTarget, ctx: StepContext, log: _Logger) -> tuple[_Connection, Any]:
        for attempt in (1, 2):
            conn = self.pool.get(target, ctx, log)
            try:
                sftp = paramiko.SFTPClient.from_transport(conn.transport)
            except paramiko.ChannelException as exc:
                raise SshStepError(f"ssh {conn.where}: the server refused a new session ({exc})") from None
            except (paramiko.SSHException, OSError, EOFError) as exc:
                self.pool.discard(target, conn)
                if attempt == 2 or "subsystem" in str(exc).lower():
                    raise SshStepError(
                        f"ssh {conn.where}: cannot start SFTP ({exc or type(exc).__name__}) — is the sftp "
                        "Subsystem enabled in sshd_config?"
                    ) from None
                continue
            if sftp is None:
                raise SshStepError(
                    f"ssh {conn.where}: the server refused the sftp subsystem — enable it in sshd_config"
                )
            left = ctx.remaining()
            sftp.get_channel().settimeout(max(1.0, min(300.0, left)) if left is not None else 300.0)
            return conn, sftp
        raise AssertionError("unreachable")

    def _sftp_put(
        self,
        step: SftpUploadStep | SftpSyncStep,
        ctx: StepContext,
        target: PlanTarget,
        log: _Logger,
        *,
        sync: bool,
        delete: bool,
    ) -> StepOutcome:
        sources = resolve_source(
            step.source, plan=ctx.plan, workspace=ctx.workspace, secrets=ctx.secrets, mode=step.mode
        )
        pairs = plan_destinations(sources, step.destination)
        root = destination_root(sources, step.destination)
        into_dir = sources.into_directory or step.destination.endswith("/")
        if delete and into_dir and posixpath.normpath(root) in ("/", "."):
            raise SshStepError(f"refusing to sync with delete into {root!r}: choose a dedicated directory")
        conn, sftp = self._sftp(target, ctx, log)
        uploaded = unchanged = deleted = 0
        sent_bytes = 0
        with self._sftp_session(target, conn, sftp):
            made: set[str] = set()
            _sftp_makedirs(sftp, root, made)
            for rel, mode in sources.directories:
                _sftp_makedirs(sftp, posixpath.join(root, rel), made, mode)
            for source, remote in pairs:
                _checkpoint(ctx, conn.where, f"uploading {remote}")
                _sftp_makedirs(sftp, posixpath.dirname(remote) or ".", made)
                with _about(remote):
                    if sync and _sftp_same(sftp, source, remote):
                        unchanged += 1
                        continue
                    sent_bytes += _sftp_upload(sftp, source, remote, ctx, conn.where)
                uploaded += 1
            if delete and into_dir:
                wanted = {posixpath.normpath(remote) for _, remote in pairs}
                wanted |= {posixpath.normpath(posixpath.join(root, rel)) for rel, _ in sources.directories}
                deleted = _sftp_delete_extra(sftp, root, wanted, ctx, conn.where, log)

        summary = f"{uploaded} uploaded ({sent_bytes} bytes)"
        if sync:
            summary += f", {unchanged} unchanged, {deleted} deleted"
        log(f"{step.type} {sources.label} -> {step.destination}: {summary}")
        outputs = {"uploaded": str(uploaded), "bytes": str(sent_bytes)}
        if sync:
            outputs |= {"unchanged": str(unchanged), "deleted": str(deleted)}
        return StepOutcome(ok=True, outputs=outputs)

    def _sftp_get(
        self, step: SftpDownloadStep, ctx: StepContext, target: PlanTarget, log: _Logger
    ) -> StepOutcome:
        base = (ctx.workspace / target.name).resolve()
        local = (base / step.workspace_path).resolve()
        if not local.is_relative_to(base):
            raise SshStepError(
                f"workspacePath {step.workspace_path!r} points outside the target's workspace directory"
            )
        conn, sftp = self._sftp(target, ctx, log)
        count = 0
        total = 0
        with self._sftp_session(target, conn, sftp):
            try:
                with _about(step.remote_path):
                    st = sftp.stat(step.remote_path)
            except FileNotFoundError:
                raise SshStepError(
                    f"ssh {conn.where}: remote path {step.remote_path!r} does not exist"
                ) from None
            if stat.S_ISDIR(st.st_mode or 0):
                for remote, rel, attrs in _sftp_walk(sftp, step.remote_path, log):
                    _checkpoint(ctx, conn.where, f"downloading {remote}")
                    with _about(remote):
                        total += _sftp_download(sftp, remote, local / rel, attrs, ctx, conn.where)
                    count += 1
                local.mkdir(parents=True, exist_ok=True)
                os.chmod(local, stat.S_IMODE(st.st_mode or DEFAULT_DIR_MODE) | 0o700)
            else:
                with _about(step.remote_path):
                    total += _sftp_download(sftp, step.remote_path, local, st, ctx, conn.where)
                count = 1

        rel_path = local.relative_to(ctx.workspace.resolve()).as_posix()
        log(f"sftp.download {step.remote_path} -> workspace {rel_path}: {count} file(s), {total} bytes")
        return StepOutcome(ok=True, outputs={"downloaded": str(count), "bytes": str(total), "path": rel_path})


# --- channel and SFTP helpers ------------------------------------------------------------------------
def _drain(chan: Any, on_stdout: Callable[[bytes], None], on_stderr: Callable[[bytes], None]) -> bool:
    """Read whatever is buffered on both streams; returns whether anything was read."""
    progressed = False
    while chan.recv_ready():
        data = chan.recv(CHUNK)
        if not data:
            break
        on_stdout(data)
        progressed = True
    while chan.recv_stderr_ready():
        data = chan.recv_stderr(CHUNK)
        if not data:
            break
        on_stderr(data)
        progressed = True
    return progressed


def _exit_error(where: str, code: int | None, expected: set[int], stderr: str, spec: ExecSpec) -> str:
    want = ", ".join(str(c) for c in sorted(expected))
    last = next((line.strip() for line in reversed(stderr.splitlines()) if line.strip()), "")
    if code is None:
        message = f"ssh {where}: the command ended without an exit code (killed by a signal?)"
    else:
        message = f"ssh {where}: the command exited with code {code} (expected {want})"
    if (
        spec.sudo
        and "sudo:" in stderr
        and ("password is required" in stderr or "a terminal is required" in stderr)
    ):
        message += "; sudo asked for a password: allow the user passwordless sudo (NOPASSWD) for this command"
    elif last:
        message += f"; last stderr line: {last[:300]}"
    return message


def _checkpoint(ctx: StepContext, where: str, doing: str) -> None:
    if ctx.cancel.is_set():
        raise SshStepError(f"ssh {where}: cancelled while {doing}", cancelled=True)
    if ctx.deadline is not None and time.monotonic() >= ctx.deadline:
        raise SshStepError(f"ssh {where}: the step timed out while {doing}", timed_out=True)


class _ChannelIO:
    """Blocking reads/writes on an exec channel that honour cancellation and the step deadline."""

    def __init__(self, chan: Any, ctx: StepContext, where: str) -> None:
        self._chan = chan
        self._ctx = ctx
        self._where = where
        self._stderr = HeadTailBuffer(4096, 4096)

    def _wait(self, doing: str, ready: Callable[[], bool]) -> None:
        while not ready():
            _checkpoint(self._ctx, self._where, doing)
            while self._chan.recv_stderr_ready():
                self._stderr.feed(self._chan.recv_stderr(CHUNK))
            if self._chan.closed or self._chan.eof_received:
                if ready():
                    return
                raise SshStepError(f"ssh {self._where}: scp ended unexpectedly while {doing}")
            select.select([self._chan], [], [], _POLL)

    def send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            self._wait("sending data", self._chan.send_ready)
            sent = self._chan.send(view[:CHUNK])
            if sent <= 0:
                raise SshStepError(f"ssh {self._where}: scp closed the connection while receiving data")
            view = view[sent:]

    def read_byte(self, doing: str) -> bytes:
        self._wait(doing, self._chan.recv_ready)
        data: bytes = self._chan.recv(1)
        if not data:
            raise SshStepError(f"ssh {self._where}: scp ended unexpectedly while {doing}")
        return data

    def expect_ack(self, doing: str) -> None:
        code = self.read_byte(doing)
        if code == b"\x00":
            return
        message = bytearray()
        while True:
            ch = self.read_byte(doing)
            if ch == b"\n":
                break
            message += ch
        text = message.decode("utf-8", errors="replace").strip() or "error"
        raise SshStepError(f"ssh {self._where}: {text} ({doing})")

    def stderr_text(self) -> str:
        while self._chan.recv_stderr_ready():
            self._stderr.feed(self._chan.recv_stderr(CHUNK))
        text = self._stderr.text().strip()
        if "scp: not found" in text or "scp: command not found" in text:
            return "scp is not installed on the host (install openssh-client), or use sftp.upload"
        return text


def _sftp_error(where: str, exc: OSError) -> str:
    path = f" on {exc.filename}" if exc.filename else ""
    if isinstance(exc, PermissionError):
        return f"ssh {where}: permission denied{path} — check the login user's rights on that path"
    if isinstance(exc, FileNotFoundError):
        return f"ssh {where}: no such file or directory{path}"
    if isinstance(exc, TimeoutError):
        return f"ssh {where}: the host stopped answering during the transfer{path}"
    return f"ssh {where}: SFTP error{path}: {exc.strerror or exc}"


@contextlib.contextmanager
def _about(path: str) -> Iterator[None]:
    """Name ``path`` in OSErrors that do not name a file (paramiko's SFTP errors do not)."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None and exc.errno is not None:
            raise type(exc)(exc.errno, exc.strerror or str(exc), path) from None
        raise


def _sftp_makedirs(sftp: Any, path: str, made: set[str], mode: int = DEFAULT_DIR_MODE) -> None:
    """``mkdir -p`` over SFTP (``made`` remembers directories known to exist)."""
    path = posixpath.normpath(path)
    if path in made or path in ("/", "."):
        return
    try:
        with _about(path):
            st = sftp.stat(path)
    except FileNotFoundError:
        parent = posixpath.dirname(path)
        if parent and parent != path:
            _sftp_makedirs(sftp, parent, made)
        with _about(path):
            try:
                sftp.mkdir(path, mode)
            except OSError as failure:
                try:  # created concurrently? Fine if it is a directory now.
                    st = sftp.stat(path)
                except OSError:
                    raise failure from None
                if not stat.S_ISDIR(st.st_mode or 0):
                    raise
    else:
        if not stat.S_ISDIR(st.st_mode or 0):
            raise SshStepError(f"remote path {path!r} exists and is not a directory")
    made.add(path)


def _sftp_same(sftp: Any, source: SourceFile, remote: str) -> bool:
    """Whether the remote file already matches (size and mtime; content for inline text). Fixes its mode."""
    try:
        st = sftp.stat(remote)
    except FileNotFoundError:
        return False
    if not stat.S_ISREG(st.st_mode or 0) or st.st_size != source.size:
        return False
    if source.mtime is None:
        with sftp.open(remote, "rb") as f:
            same = bool(f.read() == source.read())
    else:
        same = int(st.st_mtime or 0) == int(source.mtime)
    if same and stat.S_IMODE(st.st_mode or 0) != source.mode:
        sftp.chmod(remote, source.mode)
    return same


def _sftp_upload(sftp: Any, source: SourceFile, remote: str, ctx: StepContext, where: str) -> int:
    """Write to a temporary name (mode set before any data), set the mtime, rename into place."""
    directory, name = posixpath.split(remote)
    temp = posixpath.join(directory, f".{name}.opsc-{os.urandom(4).hex()}.tmp")
    sent = 0
    try:
        with sftp.open(temp, "wb") as remote_file:
            remote_file.chmod(source.mode)
            remote_file.set_pipelined(True)
            with source.open() as local_file:
                while chunk := local_file.read(CHUNK):
                    _checkpoint(ctx, where, f"uploading {remote}")
                    remote_file.write(chunk)
                    sent += len(chunk)
        mtime = source.mtime if source.mtime is not None else time.time()
        sftp.utime(temp, (mtime, mtime))
        try:
            sftp.posix_rename(temp, remote)
        except OSError:
            with contextlib.suppress(OSError, paramiko.SSHException):
                sftp.remove(remote)
            sftp.rename(temp, remote)
    except BaseException:
        with contextlib.suppress(OSError, paramiko.SSHException):
            sftp.remove(temp)
        raise
    return sent


def _sftp_delete_extra(
    sftp: Any, root: str, wanted: set[str], ctx: StepContext, where: str, log: _Logger
) -> int:
    """Remove entries under ``root`` that are not in ``wanted``; returns how many files/links went."""
    deleted = 0

    def walk(directory: str) -> None:
        nonlocal deleted
        with _about(directory):
            entries = sftp.listdir_attr(directory)
        for attrs in entries:
            path = posixpath.join(directory, attrs.filename)
            _checkpoint(ctx, where, f"deleting {path}")
            if stat.S_ISDIR(attrs.st_mode or 0):
                walk(path)
                if path not in wanted:
                    with _about(path):
                        sftp.rmdir(path)
                    log(f"deleted directory {path}")
            elif path not in wanted:
                with _about(path):
                    sftp.remove(path)
                deleted += 1
                log(f"deleted {path}")

    walk(posixpath.normpath(root))
    return deleted


def _sftp_walk(sftp: Any, root: str, log: _Logger) -> Iterator[tuple[str, str, Any]]:
    """Remote files under ``root``: ``(remote path, relative path, attributes)``; links to files followed."""
    stack = [("", root)]
    while stack:
        rel_dir, directory = stack.pop()
        with _about(directory):
            entries = sftp.listdir_attr(directory)
        for attrs in sorted(entries, key=lambda a: a.filename):
            path = posixpath.join(directory, attrs.filename)
            rel = posixpath.join(rel_dir, attrs.filename) if rel_dir else attrs.filename
            mode = attrs.st_mode or 0
            if stat.S_ISLNK(mode):
                try:
                    attrs = sftp.stat(path)
                except OSError:
                    log(f"skipped dangling link {path}")
                    continue
                if not stat.S_ISREG(attrs.st_mode or 0):
                    log(f"skipped link {path} (not to a regular file)")
                    continue
                mode = attrs.st_mode or 0
            if stat.S_ISDIR(mode):
                stack.append((rel, path))
            elif stat.S_ISREG(mode):
                yield path, rel, attrs
            else:
                log(f"skipped {path} (not a regular file)")


def _sftp_download(sftp: Any, remote: str, local: Path, attrs: Any, ctx: StepContext, where: str) -> int:
    """Download one file atomically, keeping its permissions and times."""
    local.parent.mkdir(parents=True, exist_ok=True)
    temp = local.with_name(f".{local.name}.opsc-{os.urandom(4).hex()}.tmp")
    received = 0
    try:
        with sftp.open(remote, "rb") as remote_file, temp.open("wb") as local_file:
            size = attrs.st_size
            if size:
                remote_file.prefetch(size)
            while chunk := remote_file.read(CHUNK):
                _checkpoint(ctx, where, f"downloading {remote}")
                local_file.write(chunk)
                received += len(chunk)
        os.chmod(temp, stat.S_IMODE(attrs.st_mode or 0o644) & 0o777)
        mtime = attrs.st_mtime if attrs.st_mtime is not None else time.time()
        atime = attrs.st_atime if attrs.st_atime is not None else mtime
        os.utime(temp, (atime, mtime))
        os.replace(temp, local)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return received


def host_keys_of(lines: Iterable[str]) -> list[HostKey]:
    """Parse several public key lines (e.g. a Target's ``hostKeys``).

    Args:
        lines: ``<type> <base64> [comment]`` lines.

    Returns:
        The keys.

    Raises:
        ValueError: a line is not a public key.
    """
    return [HostKey.parse(line) for line in lines]
