"""The process kubelet's HTTPS API: container logs, as ``kubectl logs [-f]`` reaches them.

The API server proxies ``GET /api/v1/namespaces/NS/pods/POD/log`` to the node's
``daemonEndpoints.kubeletEndpoint`` as ``GET /containerLogs/NS/POD/CONTAINER?follow=..``; this serves
that path from the log files the kubelet writes (:func:`kubelet.container_log_path`).

What must stay true:
- TLS with a serving certificate from the cluster CA, and only clients presenting a certificate the
  cluster CA signed *for the API server* (CN ``kube-apiserver-kubelet-client``) are served; a real
  kubelet would also ask the API server to authorize each request (SubjectAccessReview), which
  here reduces to "only the API server may ask".
- ``follow`` streams new lines until the container's run ends (then the rest of the file), or the
  client goes away.
- Only ``/containerLogs`` exists; every other path is 404.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

log = logging.getLogger(__name__)
API_SERVER_CLIENT_CN = "kube-apiserver-kubelet-client"


@dataclass(frozen=True)
class ContainerLog:
    """Where one container's log is and whether it is still being written."""

    path: Path
    running: Callable[[], bool]


LogFinder = Callable[[str, str, str, bool], ContainerLog | None]
"""(namespace, pod, container, previous) → the log, or None when there is no such container."""


class _Handler(BaseHTTPRequestHandler):
    server: KubeletServer

    def log_message(self, format: str, *args: object) -> None:
        log.debug("kubelet api: " + format, *args)

    def do_GET(self) -> None:
        cert = self.connection.getpeercert() if isinstance(self.connection, ssl.SSLSocket) else None
        names = [rdn[0] for rdn in (cert or {}).get("subject", ()) if isinstance(rdn, tuple) and rdn]
        if ("commonName", API_SERVER_CLIENT_CN) not in names:
            self.send_error(403, "only the API server may use the kubelet API")
            return
        url = urlsplit(self.path)
        parts = [unquote(p) for p in url.path.strip("/").split("/")]
        if len(parts) != 4 or parts[0] != "containerLogs":
            self.send_error(404)
            return
        query = parse_qs(url.query)
        follow = query.get("follow", ["false"])[0] == "true"
        previous = query.get("previous", ["false"])[0] == "true"
        found = self.server.find(parts[1], parts[2], parts[3], previous)
        if found is None or not found.path.exists():
            self.send_error(404, f"container {parts[3]} of pod {parts[1]}/{parts[2]} has no log here")
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            self._stream(found, follow and not previous)
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            pass  # the client stopped following

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _stream(self, found: ContainerLog, follow: bool) -> None:
        with found.path.open("rb") as handle:
            while True:
                data = handle.read(64 * 1024)
                if data:
                    self._chunk(data)
                    continue
                if not follow or self.server.stopping.is_set():
                    return
                if not found.running():
                    rest = handle.read()
                    if rest:
                        self._chunk(rest)
                    return
                time.sleep(0.2)


class KubeletServer(ThreadingHTTPServer):
    """HTTPS on 127.0.0.1 (port chosen by the OS) serving container logs to the API server."""

    daemon_threads = True

    def __init__(
        self, find: LogFinder, cert: Path, key: Path, client_ca: Path, host: str = "127.0.0.1"
    ) -> None:
        super().__init__((host, 0), _Handler)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(client_ca))
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_cert_chain(str(cert), str(key))
        self.socket = context.wrap_socket(self.socket, server_side=True)
        self.find = find
        self.stopping = threading.Event()
        self._thread = threading.Thread(target=self.serve_forever, name="kubelet-api", daemon=True)

    @property
    def port(self) -> int:
        """The port the API server reaches us on."""
        return int(self.server_address[1])

    def start(self) -> None:
        """Serve in a background thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop serving (open follow streams end)."""
        self.stopping.set()
        self.shutdown()
        self.server_close()
