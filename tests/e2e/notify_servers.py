"""Real notification receivers on loopback: an SMTP server (aiosmtpd, STARTTLS + AUTH required) and
an HTTP receiver that records every request with its headers and can fail on demand."""

from __future__ import annotations

import email
import email.policy
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from opsconductor.localcluster.controlplane import free_port
from opsconductor.localcluster.pki import CertificateAuthority
from tests.e2e.servers import serving
from tests.kube import wait_until


@dataclass
class Mail:
    """One accepted message and how it arrived."""

    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage
    tls: bool
    login: str | None


@dataclass
class SmtpServer:
    """What the SMTP server received; ``ca_pem`` verifies its certificate."""

    host: str
    port: int
    ca_pem: str
    username: str
    password: str
    mails: list[Mail] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def wait_for(self, count: int, timeout: float = 60) -> list[Mail]:
        def enough() -> list[Mail] | None:
            with self.lock:
                return list(self.mails) if len(self.mails) >= count else None

        return wait_until(enough, timeout=timeout, what=f"{count} mail(s)")


class _Handler:
    def __init__(self, server: SmtpServer) -> None:
        self.server = server

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        login = session.auth_data if session.authenticated else None
        with self.server.lock:
            self.server.mails.append(
                Mail(envelope.mail_from, list(envelope.rcpt_tos), message, session.ssl is not None, login)  # type: ignore[arg-type]
            )
        return "250 OK"


@contextmanager
def smtp_server(workdir: Path, username: str, password: str) -> Iterator[SmtpServer]:
    """An SMTP server on 127.0.0.1 that requires STARTTLS before AUTH and AUTH before mail."""
    ca = CertificateAuthority(workdir / "smtp-ca", name="notify-test-ca")
    pair = ca.issue(
        "smtp", common_name="127.0.0.1", ip_addresses=("127.0.0.1",), dns_names=("localhost",), server=True
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pair.cert, pair.key)
    state = SmtpServer("127.0.0.1", free_port(), ca.pair.cert.read_text(), username, password)

    def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login.decode() == username
            and auth_data.password.decode() == password
        )
        return AuthResult(success=ok, handled=False, auth_data=username if ok else None)

    controller = Controller(
        _Handler(state),
        hostname=state.host,
        port=state.port,
        tls_context=context,
        require_starttls=True,
        authenticator=authenticator,
        auth_required=True,
        auth_require_tls=True,
    )
    controller.start()
    try:
        yield state
    finally:
        controller.stop()


@dataclass
class Hit:
    """One HTTP request."""

    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """Records requests per path; ``fail[path] = n`` answers the next n requests with 500."""

    url: str
    hits: list[Hit] = field(default_factory=list)
    fail: dict[str, int] = field(default_factory=dict)
    cond: threading.Condition = field(default_factory=threading.Condition)

    def at(self, path: str) -> list[Hit]:
        with self.cond:
            return [h for h in self.hits if h.path == path]

    def wait_for(self, path: str, count: int = 1, timeout: float = 60) -> list[Hit]:
        def enough() -> list[Hit] | None:
            hits = self.at(path)
            return hits if len(hits) >= count else None

        return wait_until(enough, timeout=timeout, what=f"{count} request(s) to {path}")


@contextmanager
def receiver() -> Iterator[Receiver]:
    """An HTTP receiver on 127.0.0.1 (answers 200 unless told to fail)."""
    ref: list[Receiver] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            recv = ref[0]
            with recv.cond:
                recv.hits.append(Hit(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                failing = recv.fail.get(self.path, 0)
                if failing:
                    recv.fail[self.path] = failing - 1
                recv.cond.notify_all()
            status, answer = (500, b"receiver down") if failing else (200, b"ok")
            self.send_response(status)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, format: str, *args: object) -> None:
            pass

    with serving(Handler) as url:
        ref.append(Receiver(url=url))
        yield ref[0]
