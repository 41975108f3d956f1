"""Real OpenSSH servers on loopback for SSH protocol tests.

Each server is a ``/usr/sbin/sshd -D -e -f <generated config>`` process (Debian's openssh-server;
``hack/install-system-deps.sh`` installs it) listening on one loopback address (127.0.0.2,
127.0.0.3, ...) and port, with:

- host keys (Ed25519 and RSA) generated once per test session (or per server on request);
- ``AuthorizedKeysFile`` pointing into the session's directory, holding the public halves of the
  client keys in :class:`ClientKeys` (Ed25519, RSA and ECDSA in OpenSSH and PEM formats, two of
  them passphrase-protected, and one key that is deliberately *not* authorized);
- password logins through PAM for the local test user :data:`TEST_USER`, created once with
  ``useradd`` (its password is kept root-only under :data:`STATE_DIR` so concurrent test sessions
  agree on it);
- ``MaxStartups 500:30:1000`` and ``MaxSessions 50`` so fan-out benchmarks are not throttled;
- on request (``sudo_target_user``), a sudoers.d rule letting the test user run commands as a second
  unprivileged account with ``sudo -n -u`` (never as root); needs Debian's sudo package.

Starting a server waits for sshd's own "Server listening" log line, not for a fixed time. Servers
are stopped at the end of the session. The fixtures need root (sshd, useradd) and are skipped
without it.

The pytest fixtures over this module are in ``tests/fixtures/sshd.py``; ``make demo`` and the
benchmarks use :class:`SshdFactory` directly.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import hmac
import os
import pwd
import re
import secrets
import socket
import subprocess
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

__all__ = [
    "SSHD",
    "STATE_DIR",
    "SUDOERS_FILE",
    "SUDO_TARGET_USER",
    "TEST_USER",
    "ClientKey",
    "ClientKeys",
    "SshServer",
    "SshdFactory",
    "TestUser",
    "ensure_test_user",
    "generate_client_keys",
]

SSHD = Path("/usr/sbin/sshd")
SSH_KEYGEN = "ssh-keygen"
TEST_USER = "opsc-test"
STATE_DIR = Path("/var/lib/opsconductor-tests")
"""Root-only state shared by test sessions on this machine (the test user's password)."""
START_TIMEOUT = 15.0
SUDO_TARGET_USER = "opsc-test-sudo"
"""An unprivileged account the test user may run commands as through ``sudo -n -u`` (never root)."""
SUDOERS_FILE = Path("/etc/sudoers.d/opsconductor-tests")


# --- key material ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClientKey:
    """A client private key file, as a Credential's Secret would hold it."""

    name: str
    path: Path
    """The private key file (mode 0600)."""
    public_line: str
    """``<type> <base64>`` as in authorized_keys."""
    passphrase: str | None = None
    passphrase_path: Path | None = None
    """A file holding the passphrase (no trailing newline), like a Secret key."""

    @property
    def fingerprint(self) -> str:
        """``SHA256:...`` of the public key, as ``ssh-keygen -lf`` prints it."""
        blob = base64.b64decode(self.public_line.split()[1])
        return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


@dataclass(frozen=True)
class ClientKeys:
    """Client keys in every supported format."""

    ed25519: ClientKey
    """Ed25519, OpenSSH format."""
    rsa: ClientKey
    """RSA 2048, PEM PKCS#1 (``BEGIN RSA PRIVATE KEY``)."""
    rsa_openssh: ClientKey
    """RSA 2048, OpenSSH format."""
    ecdsa: ClientKey
    """ECDSA P-256, PEM SEC1 (``BEGIN EC PRIVATE KEY``)."""
    ed25519_protected: ClientKey
    """Ed25519, OpenSSH format, passphrase-protected (bcrypt KDF)."""
    rsa_protected: ClientKey
    """RSA 2048, encrypted PEM PKCS#8 (``BEGIN ENCRYPTED PRIVATE KEY``)."""
    ecdsa_protected: ClientKey
    """ECDSA P-384, legacy encrypted PEM (``Proc-Type: 4,ENCRYPTED``)."""
    unauthorized: ClientKey
    """Ed25519, *not* in the test user's authorized_keys."""

    def authorized(self) -> list[ClientKey]:
        """Return the keys the servers accept for the test user."""
        return [k for k in vars(self).values() if isinstance(k, ClientKey) and k is not self.unauthorized]


def _write_private(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    path.chmod(0o600)


def _make_key(
    directory: Path,
    name: str,
    key: ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
    fmt: serialization.PrivateFormat,
    passphrase: str | None = None,
) -> ClientKey:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase.encode())
        if passphrase
        else serialization.NoEncryption()
    )
    path = directory / name
    _write_private(path, key.private_bytes(serialization.Encoding.PEM, fmt, encryption))
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    passphrase_path = None
    if passphrase:
        passphrase_path = directory / f"{name}.passphrase"
        _write_private(passphrase_path, passphrase.encode())
    return ClientKey(name, path, public.decode(), passphrase, passphrase_path)


