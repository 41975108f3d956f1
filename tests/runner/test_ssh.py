"""SSH protocol module: pure helpers, and every step type against real OpenSSH servers on loopback."""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from pydantic import TypeAdapter

from opsconductor.api.opsjob import FileSource, Step
from opsconductor.plan import JobRef, PlanCredential, PlanTarget, RunPlan
from opsconductor.runner.protocols.base import StepContext, StepOutcome
from opsconductor.runner.protocols.ssh import (
    ExecSpec,
    HeadTailBuffer,
    HostKey,
    HostKeyPolicy,
    KeyLoadError,
    LineSplitter,
    PidMarkerFilter,
    SshSession,
    SshStepError,
    build_kill_command,
    build_remote_command,
    host_matches,
    known_hosts_name,
    load_private_key,
    parse_known_hosts,
    pid_marker,
    plan_destinations,
    resolve_source,
)
from opsconductor.runner.secrets import FileSecretStore
from tests.fixtures.sshd import ClientKey, ClientKeys, SshdFactory, SshServer, TestUser
from tests.kube import wait_until

STEP = TypeAdapter(Step)


# --- helpers --------------------------------------------------------------------------------------
class LogLines(list[str]):
    """ctx.log that lets a test wait for a line (instead of sleeping)."""

    def __init__(self) -> None:
        super().__init__()
        self._cond = threading.Condition()

    def append(self, line: str) -> None:
        with self._cond:
            super().append(line)
            self._cond.notify_all()

    def wait_for(self, text: str, timeout: float = 10) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: any(text in line for line in self), timeout)


def step(**fields: Any) -> Any:
    fields.setdefault("name", "s")
    return STEP.validate_python(fields)


def password_credential(user: TestUser, password_path: Path | None = None) -> PlanCredential:
    return PlanCredential(
        name="password",
        type="BasicAuth",
        username=user.name,
        files={"password": str(password_path or user.password_path)},
    )


def key_credential(key: ClientKey, user: TestUser) -> PlanCredential:
    files = {"privateKey": str(key.path)}
    if key.passphrase_path:
        files["passphrase"] = str(key.passphrase_path)
    return PlanCredential(name=f"key-{key.name}", type="SSHKey", username=user.name, files=files)


def target_for(
    server: SshServer,
    credential: PlanCredential,
    *,
    name: str = "web-1",
    host_keys: list[str] | None = None,
    known_hosts_file: Path | None = None,
    insecure: bool = False,
    port: int | None = None,
    connect_timeout: int = 5,
) -> PlanTarget:
    return PlanTarget(
        name=name,
        address=server.address,
        port=port or server.port,
        protocol="ssh",
        connect_timeout_seconds=connect_timeout,
        credential=credential,
        host_keys=server.host_key_lines
        if host_keys is None and known_hosts_file is None
        else host_keys or [],
        known_hosts_file=str(known_hosts_file) if known_hosts_file else None,
        insecure_skip_host_key_verification=insecure,
    )


def make_plan(tmp_path: Path, **kwargs: Any) -> RunPlan:
    return RunPlan(job=JobRef(namespace="default", name="job", uid="u-1"), steps=[], **kwargs)


def make_ctx(
    tmp_path: Path,
    target: PlanTarget | None,
    *,
    plan: RunPlan | None = None,
    timeout: float | None = None,
    cancel: threading.Event | None = None,
    log: list[str] | None = None,
    secrets: FileSecretStore | None = None,
) -> StepContext:
    workspace = tmp_path / "workspace"
    workspace.mkdir(exist_ok=True)
    return StepContext(
        plan=plan or make_plan(tmp_path),
        target=target,
        secrets=secrets or FileSecretStore(),
        workspace=workspace,
        cancel=cancel or threading.Event(),
        deadline=None if timeout is None else time.monotonic() + timeout,
        log=log if log is not None else LogLines(),
    )


def remote_processes(pattern: str) -> list[str]:
    """Processes on this machine (the 'remote' host) whose command line contains ``pattern``."""
    result = subprocess.run(["pgrep", "-a", "-f", pattern], capture_output=True, text=True, check=False)
    return [line for line in result.stdout.splitlines() if "pgrep" not in line]


def own(user: TestUser, *paths: Path) -> None:
    """Hand files the test created (as root) to the test user, as if they were the user's own."""
    for path in paths:
        os.chown(path, user.uid, user.gid, follow_symlinks=False)
        if path.is_dir() and not path.is_symlink():
            own(user, *path.iterdir())


def other_ed25519_line() -> str:
    public = ed25519.Ed25519PrivateKey.generate().public_key()
    return public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


@pytest.fixture
def session() -> Iterator[SshSession]:
    s = SshSession()
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def pw_target(sshd: SshServer, ssh_test_user: TestUser) -> PlanTarget:
    return target_for(sshd, password_credential(ssh_test_user))


def run(session: SshSession, tmp_path: Path, target: PlanTarget, s: Any, **ctx_args: Any) -> StepOutcome:
    return session.run(s, make_ctx(tmp_path, target, **ctx_args))


# --- pure helpers ---------------------------------------------------------------------------------
def test_host_key_parse_and_fingerprint() -> None:
    line = other_ed25519_line()
    key = HostKey.parse(line + " comment here")
    assert key.key_type == "ssh-ed25519"
    assert key.line() == line
    assert key.fingerprint.startswith("SHA256:") and not key.fingerprint.endswith("=")
    with pytest.raises(ValueError, match="not of type ssh-rsa"):
        HostKey.parse("ssh-rsa " + line.split()[1])
    with pytest.raises(ValueError):
        HostKey.parse("ssh-ed25519 !!!notbase64")


def test_known_hosts_matching_rules() -> None:
    assert known_hosts_name("10.0.0.1", 22) == "10.0.0.1"
    assert known_hosts_name("10.0.0.1", 2222) == "[10.0.0.1]:2222"
    assert known_hosts_name("[fe80::1]", 2222) == "[fe80::1]:2222"
    assert host_matches("web1,10.0.0.1", "10.0.0.1")
    assert host_matches("*.example.com", "db.EXAMPLE.com")
    assert host_matches("10.0.0.?", "10.0.0.7")
    assert not host_matches("10.0.0.?", "10.0.0.17")
    assert not host_matches("*.example.com,!bad.example.com", "bad.example.com")
    assert host_matches("[10.0.0.1]:2222", "[10.0.0.1]:2222")
    assert not host_matches("10.0.0.1", "[10.0.0.1]:2222")


