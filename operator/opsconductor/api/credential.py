"""Credential: how to log in somewhere, pointing at a Kubernetes Secret that holds the values.

Secret values never live in a Credential: the spec names the Secret and which of its keys hold
what; the operator validates the Secret and reports in status only non-secret facts
(fingerprints, expiry dates).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import ConfigDict, Field

from opsconductor.api._base import CONFIG_KEY, ApiModel, CommonStatus, LocalObjectReference, cel, validations

CredentialType = Literal[
    "BasicAuth",
    "SSHKey",
    "BearerToken",
    "APIKey",
    "ClientCertificate",
    "Kerberos",
    "SNMPCommunity",
    "SNMPv3",
    "SMTP",
    "SlackWebhook",
    "TeamsWebhook",
    "Webhook",
]

# The Secret keys each type reads, by role, with their default key names. Keys marked optional may
# be absent from the Secret. Defaults follow the built-in Secret types where one exists
# (kubernetes.io/basic-auth, kubernetes.io/ssh-auth, kubernetes.io/tls).
SECRET_KEYS: dict[str, dict[str, tuple[str, bool]]] = {
    "BasicAuth": {"username": ("username", False), "password": ("password", False)},
    "SSHKey": {
        "username": ("username", False),
        "privateKey": ("ssh-privatekey", False),
        "passphrase": ("passphrase", True),
    },
    "BearerToken": {"token": ("token", False)},
    "APIKey": {"key": ("api-key", False)},
    "ClientCertificate": {
        "certificate": ("tls.crt", False),
        "privateKey": ("tls.key", False),
        "ca": ("ca.crt", True),
    },
    "Kerberos": {"username": ("username", False), "password": ("password", True), "keytab": ("keytab", True)},
    "SNMPCommunity": {"community": ("community", False)},
    "SNMPv3": {
        "username": ("username", False),
        "authPassword": ("auth-password", True),
        "privacyPassword": ("privacy-password", True),
    },
    "SMTP": {"username": ("username", True), "password": ("password", True), "ca": ("ca.crt", True)},
    "SlackWebhook": {"url": ("url", False)},
    "TeamsWebhook": {"url": ("url", False)},
    "Webhook": {"url": ("url", False), "hmacKey": ("hmac-key", True)},
}

KeyName = Annotated[str, Field(min_length=1, max_length=253, pattern=CONFIG_KEY)]


class SecretKeys(ApiModel):
    """Which Secret key holds each value; unset roles use the type's default key name."""

    username: KeyName | None = None
    """Key of the user name (default ``username``)."""
    password: KeyName | None = None
    """Key of the password (default ``password``)."""
    private_key: KeyName | None = None
    """Key of the PEM/OpenSSH private key (default ``ssh-privatekey``, or ``tls.key`` for certificates)."""
    passphrase: KeyName | None = None
    """Key of the private key's passphrase (default ``passphrase``; optional)."""
    token: KeyName | None = None
    """Key of the bearer token (default ``token``)."""
    key: KeyName | None = None
    """Key of the API key (default ``api-key``)."""
    certificate: KeyName | None = None
    """Key of the PEM client certificate (default ``tls.crt``)."""
    ca: KeyName | None = None
    """Key of PEM CA certificates (default ``ca.crt``; optional)."""
    keytab: KeyName | None = None
    """Key of a Kerberos keytab (default ``keytab``)."""
    community: KeyName | None = None
    """Key of the SNMP community string (default ``community``)."""
    auth_password: KeyName | None = None
    """Key of the SNMPv3 authentication password (default ``auth-password``)."""
    privacy_password: KeyName | None = None
    """Key of the SNMPv3 privacy password (default ``privacy-password``)."""
    url: KeyName | None = None
    """Key of a webhook URL, which embeds its own secret (default ``url``)."""
    hmac_key: KeyName | None = None
    """Key of the HMAC-SHA256 signing key for webhooks (default ``hmac-key``; optional)."""


class ApiKeySettings(ApiModel):
    """Where an API key goes in a request."""

    header: Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9-]+$")] = "X-API-Key"
    """HTTP header that carries the key."""


