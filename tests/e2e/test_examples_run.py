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

EXAMPLE_JOBS = sorted((EXAMPLES / "opsjobs").glob("*.yaml"))


@pytest.fixture(scope="module")
def example_hosts() -> Iterator[ExampleHosts]:
    hosts = ExampleHosts()
    hosts.start()
    try:
        yield hosts
    finally:
        hosts.stop()


def test_every_example_job_is_covered() -> None:
    assert {p.stem for p in EXAMPLE_JOBS} >= {
        "linux-system-info",
        "service-restart",
        "sftp-backup",
        "http-health-check",
        "fanout-web-group",
    }


@pytest.mark.parametrize("path", EXAMPLE_JOBS, ids=lambda p: p.stem)
def test_example_job_succeeds(path: Path, k: Kubectl, example_hosts: ExampleHosts) -> None:
    calls_before = len(example_hosts.systemctl_calls())
    backup = Path("/tmp/backups/web01-config.tgz")
    assert not backup.exists() or path.stem != "sftp-backup"  # ExampleHosts starts clean
    k.apply(example_hosts.manifests())
    k.run("apply", "-f", str(path))
    name = yaml.safe_load(path.read_text())["metadata"]["name"]
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