def test_parse_known_hosts_hashed_markers_and_junk() -> None:
    import hashlib
    import hmac

    key_line = other_ed25519_line()
    salt = b"0123456789abcdefghij"
    digest = hmac.new(salt, b"[10.1.1.1]:2200", hashlib.sha1).digest()
    hashed = f"|1|{base64.b64encode(salt).decode()}|{base64.b64encode(digest).decode()}"
    text = "\n".join(
        [
            "# comment",
            "",
            f"{hashed} {key_line}",
            f"@revoked * {key_line}",
            f"@cert-authority *.corp {key_line}",
            "garbage line",
            f"other {key_line.split()[0]} not-base64!",
        ]
    )
    entries = parse_known_hosts(text)
    assert [e.marker for e in entries] == [None, "@revoked", "@cert-authority"]
    assert entries[0].matches("[10.1.1.1]:2200")
    assert not entries[0].matches("[10.1.1.1]:2201")


def test_host_key_policy(tmp_path: Path) -> None:
    a, b = HostKey.parse(other_ed25519_line()), HostKey.parse(other_ed25519_line())
    target = PlanTarget(name="t", address="10.0.0.1", port=22, protocol="ssh", host_keys=[a.line()])
    policy = HostKeyPolicy.for_target(target, f"10.0.0.1 {b.line()}\nelsewhere {other_ed25519_line()}\n")
    assert policy.accepted == (a, b)
    assert policy.check(a) is None and policy.check(b) is None
    message = policy.check(HostKey.parse(other_ed25519_line()))
    assert message is not None and "10.0.0.1:22" in message and "spec.ssh.hostKeys" in message
    assert policy.algorithms(["ssh-ed25519", "rsa-sha2-512", "rsa-sha2-256"]) == ["ssh-ed25519"]
    rsa_only = HostKeyPolicy("x:22", (HostKey("ssh-rsa", b""),))
    assert rsa_only.algorithms(["ssh-ed25519", "rsa-sha2-512", "rsa-sha2-256"]) == [
        "rsa-sha2-512",
        "rsa-sha2-256",
    ]
    revoked = HostKeyPolicy.for_target(target, f"@revoked 10.0.0.1 {a.line()}\n")
    assert "revoked" in (revoked.check(a) or "")
    bare = PlanTarget(name="t", address="10.0.0.1", port=22, protocol="ssh")
    error = HostKeyPolicy.for_target(bare).missing_keys_error(bare)
    assert error and "insecureSkipHostKeyVerification" in error and "ssh-keyscan -p 22 10.0.0.1" in error
    insecure = bare.model_copy(update={"insecure_skip_host_key_verification": True})
    assert HostKeyPolicy.for_target(insecure).missing_keys_error(insecure) is None
    assert HostKeyPolicy.for_target(insecure).algorithms(["ssh-ed25519"]) is None


def test_build_remote_command_quotes_everything() -> None:
    spec = ExecSpec(command='echo "$A"', env={"A": "it's $HOME `x`"}, working_dir="/tmp/a dir")
    command = build_remote_command(spec, "n1")
    assert command == (
        "printf '%s%s\\n' OPSC-PID-n1: \"$$\" >&2; export A='it'\"'\"'s $HOME `x`'; "
        "cd '/tmp/a dir' || exit 1; eval 'echo \"$A\"'"
    )
    result = subprocess.run(
        ["/bin/sh", "-c", command.replace("cd '/tmp/a dir' || exit 1; ", "")], capture_output=True, text=True
    )
    assert result.stdout == "it's $HOME `x`\n"
    assert result.stderr.startswith(pid_marker("n1"))


def test_build_remote_command_script_and_sudo() -> None:
    script = build_remote_command(ExecSpec(script="echo hi", shell="/bin/bash -e"), "n")
    assert script.endswith("exec /bin/bash -e /dev/fd/3 3<&0 </dev/null")
    sudo = build_remote_command(ExecSpec(command="id", sudo=True, sudo_user="post gres"), "n")
    assert sudo.startswith(
        "printf '%s%s\\n' OPSC-PID-n: \"$$\" >&2; exec sudo -n -u 'post gres' -- /bin/sh -c "
    )
    assert ExecSpec(command="x", sudo=True).expected_pid_reports == 2
    with pytest.raises(SshStepError, match="not valid shell variable names"):
        build_remote_command(ExecSpec(command="x", env={"BAD-NAME": "1"}), "n")


def test_script_stdin_does_not_swallow_the_script() -> None:
    command = build_remote_command(ExecSpec(script="echo one\ncat\nread x || echo eof\necho two\n"), "n")
    result = subprocess.run(
        ["/bin/sh", "-c", command],
        input="echo one\ncat\nread x || echo eof\necho two\n",
        capture_output=True,
        text=True,
    )
    assert result.stdout == "one\neof\ntwo\n"


def test_kill_command() -> None:
    command = build_kill_command([12, 34], sudo=False, sudo_user=None, grace_seconds=1.0)
    assert command.startswith("/bin/sh -c ") and "kill -TERM -$p" in command and "-lt 10" in command
    assert build_kill_command([1], sudo=True, sudo_user="pg", grace_seconds=0.5).startswith(
        "sudo -n -u pg -- "
    )


def test_pid_marker_filter() -> None:
    f = PidMarkerFilter("abc", expected=1)
    assert f.feed(b"bashrc noise\nOPSC-PID-a") == b"bashrc noise\n"
    assert f.feed(b"bc:4242\nreal ") == b"real "
    assert f.pids == [4242] and f.done
    assert f.feed(b"OPSC-PID-abc:1\n") == b"OPSC-PID-abc:1\n"
    g = PidMarkerFilter("abc", expected=2)
    assert g.feed(b"OPSC-PID-abc:1\nOPSC-PID-abc:2\nx") == b"x" and g.pids == [1, 2]
    h = PidMarkerFilter("abc", expected=1)
    assert h.feed(b"unrelated partial") == b"unrelated partial"
    assert h.feed(b" line\nOPSC-PID-abc:7\n") == b" line\n" and h.pids == [7]
    assert PidMarkerFilter("abc", 1).flush() == b""


def test_head_tail_buffer() -> None:
    small = HeadTailBuffer(8, 8)
    small.feed(b"hello")
    assert small.text() == "hello" and not small.truncated
    exact = HeadTailBuffer(4, 4)
    exact.feed(b"12345678")
    assert exact.text() == "12345678" and not exact.truncated
    big = HeadTailBuffer(4, 4)
    for _ in range(1000):
        big.feed(b"0123456789")
    assert big.total == 10000 and big.truncated and big.omitted == 9992
    assert big.text() == "0123\n... [9992 bytes omitted] ...\n6789"


