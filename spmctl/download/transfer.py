"""Resumable HTTP transfers with `requests`: a `.part` file, Range requests, verification.

The partial file lives in the cache directory, never in the destination, so an
interrupted or failed transfer leaves the user's tree untouched and the next run
resumes where this one stopped.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from ..errors import SpmctlError, one_line
from .integrity import RateGuard, TooSlow, published_sha256, resume_problem, validator_of, within_deadline
from .space import human_size

CHUNK = 1 << 20
CONNECT_TIMEOUT = 15.0
READ_TIMEOUT = 60.0
MIN_RATE = 1024
MAX_RESTARTS = 2  # a server that keeps answering ranges wrongly is given up on


class DownloadError(SpmctlError):
    """A transfer failed (unreachable, HTTP error, size or hash mismatch)."""


@dataclass
class Transfer:
    """Where one URL is fetched to, and what it must turn out to be."""

    url: str
    target: Path  # the completed file; `<target>.part` while in flight
    size: int | None = None
    sha256: str | None = None
    timeout: float = READ_TIMEOUT  # no byte for this long, or too few over it (min_rate): give up
    min_rate: int = MIN_RATE  # bytes/s, averaged over `timeout` seconds; 0 turns the check off

    @property
    def part(self) -> Path:
        return self.target.with_name(self.target.name + ".part")

    @property
    def meta(self) -> Path:
        # The validator (ETag / Last-Modified) of the partial data, sent as If-Range on
        # resume so a file changed on the server restarts instead of being spliced.
        return self.target.with_name(self.target.name + ".part.json")


def _reason(exc: Exception) -> str:
    """A short cause for a connection error (requests' own message spans a paragraph)."""
    text = str(exc)
    if isinstance(exc, TooSlow):
        return text
    match = re.search(r"\[Errno -?\d+\] ([^'\")]+)", text)
    if match:
        return match.group(1).strip().lower()
    for needle, said in (("Connection refused", None), ("Name or service not known", None), ("timed out", None),
                         ("Connection reset", None), ("Connection aborted", None), ("Read timed out", None),
                         ("IncompleteRead", "the connection closed early")):
        if needle.lower() in text.lower():
            return said or needle.lower()
    return type(exc).__name__


def _total_from(response) -> int | None:  # type: ignore[no-untyped-def]
    content_range = response.headers.get("Content-Range", "")
    match = re.match(r"bytes (?:\d+-\d+|\*)/(\d+)", content_range)
    if match:
        return int(match.group(1))
    length = response.headers.get("Content-Length")
    return int(length) if length and length.isdigit() and response.status_code == 200 else None


def _hash_prefix(path: Path) -> hashlib._Hash:  # type: ignore[name-defined]
    hasher = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            hasher.update(block)
    return hasher


def _chunks(resp) -> Iterator[bytes]:  # type: ignore[no-untyped-def]
    """The body as it arrives; `read1` hands over every byte received before a drop,
    where `iter_content` would discard the last partial chunk (less to fetch again on resume)."""
    read1 = getattr(resp.raw, "read1", None)  # urllib3 >= 2
    if read1 is None:
        yield from resp.iter_content(CHUNK)
        return
    while True:
        block = read1(CHUNK, decode_content=True)
        if not block:
            return
        yield block


def _write_all(out, chunk: bytes, part: Path) -> None:  # type: ignore[no-untyped-def]
    view = memoryview(chunk)
    try:
        while view:
            view = view[out.write(view):]
    except OSError as exc:  # name the file (a bare ENOSPC from write() has none)
        raise OSError(exc.errno, exc.strerror, str(part)) from None


def fetch(
    job: Transfer,
    *,
    progress: Callable[[int, int | None], None] | None = None,
    before_write: Callable[[int | None], None] | None = None,
    retries: int = 3,
    backoff: float = 1.0,
) -> Path:
    """Download `job.url` to `job.target`, resuming `job.part`; verify size and sha256.

    `progress(done, total)` reports bytes; `before_write(remaining)` runs once the
    size is known and before any byte is written (the free-space check).
    A dropped connection is retried (resuming) as long as each attempt makes progress;
    a resumed reply that does not continue the same file starts the transfer over.
    """
    import requests
    import urllib3

    if job.target.exists():
        _verify(job, job.target, None, job.sha256)
        return job.target
    job.target.parent.mkdir(parents=True, exist_ok=True)
    host = urlsplit(job.url).netloc
    hasher = None
    attempts_left, restarts = retries, 0
    checked_space = False
    announced = False  # the server said how long the file is
    published = None  # the hub's SHA-256 for the file
    with requests.Session() as session:
        while True:
            have = job.part.stat().st_size if job.part.exists() else 0
            meta = _read_meta(job)
            headers = {"Accept-Encoding": "identity"}  # byte ranges must refer to the stored bytes
            if have:
                headers["Range"] = f"bytes={have}-"
                if meta.get("validator"):
                    headers["If-Range"] = meta["validator"]
            received = 0
            try:
                response = within_deadline(  # a server may trickle its headers too
                    job.timeout, lambda sent=headers: session.get(job.url, headers=sent, stream=True,
                                                                  timeout=(CONNECT_TIMEOUT, job.timeout)),
                    discard=lambda late: late.close())
                with response as resp:
                    if resp.status_code == 416 and have:
                        # Nothing left to send: the part is already whole (or the file shrank).
                        total = _total_from(resp)
                        if total == have:
                            announced, published = True, meta.get("sha256")
                            break
                        _discard(job)
                        hasher = None
                        continue
                    if resp.status_code == 404:
                        raise DownloadError(f"not found (HTTP 404): {job.url}")
                    if resp.status_code not in (200, 206):
                        raise DownloadError(f"HTTP {resp.status_code} {resp.reason} from {host}: {job.url}")
                    published = published_sha256(resp) or meta.get("sha256")
                    problem = resume_problem(resp.status_code, resp.headers, have, meta.get("validator"))
                    if problem:
                        restarts += 1
                        if restarts > MAX_RESTARTS:
                            raise DownloadError(f"cannot download from {host}: {problem}, again after "
                                                f"starting over {MAX_RESTARTS} times")
                        _discard(job)  # never splice two versions: start over from byte 0
                        hasher = None
                        continue
                    resuming = resp.status_code == 206 and have > 0
                    if not resuming:
                        have, hasher = 0, None
                    total = _total_from(resp)
                    announced = total is not None
                    if job.size is not None and total is not None and total != job.size:
                        raise DownloadError(
                            f"{job.url}: server reports {total} bytes, manifest expects {job.size}")
                    total = total if total is not None else job.size
                    if before_write and not checked_space:
                        before_write(None if total is None else total - have)
                        checked_space = True
                    if hasher is None:
                        hasher = _hash_prefix(job.part) if resuming else hashlib.sha256()
                    _write_meta(job, resp.headers, published)
                    guard = RateGuard(job.min_rate, job.timeout)
                    # Unbuffered: a full disk fails the write that hit it, naming the file.
                    with job.part.open("ab" if resuming else "wb", buffering=0) as out:
                        if progress:
                            progress(have, total)
                        for chunk in _chunks(resp):
                            _write_all(out, chunk, job.part)
                            hasher.update(chunk)
                            received += len(chunk)
                            if progress:
                                progress(have + received, total)
                            guard.add(len(chunk))
                    if total is not None and have + received < total:
                        raise requests.ConnectionError("IncompleteRead: connection closed early")
                break
            except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
                    urllib3.exceptions.HTTPError, TooSlow) as exc:
                # Retry only while attempts make progress: an unreachable host fails at once.
                if received == 0 or attempts_left <= 0:
                    done = job.part.stat().st_size if job.part.exists() else 0
                    kept = f" ({human_size(done)} kept for resume)" if done else ""
                    raise DownloadError(f"cannot download from {host}: {_reason(exc)}{kept}") from None
                attempts_left -= 1
                time.sleep(backoff)
            except requests.RequestException as exc:  # a malformed URL, too many redirects, ...
                first = one_line(exc)
                raise DownloadError(f"cannot download {job.url}: {first}") from None
    expected = job.sha256 or published
    if job.size is None and not announced and not expected:
        # A body that ends when the connection closes may have been cut anywhere.
        _discard(job)
        raise DownloadError(f"{job.url}: the server sent no length and no sha256 is known (manifest or "
                            "hub); the download cannot be verified and was discarded")
    _verify(job, job.part, hasher, expected)
    job.part.replace(job.target)
    job.meta.unlink(missing_ok=True)
    return job.target


