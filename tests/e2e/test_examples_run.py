"""Every example OpsJob runs to success, unchanged, against local stand-ins for its hosts."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from opsconductor.localcluster.examplehosts import EXAMPLES, ExampleHosts
from tests.e2e.conftest import wait_phase
from tests.kube import Kubectl, wait_until
from tests.winrm.examples import start_windows_hosts
from tests.winrm.fixtures import WinrmTls
from tests.winrm.server import WinrmServer

EXAMPLE_JOBS = sorted((EXAMPLES / "opsjobs").glob("*.yaml"))


@pytest.fixture(scope="module")
def windows_hosts(example_hosts: ExampleHosts, winrm_tls: WinrmTls) -> Iterator[dict[str, WinrmServer]]:
    """WinRM test servers for the Windows example Targets (registered in ``example_hosts``)."""
    servers = start_windows_hosts(example_hosts, winrm_tls)
    try:
        yield servers
    finally:
        for server in servers.values():
            server.stop()


def test_every_example_job_is_covered() -> None:
    assert {p.stem for p in EXAMPLE_JOBS} >= {
        "linux-system-info",
        "service-restart",
        "sftp-backup",
        "http-health-check",
        "fanout-web-group",
        "windows-service-restart",
        "windows-system-info",
        "windows-file-deploy",
        "mixed-fleet-inventory",
    }


@pytest.mark.parametrize("path", EXAMPLE_JOBS, ids=lambda p: p.stem)
def test_example_job_succeeds(
    path: Path, k: Kubectl, example_hosts: ExampleHosts, windows_hosts: dict[str, WinrmServer]
) -> None:
    calls_before = len(example_hosts.systemctl_calls())
    backup = Path("/tmp/backups/web01-config.tgz")
    assert not backup.exists() or path.stem != "sftp-backup"  # ExampleHosts starts clean
    k.apply(example_hosts.manifests())
    k.run("apply", "-f", str(path))
    job = next(d for d in yaml.safe_load_all(path.read_text()) if d and d["kind"] == "OpsJob")
    name = job["metadata"]["name"]
    done = wait_phase(k, name, timeout=120)
    status = done["status"]
    assert status["phase"] == "Succeeded", json.dumps(status, indent=1)[:4000]
    steps = {s["name"]: s for s in status["steps"]}
    outputs = {(s, t["target"]): t["stdout"] for s, step in steps.items() for t in step["targets"]}
    if path.stem == "linux-system-info":
        assert "Linux" in outputs[("system-info", "web01")]
    elif path.stem == "fanout-web-group":
        assert {t for _, t in outputs} == {"web01", "web02"}
        assert outputs[("root-disk-usage", "web02")].strip().endswith("%")
    elif path.stem == "sftp-backup":
        assert backup.exists() and oct(backup.stat().st_mode & 0o777) == "0o600"
        assert backup.read_bytes()[:2] == b"\x1f\x8b"  # the gzip archive made on web01
    elif path.stem == "service-restart":
        assert example_hosts.systemctl_calls()[calls_before:] == ["restart nginx", "is-active nginx"]
    elif path.stem == "http-health-check":
        assert steps["healthz"]["targets"][0]["exitCode"] == 200
    elif path.stem == "windows-service-restart":
        win02 = windows_hosts["win02"]
        assert outputs[("restart", "win02")].strip() == "Running"
        assert win02.host.service_calls[-1] == "Restart-Service W3SVC"
        assert all(r.encrypted for r in win02.requests)
    elif path.stem == "windows-system-info":
        assert {t for _, t in outputs} == {"win01", "win02"}
        assert "WinRM test server" in outputs[("system-info", "win01")]
        assert windows_hosts["win01"].requests[-1].tls
    elif path.stem == "windows-file-deploy":
        win02 = windows_hosts["win02"]
        page = win02.host.paths.local("C:\\inetpub\\wwwroot\\opsconductor\\index.html")
        assert page.read_text() == "<h1>Hello from OpsConductor</h1>\n"
        assert "Hello from OpsConductor" in outputs[("verify", "win02")]
    elif path.stem == "mixed-fleet-inventory":
        phases = {(s, t["target"]): t["phase"] for s, step in steps.items() for t in step["targets"]}
        assert phases[("linux-os", "web01")] == phases[("windows-os", "win01")] == "Succeeded"
        assert phases[("linux-os", "win02")] == phases[("windows-os", "web02")] == "Skipped"
        assert "Linux" in outputs[("linux-os", "web02")]
        assert "WinRM test server" in outputs[("windows-os", "win02")]


def test_example_targets_are_probed_and_credentials_validated(
    k: Kubectl, example_hosts: ExampleHosts
) -> None:
    """web01 declares ``probe:`` (its facts fill in); the linux-admin Credential validates its key."""
    k.apply(example_hosts.manifests())

    def probed() -> dict[str, Any] | None:
        status = k.get("target", "web01").get("status") or {}
        return status if status.get("lastProbe") and not status.get("activeProbe") else None

    status = wait_until(probed, timeout=90, what="the probe of web01")
    assert status["lastProbe"]["reachable"] is True, json.dumps(status, indent=1)
    assert status["facts"]["osName"] == "Linux"
    assert "lastProbe" not in (k.get("target", "web02").get("status") or {})  # no probe: settings
    credential = wait_until(
        lambda: (c := k.get("credential", "linux-admin")).get("status", {}).get("publicKeyFingerprint") and c,
        what="the linux-admin Credential to be validated",
    )
    ready = next(c for c in credential["status"]["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("True", "Valid")
