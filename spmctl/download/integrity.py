"""What a transfer may trust: resumed ranges, validators, published hashes, a minimum rate.

- A `206` continues the partial file only when its `Content-Range` starts exactly where
  the file ends and its validator (ETag / Last-Modified) is the one the partial data
  came with; anything else would splice two files, so the transfer starts over.
- The hub publishes the SHA-256 of large (LFS) files in `X-Linked-Etag` on its
  redirect; it is used when the manifest gives no hash.
- A server that trickles bytes never trips a read timeout, so the rate is measured too.
"""

from __future__ import annotations

import re
import signal
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from .space import human_size

SHA256 = re.compile(r"^[0-9a-f]{64}$")
T = TypeVar("T")
PUBLISHED_HASH_HEADERS = ("X-Linked-Etag",)  # huggingface.co and its mirrors, on /resolve/ redirects


class TooSlow(Exception):
    """Fewer bytes than the minimum rate arrived over a whole window, or the headers took too long."""


def within_deadline(seconds: float, call: Callable[[], T], discard: Callable[[T], object] | None = None) -> T:
    """`call()` (connecting and reading a reply's headers), or TooSlow once it outlasts `seconds`.

    A per-read timeout never fires on a server that sends its headers a byte at a time, and
    requests has no overall deadline. On the main thread a real-time timer (SIGALRM) interrupts
    the blocked read. Elsewhere (a library user's worker thread), where no signal can arrive, the
    call runs in a helper thread that is given up on at the deadline: its reply, should one still
    come, is handed to `discard` (closed), and the stalled connection ends when the server does.
    """
    usable = (threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer")
              and signal.getsignal(signal.SIGALRM) in (signal.SIG_DFL, None))
    too_slow = f"no complete reply within {seconds:g} s (--timeout)"
    if usable:
        def expire(_signum: int, _frame: object) -> None:
            raise TooSlow(too_slow)

        signal.signal(signal.SIGALRM, expire)
        signal.setitimer(signal.ITIMER_REAL, seconds)
        try:
            return call()
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, signal.SIG_DFL)

    lock = threading.Lock()
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            value = call()
        except BaseException as exc:  # handed to the caller's thread as it is
            box["error"] = exc
            return
        with lock:
            if box.get("late"):
                if discard is not None:
                    discard(value)
                return
            box["value"] = value

    helper = threading.Thread(target=run, name="spmctl-reply-deadline", daemon=True)
    helper.start()
    helper.join(seconds)
    with lock:
        if "value" not in box and "error" not in box:
            box["late"] = True
            raise TooSlow(too_slow)
    if "error" in box:
        raise box["error"]
    return box["value"]


def content_range(value: str | None) -> tuple[int, int, int | None] | None:
    """`bytes START-END/TOTAL` (TOTAL may be `*`) as numbers, or None when malformed."""
    match = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+|\*)", (value or "").strip())
    if not match or int(match.group(2)) < int(match.group(1)):
        return None
    total = None if match.group(3) == "*" else int(match.group(3))
    return int(match.group(1)), int(match.group(2)), total


def validator_of(headers) -> str | None:  # type: ignore[no-untyped-def]
    """The strong validator to send as If-Range (a weak ETag may not be, RFC 9110)."""
    etag = headers.get("ETag")
    if etag:
        return None if etag.startswith("W/") else etag
    return headers.get("Last-Modified")


def resume_problem(status: int, headers, have: int, validator: str | None) -> str | None:  # type: ignore[no-untyped-def]
    """Why a reply to `Range: bytes=<have>-` cannot be appended to the partial file, or None."""
    if status != 206:
        return None
    rng = content_range(headers.get("Content-Range"))
    if rng is None:
        return "a partial reply without a valid Content-Range"
    if rng[0] != have:
        return f"the server resent from byte {rng[0]} instead of {have}"
    now = validator_of(headers)
    if validator and now and now != validator:
        return "the file changed on the server"
    return None


def published_sha256(response) -> str | None:  # type: ignore[no-untyped-def]
    """The SHA-256 the hub publishes for the file, from the reply or a redirect before it."""
    for reply in [*getattr(response, "history", []), response]:
        for name in PUBLISHED_HASH_HEADERS:
            value = (reply.headers.get(name) or "").strip()
            value = value.removeprefix("W/").strip('"').lower()
            if SHA256.match(value):
                return value
    return None


class RateGuard:
    """Raise TooSlow when fewer than `min_rate` bytes/s arrive over `window` seconds."""

    def __init__(self, min_rate: int, window: float) -> None:
        self.min_rate, self.window = min_rate, window
        self.start, self.bytes = time.monotonic(), 0

    def add(self, n: int) -> None:
        self.bytes += n
        elapsed = time.monotonic() - self.start
        if elapsed < self.window or self.min_rate <= 0:
            return
        rate = self.bytes / elapsed
        if rate < self.min_rate:
            raise TooSlow(f"too slow: {human_size(int(rate))}/s over {elapsed:.0f} s, below the minimum "
                          f"{human_size(self.min_rate)}/s (--min-rate, --timeout)")
        self.start, self.bytes = time.monotonic(), 0
