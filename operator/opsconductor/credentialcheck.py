"""Credential validation: (Credential spec, Secret data, now) → the Credential's status.

This module owns the pure decision whether a Credential can work, and the status that reports it.
The handler (``handlers/credential.py``) reads the Secret and patches what :func:`credential_status`
returns; nothing here does I/O, so every reason is unit-tested with real keys and certificates.

What must stay true:

- **No secret value leaves this module.** Messages name Secrets, keys and roles, algorithms and
  fingerprints; never a value, and never the text of a parser exception (which could echo input).
- Every failure has a reason constant a person understands (:data:`INVALID_REASONS`), and
  ``Ready``/``Stalled`` say the same thing: an invalid Credential needs a change to its Secret or
  spec, so it is Stalled.
- ``Expiring`` exists only when the Credential holds a certificate; it turns True
  ``spec.expiryWarningDays`` before ``notAfter`` (Ready stays True until the certificate expires).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from pydantic.alias_generators import to_snake

from opsconductor import conditions as c
from opsconductor.api.credential import SECRET_KEYS, CredentialSpec

EXPIRING = "Expiring"
"""Condition type: a certificate's notAfter is within ``spec.expiryWarningDays``."""

REASON_VALID = "Valid"
REASON_SECRET_NOT_FOUND = "SecretNotFound"
REASON_MISSING_KEY = "MissingKey"
REASON_EMPTY_VALUE = "EmptyValue"
REASON_INVALID_PRIVATE_KEY = "InvalidPrivateKey"
REASON_UNSUPPORTED_KEY_TYPE = "UnsupportedKeyType"
REASON_PASSPHRASE_REQUIRED = "PassphraseRequired"
REASON_WRONG_PASSPHRASE = "WrongPassphrase"
REASON_INVALID_CERTIFICATE = "InvalidCertificate"
REASON_KEY_MISMATCH = "KeyCertificateMismatch"
REASON_CERTIFICATE_EXPIRED = "CertificateExpired"
REASON_CERTIFICATE_NOT_YET_VALID = "CertificateNotYetValid"
REASON_INVALID_URL = "InvalidURL"
REASON_CERTIFICATE_EXPIRING = "CertificateExpiring"
REASON_CERTIFICATE_NOT_EXPIRING = "CertificateNotExpiring"

INVALID_REASONS = frozenset(
    {
        REASON_SECRET_NOT_FOUND,
        REASON_MISSING_KEY,
        REASON_EMPTY_VALUE,
        REASON_INVALID_PRIVATE_KEY,
        REASON_UNSUPPORTED_KEY_TYPE,
        REASON_PASSPHRASE_REQUIRED,
        REASON_WRONG_PASSPHRASE,
        REASON_INVALID_CERTIFICATE,
        REASON_KEY_MISMATCH,
        REASON_CERTIFICATE_EXPIRED,
        REASON_CERTIFICATE_NOT_YET_VALID,
        REASON_INVALID_URL,
    }
)
"""Reasons of a Ready=False Credential; OpsJobs using it fail fast (except for missing Secrets/keys,
which may still appear: those keep the OpsJob's dependency wait)."""

Manifest = dict[str, Any]


