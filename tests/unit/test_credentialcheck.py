"""Credential validation with real keys and certificates: every reason, fingerprints, expiry, no leaks."""

from __future__ import annotations

import json
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from opsconductor.api.credential import CredentialSpec
from opsconductor.credentialcheck import (
    EXPIRING,
    check_credential,
    credential_problem,
    credential_status,
    next_expiry_check,
)

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
PASSPHRASE = b"canary-pass-Q8w2"


def private_key(kind: str) -> Any:
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if kind == "ecdsa":
        return ec.generate_private_key(ec.SECP256R1())
    return ed25519.Ed25519PrivateKey.generate()


def openssh(key: Any, passphrase: bytes | None = None) -> bytes:
    encryption = (
        serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
    )
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, encryption)


def pem(key: Any, passphrase: bytes | None = None) -> bytes:
    encryption = (
        serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
    )
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)


def ssh_spec(**extra: Any) -> CredentialSpec:
    return CredentialSpec.model_validate({"type": "SSHKey", "secretRef": {"name": "ops-ssh"}, **extra})


def check_ssh(data: dict[str, bytes], **extra: Any) -> Any:
    return check_credential("ops", ssh_spec(**extra), data, NOW)


@pytest.mark.parametrize("kind", ["rsa", "ecdsa", "ed25519"])
@pytest.mark.parametrize("encoding", ["openssh", "pem"])
@pytest.mark.parametrize("with_passphrase", [False, True])
def test_ssh_keys_of_every_algorithm_parse_with_and_without_passphrase(
    kind: str, encoding: str, with_passphrase: bool
) -> None:
    key = private_key(kind)
    passphrase = PASSPHRASE if with_passphrase else None
    text = (openssh if encoding == "openssh" else pem)(key, passphrase)
    data = {"username": b"ops", "ssh-privatekey": text}
    if with_passphrase:
        data["passphrase"] = PASSPHRASE + b"\n"  # written with echo: the newline is not part of it
    check = check_ssh(data)
    assert check.valid, check.message
    assert check.key_type == {"rsa": "rsa-2048", "ecdsa": "ecdsa-nistp256", "ed25519": "ssh-ed25519"}[kind]
    assert check.public_key_fingerprint is not None
    assert check.public_key_fingerprint.startswith("SHA256:")
    assert "=" not in check.public_key_fingerprint


def test_fingerprint_matches_ssh_keygen(tmp_path: Path) -> None:
    keygen = shutil.which("ssh-keygen")
    if keygen is None:
        pytest.skip("ssh-keygen not installed")
    key = private_key("ed25519")
    path = tmp_path / "id"
    path.write_bytes(openssh(key))
    path.chmod(0o600)
    printed = subprocess.run([keygen, "-lf", str(path)], capture_output=True, text=True, check=True).stdout
    check = check_ssh({"username": b"ops", "ssh-privatekey": openssh(key)})
    assert printed.split()[1] == check.public_key_fingerprint


@pytest.mark.parametrize("encoding", ["openssh", "pem"])
def test_wrong_and_missing_passphrase(encoding: str) -> None:
    text = (openssh if encoding == "openssh" else pem)(private_key("ed25519"), PASSPHRASE)
    wrong = check_ssh({"username": b"ops", "ssh-privatekey": text, "passphrase": b"not-it"})
    assert (wrong.valid, wrong.reason) == (False, "WrongPassphrase")
    missing = check_ssh({"username": b"ops", "ssh-privatekey": text})
    assert (missing.valid, missing.reason) == (False, "PassphraseRequired")
    assert "passphrase" in missing.message


def test_garbage_key_missing_key_empty_value_and_missing_secret() -> None:
    garbage = check_ssh({"username": b"ops", "ssh-privatekey": b"-----BEGIN nonsense canary-Zq7v-----"})
    assert (garbage.valid, garbage.reason) == (False, "InvalidPrivateKey")
    assert "canary" not in garbage.message
    missing = check_ssh({"username": b"ops"})
    assert missing.reason == "MissingKey"
    assert "'ssh-privatekey'" in missing.message and "ops-ssh" in missing.message
    renamed = check_ssh(
        {"username": b"ops", "id": openssh(private_key("ed25519"))}, keys={"privateKey": "id"}
    )
    assert renamed.valid
    inline_user = check_ssh({"ssh-privatekey": openssh(private_key("ed25519"))}, username="root")
    assert inline_user.valid
    empty = check_credential(
        "db",
        CredentialSpec.model_validate({"type": "BasicAuth", "secretRef": {"name": "db"}}),
        {"username": b"sa", "password": b"\n"},
        NOW,
    )
    assert empty.reason == "EmptyValue"
    no_secret = check_credential("ops", ssh_spec(), None, NOW)
    assert (no_secret.valid, no_secret.reason) == (False, "SecretNotFound")