class KerberosSettings(ApiModel):
    """Kerberos realm settings (WinRM with transport kerberos)."""

    realm: Annotated[str, Field(min_length=1, max_length=253)]
    """Kerberos realm, e.g. ``CORP.EXAMPLE.COM``."""
    kdc: Annotated[list[Annotated[str, Field(max_length=253)]], Field(max_length=8)] = []
    """KDC host[:port] list; empty = DNS SRV lookup."""


class SmtpSettings(ApiModel):
    """An SMTP relay; user name and password, if any, come from the Secret."""

    host: Annotated[str, Field(min_length=1, max_length=253)]
    """Relay host."""
    port: Annotated[int, Field(ge=1, le=65535)] = 587
    """Relay port."""
    security: Literal["StartTLS", "TLS", "None"] = "StartTLS"
    """StartTLS (587), implicit TLS (465) or None (plain; loopback relays only)."""
    sender: Annotated[str, Field(min_length=3, max_length=320, pattern=r"^.+@.+$")]
    """From address."""


class WebhookSettings(ApiModel):
    """Non-secret settings of a generic Webhook channel."""

    headers: Annotated[dict[str, Annotated[str, Field(max_length=1024)]], Field(max_length=32)] | None = None
    """Extra HTTP headers sent with every delivery (not secret: secrets belong in the Secret)."""


class CredentialSpec(ApiModel):
    """The desired state of a Credential."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "self.type == 'APIKey' || !has(self.apiKey)",
                "apiKey settings apply only to type APIKey",
                field_path=".apiKey",
            ),
            cel(
                "(self.type == 'Kerberos') == has(self.kerberos)",
                "type Kerberos needs kerberos.realm, and kerberos settings apply only to type Kerberos",
                field_path=".kerberos",
            ),
            cel(
                "(self.type == 'SMTP') == has(self.smtp)",
                "type SMTP needs smtp.host and smtp.sender, and smtp settings apply only to type SMTP",
                field_path=".smtp",
            ),
            cel(
                "self.type == 'Webhook' || !has(self.webhook)",
                "webhook settings apply only to type Webhook",
                field_path=".webhook",
            ),
        )
    )

    type: CredentialType
    """What the Secret holds; decides which keys must be present (see ``keys``)."""
    secret_ref: LocalObjectReference
    """The Secret (same namespace) holding the values."""
    keys: SecretKeys | None = None
    """Override the default Secret key names per value."""
    username: Annotated[str, Field(min_length=1, max_length=256)] | None = None
    """User name, when it is not secret; otherwise it comes from the Secret. ``DOMAIN\\user`` and
    ``user@domain`` are accepted for WinRM."""
    api_key: ApiKeySettings | None = None
    """APIKey: where the key is sent."""
    kerberos: KerberosSettings | None = None
    """Kerberos: realm settings."""
    smtp: SmtpSettings | None = None
    """SMTP: the relay."""
    webhook: WebhookSettings | None = None
    """Webhook: extra headers."""
    expiry_warning_days: Annotated[int, Field(ge=0, le=3650)] = 30
    """Set the Expiring condition this many days before a certificate's notAfter."""


class CertificateInfo(ApiModel):
    """Public facts of a certificate held by the Secret."""

    subject: Annotated[str, Field(max_length=1024)]
    """Subject distinguished name."""
    issuer: Annotated[str, Field(max_length=1024)]
    """Issuer distinguished name."""
    not_before: datetime
    """Start of validity."""
    not_after: datetime
    """End of validity."""
    fingerprint_sha256: Annotated[str, Field(max_length=128)]
    """SHA-256 fingerprint of the DER certificate."""


class CredentialStatus(CommonStatus):
    """The observed state of a Credential: validity, never values."""

    secret_resource_version: Annotated[str, Field(max_length=64)] | None = None
    """The Secret's resourceVersion last validated; a change triggers re-validation."""
    key_type: Annotated[str, Field(max_length=64)] | None = None
    """Private key algorithm, e.g. ``ssh-ed25519``, ``rsa-3072``, ``ecdsa-nistp256``."""
    public_key_fingerprint: Annotated[str, Field(max_length=128)] | None = None
    """``SHA256:...`` fingerprint of the public key (as ``ssh-keygen -lf`` prints it)."""
    certificate: CertificateInfo | None = None
    """The client certificate, for type ClientCertificate."""
    expires: datetime | None = None
    """When the credential stops working (certificate notAfter), if known."""