def test_head_tail_buffer_does_not_split_utf8() -> None:
    buf = HeadTailBuffer(2, 3)
    buf.feed(b"aa" + b"x" * 10 + "\u00e9\u00e9".encode())  # tail = last 3 bytes: half an e-acute, then one
    assert buf.text().endswith("\n\u00e9")


def test_line_splitter() -> None:
    s = LineSplitter(max_line=8)
    assert s.feed(b"ab\r\ncd") == ["ab"]
    assert s.feed(b"ef\n0123456789") == ["cdef", "01234567"]
    assert s.flush() == ["89"] and s.flush() == []


def test_load_private_key_formats(ssh_keys: ClientKeys) -> None:
    for key in ssh_keys.authorized():
        loaded = load_private_key(key.path.read_text(), key.passphrase)
        assert loaded.fingerprint == key.fingerprint, key.name
    protected = ssh_keys.ed25519_protected
    with pytest.raises(KeyLoadError, match="encrypted but the Credential's Secret has no passphrase"):
        load_private_key(protected.path.read_text())
    with pytest.raises(KeyLoadError, match="does not decrypt"):
        load_private_key(protected.path.read_text(), "wrong")
    with pytest.raises(KeyLoadError, match="does not decrypt"):
        load_private_key(ssh_keys.rsa_protected.path.read_text(), "wrong")
    # A passphrase given for an unencrypted key is ignored.
    assert (
        load_private_key(ssh_keys.ed25519.path.read_text(), "unused").fingerprint
        == ssh_keys.ed25519.fingerprint
    )
    with pytest.raises(KeyLoadError, match="cannot be parsed"):
        load_private_key("-----BEGIN RSA PRIVATE KEY-----\nnope\n-----END RSA PRIVATE KEY-----\n")


def test_resolve_source_and_destinations(tmp_path: Path) -> None:
    cm = tmp_path / "cm"
    cm.mkdir()
    (cm / "a.conf").write_text("A")
    (cm / "b.conf").write_text("BB")
    (cm / "..data").mkdir()  # kubelet's atomic-writer internals are not keys
    secret_dir = tmp_path / "sec"
    secret_dir.mkdir()
    (secret_dir / "token").write_text("tok-secret-value")
    plan = make_plan(tmp_path, config_map_dirs={"cm": str(cm)}, secret_dirs={"sec": str(secret_dir)})
    store = FileSecretStore()
    ws = tmp_path / "ws"
    (ws / "web-1" / "tree" / "sub").mkdir(parents=True)
    (ws / "web-1" / "tree" / "top.txt").write_text("t")
    (ws / "web-1" / "tree" / "sub" / "deep.txt").write_text("d")

    def resolve(source: dict[str, Any], mode: str | None = None) -> Any:
        return resolve_source(
            FileSource.model_validate(source), plan=plan, workspace=ws, secrets=store, mode=mode
        )

    all_keys = resolve({"configMap": {"name": "cm"}})
    assert [f.name for f in all_keys.files] == ["a.conf", "b.conf"] and all_keys.into_directory
    assert [r for _, r in plan_destinations(all_keys, "/etc/app")] == ["/etc/app/a.conf", "/etc/app/b.conf"]
    one = resolve({"configMap": {"name": "cm"}, "key": "b.conf"}, mode="0600")
    assert one.files[0].mode == 0o600 and not one.into_directory
    assert plan_destinations(one, "/etc/app/b") == [(one.files[0], "/etc/app/b")]
    assert plan_destinations(one, "/etc/app/")[0][1] == "/etc/app/b.conf"
    sec = resolve({"secret": {"name": "sec"}})
    assert sec.files[0].mode == 0o600 and sec.files[0].data == b"tok-secret-value"
    assert store.mask("tok-secret-value") == "***"
    inline = resolve({"inline": "hello"})
    assert inline.files[0].mtime is None and inline.files[0].mode == 0o644
    with pytest.raises(SshStepError, match="inline content needs a file path"):
        plan_destinations(inline, "/etc/app/")
    tree = resolve({"workspace": "web-1/tree"})
    assert [f.name for f in tree.files] == ["top.txt", "sub/deep.txt"] and tree.directories[0][0] == "sub"
    with pytest.raises(SshStepError, match="outside the run's workspace"):
        resolve({"workspace": "../etc"})
    with pytest.raises(SshStepError, match="does not exist"):
        resolve({"workspace": "nope"})
    with pytest.raises(SshStepError, match="no key 'zzz'"):
        resolve({"configMap": {"name": "cm"}, "key": "zzz"})
    with pytest.raises(SshStepError, match="not mounted"):
        resolve({"secret": {"name": "other"}})


# --- authentication and trust ---------------------------------------------------------------------
def test_password_login(session: SshSession, tmp_path: Path, pw_target: PlanTarget) -> None:
    outcome = run(session, tmp_path, pw_target, step(type="ssh.exec", command="id -un"))
    assert outcome.ok, outcome.error
    assert outcome.exit_code == 0 and outcome.stdout == "opsc-test\n"


@pytest.mark.parametrize(
    "key_name",
    ["ed25519", "rsa", "rsa_openssh", "ecdsa", "ed25519_protected", "rsa_protected", "ecdsa_protected"],
)
def test_key_login(
    session: SshSession,
    tmp_path: Path,
    sshd: SshServer,
    ssh_test_user: TestUser,
    ssh_keys: ClientKeys,
    key_name: str,
) -> None:
    key = getattr(ssh_keys, key_name)
    target = target_for(sshd, key_credential(key, ssh_test_user))
    outcome = run(session, tmp_path, target, step(type="ssh.exec", command="echo ok"))
    assert outcome.ok, outcome.error
    assert outcome.stdout == "ok\n"


def test_user_name_from_secret_file_is_masked(
    session: SshSession, tmp_path: Path, sshd: SshServer, ssh_test_user: TestUser
) -> None:
    credential = PlanCredential(
        name="c",
        type="BasicAuth",
        files={"username": str(ssh_test_user.username_path), "password": str(ssh_test_user.password_path)},
    )
    outcome = run(session, tmp_path, target_for(sshd, credential), step(type="ssh.exec", command="id -un"))
    assert outcome.ok, outcome.error
    assert outcome.stdout == "***\n"  # the user name came from a Secret, so it is masked like one