def generate_client_keys(directory: Path) -> ClientKeys:
    """Generate the client keys of :class:`ClientKeys` into ``directory``.

    Args:
        directory: where the private key (and passphrase) files go.

    Returns:
        The keys.
    """
    directory.mkdir(parents=True, exist_ok=True)
    openssh = serialization.PrivateFormat.OpenSSH
    traditional = serialization.PrivateFormat.TraditionalOpenSSL
    pkcs8 = serialization.PrivateFormat.PKCS8
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ClientKeys(
        ed25519=_make_key(directory, "id_ed25519", ed25519.Ed25519PrivateKey.generate(), openssh),
        rsa=_make_key(directory, "id_rsa.pem", rsa_key, traditional),
        rsa_openssh=_make_key(directory, "id_rsa", rsa_key, openssh),
        ecdsa=_make_key(directory, "id_ecdsa.pem", ec.generate_private_key(ec.SECP256R1()), traditional),
        ed25519_protected=_make_key(
            directory, "id_ed25519_protected", ed25519.Ed25519PrivateKey.generate(), openssh, "correct horse"
        ),
        rsa_protected=_make_key(
            directory,
            "id_rsa_protected.pem",
            rsa.generate_private_key(public_exponent=65537, key_size=2048),
            pkcs8,
            "battery staple",
        ),
        ecdsa_protected=_make_key(
            directory,
            "id_ecdsa_protected.pem",
            ec.generate_private_key(ec.SECP384R1()),
            traditional,
            "s3cr3t!",
        ),
        unauthorized=_make_key(directory, "id_unauthorized", ed25519.Ed25519PrivateKey.generate(), openssh),
    )


@dataclass(frozen=True)
class HostKeyFiles:
    """A server's host key files and their public lines."""

    paths: tuple[Path, ...]
    public_lines: dict[str, str]
    """Key type (``ssh-ed25519``, ``ssh-rsa``) → ``<type> <base64>``."""


def generate_host_keys(directory: Path) -> HostKeyFiles:
    """Generate Ed25519 and RSA host keys with ssh-keygen.

    Args:
        directory: where the key files go (created).

    Returns:
        The files and public lines.
    """
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    lines = {}
    for kind, extra in (("ed25519", []), ("rsa", ["-b", "2048"])):
        path = directory / f"ssh_host_{kind}_key"
        subprocess.run(
            [SSH_KEYGEN, "-q", "-t", kind, *extra, "-N", "", "-C", "", "-f", str(path)],
            check=True,
            capture_output=True,
        )
        key_type, data = path.with_suffix(".pub").read_text().split()[:2]
        lines[key_type] = f"{key_type} {data}"
        paths.append(path)
    return HostKeyFiles(tuple(paths), lines)


# --- the test user --------------------------------------------------------------------------------
@dataclass(frozen=True)
class TestUser:
    """The local account the servers let in."""

    __test__ = False  # not a test class, despite the name

    name: str
    password: str
    uid: int
    gid: int
    home: Path
    username_path: Path
    """A file holding the user name (no newline), like a BasicAuth Secret key."""
    password_path: Path
    """A file holding the password (no newline)."""