class CredentialInvalid(Exception):
    """The Credential cannot work; ``reason`` is the condition reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class CertificateFacts:
    """Public facts of one certificate (no key material)."""

    subject: str
    issuer: str
    not_before: datetime
    not_after: datetime
    fingerprint_sha256: str


@dataclass(frozen=True)
class CredentialCheck:
    """The outcome of validating one Credential."""

    valid: bool
    reason: str
    message: str
    key_type: str | None = None
    public_key_fingerprint: str | None = None
    certificate: CertificateFacts | None = None
    expiring: bool | None = None
    """None: no certificate; else whether notAfter is within the warning window."""
    expiring_message: str = ""
    details: list[str] = field(default_factory=list)


# --- keys and certificates -------------------------------------------------------------------------
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey
_SSH_CURVES = {"secp256r1": "nistp256", "secp384r1": "nistp384", "secp521r1": "nistp521"}


def ssh_fingerprint(public_key: PublicKey) -> str:
    """``SHA256:<base64>`` of the key's SSH wire form, exactly as ``ssh-keygen -lf`` prints it."""
    line = public_key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    blob = base64.b64decode(line.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def key_type_name(key: PrivateKey | PublicKey) -> str:
    """``ssh-ed25519``, ``rsa-3072`` or ``ecdsa-nistp256``."""
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        return f"rsa-{key.key_size}"
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        return f"ecdsa-{_SSH_CURVES.get(key.curve.name, key.curve.name)}"
    return "ssh-ed25519"


def _load(data: bytes, password: bytes | None) -> Any:
    if b"BEGIN OPENSSH PRIVATE KEY" in data:
        return serialization.load_ssh_private_key(data, password)
    return serialization.load_pem_private_key(data, password)


def load_private_key(data: bytes, passphrase: bytes | None, what: str) -> PrivateKey:
    """Parse an OpenSSH or PEM private key (RSA, ECDSA P-256/384/521, Ed25519), decrypting it.

    Args:
        data: the key text.
        passphrase: decrypts an encrypted key; ignored for an unencrypted one.
        what: names the key in messages (Secret and key name; never the value).

    Returns:
        The key.

    Raises:
        CredentialInvalid: with reason InvalidPrivateKey, PassphraseRequired, WrongPassphrase or
            UnsupportedKeyType.
    """
    try:
        key = _load(data, None)
    except TypeError:
        # cryptography: "Password was not given but private key is encrypted".
        if not passphrase:
            raise CredentialInvalid(
                REASON_PASSPHRASE_REQUIRED,
                f"{what} is encrypted but the Secret has no passphrase (add it under the key named by "
                "keys.passphrase, 'passphrase' by default)",
            ) from None
        try:
            key = _load(data, passphrase)
        except (ValueError, TypeError):
            raise CredentialInvalid(
                REASON_WRONG_PASSPHRASE, f"the passphrase in the Secret does not decrypt {what}"
            ) from None
    except ValueError:
        raise CredentialInvalid(
            REASON_INVALID_PRIVATE_KEY,
            f"{what} cannot be parsed: expected an OpenSSH or PEM private key (RSA, ECDSA or Ed25519)",
        ) from None
    except UnsupportedAlgorithm:
        raise CredentialInvalid(
            REASON_UNSUPPORTED_KEY_TYPE, f"{what} uses an unsupported algorithm; use Ed25519, ECDSA or RSA"
        ) from None
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name not in _SSH_CURVES:
        raise CredentialInvalid(
            REASON_UNSUPPORTED_KEY_TYPE, f"{what} is on curve {key.curve.name}; use P-256, P-384 or P-521"
        )
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey):
        raise CredentialInvalid(
            REASON_UNSUPPORTED_KEY_TYPE,
            f"{what} is a {type(key).__name__.lstrip('_')}; use Ed25519, ECDSA or RSA (DSA is obsolete)",
        )
    return key


def _name(value: x509.Name) -> str:
    return value.rfc4514_string()[:1024]


def load_certificates(data: bytes, what: str) -> list[x509.Certificate]:
    """Parse one or more PEM certificates.

    Raises:
        CredentialInvalid: InvalidCertificate when nothing parses.
    """
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError:
        certificates = []
    if not certificates:
        raise CredentialInvalid(REASON_INVALID_CERTIFICATE, f"{what} is not a PEM certificate")
    return certificates


def certificate_facts(certificate: x509.Certificate) -> CertificateFacts:
    """Subject, issuer, validity and SHA-256 fingerprint of a certificate."""
    digest = certificate.fingerprint(hashes.SHA256()).hex().upper()
    return CertificateFacts(
        subject=_name(certificate.subject),
        issuer=_name(certificate.issuer),
        not_before=certificate.not_valid_before_utc,
        not_after=certificate.not_valid_after_utc,
        fingerprint_sha256=":".join(digest[i : i + 2] for i in range(0, len(digest), 2)),
    )