def test_secret_values_are_masked_in_output(
    session: SshSession, tmp_path: Path, pw_target: PlanTarget, ssh_test_user: TestUser
) -> None:
    log = LogLines()
    outcome = run(
        session, tmp_path, pw_target, step(type="ssh.exec", command=f"echo {ssh_test_user.password}"), log=log
    )
    assert outcome.stdout == "***\n"
    assert not any(ssh_test_user.password in line for line in log)


def test_wrong_password(
    session: SshSession, tmp_path: Path, sshd: SshServer, ssh_test_user: TestUser
) -> None:
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-password\n")
    target = target_for(sshd, password_credential(ssh_test_user, wrong))
    outcome = run(session, tmp_path, target, step(type="ssh.exec", command="true"))
    assert not outcome.ok and outcome.exit_code is None
    assert f"ssh {sshd.where}: authentication failed for user 'opsc-test' with a password" in outcome.error
    assert "check the Credential" in outcome.error


def test_unauthorized_key(
    session: SshSession, tmp_path: Path, sshd: SshServer, ssh_test_user: TestUser, ssh_keys: ClientKeys
) -> None:
    key = ssh_keys.unauthorized
    outcome = run(
        session,
        tmp_path,
        target_for(sshd, key_credential(key, ssh_test_user)),
        step(type="ssh.exec", command="true"),
    )
    assert not outcome.ok
    assert (
        f"authentication failed for user 'opsc-test' with key {key.fingerprint} (ssh-ed25519)"
        in outcome.error
    )
    assert "authorized_keys" in outcome.error


def test_wrong_passphrase(
    session: SshSession, tmp_path: Path, sshd: SshServer, ssh_test_user: TestUser, ssh_keys: ClientKeys
) -> None:
    bad = tmp_path / "passphrase"
    bad.write_text("wrong passphrase")
    key = ssh_keys.ed25519_protected
    credential = PlanCredential(
        name="k",
        type="SSHKey",
        username=ssh_test_user.name,
        files={"privateKey": str(key.path), "passphrase": str(bad)},
    )
    outcome = run(session, tmp_path, target_for(sshd, credential), step(type="ssh.exec", command="true"))
    assert not outcome.ok and "Credential k: the passphrase" in outcome.error
    assert "wrong passphrase" not in outcome.error


def test_password_auth_refused_by_server(
    sshd_server: SshdFactory, session: SshSession, tmp_path: Path, ssh_test_user: TestUser
) -> None:
    server = sshd_server("127.0.0.4", password_authentication=False)
    outcome = run(
        session,
        tmp_path,
        target_for(server, password_credential(ssh_test_user)),
        step(type="ssh.exec", command="true"),
    )
    assert not outcome.ok
    assert (
        "does not accept password authentication for user 'opsc-test' (it allows: publickey)" in outcome.error
    )


def test_host_key_mismatch(
    session: SshSession, tmp_path: Path, sshd: SshServer, ssh_test_user: TestUser
) -> None:
    wrong = other_ed25519_line()
    target = target_for(sshd, password_credential(ssh_test_user), host_keys=[wrong])
    outcome = run(session, tmp_path, target, step(type="ssh.exec", command="true"))
    offered = HostKey.parse(sshd.host_keys["ssh-ed25519"])
    assert not outcome.ok
    assert f"ssh {sshd.where}: host key verification failed" in outcome.error
    assert f"ssh-ed25519 {offered.fingerprint}" in outcome.error
    assert "update the Target's spec.ssh.hostKeys" in outcome.error


def test_only_declared_key_types_are_negotiated(
    session: SshSession, tmp_path: Path, sshd: SshServer, ssh_test_user: TestUser
) -> None:
    target = target_for(sshd, password_credential(ssh_test_user), host_keys=[sshd.host_keys["ssh-rsa"]])
    outcome = run(session, tmp_path, target, step(type="ssh.exec", command="true"))
    assert outcome.ok, outcome.error


def test_missing_host_keys(
    session: SshSession, tmp_path: Path, sshd: SshServer, ssh_test_user: TestUser
) -> None:
    target = target_for(sshd, password_credential(ssh_test_user), host_keys=[])
    outcome = run(session, tmp_path, target, step(type="ssh.exec", command="true"))
    assert not outcome.ok
    assert "no host keys are declared" in outcome.error
    assert "insecureSkipHostKeyVerification" in outcome.error and "spec.ssh.hostKeys" in outcome.error


def test_insecure_opt_in(
    session: SshSession, tmp_path: Path, sshd: SshServer, ssh_test_user: TestUser
) -> None:
    target = target_for(sshd, password_credential(ssh_test_user), host_keys=[], insecure=True)
    outcome = run(session, tmp_path, target, step(type="ssh.exec", command="true"))
    assert outcome.ok, outcome.error


@pytest.mark.parametrize("hashed", [False, True])
def test_known_hosts_file(
    session: SshSession, tmp_path: Path, sshd: SshServer, ssh_test_user: TestUser, hashed: bool
) -> None:
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"other.example {other_ed25519_line()}\n{sshd.known_hosts_line(hashed=hashed)}\n")
    target = target_for(sshd, password_credential(ssh_test_user), known_hosts_file=known_hosts)
    outcome = run(session, tmp_path, target, step(type="ssh.exec", command="true"))
    assert outcome.ok, outcome.error


def test_known_hosts_without_entry_for_host(
    session: SshSession, tmp_path: Path, sshd: SshServer, ssh_test_user: TestUser
) -> None:
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"{sshd.address} {sshd.host_keys['ssh-ed25519']}\n")  # port 22 entry only
    target = target_for(sshd, password_credential(ssh_test_user), known_hosts_file=known_hosts)
    outcome = run(session, tmp_path, target, step(type="ssh.exec", command="true"))
    assert (
        not outcome.ok and f"known_hosts file has no entry for [{sshd.address}]:{sshd.port}" in outcome.error
    )


def test_connection_refused(
    session: SshSession, tmp_path: Path, sshd: SshServer, ssh_test_user: TestUser
) -> None:
    with socket.socket() as probe:
        probe.bind((sshd.address, 0))
        free = probe.getsockname()[1]
    target = target_for(sshd, password_credential(ssh_test_user), port=free)
    outcome = run(session, tmp_path, target, step(type="ssh.exec", command="true"))
    assert (
        outcome.error
        == f"ssh {sshd.address}:{free}: connection refused — is sshd running and the port right?"
    )


