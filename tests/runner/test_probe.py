"""Probes against real servers: sshd on loopback (facts), an HTTP server, closed ports, the WinRM stub."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from opsconductor.plan import PlanCredential, PlanTarget
from opsconductor.probemodels import PROBE_REQUEST_ENV, ProbeReport, ProbeRequest
from opsconductor.runner import probe as probe_module
from opsconductor.runner.probe import parse_ssh_facts, probe
from opsconductor.runner.secrets import FileSecretStore
from tests.e2e.servers import recording_server
from tests.fixtures.sshd import ClientKeys, SshServer, TestUser
from tests.runner.servers import make_pki, serve


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ssh_target(server: SshServer, keys: ClientKeys, user: TestUser, **extra: object) -> PlanTarget:
    key = keys.ed25519
    credential = PlanCredential(
        name="ops", type="SSHKey", username=user.name, files={"privateKey": str(key.path)}
    )
    fields: dict[str, object] = {
        "name": "web-1",
        "address": server.address,
        "port": server.port,
        "protocol": "ssh",
        "connect_timeout_seconds": 5,
        "credential": credential,
        "host_keys": server.host_key_lines,
    }
    fields.update(extra)
    return PlanTarget.model_validate(fields)


def test_parse_ssh_facts() -> None:
    output = (
        "@@hostname\nweb01\n@@uname\nLinux 6.1.0-18-amd64 x86_64\n@@os-release\n"
        'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nNAME="Debian GNU/Linux"\nVERSION_ID="12"\n'
        "@@uptime\n12345.67 23456.78\n@@end\n"
    )
    assert parse_ssh_facts(output) == {
        "hostname": "web01",
        "os_name": "Linux",
        "kernel": "6.1.0-18-amd64",
        "architecture": "x86_64",
        "distribution": "Debian GNU/Linux 12 (bookworm)",
        "os_version": "12",
        "uptime_seconds": 12345,
    }
    assert parse_ssh_facts("@@hostname\n@@uname\n@@end\n") == {}


def test_ssh_probe_logs_in_and_collects_facts(
    sshd: SshServer, ssh_keys: ClientKeys, ssh_test_user: TestUser
) -> None:
    report = probe(ProbeRequest(target=ssh_target(sshd, ssh_keys, ssh_test_user)), FileSecretStore())
    assert report.reachable, report.message
    assert report.reason == "Connected"
    assert report.latency_milliseconds is not None and report.latency_milliseconds >= 0
    assert report.facts["hostname"] == socket.gethostname()
    assert report.facts["os_name"] == "Linux"
    assert report.facts["kernel"] == Path("/proc/sys/kernel/osrelease").read_text().strip()
    assert isinstance(report.facts["uptime_seconds"], int) and report.facts["uptime_seconds"] > 0
    if Path("/etc/os-release").exists():
        assert report.facts.get("distribution")
    assert f"logged in as {ssh_test_user.name}" in report.message

    without_facts = probe(
        ProbeRequest(target=ssh_target(sshd, ssh_keys, ssh_test_user), collect_facts=False), FileSecretStore()
    )
    assert without_facts.reachable and without_facts.facts == {}


def test_ssh_probe_failures_have_reasons(
    sshd: SshServer, ssh_keys: ClientKeys, ssh_test_user: TestUser
) -> None:
    other_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
    wrong = probe(
        ProbeRequest(target=ssh_target(sshd, ssh_keys, ssh_test_user, host_keys=[other_key])),
        FileSecretStore(),
    )
    assert (wrong.reachable, wrong.reason) == (False, "HostKeyVerificationFailed")
    closed = probe(
        ProbeRequest(target=ssh_target(sshd, ssh_keys, ssh_test_user, port=closed_port())), FileSecretStore()
    )
    assert (closed.reachable, closed.reason) == (False, "ConnectionRefused")
    assert "127.0.0.1" in closed.message or sshd.address in closed.message


def test_http_probe_any_answer_is_reachable() -> None:
    with recording_server(status=401) as server:
        port = int(server.url.rsplit(":", 1)[1])
        target = PlanTarget(
            name="api", address="127.0.0.1", port=port, protocol="http", scheme="http", base_path="/health"
        )
        report = probe(ProbeRequest(target=target), FileSecretStore())
        assert report.reachable, report.message
        assert report.message == "GET /health: HTTP 401 Unauthorized"
        assert server.requests[0][:2] == ("GET", "/health")
    closed = PlanTarget(name="api", address="127.0.0.1", port=closed_port(), protocol="http", scheme="http")
    failed = probe(ProbeRequest(target=closed), FileSecretStore())
    assert (failed.reachable, failed.reason) == (False, "ConnectionRefused")


def test_unsupported_protocols_report_a_clear_reason() -> None:
    snmp = PlanTarget(name="sw", address="127.0.0.1", port=161, protocol="snmp")
    report = probe(ProbeRequest(target=snmp), FileSecretStore())
    assert (report.reachable, report.reason) == (False, "ProbeNotSupported")
    assert "snmp" in report.message


def test_main_writes_the_report_to_the_termination_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    termination = tmp_path / "termination-log"
    target = PlanTarget(name="api", address="127.0.0.1", port=closed_port(), protocol="http", scheme="http")
    monkeypatch.setenv(PROBE_REQUEST_ENV, ProbeRequest(target=target).model_dump_json())
    monkeypatch.setenv("OPSCONDUCTOR_TERMINATION_LOG", str(termination))
    assert probe_module.main() == 0
    report = ProbeReport.model_validate_json(termination.read_text())
    assert report.reason == "ConnectionRefused"
    monkeypatch.setenv(PROBE_REQUEST_ENV, "{not json")
    assert probe_module.main() == 0
    assert json.loads(termination.read_text())["reason"] == "ProbeFailed"


def test_report_fits_a_termination_message() -> None:
    report = ProbeReport(reachable=False, reason="ConnectionFailed", message="x" * 10000)
    assert len(report.to_json().encode()) <= 4096


def test_https_probe_verifies_the_server_with_the_targets_ca_bundle(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    with serve({"/": lambda request: (204, {}, b"")}, tls=pki.server_context()) as server:

        def target(**extra: object) -> PlanTarget:
            fields: dict[str, object] = {
                "name": "api",
                "address": "127.0.0.1",
                "port": server.port,
                "protocol": "http",
                "scheme": "https",
            }
            return PlanTarget.model_validate({**fields, **extra})

        trusted = probe(ProbeRequest(target=target(ca_bundle_file=str(pki.ca))), FileSecretStore())
        assert trusted.reachable, trusted.message
        assert trusted.message == "GET /: HTTP 204 No Content"
        untrusted = probe(ProbeRequest(target=target(ca_bundle_file=str(pki.other_ca))), FileSecretStore())
        assert (untrusted.reachable, untrusted.reason) == (False, "TLSError")
        assert "caBundleSecretRef" in untrusted.message
        insecure = probe(ProbeRequest(target=target(insecure_skip_tls_verify=True)), FileSecretStore())
        assert insecure.reachable
        missing = probe(
            ProbeRequest(target=target(ca_bundle_file=str(tmp_path / "nope.pem"))), FileSecretStore()
        )
        assert (missing.reachable, missing.reason) == (False, "TLSError")