# --- the check -------------------------------------------------------------------------------------
def _key_name(spec: CredentialSpec, role: str) -> str:
    override = getattr(spec.keys, to_snake(role), None) if spec.keys else None
    return str(override or SECRET_KEYS[spec.type][role][0])


def _stamp(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def check_credential(
    name: str, spec: CredentialSpec, secret_data: Mapping[str, bytes] | None, now: datetime
) -> CredentialCheck:
    """Validate a Credential against its Secret's data.

    Args:
        name: the Credential's name (for messages).
        spec: the Credential's spec.
        secret_data: the Secret's data, base64-decoded; None when the Secret does not exist.
        now: the current time (``opsconductor.clock.now()``).

    Returns:
        The outcome; ``valid`` False with a reason from :data:`INVALID_REASONS` when it cannot work.
    """
    secret = spec.secret_ref.name
    if secret_data is None:
        return CredentialCheck(
            False, REASON_SECRET_NOT_FOUND, f"Secret {secret} (spec.secretRef of Credential {name}) not found"
        )
    values: dict[str, bytes] = {}
    try:
        for role, (_, optional) in SECRET_KEYS[spec.type].items():
            if role == "username" and spec.username:
                continue
            key = _key_name(spec, role)
            if key not in secret_data:
                if optional:
                    continue
                raise CredentialInvalid(
                    REASON_MISSING_KEY,
                    f"Secret {secret} has no key {key!r} (the {role} of {spec.type} Credential {name})",
                )
            if not secret_data[key].strip():
                if optional:
                    continue
                raise CredentialInvalid(
                    REASON_EMPTY_VALUE, f"Secret {secret} key {key!r} (the {role}) is empty"
                )
            values[role] = secret_data[key]
        return _check_values(name, spec, values, now)
    except CredentialInvalid as error:
        return CredentialCheck(False, error.reason, error.message)


def _check_values(
    name: str, spec: CredentialSpec, values: dict[str, bytes], now: datetime
) -> CredentialCheck:
    secret = spec.secret_ref.name
    if spec.type == "SSHKey":
        what = f"the private key (Secret {secret} key {_key_name(spec, 'privateKey')!r})"
        key = load_private_key(
            values["privateKey"], values.get("passphrase", b"").rstrip(b"\r\n") or None, what
        )
        fingerprint = ssh_fingerprint(key.public_key())
        kind = key_type_name(key)
        return CredentialCheck(True, REASON_VALID, f"{kind} key {fingerprint}", kind, fingerprint)
    if spec.type == "Kerberos" and "password" not in values and "keytab" not in values:
        raise CredentialInvalid(
            REASON_MISSING_KEY,
            f"Secret {secret} has neither key {_key_name(spec, 'password')!r} nor "
            f"{_key_name(spec, 'keytab')!r}: a Kerberos Credential needs a password or a keytab",
        )
    if spec.type in ("SlackWebhook", "TeamsWebhook", "Webhook"):
        url = urlsplit(values["url"].decode("utf-8", "replace").strip())
        if url.scheme not in ("http", "https") or not url.hostname:
            raise CredentialInvalid(
                REASON_INVALID_URL,
                f"Secret {secret} key {_key_name(spec, 'url')!r} is not an http(s) URL with a host",
            )
    if spec.type == "ClientCertificate":
        return _check_client_certificate(name, spec, values, now)
    return CredentialCheck(True, REASON_VALID, f"{spec.type}: the Secret has every key it needs")


def _check_client_certificate(
    name: str, spec: CredentialSpec, values: dict[str, bytes], now: datetime
) -> CredentialCheck:
    secret = spec.secret_ref.name
    cert_what = f"the certificate (Secret {secret} key {_key_name(spec, 'certificate')!r})"
    certificate = load_certificates(values["certificate"], cert_what)[0]
    key_what = f"the private key (Secret {secret} key {_key_name(spec, 'privateKey')!r})"
    key = load_private_key(values["privateKey"], None, key_what)
    public = certificate.public_key()
    if not isinstance(public, rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey):
        raise CredentialInvalid(REASON_UNSUPPORTED_KEY_TYPE, f"{cert_what} has an unsupported key type")
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*spki) != public.public_bytes(*spki):
        raise CredentialInvalid(REASON_KEY_MISMATCH, f"{key_what} does not belong to {cert_what}")
    if "ca" in values:
        load_certificates(values["ca"], f"the CA bundle (Secret {secret} key {_key_name(spec, 'ca')!r})")
    facts = certificate_facts(certificate)
    fingerprint = ssh_fingerprint(public)
    kind = key_type_name(public)
    common = {"key_type": kind, "public_key_fingerprint": fingerprint, "certificate": facts}
    if now >= facts.not_after:
        return CredentialCheck(
            False,
            REASON_CERTIFICATE_EXPIRED,
            f"{cert_what} ({facts.subject}) expired at {_stamp(facts.not_after)}",
            expiring=True,
            expiring_message=f"expired at {_stamp(facts.not_after)}",
            **common,  # type: ignore[arg-type]
        )
    if now < facts.not_before:
        return CredentialCheck(
            False,
            REASON_CERTIFICATE_NOT_YET_VALID,
            f"{cert_what} ({facts.subject}) is valid only from {_stamp(facts.not_before)}",
            expiring=False,
            **common,  # type: ignore[arg-type]
        )
    window = timedelta(days=spec.expiry_warning_days)
    left = facts.not_after - now
    expiring = left <= window
    days = left.days
    return CredentialCheck(
        True,
        REASON_VALID,
        f"certificate {facts.subject} ({kind} key {fingerprint}) valid until {_stamp(facts.not_after)}",
        expiring=expiring,
        expiring_message=(
            f"the certificate expires at {_stamp(facts.not_after)} (in {days} day(s); warning "
            f"{spec.expiry_warning_days} days before)"
            if expiring
            else f"the certificate expires at {_stamp(facts.not_after)}, more than "
            f"{spec.expiry_warning_days} days away"
        ),
        **common,  # type: ignore[arg-type]
    )