def test_other_types_need_their_keys() -> None:
    def check(kind: str, data: dict[str, bytes], **extra: Any) -> Any:
        spec = CredentialSpec.model_validate({"type": kind, "secretRef": {"name": "s"}, **extra})
        return check_credential("c", spec, data, NOW)

    assert check("BearerToken", {"token": b"t0ken"}).valid
    assert check("BearerToken", {}).reason == "MissingKey"
    assert check("Kerberos", {"username": b"u"}, kerberos={"realm": "CORP"}).reason == "MissingKey"
    assert check("Kerberos", {"username": b"u", "keytab": b"\x05\x02"}, kerberos={"realm": "CORP"}).valid
    assert check("SlackWebhook", {"url": b"https://hooks.example.test/T0/B0/xyz"}).valid
    bad_url = check("Webhook", {"url": b"canary-not-a-url"})
    assert bad_url.reason == "InvalidURL" and "canary" not in bad_url.message
    assert check("SMTP", {}, smtp={"host": "mail", "sender": "a@b"}).valid


# --- certificates ------------------------------------------------------------------------------
def certificate(key: Any, not_before: datetime, not_after: datetime, cn: str = "client-01") -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    issuer = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test CA")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .sign(key, None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def cert_spec(days: int = 30) -> CredentialSpec:
    return CredentialSpec.model_validate(
        {"type": "ClientCertificate", "secretRef": {"name": "tls"}, "expiryWarningDays": days}
    )


@pytest.mark.parametrize("kind", ["rsa", "ecdsa", "ed25519"])
def test_valid_certificate_reports_not_after_subject_and_fingerprint(kind: str) -> None:
    key = private_key(kind)
    data = {
        "tls.crt": certificate(key, NOW - timedelta(days=1), NOW + timedelta(days=90)),
        "tls.key": pem(key),
    }
    check = check_credential("client", cert_spec(), data, NOW)
    assert check.valid, check.message
    assert check.certificate is not None
    assert check.certificate.not_after == NOW + timedelta(days=90)
    assert check.certificate.subject == "CN=client-01" and check.certificate.issuer == "CN=Test CA"
    assert check.expiring is False
    assert check.public_key_fingerprint is not None and check.public_key_fingerprint.startswith("SHA256:")


def test_expiring_expired_not_yet_valid_mismatch_and_garbage() -> None:
    key = private_key("ecdsa")
    soon = {
        "tls.crt": certificate(key, NOW - timedelta(days=300), NOW + timedelta(days=10)),
        "tls.key": pem(key),
    }
    expiring = check_credential("client", cert_spec(30), soon, NOW)
    assert expiring.valid and expiring.expiring is True
    assert "in 10 day(s)" in expiring.expiring_message
    assert check_credential("client", cert_spec(5), soon, NOW).expiring is False  # configurable window

    old = {
        "tls.crt": certificate(key, NOW - timedelta(days=300), NOW - timedelta(days=1)),
        "tls.key": pem(key),
    }
    expired = check_credential("client", cert_spec(), old, NOW)
    assert (expired.valid, expired.reason) == (False, "CertificateExpired")

    future = {
        "tls.crt": certificate(key, NOW + timedelta(days=1), NOW + timedelta(days=9)),
        "tls.key": pem(key),
    }
    assert check_credential("client", cert_spec(), future, NOW).reason == "CertificateNotYetValid"

    other = {"tls.crt": soon["tls.crt"], "tls.key": pem(private_key("ecdsa"))}
    assert check_credential("client", cert_spec(), other, NOW).reason == "KeyCertificateMismatch"

    garbage = {"tls.crt": b"canary-cert-Zq7", "tls.key": pem(key)}
    bad = check_credential("client", cert_spec(), garbage, NOW)
    assert bad.reason == "InvalidCertificate" and "canary" not in bad.message
    bad_ca = {**soon, "ca.crt": b"nonsense"}
    assert check_credential("client", cert_spec(), bad_ca, NOW).reason == "InvalidCertificate"