def test_silent_port_fails_within_connect_timeout(
    session: SshSession, tmp_path: Path, sshd: SshServer, ssh_test_user: TestUser
) -> None:
    with socket.socket() as silent:  # accepts TCP connections (backlog) but never speaks SSH
        silent.bind(("127.0.0.9", 0))
        silent.listen(8)
        target = target_for(
            sshd, password_credential(ssh_test_user), port=silent.getsockname()[1], connect_timeout=1
        )
        target = target.model_copy(update={"address": "127.0.0.9"})
        started = time.monotonic()
        outcome = run(session, tmp_path, target, step(type="ssh.exec", command="true"))
        elapsed = time.monotonic() - started
    assert not outcome.ok and not outcome.timed_out
    assert outcome.error.startswith(
        f"ssh 127.0.0.9:{target.port}: no progress within 1s while waiting for the SSH banner"
    )
    assert "is this port an SSH server?" in outcome.error
    assert 0.9 <= elapsed < 2.5


def test_dns_failure(session: SshSession, tmp_path: Path, sshd: SshServer, ssh_test_user: TestUser) -> None:
    target = target_for(sshd, password_credential(ssh_test_user)).model_copy(
        update={"address": "no-such-host.invalid"}
    )
    outcome = run(session, tmp_path, target, step(type="ssh.exec", command="true"))
    assert "cannot resolve host name 'no-such-host.invalid'" in outcome.error


def test_no_credential(session: SshSession, tmp_path: Path, sshd: SshServer, ssh_test_user: TestUser) -> None:
    target = target_for(sshd, password_credential(ssh_test_user)).model_copy(update={"credential": None})
    outcome = run(session, tmp_path, target, step(type="ssh.exec", command="true"))
    assert "has no credential" in outcome.error


# --- ssh.exec -------------------------------------------------------------------------------------
def test_exec_env_working_dir_and_stderr(
    session: SshSession, tmp_path: Path, pw_target: PlanTarget, remote_dir: Path
) -> None:
    work = remote_dir / "a dir with 'quotes'"
    work.mkdir()
    s = step(
        type="ssh.exec",
        command='printf "%s|%s|%s\\n" "$GREETING" "$EMPTY" "$(pwd)"; echo oops >&2',
        env={"GREETING": 'it\'s "$HOME" `whoami` ;', "EMPTY": ""},
        workingDir=str(work),
    )
    outcome = run(session, tmp_path, pw_target, s)
    assert outcome.ok, outcome.error
    assert outcome.stdout == f'it\'s "$HOME" `whoami` ;||{work}\n'
    assert outcome.stderr == "oops\n"
    assert outcome.outputs["stdout"] == f'it\'s "$HOME" `whoami` ;||{work}'


def test_exec_missing_working_dir(session: SshSession, tmp_path: Path, pw_target: PlanTarget) -> None:
    outcome = run(
        session, tmp_path, pw_target, step(type="ssh.exec", command="true", workingDir="/nonexistent/x")
    )
    assert not outcome.ok and outcome.exit_code == 1
    assert "/nonexistent/x" in outcome.error


def test_exec_script_on_stdin(session: SshSession, tmp_path: Path, pw_target: PlanTarget) -> None:
    script = (
        'set -e\necho one\ncat   # gets /dev/null, not the rest of the script\necho "shell=$0 two"\nexit 4\n'
    )
    outcome = run(
        session,
        tmp_path,
        pw_target,
        step(type="ssh.exec", script=script, shell="/bin/bash", expectExitCodes=[4]),
    )
    assert outcome.ok, outcome.error
    assert outcome.stdout == "one\nshell=/dev/fd/3 two\n" and outcome.exit_code == 4


def test_exec_script_default_shell_and_large_script(
    session: SshSession, tmp_path: Path, pw_target: PlanTarget
) -> None:
    script = "".join(f"echo line{i}\n" for i in range(4500))  # ~60 KiB, close to the 64 KiB limit
    outcome = run(session, tmp_path, pw_target, step(type="ssh.exec", script=script))
    assert outcome.ok, outcome.error
    lines = outcome.stdout.splitlines()
    assert len(lines) == 4500 and lines[-1] == "line4499"


def test_exec_nonzero_exit(session: SshSession, tmp_path: Path, pw_target: PlanTarget) -> None:
    outcome = run(session, tmp_path, pw_target, step(type="ssh.exec", command="echo bad thing >&2; exit 3"))
    assert not outcome.ok and outcome.exit_code == 3
    assert outcome.error == (
        f"ssh {pw_target.address}:{pw_target.port}: the command exited with code 3 (expected 0); "
        "last stderr line: bad thing"
    )
    accepted = run(
        session, tmp_path, pw_target, step(type="ssh.exec", command="exit 3", expectExitCodes=[0, 3])
    )
    assert accepted.ok and accepted.exit_code == 3 and accepted.error == ""


def test_exec_stdin_is_closed(session: SshSession, tmp_path: Path, pw_target: PlanTarget) -> None:
    outcome = run(session, tmp_path, pw_target, step(type="ssh.exec", command="cat; echo done"), timeout=10)
    assert outcome.ok and outcome.stdout == "done\n"


def test_exec_output_is_bounded(session: SshSession, tmp_path: Path, pw_target: PlanTarget) -> None:
    log = LogLines()
    command = "echo BEGIN; yes 0123456789abcdef | head -c 3000000; echo; echo END; echo err-end >&2"
    outcome = run(session, tmp_path, pw_target, step(type="ssh.exec", command=command), log=log)
    assert outcome.ok, outcome.error
    total = 6 + 3000000 + 1 + 4
    assert outcome.outputs["stdoutBytes"] == str(total) and "stdout" not in outcome.outputs
    assert outcome.stdout.startswith("BEGIN\n0123456789abcdef")
    assert outcome.stdout.endswith("\nEND\n")
    assert f"[{total - 2 * 64 * 1024} bytes omitted]" in outcome.stdout
    assert len(outcome.stdout) < 2 * 64 * 1024 + 100
    assert outcome.stderr == "err-end\n"
    stdout_lines = [line for line in log if " stdout: " in line]
    assert len(stdout_lines) == 3000000 // 17 + 3  # every line went to the log
    assert stdout_lines[-1] == "[web-1] stdout: END"


