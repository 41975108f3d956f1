"""Target: one host OpsConductor reaches over WinRM, SSH, HTTP, SQL or SNMP."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import ConfigDict, Field

from opsconductor.api._base import (
    ApiModel,
    CommonStatus,
    LocalObjectReference,
    SecretKeySelector,
    cel,
    validations,
)

Protocol = Literal["winrm", "ssh", "http", "sql", "snmp"]
PROTOCOLS: tuple[Protocol, ...] = ("winrm", "ssh", "http", "sql", "snmp")
DEFAULT_PORTS: dict[Protocol, int] = {"winrm": 5985, "ssh": 22, "http": 80, "sql": 5432, "snmp": 161}

# A host name (RFC 1123), an IPv4 address or an IPv6 address (optionally in brackets). An IPv6
# address has at least two colons, so "10.0.0.1:22" (a port glued onto the address) is rejected.
ADDRESS = (
    r"^(([a-zA-Z0-9]([-a-zA-Z0-9]{0,61}[a-zA-Z0-9])?)(\.[a-zA-Z0-9]([-a-zA-Z0-9]{0,61}[a-zA-Z0-9])?)*"
    r"|\[?[0-9a-fA-F.]*:[0-9a-fA-F.]*:[0-9a-fA-F:.]*\]?)$"
)
# One line of an authorized_keys / known_hosts style public key: "<type> <base64> [comment]".
SSH_PUBLIC_KEY = (
    r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp256|ecdsa-sha2-nistp384|ecdsa-sha2-nistp521)"
    r" [A-Za-z0-9+/=]+( .*)?$"
)

Port = Annotated[int, Field(ge=1, le=65535)]


class SshSettings(ApiModel):
    """How to reach the host over SSH, and how to trust it."""

    host_keys: Annotated[
        list[Annotated[str, Field(max_length=16384, pattern=SSH_PUBLIC_KEY)]], Field(max_length=16)
    ] = []
    """The host's public keys (``ssh-ed25519 AAAA...``), as ``ssh-keyscan`` prints them without the host."""
    known_hosts_secret_ref: SecretKeySelector | None = None
    """A Secret key holding a known_hosts file to verify the host key against."""
    insecure_skip_host_key_verification: bool = False
    """Accept any host key. An explicit opt-in; never the default."""


class TlsSettings(ApiModel):
    """How to trust an HTTPS endpoint."""

    ca_bundle_secret_ref: SecretKeySelector | None = None
    """A Secret key holding PEM CA certificates to trust instead of the system roots."""
    insecure_skip_tls_verify: bool = False
    """Accept any server certificate. An explicit opt-in; never the default."""


class WinrmSettings(ApiModel):
    """How to reach a Windows host over WinRM (WS-Management)."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "self.scheme == 'https' || !has(self.tls)",
                "tls settings apply only with scheme https",
                field_path=".tls",
            ),
            cel(
                "self.transport != 'basic' || self.messageEncryption != 'always'",
                "basic authentication cannot encrypt messages: use scheme https (or transport ntlm) instead "
                "of messageEncryption always",
                field_path=".messageEncryption",
            ),
        )
    )

    scheme: Literal["http", "https"] = "http"
    """http (port 5985, message encryption with NTLM/Kerberos/CredSSP) or https (port 5986)."""
    transport: Literal["ntlm", "kerberos", "basic", "credssp"] = "ntlm"
    """Authentication: ntlm (default), kerberos, basic (https only in production), credssp."""
    path: Annotated[str, Field(max_length=256, pattern=r"^/.*")] = "/wsman"
    """The WS-Management endpoint path."""
    message_encryption: Literal["auto", "always", "never"] = "auto"
    """Encrypt messages over http with the transport's session key; auto = when not over https."""
    operation_timeout_seconds: Annotated[int, Field(ge=1, le=3600)] = 20
    """WS-Management OperationTimeout for each receive; commands longer than this stream in loops."""
    tls: TlsSettings | None = None
    """Certificate trust for scheme https."""


class HttpSettings(ApiModel):
    """How to reach an HTTP(S) endpoint."""

    scheme: Literal["http", "https"] = "https"
    """http or https."""
    base_path: Annotated[str, Field(max_length=1024, pattern=r"^/.*")] = "/"
    """Prefix for relative request paths of http.* steps."""
    tls: TlsSettings | None = None
    """Certificate trust for https."""


class SqlSettings(ApiModel):
    """How to reach a database server."""

    engine: Literal["postgresql", "mysql", "mssql"]
    """The database engine."""
    database: Annotated[str, Field(max_length=128)] | None = None
    """Database to connect to."""
    tls: TlsSettings | None = None
    """Certificate trust when the server offers TLS."""