# --- status ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CredentialStatusUpdate:
    """The status patch for a check, and the Events of the transition it makes."""

    patch: Manifest | None
    """``{"status": {...}}``, or None when nothing changes."""
    events: list[tuple[str, str, str]]


def _strip_times(conditions: list[Manifest]) -> list[Manifest]:
    return [{k: v for k, v in cond.items() if k != "lastTransitionTime"} for cond in conditions]


def credential_status(
    credential: Manifest, check: CredentialCheck, secret_resource_version: str | None, now: datetime
) -> CredentialStatusUpdate:
    """Compute the status of a Credential after ``check``, with Events only when Ready or Expiring flips.

    Args:
        credential: the Credential as last read (status included).
        check: the outcome of :func:`check_credential`.
        secret_resource_version: the Secret's resourceVersion validated (None: no Secret).
        now: the current time.

    Returns:
        The patch (None when the status already says all of this) and the Events.
    """
    status = credential.get("status") or {}
    generation = credential["metadata"].get("generation")
    stamp = _stamp(now)
    previous: list[Manifest] = list(status.get("conditions") or [])
    conditions = [cond for cond in previous if cond.get("type") != EXPIRING or check.expiring is not None]

    def put(kind: str, value: c.Status, reason: str, message: str = "") -> None:
        nonlocal conditions
        conditions = c.set_condition(conditions, kind, value, reason, message, generation, stamp)

    if check.valid:
        put(c.READY, "True", check.reason, check.message)
        put(c.STALLED, "False", check.reason)
    else:
        put(c.READY, "False", check.reason, check.message)
        put(c.STALLED, "True", check.reason, check.message)
    put(c.RECONCILING, "False", check.reason)
    if check.expiring is not None:
        reason = REASON_CERTIFICATE_EXPIRING if check.expiring else REASON_CERTIFICATE_NOT_EXPIRING
        put(EXPIRING, "True" if check.expiring else "False", reason, check.expiring_message)

    certificate = None
    if check.certificate is not None:
        facts = check.certificate
        certificate = {
            "subject": facts.subject,
            "issuer": facts.issuer,
            "notBefore": _stamp(facts.not_before),
            "notAfter": _stamp(facts.not_after),
            "fingerprintSha256": facts.fingerprint_sha256,
        }
    new_status: Manifest = {
        "observedGeneration": generation,
        "conditions": conditions,
        "secretResourceVersion": secret_resource_version,
        "keyType": check.key_type,
        "publicKeyFingerprint": check.public_key_fingerprint,
        "certificate": certificate,
        "expires": certificate["notAfter"] if certificate else None,
    }
    old_view = {k: status.get(k) for k in new_status if k != "conditions"}
    new_view = {k: v for k, v in new_status.items() if k != "conditions"}
    if old_view == new_view and _strip_times(previous) == _strip_times(conditions):
        return CredentialStatusUpdate(None, [])

    events: list[tuple[str, str, str]] = []
    old_ready = next((cond for cond in previous if cond.get("type") == c.READY), None)
    if old_ready is None or old_ready.get("status") != ("True" if check.valid else "False"):
        events.append(
            ("Normal", "Valid", check.message) if check.valid else ("Warning", check.reason, check.message)
        )
    elif not check.valid and old_ready.get("reason") != check.reason:
        events.append(("Warning", check.reason, check.message))
    old_expiring = next((cond for cond in previous if cond.get("type") == EXPIRING), None)
    if check.expiring and check.valid and (old_expiring is None or old_expiring.get("status") != "True"):
        events.append(("Warning", REASON_CERTIFICATE_EXPIRING, check.expiring_message))
    return CredentialStatusUpdate({"status": new_status}, events)


