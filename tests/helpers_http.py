"""A tiny HTTP file server on 127.0.0.1 for download tests: Range requests, ETags, cut transfers."""

from __future__ import annotations

import hashlib
import re
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class FileServer:
    files: dict[str, bytes] = field(default_factory=dict)
    # path -> bytes to send before dropping the connection; applies to the next request only
    cut_after: dict[str, int] = field(default_factory=dict)
    # (path, Range header or None) for every GET, in order
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    url: str = ""

    def gets(self, path: str) -> list[str | None]:
        return [rng for p, rng in self.requests if p == path]


def _handler(state: FileServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # keep pytest output clean
            pass

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            path = self.path.split("?", 1)[0].lstrip("/")
            range_header = self.headers.get("Range")
            state.requests.append((path, range_header))
            data = state.files.get(path)
            if data is None:
                self._reply(404, b"not found")
                return
            etag = '"' + hashlib.sha256(data).hexdigest()[:16] + '"'
            start, end, status = 0, len(data) - 1, 200
            match = re.fullmatch(r"bytes=(\d+)-(\d*)", range_header or "")
            if match:
                start = int(match.group(1))
                end = int(match.group(2)) if match.group(2) else len(data) - 1
                if start >= len(data):
                    self._reply(416, b"", {"Content-Range": f"bytes */{len(data)}"})
                    return
                status = 206
            body = data[start:end + 1]
            headers = {"ETag": etag, "Accept-Ranges": "bytes"}
            if status == 206:
                headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            cut = state.cut_after.pop(path, None)
            if cut is None:
                self._reply(status, body, headers)
                return
            # Announce the full length, send only part of it, then drop the connection.
            self._head(status, len(body), headers)
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)

        def _head(self, status: int, length: int, headers: dict[str, str]) -> None:
            self.send_response(status)
            self.send_header("Content-Length", str(length))
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()

        def _reply(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
            self._head(status, len(body), headers or {})
            self.wfile.write(body)

    return Handler


@contextmanager
def serve(files: dict[str, bytes] | None = None) -> Iterator[FileServer]:
    """Serve `files` (URL path -> bytes) on 127.0.0.1 at a free port for the block's duration."""
    state = FileServer(files=dict(files or {}))
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    server.daemon_threads = True
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    # A short poll interval: shutdown() waits for one, and tests start many servers.
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def closed_port() -> int:
    """A port on 127.0.0.1 nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
