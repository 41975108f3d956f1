"""Credential validation through the operator: Ready follows the Secret; invalid ones fail OpsJobs fast."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

from opsconductor.clock import set_fake_time
from opsconductor.localcluster.controlplane import ControlPlane
from opsconductor.localcluster.operatorprocess import OperatorProcess
from tests.e2e.conftest import conditions, wait_phase
from tests.kube import Kubectl, wait_until

CANARY = "canary-Cred-w4Rt8zLq"
PASSPHRASE = "canary-pass-Hy62mQ"


def b64(data: str | bytes) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def ready(k: Kubectl, name: str) -> tuple[str, str] | None:
    status = k.get("credential", name).get("status") or {}
    found = next((c for c in status.get("conditions") or [] if c["type"] == "Ready"), None)
    return (found["status"], found["reason"]) if found else None


def wait_ready(k: Kubectl, name: str, expected: tuple[str, str]) -> dict[str, Any]:
    wait_until(lambda: ready(k, name) == expected, timeout=60, what=f"Credential {name} Ready={expected}")
    return k.get("credential", name)


def credential_events(k: Kubectl, name: str) -> list[tuple[str, str]]:
    items = json.loads(
        k.run(
            "get",
            "events",
            "--field-selector",
            f"involvedObject.name={name},involvedObject.kind=Credential",
            "-o",
            "json",
        ).stdout
    )
    return [(e["type"], e["reason"]) for e in items["items"]]


def ssh_secret(name: str, key_text: bytes, passphrase: str | None = None) -> str:
    extra = f"\n  passphrase: {b64(passphrase)}" if passphrase else ""
    return f"""apiVersion: v1
kind: Secret
metadata: {{name: {name}}}
data:
  username: {b64("ops")}
  ssh-privatekey: {b64(key_text)}
  note: {b64(CANARY)}{extra}
"""


def test_ready_follows_the_secret_being_created_broken_fixed_and_deleted(
    k: Kubectl, operator: OperatorProcess
) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    protected = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.BestAvailableEncryption(PASSPHRASE.encode()),
    )
    k.apply(
        """apiVersion: opsconductor.io/v1alpha1
kind: Credential
metadata: {name: deploy}
spec: {type: SSHKey, secretRef: {name: deploy-key}}
"""
    )
    wait_ready(k, "deploy", ("False", "SecretNotFound"))

    k.apply(ssh_secret("deploy-key", b"-----BEGIN OPENSSH PRIVATE KEY-----\nbroken\n"))
    broken = wait_ready(k, "deploy", ("False", "InvalidPrivateKey"))
    message = next(c["message"] for c in broken["status"]["conditions"] if c["type"] == "Ready")
    assert "deploy-key" in message and "'ssh-privatekey'" in message
    assert conditions(broken)["Stalled"] == ("True", "InvalidPrivateKey")

    k.apply(ssh_secret("deploy-key", protected, "not-the-passphrase"))
    wait_ready(k, "deploy", ("False", "WrongPassphrase"))

    k.apply(ssh_secret("deploy-key", protected, PASSPHRASE))
    fixed = wait_ready(k, "deploy", ("True", "Valid"))
    status = fixed["status"]
    assert status["keyType"] == "ssh-ed25519"
    assert status["publicKeyFingerprint"].startswith("SHA256:")
    assert status["secretResourceVersion"] == k.get("secret", "deploy-key")["metadata"]["resourceVersion"]
    assert status["observedGeneration"] == fixed["metadata"]["generation"]

    k.run("delete", "secret", "deploy-key")
    gone = wait_ready(k, "deploy", ("False", "SecretNotFound"))
    assert "publicKeyFingerprint" not in gone["status"]

    reasons = [reason for _, reason in credential_events(k, "deploy")]
    for reason in ("SecretNotFound", "InvalidPrivateKey", "WrongPassphrase", "Valid"):
        assert reason in reasons
    everything = {
        "credential": json.dumps(k.get("credential", "deploy")),
        "events": k.run("get", "events", "-o", "json").stdout,
        "operator log": operator.log.read_text(errors="replace"),
    }
    for where, text in everything.items():
        assert CANARY not in text, f"the canary leaked into the {where}"
        assert PASSPHRASE not in text, f"the passphrase leaked into the {where}"


def test_client_certificate_reports_expiry_and_expiring(k: Kubectl) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "api-client")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=10))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    k.apply(
        f"""apiVersion: v1
kind: Secret
metadata: {{name: api-client}}
type: kubernetes.io/tls
data:
  tls.crt: {b64(cert.public_bytes(serialization.Encoding.PEM))}
  tls.key: {b64(key_pem)}
