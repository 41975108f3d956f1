"""WinRM protocol module: pure helpers, and both step types through real pywinrm against the test server."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import TypeAdapter

from opsconductor.api.opsjob import Step
from opsconductor.plan import JobRef, PlanCredential, PlanTarget, RunPlan
from opsconductor.runner.protocols.base import StepContext
from opsconductor.runner.protocols.winrm import (
    WinrmSession,
    collect_facts,
    decode_clixml,
    encode_powershell,
    endpoint_url,
    receive_file_script,
    windows_join,
)
from opsconductor.runner.secrets import FileSecretStore
from tests.kube import wait_until
from tests.runner.test_ssh import LogLines
from tests.winrm.fixtures import UPN_USER, USER, WinrmServerFactory, WinrmTls, winrm_password
from tests.winrm.powershell import WindowsHost, WindowsPaths, clixml
from tests.winrm.server import WinrmServer

STEP = TypeAdapter(Step)
CANARY = "canary-W1nRm-7hQ"


def step(**fields: Any) -> Any:
    fields.setdefault("name", "s")
    fields.setdefault("type", "winrm.exec")
    return STEP.validate_python(fields)


def credential(tmp_path: Path, user: str = USER, password: str | None = None) -> PlanCredential:
    path = tmp_path / f"password-{abs(hash((user, password)))}"
    path.write_text((password if password is not None else winrm_password()) + "\n")
    return PlanCredential(name="win", type="BasicAuth", username=user, files={"password": str(path)})


def target_for(server: WinrmServer, cred: PlanCredential, **fields: Any) -> PlanTarget:
    values: dict[str, Any] = {
        "name": "win-1",
        "address": server.address,
        "port": server.port,
        "protocol": "winrm",
        "scheme": server.scheme,
        "path": "/wsman",
        "transport": "ntlm",
        "message_encryption": "auto",
        "operation_timeout_seconds": 20,
        "connect_timeout_seconds": 5,
        "credential": cred,
    }
    values.update(fields)
    return PlanTarget(**values)


def make_ctx(
    tmp_path: Path,
    target: PlanTarget,
    *,
    timeout: float | None = None,
    cancel: threading.Event | None = None,
    secrets: FileSecretStore | None = None,
    plan: RunPlan | None = None,
) -> StepContext:
    workspace = tmp_path / "workspace"
    workspace.mkdir(exist_ok=True)
    return StepContext(
        plan=plan or RunPlan(job=JobRef(namespace="default", name="job", uid="u-1"), steps=[]),
        target=target,
        secrets=secrets if secrets is not None else FileSecretStore(),
        workspace=workspace,
        cancel=cancel or threading.Event(),
        deadline=None if timeout is None else time.monotonic() + timeout,
        log=LogLines(),
    )


@pytest.fixture
def session() -> Any:
    s = WinrmSession()
    yield s
    s.close()


@pytest.fixture(scope="module")
def ntlm_server(winrm_server: WinrmServerFactory) -> WinrmServer:
    return winrm_server()


# --- pure helpers -------------------------------------------------------------------------------------------
def test_clixml_error_streams_decode_to_console_text() -> None:
    raw = clixml(
        [("Error", "first line\r\nsecond <line>\r\n"), ("warning", "careful"), ("verbose", "detail")]
    )
    assert decode_clixml(raw) == "first line\nsecond <line>\nWARNING: careful\nVERBOSE: detail\n"
    progress = (
        '#< CLIXML\r\n<Objs Version="1.1.0.1" xmlns="http://schemas.microsoft.com/powershell/2004/04">'
        '<Obj S="progress" RefId="0"><TN RefId="0"><T>System.Management.Automation.PSCustomObject</T></TN>'
        '<MS><I64 N="SourceId">1</I64></MS></Obj><S S="Error">oops_x000D__x000A_</S></Objs>'
    )
    assert decode_clixml(progress) == "oops\n"
    assert decode_clixml("plain text\n") == "plain text\n"
    assert decode_clixml("#< CLIXML\r\n<Objs><S S='Error'>broken").startswith("#< CLIXML")


def test_powershell_encoding_paths_and_endpoints() -> None:
    assert encode_powershell("Write-Output 'é'") == "VwByAGkAdABlAC0ATwB1AHQAcAB1AHQAIAAnAOkAJwA="
    assert windows_join("C:\\deploy\\", "conf/app.ini") == "C:\\deploy\\conf\\app.ini"
    target = PlanTarget(
        name="w", address="fe80::1", port=5986, protocol="winrm", scheme="https", path="/wsman"
    )
    assert endpoint_url(target) == "https://[fe80::1]:5986/wsman"
    script = receive_file_script("C:\\it's\\f.txt", "ab" * 32)
    assert "$path = 'C:\\it''s\\f.txt'" in script and "SHA256" in script


def test_the_powershell_mapping_fails_unknown_statements_like_powershell(tmp_path: Path) -> None:
    from tests.winrm.powershell import PowerShellMapping, ScriptIO

    out: list[bytes] = []
    io = ScriptIO(write_stdout=out.append, stdin_lines=lambda: iter(()), stopped=threading.Event())
    mapping = PowerShellMapping(WindowsHost(WindowsPaths(tmp_path)), {}, "C:\\", io)
    assert mapping.run("Write-Output 'a'; Get-Frobnicator -All") == 1
    assert b"a\r\n" in out
    assert "'Get-Frobnicator' is not recognized" in mapping.records[0][1]


# --- winrm.exec ---------------------------------------------------------------------------------------------
def test_powershell_over_ntlm_with_message_encryption(
    ntlm_server: WinrmServer, session: WinrmSession, tmp_path: Path
) -> None:
    target = target_for(ntlm_server, credential(tmp_path))
    before = len(ntlm_server.requests)
    outcome = session.run(
        step(command="Restart-Service -Name 'W3SVC'; (Get-Service -Name 'W3SVC').Status; hostname"),
        make_ctx(tmp_path, target),
    )
    assert outcome.ok, outcome.error
    assert outcome.exit_code == 0
    lines = outcome.stdout.splitlines()
    assert lines[0] == "Running" and lines[1] == ntlm_server.host.hostname
    assert ntlm_server.host.service_calls[-1] == "Restart-Service W3SVC"
    requests = ntlm_server.requests[before:]
    assert {r.action for r in requests} >= {"Create", "Command", "Receive", "Signal"}
    assert all(r.encrypted for r in requests), "every message is NTLM-encrypted over http"
    assert all(r.user == USER for r in requests)
    command = ntlm_server.commands[-1]
    assert command.kind == "powershell" and "-EncodedCommand" in command.command_line
    assert "Restart-Service -Name 'W3SVC'" in command.script


def test_powershell_errors_arrive_decoded_with_the_exit_code(
    ntlm_server: WinrmServer, session: WinrmSession, tmp_path: Path
) -> None:
    target = target_for(ntlm_server, credential(tmp_path))
    outcome = session.run(
        step(script="Write-Output 'before'\nWrite-Error 'disk D: is full'\nexit 3"),
        make_ctx(tmp_path, target),
    )
    assert not outcome.ok and outcome.exit_code == 3
    assert outcome.stdout.strip() == "before"
    assert outcome.stderr.startswith("disk D: is full\n") and "CLIXML" not in outcome.stderr
    assert "exit code 3" in outcome.error and "disk D: is full" in outcome.error
    unknown = session.run(step(command="Get-Frobnicator"), make_ctx(tmp_path, target))
    assert unknown.exit_code == 1 and "'Get-Frobnicator' is not recognized" in unknown.stderr
    accepted = session.run(step(command="exit 3", expectExitCodes=[0, 3]), make_ctx(tmp_path, target))
    assert accepted.ok and accepted.exit_code == 3


def test_cmd_commands_with_env_and_working_dir_get_their_own_shell(
    ntlm_server: WinrmServer, session: WinrmSession, tmp_path: Path
) -> None:
    target = target_for(ntlm_server, credential(tmp_path))
    (ntlm_server.host.paths.root / "C" / "deploy").mkdir(parents=True, exist_ok=True)
    creates = ntlm_server.actions().count("Create")
    outcome = session.run(
        step(
            shell="cmd",
            command='echo "release=$RELEASE"; pwd; echo oops >&2; exit 7',
            env={"RELEASE": "2026.11"},
            workingDir="C:\\deploy",
            expectExitCodes=[7],
        ),
        make_ctx(tmp_path, target),
    )
    assert outcome.ok, outcome.error
    assert outcome.stdout.splitlines() == [
        "release=2026.11",
        str(ntlm_server.host.paths.root / "C" / "deploy"),
    ]
    assert outcome.stderr == "oops\n"
    assert ntlm_server.actions().count("Create") == creates + 1
    assert ntlm_server.actions()[-1] == "Delete", "the step's own shell is deleted after it"


def test_steps_reuse_one_connection_and_shell(winrm_server: WinrmServerFactory, tmp_path: Path) -> None:
    server = winrm_server()
    target = target_for(server, credential(tmp_path))
    session = WinrmSession()
    try:
        for n in range(3):
            assert (
                session.run(step(command=f"Write-Output {n}"), make_ctx(tmp_path, target)).stdout
                == f"{n}\r\n"
            )
        assert server.actions().count("Create") == 1
        # The host forgets the shell (service restart): the next step opens a new one and succeeds.
        server.shells.clear()
        ctx = make_ctx(tmp_path, target)
        assert session.run(step(command="Write-Output again"), ctx).ok
        assert any("no longer knew the shell" in line for line in ctx.log)
    finally:
        session.close()
    assert server.actions()[-1] == "Delete"
    assert not server.shells


def test_long_output_streams_over_several_receives(
    ntlm_server: WinrmServer, session: WinrmSession, tmp_path: Path
) -> None:
    target = target_for(ntlm_server, credential(tmp_path), operation_timeout_seconds=1)
    ctx = make_ctx(tmp_path, target)
    before = ntlm_server.actions().count("Receive")
    outcome = session.run(
        step(
            shell="cmd", command="head -c 400000 /dev/zero | tr '\\0' x; echo; echo tick; sleep 2; echo tock"
        ),
        ctx,
    )
    assert outcome.ok, outcome.error
    assert outcome.outputs["stdoutBytes"] == str(400000 + len("\ntick\ntock\n"))
    assert outcome.stdout.rstrip().endswith("tick\ntock") and "bytes omitted" in outcome.stdout
    # 400 kB leave in several Receives, then 1 s OperationTimeouts loop while the command sleeps.
    assert ntlm_server.actions().count("Receive") - before >= 5
    assert any(line.endswith("stdout: tock") for line in ctx.log)


def test_a_timeout_signals_the_remote_command(
    ntlm_server: WinrmServer, session: WinrmSession, tmp_path: Path
) -> None:
    target = target_for(ntlm_server, credential(tmp_path))
    outcome = session.run(
        step(shell="cmd", command="echo started; sleep 60", timeoutSeconds=2),
        make_ctx(tmp_path, target, timeout=1.5),
    )
    assert outcome.timed_out and not outcome.ok
    assert "timed out after 2s" in outcome.error and "stopped" in outcome.error
    assert outcome.stdout == "started\n"
    command = ntlm_server.commands[-1]
    assert command.signals[:2] == ["ctrl_c", "terminate"]
    assert command.process is not None
    wait_until(lambda: command.process.poll() is not None, timeout=10, what="the remote sleep to end")
    # PowerShell too: Start-Sleep is interrupted by the Signal.
    ps = session.run(step(command="Start-Sleep -Seconds 60"), make_ctx(tmp_path, target, timeout=1))
    assert ps.timed_out and ntlm_server.commands[-1].signals[0] == "ctrl_c"
    # The connection stays usable.
    assert session.run(step(command="Write-Output fine"), make_ctx(tmp_path, target)).ok


def test_cancellation_stops_the_remote_command(
    ntlm_server: WinrmServer, session: WinrmSession, tmp_path: Path
) -> None:
    target = target_for(ntlm_server, credential(tmp_path))
    cancel = threading.Event()
    ctx = make_ctx(tmp_path, target, cancel=cancel)
    result: list[Any] = []
    worker = threading.Thread(
        target=lambda: result.append(session.run(step(shell="cmd", command="echo up; sleep 60"), ctx))
    )
    worker.start()
    assert ctx.log.wait_for("stdout: up")  # type: ignore[attr-defined]
    cancel.set()
    worker.join(30)
    assert result and result[0].cancelled and not result[0].ok
    assert "terminate" in ntlm_server.commands[-1].signals


# --- logins, transports, TLS --------------------------------------------------------------------------------
def test_bad_credentials_fail_clearly_without_the_password(
    ntlm_server: WinrmServer, session: WinrmSession, tmp_path: Path
) -> None:
    secrets = FileSecretStore()
    target = target_for(ntlm_server, credential(tmp_path, password=CANARY))
    outcome = session.run(step(command="hostname"), make_ctx(tmp_path, target, secrets=secrets))
    assert not outcome.ok
    assert "rejected the credentials" in outcome.error and "CORP\\opsc-winrm" in outcome.error
    assert "401" in outcome.error and CANARY not in outcome.error
    unknown = target_for(ntlm_server, credential(tmp_path, user="CORP\\nobody"))
    assert (
        "rejected the credentials" in session.run(step(command="hostname"), make_ctx(tmp_path, unknown)).error
    )


def test_a_closed_port_fails_with_connection_refused(session: WinrmSession, tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    target = PlanTarget(
        name="gone",
        address="127.0.0.1",
        port=port,
        protocol="winrm",
        scheme="http",
        credential=credential(tmp_path),
    )
    outcome = session.run(step(command="hostname"), make_ctx(tmp_path, target))
    assert not outcome.ok and "connection refused" in outcome.error and f"127.0.0.1:{port}" in outcome.error


def test_wrong_scheme_or_path_is_explained(
    winrm_server: WinrmServerFactory, ntlm_server: WinrmServer, session: WinrmSession, tmp_path: Path
) -> None:
    https = winrm_server(https=True)
    plain_to_tls = target_for(https, credential(tmp_path), scheme="http", name="a")
    error = session.run(step(command="hostname"), make_ctx(tmp_path, plain_to_tls)).error
    assert "closed the connection" in error and "scheme" in error
    tls_to_plain = target_for(ntlm_server, credential(tmp_path), scheme="https", name="b")
    error = session.run(step(command="hostname"), make_ctx(tmp_path, tls_to_plain)).error
    assert "does not speak TLS" in error
    wrong_path = target_for(ntlm_server, credential(tmp_path), path="/wsman-nope", name="c")
    error = session.run(step(command="hostname"), make_ctx(tmp_path, wrong_path)).error
    assert "HTTP 404" in error and "winrm.path" in error


def test_an_http_server_that_is_not_winrm_is_explained(session: WinrmSession, tmp_path: Path) -> None:
    from tests.e2e.servers import recording_server

    with recording_server() as other:
        port = int(other.url.rsplit(":", 1)[1])
        for transport in ("ntlm", "basic"):
            target = PlanTarget(
                name=f"web-{transport}",
                address="127.0.0.1",
                port=port,
                protocol="winrm",
                scheme="http",
                transport=transport,
                message_encryption="auto",
                credential=credential(tmp_path),
            )
            error = session.run(step(command="hostname"), make_ctx(tmp_path, target)).error
            assert "not a WS-Management reply" in error, error


def test_user_principal_names_log_in(ntlm_server: WinrmServer, session: WinrmSession, tmp_path: Path) -> None:
    target = target_for(ntlm_server, credential(tmp_path, user=UPN_USER))
    outcome = session.run(step(command="Write-Output $env:USERNAME"), make_ctx(tmp_path, target))
    assert outcome.ok, outcome.error
    assert ntlm_server.requests[-1].user.lower() == UPN_USER


def test_plain_messages_are_refused_over_http_like_windows_does(
    ntlm_server: WinrmServer, session: WinrmSession, tmp_path: Path
) -> None:
    target = target_for(ntlm_server, credential(tmp_path), message_encryption="never")
    outcome = session.run(step(command="hostname"), make_ctx(tmp_path, target))
    assert not outcome.ok and "Unencrypted traffic is currently disabled" in outcome.error


def test_https_with_a_ca_bundle_and_ntlm_channel_binding(
    winrm_server: WinrmServerFactory, winrm_tls: WinrmTls, session: WinrmSession, tmp_path: Path
) -> None:
    server = winrm_server(https=True)
    trusted = target_for(server, credential(tmp_path), ca_bundle_file=str(winrm_tls.ca_pem))
    outcome = session.run(step(command="Write-Output tls"), make_ctx(tmp_path, trusted))
    assert outcome.ok, outcome.error
    assert server.requests[-1].tls and not server.requests[-1].encrypted  # TLS protects it, as on Windows

    untrusted = target_for(server, credential(tmp_path), name="win-2")
    failed = session.run(step(command="hostname"), make_ctx(tmp_path, untrusted))
    assert not failed.ok and "TLS certificate verification failed" in failed.error
    assert "caBundleSecretRef" in failed.error

    skipped = target_for(server, credential(tmp_path), name="win-3", insecure_skip_tls_verify=True)
    assert session.run(step(command="Write-Output ok"), make_ctx(tmp_path, skipped)).ok


def test_basic_auth_over_https_and_over_http_when_allowed(
    winrm_server: WinrmServerFactory, winrm_tls: WinrmTls, session: WinrmSession, tmp_path: Path
) -> None:
    https = winrm_server(https=True, basic=True, ntlm=False)
    target = target_for(https, credential(tmp_path), transport="basic", ca_bundle_file=str(winrm_tls.ca_pem))
    assert session.run(step(command="Write-Output basic"), make_ctx(tmp_path, target)).ok
    plain = winrm_server(basic=True, ntlm=False, allow_unencrypted=True)
    target = target_for(plain, credential(tmp_path), transport="basic", name="win-plain")
    outcome = session.run(step(command="Write-Output basic"), make_ctx(tmp_path, target))
    assert outcome.ok, outcome.error
    bad = target_for(
        plain, credential(tmp_path, password="wrong-password"), transport="basic", name="win-bad"
    )
    assert "rejected the credentials" in session.run(step(command="hostname"), make_ctx(tmp_path, bad)).error


def test_kerberos_without_its_library_says_what_is_missing(
    ntlm_server: WinrmServer, session: WinrmSession, tmp_path: Path
) -> None:
    import winrm.transport

    if winrm.transport.HAVE_KERBEROS:
        pytest.skip("pykerberos is installed here")
    target = target_for(ntlm_server, credential(tmp_path), transport="kerberos")
    outcome = session.run(step(command="hostname"), make_ctx(tmp_path, target))
    assert not outcome.ok and "pykerberos" in outcome.error and "docs/winrm.md" in outcome.error


# --- winrm.copy ---------------------------------------------------------------------------------------------
def test_copy_a_large_workspace_file_chunked_and_verified(
    ntlm_server: WinrmServer, session: WinrmSession, tmp_path: Path
) -> None:
    target = target_for(ntlm_server, credential(tmp_path))
    ctx = make_ctx(tmp_path, target)
    payload = os.urandom(3 * 1024 * 1024 + 17)
    (ctx.workspace / "bundle.zip").write_bytes(payload)
    sends = ntlm_server.actions().count("Send")
    outcome = session.run(
        step(
            type="winrm.copy", source={"workspace": "bundle.zip"}, destination="C:\\deploy\\new\\bundle.zip"
        ),
        ctx,
    )
    assert outcome.ok, outcome.error
    landed = ntlm_server.host.paths.local("C:\\deploy\\new\\bundle.zip")
    assert hashlib.sha256(landed.read_bytes()).digest() == hashlib.sha256(payload).digest()
    assert ntlm_server.actions().count("Send") - sends >= 60  # 48 KiB per Send
    assert outcome.outputs == {"files": "1", "bytes": str(len(payload))}
    assert not list(landed.parent.glob("*.opsc-partial"))


def test_copy_every_config_map_key_into_a_directory(
    ntlm_server: WinrmServer, session: WinrmSession, tmp_path: Path
) -> None:
    config = tmp_path / "configmaps" / "site"
    config.mkdir(parents=True)
    (config / "index.html").write_text("<h1>hello</h1>\n")
    (config / "web.config").write_text("<configuration/>\n")
    plan = RunPlan(
        job=JobRef(namespace="d", name="j", uid="u"), steps=[], config_map_dirs={"site": str(config)}
    )
    target = target_for(ntlm_server, credential(tmp_path))
    outcome = session.run(
        step(
            type="winrm.copy",
            source={"configMap": {"name": "site"}},
            destination="C:\\inetpub\\wwwroot",
            mode="0644",
        ),
        make_ctx(tmp_path, target, plan=plan),
    )
    assert outcome.ok, outcome.error
    root = ntlm_server.host.paths.local("C:\\inetpub\\wwwroot")
    assert (root / "index.html").read_text() == "<h1>hello</h1>\n"
    assert (root / "web.config").read_text() == "<configuration/>\n"
    assert "C:\\inetpub\\wwwroot\\index.html" in outcome.stdout


def test_a_corrupted_upload_is_caught_by_the_remote_checksum(
    winrm_server: WinrmServerFactory, session: WinrmSession, tmp_path: Path
) -> None:
    server = winrm_server()
    server.host.corrupt_uploads = True
    target = target_for(server, credential(tmp_path))
    outcome = session.run(
        step(type="winrm.copy", source={"inline": "important\n"}, destination="C:\\app\\settings.ini"),
        make_ctx(tmp_path, target),
    )
    assert not outcome.ok and "checksum mismatch" in outcome.error
    assert not server.host.paths.local("C:\\app\\settings.ini").exists()


def test_copying_a_secret_never_shows_its_value(
    ntlm_server: WinrmServer, session: WinrmSession, tmp_path: Path
) -> None:
    secret_dir = tmp_path / "secrets" / "app-key"
    secret_dir.mkdir(parents=True)
    (secret_dir / "key.txt").write_text(CANARY)
    plan = RunPlan(
        job=JobRef(namespace="d", name="j", uid="u"), steps=[], secret_dirs={"app-key": str(secret_dir)}
    )
    target = target_for(ntlm_server, credential(tmp_path))
    secrets = FileSecretStore()
    ctx = make_ctx(tmp_path, target, plan=plan, secrets=secrets)
    outcome = session.run(
        step(
            type="winrm.copy",
            source={"secret": {"name": "app-key"}, "key": "key.txt"},
            destination="C:\\keys\\k.txt",
        ),
        ctx,
    )
    assert outcome.ok, outcome.error
    assert ntlm_server.host.paths.local("C:\\keys\\k.txt").read_text() == CANARY
    shown = session.run(
        step(command="Get-Content -LiteralPath 'C:\\keys\\k.txt'"),
        make_ctx(tmp_path, target, secrets=secrets),
    )
    assert shown.ok and CANARY not in shown.stdout and "***" in shown.stdout
    assert CANARY not in "\n".join(ctx.log) + outcome.stdout


# --- facts --------------------------------------------------------------------------------------------------
def test_collect_facts(ntlm_server: WinrmServer, tmp_path: Path) -> None:
    target = target_for(ntlm_server, credential(tmp_path))
    facts = collect_facts(target, FileSecretStore(), timeout=10)
    assert facts["hostname"] == ntlm_server.host.hostname
    assert set(facts) == {
        "hostname",
        "os_name",
        "os_version",
        "kernel",
        "domain",
        "architecture",
        "uptime_seconds",
    }
    assert isinstance(facts["uptime_seconds"], int) and facts["uptime_seconds"] >= 0
    with pytest.raises(RuntimeError, match="rejected the credentials") as failure:
        collect_facts(
            target_for(ntlm_server, credential(tmp_path, password=CANARY)), FileSecretStore(), timeout=10
        )
    assert CANARY not in str(failure.value)


def test_probe_of_a_winrm_target_reports_facts_or_a_clear_reason(
    ntlm_server: WinrmServer, tmp_path: Path
) -> None:
    from opsconductor.probemodels import ProbeRequest
    from opsconductor.runner.probe import probe

    report = probe(ProbeRequest(target=target_for(ntlm_server, credential(tmp_path))), FileSecretStore())
    assert report.reachable, report.message
    assert report.facts["hostname"] == ntlm_server.host.hostname and report.facts["domain"]
    assert report.latency_milliseconds is not None
    refused = probe(
        ProbeRequest(target=target_for(ntlm_server, credential(tmp_path, password=CANARY))), FileSecretStore()
    )
    assert not refused.reachable and "rejected the credentials" in refused.message
    assert CANARY not in refused.message


# --- opsconductor run ---------------------------------------------------------------------------------------
def test_opsconductor_run_a_windows_job_from_manifest_files(ntlm_server: WinrmServer, tmp_path: Path) -> None:
    import io

    import yaml

    from opsconductor.localrun import run_local

    documents = [
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "win-login"},
            "stringData": {"username": USER, "password": winrm_password()},
        },
        {
            "apiVersion": "opsconductor.io/v1alpha1",
            "kind": "Credential",
            "metadata": {"name": "win-login"},
            "spec": {"type": "BasicAuth", "secretRef": {"name": "win-login"}},
        },
        {
            "apiVersion": "opsconductor.io/v1alpha1",
            "kind": "Target",
            "metadata": {"name": "win-local", "labels": {"os": "windows"}},
            "spec": {
                "address": ntlm_server.address,
                "port": ntlm_server.port,
                "protocol": "winrm",
                "credentialRef": {"name": "win-login"},
            },
        },
        {
            "apiVersion": "opsconductor.io/v1alpha1",
            "kind": "OpsJob",
            "metadata": {"name": "local-windows"},
            "spec": {
                "targetSelector": {"matchLabels": {"os": "windows"}},
                "steps": [
                    {
                        "name": "note",
                        "type": "winrm.copy",
                        "source": {"inline": "hi\n"},
                        "destination": "C:\\t\\n.txt",
                    },
                    {
                        "name": "read",
                        "type": "winrm.exec",
                        "command": "Get-Content -LiteralPath 'C:\\t\\n.txt'",
                    },
                ],
            },
        },
    ]
    manifest = tmp_path / "job.yaml"
    manifest.write_text(yaml.safe_dump_all(documents))
    out, err = io.StringIO(), io.StringIO()
    assert run_local([manifest], stdout=out, stderr=err) == 0, err.getvalue()
    assert "[read/win-local] stdout: hi\n" in out.getvalue()
    assert "copied C:\\t\\n.txt (3 bytes" in out.getvalue()
    assert winrm_password() not in out.getvalue() + err.getvalue()