def credential_problem(credential: Manifest, *, include_missing: bool = False) -> tuple[str, str] | None:
    """``(reason, message)`` when the operator found this Credential invalid, else None.

    Only a verdict on the current generation counts (a just-edited Credential is not judged on its
    old spec). Missing Secrets and keys are left out unless ``include_missing``: an OpsJob waits
    for them to appear (its dependency wait), while anything else needs a person to fix it.
    """
    status = credential.get("status") or {}
    if status.get("observedGeneration") != credential["metadata"].get("generation"):
        return None
    ready = next((cond for cond in status.get("conditions") or [] if cond.get("type") == c.READY), None)
    if ready is None or ready.get("status") != "False" or ready.get("reason") not in INVALID_REASONS:
        return None
    if not include_missing and ready.get("reason") in (REASON_SECRET_NOT_FOUND, REASON_MISSING_KEY):
        return None
    return str(ready["reason"]), str(ready.get("message") or "")


def next_expiry_check(credential: Manifest) -> datetime | None:
    """When this Credential's verdict changes by time alone: Expiring turns True, then it expires.

    Returns:
        The earliest such instant not yet reflected in the status (it may be in the past: then a
        re-validation is due now), or None when time alone changes nothing (no certificate, or
        already expired).
    """
    status = credential.get("status") or {}
    not_after_text = (status.get("certificate") or {}).get("notAfter")
    if not not_after_text:
        return None
    not_after = datetime.fromisoformat(str(not_after_text).replace("Z", "+00:00"))
    conditions = {cond.get("type"): cond for cond in status.get("conditions") or []}
    days = int((credential.get("spec") or {}).get("expiryWarningDays", 30))
    instants = []
    if (conditions.get(EXPIRING) or {}).get("status") != "True":
        instants.append(not_after - timedelta(days=days))
    if (conditions.get(c.READY) or {}).get("reason") != REASON_CERTIFICATE_EXPIRED:
        instants.append(not_after)
    return min(instants) if instants else None