def test_exec_timeout_kills_remote_process(
    session: SshSession, tmp_path: Path, pw_target: PlanTarget
) -> None:
    nonce = f"3600.{uuid.uuid4().int % 10**9}"
    s = step(type="ssh.exec", command=f"echo started; sleep {nonce}; echo never", timeoutSeconds=1)
    started = time.monotonic()
    outcome = run(session, tmp_path, pw_target, s, timeout=1.0)
    elapsed = time.monotonic() - started
    assert outcome.timed_out and not outcome.ok and not outcome.cancelled
    assert outcome.stdout == "started\n"
    assert "timed out after 1s" in outcome.error and "was stopped" in outcome.error
    assert elapsed < 1.0 + 2.0
    assert remote_processes(nonce) == []


def test_exec_timeout_kills_process_ignoring_term(
    session: SshSession, tmp_path: Path, pw_target: PlanTarget
) -> None:
    nonce = f"3601.{uuid.uuid4().int % 10**9}"
    s = step(type="ssh.exec", script=f"trap '' TERM\nsleep {nonce} &\nsleep {nonce}\n")
    started = time.monotonic()
    outcome = run(session, tmp_path, pw_target, s, timeout=0.5)
    elapsed = time.monotonic() - started
    assert outcome.timed_out
    assert elapsed < 0.5 + 1.0 + 2.0  # TERM is ignored: KILL after the grace period
    assert remote_processes(nonce) == []


def test_exec_cancel_kills_process_tree(session: SshSession, tmp_path: Path, pw_target: PlanTarget) -> None:
    nonce = f"3602.{uuid.uuid4().int % 10**9}"
    log = LogLines()
    cancel = threading.Event()
    ctx = make_ctx(tmp_path, pw_target, cancel=cancel, log=log)
    s = step(type="ssh.exec", command=f"sh -c 'sleep {nonce} & sleep {nonce}; wait' & echo started; wait")
    result: list[StepOutcome] = []
    worker = threading.Thread(target=lambda: result.append(session.run(s, ctx)))
    worker.start()
    assert log.wait_for("stdout: started")
    assert len(remote_processes(nonce)) >= 2
    cancelled_at = time.monotonic()
    cancel.set()
    worker.join(10)
    assert time.monotonic() - cancelled_at < 2.0
    outcome = result[0]
    assert outcome.cancelled and not outcome.ok and not outcome.timed_out
    assert "cancelled" in outcome.error
    assert remote_processes(nonce) == []


def test_cancel_before_connect(session: SshSession, tmp_path: Path, pw_target: PlanTarget) -> None:
    cancel = threading.Event()
    cancel.set()
    outcome = run(session, tmp_path, pw_target, step(type="ssh.exec", command="true"), cancel=cancel)
    assert outcome.cancelled and not outcome.ok


# --- connection reuse -----------------------------------------------------------------------------
def test_one_transport_per_target_shared_by_threads(
    session: SshSession, tmp_path: Path, pw_target: PlanTarget
) -> None:
    log = LogLines()
    outcomes: list[StepOutcome] = []
    lock = threading.Lock()

    def work(i: int) -> None:
        o = session.run(step(type="ssh.exec", command=f"echo {i}"), make_ctx(tmp_path, pw_target, log=log))
        with lock:
            outcomes.append(o)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(o.ok for o in outcomes), [o.error for o in outcomes]
    assert sum("connected to" in line for line in log) == 1
    assert len(session.pool) == 1
    session.close()
    assert len(session.pool) == 0
    after = run(session, tmp_path, pw_target, step(type="ssh.exec", command="true"))
    assert not after.ok and "closed" in after.error


def test_reconnects_after_the_server_drops_the_connection(
    session: SshSession, tmp_path: Path, pw_target: PlanTarget
) -> None:
    first = run(session, tmp_path, pw_target, step(type="ssh.exec", command="true"))
    assert first.ok
    slot = next(iter(session.pool._slots.values()))
    assert slot.connection is not None
    slot.connection.transport.close()
    second = run(session, tmp_path, pw_target, step(type="ssh.exec", command="echo again"))
    assert second.ok and second.stdout == "again\n"


