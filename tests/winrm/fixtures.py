"""pytest fixtures for the WinRM test server (registered in ``tests/conftest.py``).

- ``winrm_tls``: a CA and a server certificate for the loopback addresses (session).
- ``winrm_server``: a factory starting :class:`WinrmServer` instances; all stop at session end.
  ``winrm_server()`` is NTLM over http with message encryption required, like a default Windows
  listener; ``winrm_server(https=True)``, ``basic=True``, ``allow_unencrypted=True``,
  ``address="127.0.0.31"`` vary it.

The accepted account is :data:`USER` (a domain user, as most Windows estates have) with a password
generated per session (:func:`winrm_password`); ``UPN_USER`` is the same person as ``user@domain``.
"""

from __future__ import annotations

import secrets
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from opsconductor.localcluster.pki import CertificateAuthority
from tests.winrm.server import WinrmServer

USER = "CORP\\opsc-winrm"
UPN_USER = "opsc-winrm-upn@corp.example.com"
_PASSWORD = f"Pw-{secrets.token_urlsafe(12)}"
LOOPBACK_IPS = tuple(f"127.0.0.{n}" for n in range(1, 64))


def winrm_password() -> str:
    """The test accounts' password (random per test process)."""
    return _PASSWORD


@dataclass(frozen=True)
class WinrmTls:
    """The CA the runner trusts and the certificate the server presents."""

    ca_pem: Path
    cert_pem: Path
    key_pem: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert_pem, self.key_pem)
        return context


def make_tls(directory: Path) -> WinrmTls:
    authority = CertificateAuthority(directory, name="opsconductor-winrm-test-ca")
    pair = authority.issue(
        "winrm-server",
        common_name="winrm-test",
        dns_names=("localhost",),
        ip_addresses=LOOPBACK_IPS,
        server=True,
    )
    return WinrmTls(directory / "ca.crt", pair.cert, pair.key)


WinrmServerFactory = Callable[..., WinrmServer]


@pytest.fixture(scope="session")
def winrm_tls(tmp_path_factory: pytest.TempPathFactory) -> WinrmTls:
    return make_tls(tmp_path_factory.mktemp("winrm-pki"))


@pytest.fixture(scope="session")
def winrm_server(winrm_tls: WinrmTls) -> Iterator[WinrmServerFactory]:
    servers: list[WinrmServer] = []

    def start(
        address: str = "127.0.0.1",
        *,
        https: bool = False,
        basic: bool = False,
        ntlm: bool = True,
        allow_unencrypted: bool = False,
        users: dict[str, str] | None = None,
        port: int = 0,
    ) -> WinrmServer:
        server = WinrmServer(
            users=users or {USER: winrm_password(), UPN_USER: winrm_password()},
            address=address,
            port=port,
            basic=basic,
            ntlm=ntlm,
            allow_unencrypted=allow_unencrypted,
            tls=winrm_tls.server_context() if https else None,
            certificate_pem=winrm_tls.cert_pem.read_bytes() if https else None,
        )
        servers.append(server.start())
        return server

    try:
        yield start
    finally:
        for server in servers:
            server.stop()