class SnmpSettings(ApiModel):
    """How to reach a network device over SNMP."""

    version: Literal["v2c", "v3"] = "v2c"
    """SNMP version; v2c uses an SNMPCommunity Credential, v3 an SNMPv3 Credential."""


class ProbeSettings(ApiModel):
    """Periodic connection tests of the target."""

    interval_seconds: Annotated[int, Field(ge=30, le=86400)] | None = None
    """Probe this often; unset = only on demand (annotation ``opsconductor.io/probe``)."""
    timeout_seconds: Annotated[int, Field(ge=1, le=300)] = 15
    """Give up on a probe after this long."""
    collect_facts: bool = True
    """Also collect system facts (hostname, OS, kernel, uptime)."""


class TargetSpec(ApiModel):
    """The desired state of a Target."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            *[
                cel(
                    f"!has(self.{protocol}) || self.protocol == '{protocol}'",
                    f"{protocol} settings apply only to targets with protocol {protocol}",
                    field_path=f".{protocol}",
                )
                for protocol in PROTOCOLS
            ],
            cel("self.protocol != 'sql' || has(self.sql)", "sql targets need sql.engine", field_path=".sql"),
        )
    )

    address: Annotated[str, Field(min_length=1, max_length=253, pattern=ADDRESS)]
    """Host name or IP address."""
    protocol: Protocol
    """How the host is reached: winrm, ssh, http, sql or snmp."""
    port: Port | None = None
    """TCP/UDP port; defaults per protocol (winrm 5985/5986, ssh 22, http 80/443, sql per engine, snmp 161)."""  # noqa: E501 -- CRD description: a line break would show in the generated CRD
    credential_ref: LocalObjectReference | None = None
    """The Credential used to log in; steps may override it."""
    connect_timeout_seconds: Annotated[int, Field(ge=1, le=300)] = 10
    """Fail a connection attempt after this long, with a message naming the host."""
    ssh: SshSettings | None = None
    """SSH settings (protocol ssh)."""
    winrm: WinrmSettings | None = None
    """WinRM settings (protocol winrm)."""
    http: HttpSettings | None = None
    """HTTP settings (protocol http)."""
    sql: SqlSettings | None = None
    """Database settings (protocol sql; required there)."""
    snmp: SnmpSettings | None = None
    """SNMP settings (protocol snmp)."""
    probe: ProbeSettings | None = None
    """Connection tests and fact collection."""


class TargetFacts(ApiModel):
    """System facts collected by the last successful probe."""

    hostname: Annotated[str, Field(max_length=253)] | None = None
    """The host's own name."""
    os_name: Annotated[str, Field(max_length=256)] | None = None
    """Operating system, e.g. ``Microsoft Windows Server 2022 Standard`` or ``Linux``."""
    os_version: Annotated[str, Field(max_length=256)] | None = None
    """Operating system version."""
    kernel: Annotated[str, Field(max_length=256)] | None = None
    """Kernel release or Windows build."""
    distribution: Annotated[str, Field(max_length=256)] | None = None
    """Linux distribution (SSH targets)."""
    domain: Annotated[str, Field(max_length=256)] | None = None
    """Windows domain (WinRM targets)."""
    architecture: Annotated[str, Field(max_length=64)] | None = None
    """CPU architecture."""
    uptime_seconds: Annotated[int, Field(ge=0)] | None = None
    """Seconds since boot at probe time."""


class ProbeResult(ApiModel):
    """Outcome of the last connection test."""

    time: datetime
    """When the probe finished."""
    reachable: bool
    """Whether the connection and login succeeded."""
    latency_milliseconds: Annotated[int, Field(ge=0)] | None = None
    """Connect + login + first command round trip."""
    message: Annotated[str, Field(max_length=4096)] = ""
    """Error text a person can act on, when not reachable."""


class ActiveProbe(ApiModel):
    """A probe pod started and not yet reported."""

    pod: Annotated[str, Field(max_length=253)]
    """Name of the probe pod."""
    started: datetime
    """When the operator created it."""
    trigger: Literal["created", "annotation", "interval"]
    """What asked for this probe."""


class TargetStatus(CommonStatus):
    """The observed state of a Target."""

    facts: TargetFacts | None = None
    """System facts from the last successful probe."""
    last_probe: ProbeResult | None = None
    """The last connection test."""
    consecutive_probe_failures: Annotated[int, Field(ge=0)] = 0
    """Failed probes in a row; drives the probe backoff."""
    active_probe: ActiveProbe | None = None
    """The probe in flight, if any (at most one per Target)."""
    next_probe_time: datetime | None = None
    """When the next interval probe is due (``spec.probe.intervalSeconds``, backed off after failures)."""
    handled_probe_request: Annotated[str, Field(max_length=256)] | None = None
    """The last value of the ``opsconductor.io/probe`` annotation acted on."""