def test_several_servers_in_parallel(
    sshd_server: SshdFactory,
    session: SshSession,
    tmp_path: Path,
    ssh_test_user: TestUser,
    ssh_keys: ClientKeys,
) -> None:
    servers = [sshd_server(f"127.0.0.{i}") for i in (5, 6, 7)]
    targets = [
        target_for(s, key_credential(ssh_keys.ed25519, ssh_test_user), name=f"t{i}")
        for i, s in enumerate(servers)
    ]
    results: dict[str, StepOutcome] = {}

    def work(target: PlanTarget) -> None:
        results[target.name] = session.run(
            step(type="ssh.exec", command="echo $SSH_CONNECTION"), make_ctx(tmp_path, target)
        )

    threads = [threading.Thread(target=work, args=(t,)) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for target, server in zip(targets, servers, strict=True):
        outcome = results[target.name]
        assert outcome.ok, outcome.error
        assert outcome.stdout.split()[2:] == [server.address, str(server.port)]


# --- file transfers -------------------------------------------------------------------------------
@pytest.fixture
def config_map(tmp_path: Path) -> Path:
    directory = tmp_path / "configmaps" / "app-config"
    directory.mkdir(parents=True)
    (directory / "app.conf").write_text("listen 8080\n")
    (directory / "extra.conf").write_text("x" * 100000)
    os.utime(directory / "app.conf", (1_600_000_000, 1_600_000_000))
    os.utime(directory / "extra.conf", (1_600_000_100, 1_600_000_100))
    return directory


def plan_with(tmp_path: Path, config_map: Path) -> RunPlan:
    secret_dir = tmp_path / "secrets" / "tls"
    secret_dir.mkdir(parents=True, exist_ok=True)
    (secret_dir / "tls.key").write_text("PRIVATE-KEY-MATERIAL\n")
    return make_plan(
        tmp_path, config_map_dirs={"app-config": str(config_map)}, secret_dirs={"tls": str(secret_dir)}
    )


def test_scp_copy_single_file(
    session: SshSession, tmp_path: Path, pw_target: PlanTarget, remote_dir: Path
) -> None:
    dest = remote_dir / "new dir" / "motd"
    s = step(type="ssh.copy", source={"inline": "hello scp\n"}, destination=str(dest), mode="0640")
    outcome = run(session, tmp_path, pw_target, s)
    assert outcome.ok, outcome.error
    assert dest.read_text() == "hello scp\n"
    assert oct(dest.stat().st_mode & 0o777) == "0o640"
    assert outcome.outputs == {"uploaded": "1", "bytes": "10"}


def test_scp_copy_directory_tree(
    session: SshSession, tmp_path: Path, pw_target: PlanTarget, remote_dir: Path, config_map: Path
) -> None:
    ctx = make_ctx(tmp_path, pw_target, plan=plan_with(tmp_path, config_map))
    tree = ctx.workspace / "web-1" / "tree"
    (tree / "sub" / "deeper").mkdir(parents=True)
    (tree / "top.txt").write_text("top")
    (tree / "sub" / "deeper" / "leaf.sh").write_text("#!/bin/sh\n")
    (tree / "sub" / "deeper" / "leaf.sh").chmod(0o750)
    os.utime(tree / "top.txt", (1_500_000_000, 1_500_000_000))
    outcome = session.run(
        step(type="ssh.copy", source={"workspace": "web-1/tree"}, destination=str(remote_dir / "tree")), ctx
    )
    assert outcome.ok, outcome.error
    assert (remote_dir / "tree" / "top.txt").read_text() == "top"
    assert (remote_dir / "tree" / "top.txt").stat().st_mtime == 1_500_000_000
    leaf = remote_dir / "tree" / "sub" / "deeper" / "leaf.sh"
    assert leaf.read_text() == "#!/bin/sh\n" and leaf.stat().st_mode & 0o777 == 0o750
    maps = session.run(
        step(
            type="ssh.copy",
            source={"configMap": {"name": "app-config"}},
            destination=str(remote_dir / "conf"),
        ),
        ctx,
    )
    assert maps.ok, maps.error
    assert (remote_dir / "conf" / "extra.conf").stat().st_size == 100000
    assert (remote_dir / "conf" / "app.conf").stat().st_mtime == 1_600_000_000


def test_scp_error_is_reported(session: SshSession, tmp_path: Path, pw_target: PlanTarget) -> None:
    s = step(type="ssh.copy", source={"inline": "x"}, destination="/proc/forbidden/file")
    outcome = run(session, tmp_path, pw_target, s)
    assert not outcome.ok and "/proc/forbidden" in outcome.error


def test_sftp_upload_mode_and_mtime(
    session: SshSession,
    tmp_path: Path,
    pw_target: PlanTarget,
    remote_dir: Path,
    config_map: Path,
    ssh_test_user: TestUser,
) -> None:
    ctx = make_ctx(tmp_path, pw_target, plan=plan_with(tmp_path, config_map))
    dest = remote_dir / "etc" / "app"
    outcome = session.run(
        step(
            type="sftp.upload",
            source={"configMap": {"name": "app-config"}},
            destination=str(dest),
            mode="0600",
        ),
        ctx,
    )
    assert outcome.ok, outcome.error
    assert outcome.outputs == {"uploaded": "2", "bytes": str(12 + 100000)}
    app = dest / "app.conf"
    assert app.read_text() == "listen 8080\n"
    assert app.stat().st_mode & 0o777 == 0o600 and app.stat().st_mtime == 1_600_000_000
    assert app.stat().st_uid == ssh_test_user.uid
    assert (dest / "extra.conf").stat().st_mtime == 1_600_000_100
    assert sorted(p.name for p in dest.iterdir()) == ["app.conf", "extra.conf"]  # no temporary files left


def test_sftp_upload_secret_and_inline(
    session: SshSession, tmp_path: Path, pw_target: PlanTarget, remote_dir: Path, config_map: Path
) -> None:
    log = LogLines()
    ctx = make_ctx(tmp_path, pw_target, plan=plan_with(tmp_path, config_map), log=log)
    secret = session.run(
        step(
            type="sftp.upload",
            source={"secret": {"name": "tls"}, "key": "tls.key"},
            destination=str(remote_dir / "tls" / "server.key"),
        ),
        ctx,
    )
    assert secret.ok, secret.error
    key_file = remote_dir / "tls" / "server.key"
    assert key_file.read_text() == "PRIVATE-KEY-MATERIAL\n" and key_file.stat().st_mode & 0o777 == 0o600
    inline = session.run(
        step(type="sftp.upload", source={"inline": "v=1\n"}, destination=str(remote_dir / "inline.txt")), ctx
    )
    assert inline.ok and (remote_dir / "inline.txt").read_text() == "v=1\n"
    assert (remote_dir / "inline.txt").stat().st_mode & 0o777 == 0o644
    assert not any("PRIVATE-KEY-MATERIAL" in line for line in log)


def test_sftp_upload_permission_denied(session: SshSession, tmp_path: Path, pw_target: PlanTarget) -> None:
    outcome = run(
        session,
        tmp_path,
        pw_target,
        step(type="sftp.upload", source={"inline": "x"}, destination="/root/nope/file"),
    )
    assert not outcome.ok and "permission denied" in outcome.error


def test_sftp_sync(
    session: SshSession,
    tmp_path: Path,
    pw_target: PlanTarget,
    remote_dir: Path,
    config_map: Path,
    ssh_test_user: TestUser,
) -> None:
    ctx = make_ctx(tmp_path, pw_target, plan=plan_with(tmp_path, config_map))
    dest = remote_dir / "sync"

    def sync(delete: bool = False) -> dict[str, str]:
        outcome = session.run(
            step(
                type="sftp.sync",
                source={"configMap": {"name": "app-config"}},
                destination=str(dest),
                delete=delete,
            ),
            ctx,
        )
        assert outcome.ok, outcome.error
        return outcome.outputs

    assert sync() == {"uploaded": "2", "bytes": "100012", "unchanged": "0", "deleted": "0"}
    assert sync() == {"uploaded": "0", "bytes": "0", "unchanged": "2", "deleted": "0"}
    (config_map / "app.conf").write_text("listen 9090\n")  # same size, new mtime
    os.utime(config_map / "app.conf", (1_700_000_000, 1_700_000_000))
    assert sync()["uploaded"] == "1"
    assert (dest / "app.conf").read_text() == "listen 9090\n"
    (dest / "stale.conf").write_text("old")
    (dest / "old-dir").mkdir()
    (dest / "old-dir" / "f").write_text("old")
    own(ssh_test_user, dest)
    assert sync()["deleted"] == "0" and (dest / "stale.conf").exists()
    outputs = sync(delete=True)
    assert outputs["deleted"] == "2" and outputs["unchanged"] == "2"
    assert sorted(p.name for p in dest.iterdir()) == ["app.conf", "extra.conf"]


def test_sftp_sync_inline_compares_content(
    session: SshSession, tmp_path: Path, pw_target: PlanTarget, remote_dir: Path
) -> None:
    dest = str(remote_dir / "v.txt")

    def sync(text: str) -> dict[str, str]:
        outcome = run(
            session, tmp_path, pw_target, step(type="sftp.sync", source={"inline": text}, destination=dest)
        )
        assert outcome.ok, outcome.error
        return outcome.outputs

    assert sync("aaa")["uploaded"] == "1"
    assert sync("aaa")["unchanged"] == "1"
    assert sync("bbb")["uploaded"] == "1"
    assert Path(dest).read_text() == "bbb"


def test_sftp_download(
    session: SshSession, tmp_path: Path, pw_target: PlanTarget, remote_dir: Path, ssh_test_user: TestUser
) -> None:
    src = remote_dir / "logs"
    (src / "nested").mkdir(parents=True)
    (src / "a.log").write_text("alpha")
    (src / "nested" / "b.log").write_text("beta")
    (src / "nested" / "b.log").chmod(0o640)
    os.utime(src / "a.log", (1_400_000_000, 1_400_000_000))
    (src / "link.log").symlink_to(src / "a.log")
    own(ssh_test_user, src)
    ctx = make_ctx(tmp_path, pw_target)
    outcome = session.run(
        step(type="sftp.download", remotePath=str(src), workspacePath="collected/logs"), ctx
    )
    assert outcome.ok, outcome.error
    local = ctx.workspace / "web-1" / "collected" / "logs"
    assert outcome.outputs == {"downloaded": "3", "bytes": str(5 + 4 + 5), "path": "web-1/collected/logs"}
    assert (local / "a.log").read_text() == "alpha" and (local / "a.log").stat().st_mtime == 1_400_000_000
    assert (local / "nested" / "b.log").stat().st_mode & 0o777 == 0o640
    assert (local / "link.log").read_text() == "alpha"
    single = session.run(
        step(type="sftp.download", remotePath=str(src / "a.log"), workspacePath="one.log"), ctx
    )
    assert single.ok and (ctx.workspace / "web-1" / "one.log").read_text() == "alpha"
    missing = session.run(step(type="sftp.download", remotePath=str(src / "nope"), workspacePath="x"), ctx)
    assert not missing.ok and "does not exist" in missing.error
    escape = session.run(step(type="sftp.download", remotePath=str(src), workspacePath="../../etc"), ctx)
    assert not escape.ok and "outside" in escape.error


def test_upload_of_downloaded_workspace_files(
    session: SshSession, tmp_path: Path, pw_target: PlanTarget, remote_dir: Path
) -> None:
    (remote_dir / "hosts").write_text("127.0.0.1 localhost\n")
    ctx = make_ctx(tmp_path, pw_target)
    got = session.run(
        step(type="sftp.download", remotePath=str(remote_dir / "hosts"), workspacePath="etc/hosts"), ctx
    )
    assert got.ok, got.error
    put = session.run(
        step(
            type="sftp.upload",
            source={"workspace": "web-1/etc/hosts"},
            destination=str(remote_dir / "copy" / "hosts"),
        ),
        ctx,
    )
    assert put.ok, put.error
    assert (remote_dir / "copy" / "hosts").read_text() == "127.0.0.1 localhost\n"


def test_transfer_cancelled(
    session: SshSession, tmp_path: Path, pw_target: PlanTarget, remote_dir: Path
) -> None:
    cancel = threading.Event()
    cancel.set()
    outcome = run(
        session,
        tmp_path,
        pw_target,
        step(type="sftp.upload", source={"inline": "x"}, destination=str(remote_dir / "f")),
        cancel=cancel,
    )
    assert outcome.cancelled and not (remote_dir / "f").exists()


def test_step_without_target(session: SshSession, tmp_path: Path) -> None:
    outcome = session.run(step(type="ssh.exec", command="true"), make_ctx(tmp_path, None))
    assert not outcome.ok and "need a target" in outcome.error


# --- sudo -----------------------------------------------------------------------------------------
def test_sudo_as_other_user(
    session: SshSession, tmp_path: Path, pw_target: PlanTarget, sudo_target_user: str
) -> None:
    s = step(
        type="ssh.exec",
        command='echo "$(id -un) $V $(pwd)"',
        sudoUser=sudo_target_user,
        env={"V": "kept through sudo"},
        workingDir="/tmp",
    )
    outcome = run(session, tmp_path, pw_target, s)
    assert outcome.ok, outcome.error
    assert outcome.stdout == f"{sudo_target_user} kept through sudo /tmp\n"


def test_sudo_needing_a_password_is_explained(
    session: SshSession, tmp_path: Path, pw_target: PlanTarget, sudo_target_user: str
) -> None:
    outcome = run(
        session, tmp_path, pw_target, step(type="ssh.exec", command="id", sudo=True)
    )  # as root: not allowed
    assert not outcome.ok and outcome.exit_code == 1
    assert "sudo asked for a password" in outcome.error


def test_sudo_script_timeout_kills_the_other_users_process(
    session: SshSession, tmp_path: Path, pw_target: PlanTarget, sudo_target_user: str
) -> None:
    nonce = f"3603.{uuid.uuid4().int % 10**9}"
    s = step(type="ssh.exec", script=f"id -un\nsleep {nonce}\n", sudoUser=sudo_target_user)
    log = LogLines()
    cancel = threading.Event()
    ctx = make_ctx(tmp_path, pw_target, cancel=cancel, log=log)
    result: list[StepOutcome] = []
    worker = threading.Thread(target=lambda: result.append(session.run(s, ctx)))
    worker.start()
    assert log.wait_for(f"stdout: {sudo_target_user}")
    wait_until(lambda: remote_processes(nonce), timeout=10, what="the remote sleep to start")
    cancel.set()
    worker.join(10)
    assert result[0].cancelled, result[0].error
    assert remote_processes(nonce) == []


def test_background_process_holding_output_does_not_hang(
    session: SshSession, tmp_path: Path, pw_target: PlanTarget
) -> None:
    nonce = f"30.{uuid.uuid4().int % 10**9}"
    log = LogLines()
    try:
        started = time.monotonic()
        outcome = run(
            session, tmp_path, pw_target, step(type="ssh.exec", command=f"sleep {nonce} & echo hi"), log=log
        )
        assert outcome.ok and outcome.stdout == "hi\n"
        assert time.monotonic() - started < 4
        assert any("background processes kept its output open" in line for line in log)
    finally:
        subprocess.run(["pkill", "-f", nonce], check=False)