@contextlib.contextmanager
def state_lock() -> Iterator[None]:
    STATE_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
    with (STATE_DIR / "lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def ensure_test_user(credentials_dir: Path, name: str = TEST_USER) -> TestUser:
    """Create the local test user once (useradd) and return it with its password.

    The password is generated on first use and kept in ``STATE_DIR`` (root only), so test sessions
    running at the same time on one machine agree on it.

    Args:
        credentials_dir: where to write the user name / password files for Credentials.
        name: the account name.

    Returns:
        The user.
    """
    with state_lock():
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            subprocess.run(
                ["useradd", "--create-home", "--shell", "/bin/bash", "--comment", "OpsConductor tests", name],
                check=True,
                capture_output=True,
            )
            entry = pwd.getpwnam(name)
        password_file = STATE_DIR / f"{name}.password"
        if password_file.exists():
            password = password_file.read_text().strip()
        else:
            password = "Pw-" + secrets.token_urlsafe(12)
            subprocess.run(
                ["chpasswd"], input=f"{name}:{password}\n", text=True, check=True, capture_output=True
            )
            password_file.write_text(password)
            password_file.chmod(0o600)
    credentials_dir.mkdir(parents=True, exist_ok=True)
    username_path = credentials_dir / "username"
    password_path = credentials_dir / "password"
    _write_private(username_path, name.encode())
    _write_private(password_path, password.encode())
    return TestUser(
        name, password, entry.pw_uid, entry.pw_gid, Path(entry.pw_dir), username_path, password_path
    )


# --- servers ------------------------------------------------------------------------------------
def sshd_version() -> tuple[int, int]:
    """Return the OpenSSH version of :data:`SSHD` as (major, minor)."""
    result = subprocess.run([str(SSHD), "-V"], capture_output=True, text=True, check=False)
    match = re.search(r"OpenSSH_(\d+)\.(\d+)", result.stderr + result.stdout)
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


def _free_port(address: str) -> int:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((address, 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class SshServer:
    """One running sshd."""

    address: str
    port: int
    user: TestUser
    keys: ClientKeys
    host_keys: dict[str, str]
    """Key type → ``<type> <base64>`` public line of the server's host keys."""
    workdir: Path
    process: subprocess.Popen[bytes]
    log_lines: list[str] = field(default_factory=list)

    @property
    def where(self) -> str:
        """``address:port`` (IPv6 in brackets)."""
        return f"[{self.address}]:{self.port}" if ":" in self.address else f"{self.address}:{self.port}"

    @property
    def host_key_lines(self) -> list[str]:
        """Every host public key line (for a Target's ``hostKeys``)."""
        return list(self.host_keys.values())

    def known_hosts_line(self, key_type: str = "ssh-ed25519", *, hashed: bool = False) -> str:
        """Return a known_hosts line for this server (``[address]:port`` form, optionally hashed).

        Args:
            key_type: which host key.
            hashed: write the host name hashed (``|1|salt|hash``), as ``HashKnownHosts yes`` does.

        Returns:
            The line.
        """
        name = f"[{self.address}]:{self.port}"
        if hashed:
            salt = os.urandom(20)
            digest = hmac.new(salt, name.encode(), hashlib.sha1).digest()
            name = f"|1|{base64.b64encode(salt).decode()}|{base64.b64encode(digest).decode()}"
        return f"{name} {self.host_keys[key_type]}"

    def log(self) -> str:
        """Return sshd's log so far (its stderr)."""
        return "\n".join(self.log_lines)

    def alive(self) -> bool:
        """Whether the sshd process still runs."""
        return self.process.poll() is None

    def stop(self) -> None:
        """Terminate sshd (and with it the sessions it serves)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


class SshdFactory:
    """Starts sshd servers for a session; the ``sshd_server`` fixture is one of these."""

    def __init__(self, root: Path, user: TestUser, keys: ClientKeys) -> None:
        """Prepare shared material (host keys, authorized_keys) under ``root``."""
        self.root = root
        self.user = user
        self.keys = keys
        self.servers: list[SshServer] = []
        self._counter = 0
        self._lock = threading.Lock()
        self._host_keys = generate_host_keys(root / "hostkeys")
        self._version = sshd_version()
        authorized = root / "authorized_keys"
        authorized.mkdir(exist_ok=True)
        authorized.chmod(0o755)
        user_file = authorized / user.name
        user_file.write_text("".join(f"{k.public_line} {k.name}\n" for k in keys.authorized()))
        user_file.chmod(0o644)
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation directory

    def __call__(
        self,
        address: str = "127.0.0.2",
        port: int | None = None,
        *,
        password_authentication: bool = True,
        unique_host_keys: bool = False,
        extra_config: Sequence[str] = (),
    ) -> SshServer:
        """Start a server and wait until it listens.

        Args:
            address: loopback address to listen on (127.0.0.2, 127.0.0.3, ... or ::1).
            port: TCP port; None picks a free one.
            password_authentication: allow password logins (PAM).
            unique_host_keys: generate host keys for this server instead of the session's shared ones.
            extra_config: more sshd_config lines (appended; later lines do not override earlier ones
                in sshd, so use this for options not set here).

        Returns:
            The running server.
        """
        attempts = 1 if port is not None else 5
        last_error = ""
        for _ in range(attempts):
            with self._lock:
                self._counter += 1
                workdir = self.root / f"server-{self._counter}"
            workdir.mkdir()
            host_keys = generate_host_keys(workdir / "hostkeys") if unique_host_keys else self._host_keys
            chosen = port if port is not None else _free_port(address)
            server, last_error = self._start(
                address, chosen, workdir, host_keys, password_authentication, extra_config
            )
            if server is not None:
                with self._lock:
                    self.servers.append(server)
                return server
            if "Address already in use" not in last_error:
                break
        raise RuntimeError(f"sshd on {address} did not start:\n{last_error}")

    def _config(
        self,
        address: str,
        port: int,
        workdir: Path,
        host_keys: HostKeyFiles,
        password_authentication: bool,
        extra_config: Sequence[str],
    ) -> str:
        listen = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
        lines = [
            f"ListenAddress {listen}",
            *(f"HostKey {path}" for path in host_keys.paths),
            f"PidFile {workdir / 'sshd.pid'}",
            f"AuthorizedKeysFile {self.root / 'authorized_keys'}/%u",
            f"AllowUsers {self.user.name}",
            "PubkeyAuthentication yes",
            f"PasswordAuthentication {'yes' if password_authentication else 'no'}",
            "KbdInteractiveAuthentication no",
            "UsePAM yes",
            "StrictModes no",
            "PermitRootLogin no",
            "MaxStartups 500:30:1000",
            "MaxSessions 50",
            "MaxAuthTries 20",
            "UseDNS no",
            "PrintMotd no",
            "PrintLastLog no",
            "Subsystem sftp internal-sftp",
            "LogLevel VERBOSE",
        ]
        if self._version >= (9, 8):
            lines.append("PerSourcePenalties no")  # tests fail logins on purpose
        lines.extend(extra_config)
        return "\n".join(lines) + "\n"

    def _start(
        self,
        address: str,
        port: int,
        workdir: Path,
        host_keys: HostKeyFiles,
        password_authentication: bool,
        extra_config: Sequence[str],
    ) -> tuple[SshServer | None, str]:
        config = workdir / "sshd_config"
        config.write_text(
            self._config(address, port, workdir, host_keys, password_authentication, extra_config)
        )
        process = subprocess.Popen(
            [str(SSHD), "-D", "-e", "-f", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        server = SshServer(
            address, port, self.user, self.keys, dict(host_keys.public_lines), workdir, process
        )
        ready = threading.Event()
        wanted = f"Server listening on {address} port {port}."

        def pump() -> None:
            assert process.stderr is not None
            with (workdir / "sshd.log").open("a") as log_file:
                for raw in process.stderr:
                    line = raw.decode("utf-8", errors="replace").rstrip("\n")
                    server.log_lines.append(line)
                    log_file.write(line + "\n")
                    log_file.flush()
                    if line.startswith(wanted):
                        ready.set()
            ready.set()  # sshd exited: stop waiting

        threading.Thread(target=pump, name=f"sshd-log-{address}:{port}", daemon=True).start()
        ready.wait(START_TIMEOUT)
        if process.poll() is not None or not any(line.startswith(wanted) for line in server.log_lines):
            server.stop()
            return None, server.log() or "no output"
        with socket.create_connection((address, port), timeout=5):
            pass
        return server, ""

    def stop_all(self) -> None:
        """Stop every server this factory started."""
        with self._lock:
            servers = list(self.servers)
        for server in servers:
            server.stop()