---
apiVersion: opsconductor.io/v1alpha1
kind: Credential
metadata: {{name: api-client}}
spec: {{type: ClientCertificate, secretRef: {{name: api-client}}, expiryWarningDays: 30}}
"""
    )
    credential = wait_ready(k, "api-client", ("True", "Valid"))
    status = credential["status"]
    assert status["certificate"]["subject"] == "CN=api-client"
    assert status["expires"] == cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert conditions(credential)["Expiring"] == ("True", "CertificateExpiring")
    wait_until(
        lambda: ("Warning", "CertificateExpiring") in credential_events(k, "api-client"),
        what="the CertificateExpiring event",
    )
    # A shorter warning window clears Expiring (a spec change re-validates).
    k.run("patch", "credential", "api-client", "--type=merge", "-p", '{"spec":{"expiryWarningDays":5}}')
    wait_until(
        lambda: (
            conditions(k.get("credential", "api-client")).get("Expiring")
            == ("False", "CertificateNotExpiring")
        ),
        what="Expiring to clear",
    )
    assert key_pem.decode().splitlines()[1] not in json.dumps(k.get("credential", "api-client"))


def test_an_opsjob_using_an_invalid_credential_fails_fast(k: Kubectl) -> None:
    k.apply(
        ssh_secret("bad-key", b"not a key at all")
        + """---
apiVersion: opsconductor.io/v1alpha1
kind: Credential
metadata: {name: bad}
spec: {type: SSHKey, secretRef: {name: bad-key}}
---
apiVersion: opsconductor.io/v1alpha1
kind: Target
metadata: {name: db-01}
spec:
  address: 127.0.0.1
  protocol: ssh
  credentialRef: {name: bad}
  ssh: {insecureSkipHostKeyVerification: true}
"""
    )
    wait_ready(k, "bad", ("False", "InvalidPrivateKey"))
    k.apply(
        """apiVersion: opsconductor.io/v1alpha1
kind: OpsJob
metadata: {name: uses-bad}
spec:
  target: db-01
  steps: [{name: uname, type: ssh.exec, command: uname}]
"""
    )
    done = wait_phase(k, "uses-bad", timeout=30)
    assert done["status"]["phase"] == "Failed"
    assert conditions(done)["Stalled"] == ("True", "InvalidCredential")
    message = done["status"]["message"]
    assert "Credential bad" in message and "InvalidPrivateKey" in message and "bad-key" in message
    assert "runnerPod" not in done["status"]  # no runner was started


def test_expiry_follows_the_operators_clock(
    kubectl: Kubectl, namespace: str, control_plane: ControlPlane, tmp_path: Path
) -> None:
    """A second operator on a file clock: Expiring and CertificateExpired flip when time reaches them."""
    clock_file = tmp_path / "clock"
    start = datetime.now(UTC).replace(microsecond=0)
    set_fake_time(clock_file, start)
    clocked = OperatorProcess(
        control_plane,
        name="operator-clock",
        env={"OPSCONDUCTOR_NAMESPACES": namespace, "OPSCONDUCTOR_CLOCK_FILE": str(clock_file)},
    )
    clocked.start()
    try:
        k = kubectl.with_namespace(namespace)
        key = ed25519.Ed25519PrivateKey.generate()
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rotating")])
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start - timedelta(days=1))
            .not_valid_after(start + timedelta(days=40))
            .sign(key, None)
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        k.apply(
            f"""apiVersion: v1
kind: Secret
metadata: {{name: rotating}}
data:
  tls.crt: {b64(cert.public_bytes(serialization.Encoding.PEM))}
  tls.key: {b64(key_pem)}
---
apiVersion: opsconductor.io/v1alpha1
kind: Credential
metadata: {{name: rotating}}
spec: {{type: ClientCertificate, secretRef: {{name: rotating}}, expiryWarningDays: 30}}
"""
        )
        first = wait_ready(k, "rotating", ("True", "Valid"))
        assert conditions(first)["Expiring"] == ("False", "CertificateNotExpiring")

        set_fake_time(clock_file, start + timedelta(days=11))
        wait_until(
            lambda: (
                conditions(k.get("credential", "rotating")).get("Expiring") == ("True", "CertificateExpiring")
            ),
            timeout=30,
            what="Expiring when the warning window starts",
        )
        assert ready(k, "rotating") == ("True", "Valid")

        set_fake_time(clock_file, start + timedelta(days=40, seconds=1))
        expired = wait_ready(k, "rotating", ("False", "CertificateExpired"))
        assert conditions(expired)["Stalled"] == ("True", "CertificateExpired")
        reasons = [reason for _, reason in credential_events(k, "rotating")]
        assert reasons.count("CertificateExpiring") == 1 and reasons.count("CertificateExpired") == 1
    finally:
        clocked.stop()
