"""A tiny HTTP file server on 127.0.0.1 for download tests: Range requests, ETags, If-Range,
and misbehaviour on demand (cut transfers, wrong ranges, new versions, close-delimited bodies,
trickling, hub-style redirects with published hashes, silence)."""

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
    # misbehaviour, per path
    range_from_zero: set[str] = field(default_factory=set)  # a Range gets 206 with the body from byte 0
    ignore_if_range: set[str] = field(default_factory=set)  # 206 even when If-Range names an old version
    close_delimited: set[str] = field(default_factory=set)  # no Content-Length: the body ends at close
    trickle: dict[str, float] = field(default_factory=dict)  # seconds between single bytes of the body
    trickle_headers: dict[str, float] = field(default_factory=dict)  # ... of the status line and headers
    headers: dict[str, dict[str, str]] = field(default_factory=dict)  # extra response headers
    redirects: dict[str, tuple[str, dict[str, str]]] = field(default_factory=dict)  # path -> (to, headers)
    silent: bool = False  # accept connections, answer nothing for 8 s, then close
    stop: threading.Event = field(default_factory=threading.Event)

    def gets(self, path: str) -> list[str | None]:
        return [rng for p, rng in self.requests if p == path]


def etag_of(data: bytes) -> str:
    return '"' + hashlib.sha256(data).hexdigest()[:16] + '"'


def _handler(state: FileServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # keep pytest output clean
            pass

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            if state.silent:
                state.stop.wait(8)
                self.close_connection = True
                return
            path = self.path.split("?", 1)[0].lstrip("/")
            range_header = self.headers.get("Range")
            state.requests.append((path, range_header))
            if path in state.redirects:
                target, extra = state.redirects[path]
                self._reply(302, b"", {"Location": f"{state.url}/{target}", **extra})
                return
            data = state.files.get(path)
            if data is None:
                self._reply(404, b"not found")
                return
            etag = etag_of(data)
            start, end, status = 0, len(data) - 1, 200
            match = re.fullmatch(r"bytes=(\d+)-(\d*)", range_header or "")
            if_range = self.headers.get("If-Range")
            stale = if_range is not None and if_range != etag and path not in state.ignore_if_range
            if match and not stale:
                start = int(match.group(1))
                end = int(match.group(2)) if match.group(2) else len(data) - 1
                if start >= len(data):
                    self._reply(416, b"", {"Content-Range": f"bytes */{len(data)}"})
                    return
                status = 206
                if path in state.range_from_zero:
                    start = 0
            body = data[start:end + 1]
            headers = {"ETag": etag, "Accept-Ranges": "bytes", **state.headers.get(path, {})}
            if status == 206:
                headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            cut = state.cut_after.pop(path, None)
            if path in state.close_delimited:
                self.send_response(status)
                for key, value in {**headers, "Connection": "close"}.items():
                    self.send_header(key, value)
                self.end_headers()
                self._send(path, body[:cut] if cut is not None else body)
                self.close_connection = True
                return
            if path in state.trickle_headers:
                head = f"HTTP/1.1 {status} OK\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                self._send(path, head, state.trickle_headers[path])
                self._send(path, body)
                return
            if cut is None:
                self._head(status, len(body), headers)
                self._send(path, body)
                return
            # Announce the full length, send only part of it, then drop the connection.
            self._head(status, len(body), headers)
            self._send(path, body[:cut])
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)

        def _send(self, path: str, body: bytes, delay: float | None = None) -> None:
            delay = delay if delay is not None else state.trickle.get(path)
            if delay is None:
                self.wfile.write(body)
                self.wfile.flush()
                return
            for i in range(len(body)):
                if state.stop.is_set():
                    return
                try:
                    self.wfile.write(body[i:i + 1])
                    self.wfile.flush()
                except OSError:  # the client gave up
                    return
                state.stop.wait(delay)  # not time.sleep: tests patch it to skip retry waits

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
        state.stop.set()  # trickling and silent handlers end
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def closed_port() -> int:
    """A port on 127.0.0.1 nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
