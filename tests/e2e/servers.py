"""Small real servers on loopback for end-to-end tests."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class RecordingServer:
    """An HTTP server that answers 200 and records every request (method, path, body)."""

    url: str
    requests: list[tuple[str, str, bytes]] = field(default_factory=list)
    hits: threading.Condition = field(default_factory=threading.Condition)
    held_paths: set[str] = field(default_factory=set)
    """Requests to these paths are answered only once ``release`` is set (at most 120 s later)."""
    release: threading.Event = field(default_factory=threading.Event)

    def count(self, path: str) -> int:
        """How many requests reached ``path``."""
        with self.hits:
            return sum(1 for _, p, _ in self.requests if p == path)


@contextmanager
def serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """Serve ``handler`` on a free loopback port in a thread; yield its base URL, stop afterwards."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


@contextmanager
def recording_server(status: int = 200) -> Iterator[RecordingServer]:
    """Run a RecordingServer on 127.0.0.1 for the duration of the block."""
    server_ref: list[RecordingServer] = []

    class Handler(BaseHTTPRequestHandler):
        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            recorder = server_ref[0]
            with recorder.hits:
                recorder.requests.append((self.command, self.path, body))
                recorder.hits.notify_all()
            if self.path in recorder.held_paths:
                recorder.release.wait(120)
            payload = b'{"status": "ok"}'
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

        def log_message(self, format: str, *args: object) -> None:
            pass

    with serving(Handler) as url:
        server_ref.append(RecordingServer(url=url))
        yield server_ref[0]
