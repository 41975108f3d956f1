"""Real HTTP(S) servers on loopback for runner tests (stdlib ThreadingHTTPServer in a thread).

Each route is a function of the recorded request returning (status, headers, body). Routes that must
block (to test timeouts and cancellation) wait on ``server.release`` and announce themselves through
``server.arrived``: tests synchronise on events, never on sleeps.
"""

from __future__ import annotations

import json
import ssl
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from opsconductor.localcluster.pki import CertificateAuthority, KeyPair


@dataclass
class Recorded:
    """One request as the server saw it."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    client_cn: str | None = None

    def json(self) -> Any:
        return json.loads(self.body)


Reply = tuple[int, dict[str, str], bytes]
Route = Callable[[Recorded], Reply]


def text(body: str, status: int = 200, content_type: str = "text/plain; charset=utf-8") -> Reply:
    return status, {"Content-Type": content_type}, body.encode()


def as_json(value: Any, status: int = 200) -> Reply:
    return status, {"Content-Type": "application/json"}, json.dumps(value).encode()


@dataclass
class LoopbackServer:
    """A server on 127.0.0.1 with routes by path; records every request."""

    routes: dict[str, Route] = field(default_factory=dict)
    tls: ssl.SSLContext | None = None
    requests: list[Recorded] = field(default_factory=list)
    arrived: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        server = self
        self.lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                if isinstance(self.request, ssl.SSLSocket):
                    self.request.do_handshake()
                super().setup()

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def handle_one(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                url = urlsplit(self.path)
                cn = None
                if isinstance(self.connection, ssl.SSLSocket):
                    peer = self.connection.getpeercert()
                    if peer:
                        subject: Any = peer["subject"]
                        names = {key: value for rdn in subject for key, value in rdn}
                        cn = names.get("commonName")
                recorded = Recorded(self.command, url.path, parse_qs(url.query), dict(self.headers), body, cn)
                with server.lock:
                    server.requests.append(recorded)
                route = server.routes.get(url.path)
                status, headers, payload = route(recorded) if route else text("no route", 404)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = handle_one

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        if self.tls is not None:
            self.httpd.socket = self.tls.wrap_socket(
                self.httpd.socket, server_side=True, do_handshake_on_connect=False
            )
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def blocking(self, reply: Reply = (200, {}, b"late")) -> Route:
        """A route that announces the request and answers only once ``release`` is set."""

        def route(request: Recorded) -> Reply:
            self.arrived.set()
            self.release.wait(30)
            return reply

        return route

    def __enter__(self) -> LoopbackServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@dataclass(frozen=True)
class Pki:
    """A CA made with ``cryptography``, a server certificate for 127.0.0.1 and a client certificate."""

    ca: Path
    server: KeyPair
    client: KeyPair
    other_ca: Path
    """A second CA that signed nothing the server presents."""

    def server_context(self, require_client_cert: bool = False) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.server.cert, self.server.key)
        if require_client_cert:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(self.ca)
        return context


def make_pki(directory: Path) -> Pki:
    authority = CertificateAuthority(directory / "ca", name="test-ca")
    server = authority.issue(
        "server", common_name="127.0.0.1", dns_names=("localhost",), ip_addresses=("127.0.0.1",), server=True
    )
    client = authority.issue("client", common_name="runner-client", client=True)
    other = CertificateAuthority(directory / "other", name="other-ca")
    return Pki(authority.pair.cert, server, client, other.pair.cert)


@contextmanager
def serve(
    routes: dict[str, Route] | None = None, tls: ssl.SSLContext | None = None
) -> Iterator[LoopbackServer]:
    with LoopbackServer(routes or {}, tls) as server:
        yield server