# --- status --------------------------------------------------------------------------------------
def manifest(status: dict[str, Any] | None = None, generation: int = 1) -> dict[str, Any]:
    return {"metadata": {"name": "client", "generation": generation}, "status": status or {}}


def test_status_conditions_events_only_on_change_and_no_secret_values() -> None:
    key = private_key("rsa")
    key_pem = pem(key)
    soon = {
        "tls.crt": certificate(key, NOW - timedelta(days=300), NOW + timedelta(days=10)),
        "tls.key": key_pem,
    }
    check = check_credential("client", cert_spec(), soon, NOW)
    first = credential_status(manifest(), check, "41", NOW)
    assert first.patch is not None
    status = first.patch["status"]
    kinds = {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}
    assert kinds["Ready"] == ("True", "Valid")
    assert kinds["Stalled"] == ("False", "Valid")
    assert kinds[EXPIRING] == ("True", "CertificateExpiring")
    assert status["expires"] == status["certificate"]["notAfter"] == "2026-12-03T12:00:00Z"
    assert status["secretResourceVersion"] == "41"
    assert [e[1] for e in first.events] == ["Valid", "CertificateExpiring"]
    text = json.dumps(first.patch)
    for line in key_pem.decode().splitlines()[1:-1]:
        assert line not in text

    # The same verdict again: nothing to patch, no Event.
    again = credential_status(manifest(status), check, "41", NOW)
    assert again.patch is None and again.events == []

    # The Secret breaks: Ready flips (one Event), Expiring goes away (no certificate any more).
    broken = check_credential("client", cert_spec(), {"tls.crt": b"x", "tls.key": key_pem}, NOW)
    flipped = credential_status(manifest(status), broken, "42", NOW)
    assert flipped.patch is not None
    flipped_status = flipped.patch["status"]
    kinds = {c["type"]: (c["status"], c["reason"]) for c in flipped_status["conditions"]}
    assert kinds["Ready"] == ("False", "InvalidCertificate")
    assert kinds["Stalled"] == ("True", "InvalidCertificate")
    assert EXPIRING not in kinds
    assert flipped_status["expires"] is None and flipped_status["certificate"] is None
    assert flipped.events == [("Warning", "InvalidCertificate", broken.message)]
    credential = manifest(flipped_status)
    assert credential_problem(credential) == ("InvalidCertificate", broken.message)
    # A verdict on an older generation does not count.
    assert credential_problem(manifest(flipped_status, generation=2)) is None


def test_missing_secret_is_not_a_fail_fast_problem_unless_asked() -> None:
    check = check_credential("ops", ssh_spec(), None, NOW)
    update = credential_status(manifest(), check, None, NOW)
    assert update.patch is not None
    credential = manifest(update.patch["status"])
    assert credential_problem(credential) is None
    assert credential_problem(credential, include_missing=True) == ("SecretNotFound", check.message)


def test_next_expiry_check_is_the_warning_start_then_not_after() -> None:
    key = private_key("ed25519")
    not_after = NOW + timedelta(days=40)
    data = {"tls.crt": certificate(key, NOW - timedelta(days=1), not_after), "tls.key": pem(key)}
    spec = cert_spec(30)
    credential = {"metadata": {"name": "c", "generation": 1}, "spec": {"expiryWarningDays": 30}, "status": {}}

    def validated(now: datetime) -> dict[str, Any]:
        update = credential_status(credential, check_credential("c", spec, data, now), "1", now)
        return {**credential, "status": {**credential["status"], **(update.patch or {}).get("status", {})}}

    credential = validated(NOW)
    assert next_expiry_check(credential) == not_after - timedelta(days=30)
    credential = validated(NOW + timedelta(days=11))
    assert next_expiry_check(credential) == not_after
    credential = validated(not_after)
    assert next_expiry_check(credential) is None
    assert next_expiry_check({"metadata": {}, "status": {}}) is None