def _discard(job: Transfer) -> None:
    job.part.unlink(missing_ok=True)
    job.meta.unlink(missing_ok=True)


def _verify(job: Transfer, path: Path, hasher, sha256: str | None) -> None:  # type: ignore[no-untyped-def]
    """Check size and sha256; a file that fails is deleted (resuming it would not help)."""
    size = path.stat().st_size
    problem = None
    if job.size is not None and size != job.size:
        problem = f"size mismatch: got {size} bytes, expected {job.size}"
    elif sha256:
        digest = (hasher or _hash_prefix(path)).hexdigest()
        if digest != sha256:
            source = "expected" if sha256 == job.sha256 else "the hub publishes"
            problem = f"sha256 mismatch: got {digest}, {source} {sha256}"
    if problem:
        path.unlink(missing_ok=True)
        job.meta.unlink(missing_ok=True)
        raise DownloadError(f"{job.url}: {problem}; the download was discarded")


def _read_meta(job: Transfer) -> dict[str, str]:
    try:
        data = json.loads(job.meta.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("url") != job.url:
        return {}
    return {k: v for k, v in data.items() if isinstance(v, str)}


def _write_meta(job: Transfer, headers, published: str | None) -> None:  # type: ignore[no-untyped-def]
    """Keep what the partial data came with: its validator (sent as If-Range) and published hash."""
    meta = {"url": job.url, "validator": validator_of(headers), "sha256": published}
    job.meta.write_text(json.dumps({k: v for k, v in meta.items() if v}))
