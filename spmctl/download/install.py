"""Fetch one manifest source into the seed's layout, atomically.

Order of work, and why:
1. the destination already has content → a no-op (unless --force);
2. the archive is transferred into the cache dir (resumable `.part`, size/hash checked);
3. it is extracted into a temporary folder *next to* the destination (same file
   system, so the final step is a rename, not a copy);
4. the folder is renamed into place, and only then is the archive deleted.
Any failure removes the temporary folder and any parent folders this run created,
so the destination tree is either complete or untouched.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from ..errors import ConfigError, SpmctlError, one_line
from ..fileio import honour_umask, remove_dead_stages, stage_prefix
from .extract import ArchiveContentError, remove_tree, safe_extract, unwrap_single_folder
from .integrity import RateGuard
from .manifest import Source
from .record import check_replaceable, remember
from .space import ensure_free_space, same_device
from .transfer import CONNECT_TIMEOUT, MIN_RATE, READ_TIMEOUT, DownloadError, Transfer, fetch

if TYPE_CHECKING:
    from rich.console import Console

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def default_cache_dir() -> Path:
    """$SPMCTL_CACHE_DIR, else $XDG_CACHE_HOME/spmctl/downloads, else ~/.cache/spmctl/downloads."""
    explicit = os.environ.get("SPMCTL_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "spmctl" / "downloads"


@dataclass
class Options:
    root: Path
    endpoint: str
    cache_dir: Path = field(default_factory=default_cache_dir)
    force: bool = False
    quiet: bool = False
    retries: int = 3
    backoff: float = 1.0
    token: str | None = None
    timeout: float = READ_TIMEOUT  # seconds without a byte (and the window for min_rate)
    min_rate: int = MIN_RATE  # bytes/s; a trickling server is given up on


@dataclass(frozen=True)
class Result:
    path: Path
    status: Literal["present", "fetched"]


def hub_model_source(repo_id: str, revision: str | None = None) -> Source:
    """A hub model id (`org/name`) as a source fetched into `models/<org>/<name>`."""
    if not HUB_ID.match(repo_id) or ".." in repo_id:
        raise ConfigError(f"not a model name or hub id (org/name): {repo_id!r}")
    return Source(kind="model", name=repo_id, variant=None, fetch="hub", dest=f"models/{repo_id}",
                  repo_id=repo_id, repo_type="model", revision=revision)


def is_present(dest: Path) -> bool:
    return dest.is_dir() and any(dest.iterdir())


def _remove_leftovers(dest: Path) -> None:
    """Staging folders of runs that were killed (their pid is gone) are removed."""
    remove_dead_stages(dest, remove_tree)


@contextmanager
def _staging(dest: Path) -> Iterator[Path]:
    """A temp folder beside `dest`; on failure it and the parents this run made are removed.

    It is made before anything is fetched, so an unwritable destination fails at once.
    """
    missing = [p for p in [dest.parent, *dest.parent.parents] if not p.exists()]
    stage = None
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=stage_prefix(dest), dir=dest.parent))
        honour_umask(stage, directory=True)  # it may become `dest` itself: not mkdtemp's 0700
        yield stage
    except BaseException:
        if stage is not None:
            remove_tree(stage)
        for parent in missing:  # deepest first; only folders still empty
            try:
                parent.rmdir()
            except OSError:
                break
        raise
    remove_tree(stage)  # empty or the remains of an unwrapped archive


def _move_into_place(content: Path, dest: Path) -> None:
    """Rename `content` to `dest`, replacing an existing `dest` only once the new one is ready."""
    old = None
    if dest.exists() or dest.is_symlink():
        old = dest.with_name(stage_prefix(dest, "old-") + "0")
        dest.rename(old)
    try:
        content.rename(dest)
    except OSError:
        if old is not None:
            old.rename(dest)
        raise
    if old is not None:
        remove_tree(old)


def _progress(console: Console):  # type: ignore[no-untyped-def]
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(),
                    TransferSpeedColumn(), TimeRemainingColumn(), console=console, transient=True,
                    disable=console.quiet)


def _cache_target(source: Source, url: str, cache_dir: Path) -> Path:
    # Keyed by the full URL so a mirror and the hub never splice their partial files.
    key = hashlib.sha256(url.encode()).hexdigest()[:12]
    return cache_dir / f"{key}-{source.filename}"


def _install_http(source: Source, dest: Path, opts: Options, console: Console) -> None:
    url = source.resolve_url(opts.endpoint)
    target = _cache_target(source, url, opts.cache_dir)
    job = Transfer(url=url, target=target, size=source.size, sha256=source.sha256, timeout=opts.timeout,
                   min_rate=opts.min_rate)
    if opts.force:
        for stale in (job.target, job.part, job.meta):
            stale.unlink(missing_ok=True)

    def check_space(remaining: int | None) -> None:
        remaining = remaining if remaining is not None else (source.approx_size or 0)
        total = source.size or source.approx_size or remaining
        needs = {opts.cache_dir: remaining}
        # An archive's contents sit beside it until it is deleted (estimated at the archive's
        # size); a plain file is moved, which costs nothing more on the cache's own disk.
        if source.fetch == "archive" or not same_device(opts.cache_dir, dest.parent):
            needs[dest.parent] = needs.get(dest.parent, 0) + total
        ensure_free_space(needs)

    with _staging(dest) as stage:
        with _progress(console) as bar:
            task = bar.add_task(f"{source.label}", total=source.size or source.approx_size)
            archive = fetch(job, retries=opts.retries, backoff=opts.backoff, before_write=check_space,
                            progress=lambda done, total: bar.update(task, completed=done, total=total))
        verb = "extracting" if source.fetch == "archive" else "placing"
        console.print(f"{verb} {source.filename} → {dest}")
        if source.fetch == "archive":
            size = archive.stat().st_size
            try:
                safe_extract(archive, source.archive or "zip", stage, allow_links=source.links,
                             max_bytes=max(int(size * source.max_ratio), 1 << 20))
            except ArchiveContentError:
                archive.unlink(missing_ok=True)  # a bad archive must be fetched again, not reused
                raise
            content = unwrap_single_folder(stage, source.unwrap)
        else:
            content = stage
            shutil.move(archive, stage / source.filename)
        _move_into_place(content, dest)
    archive.unlink(missing_ok=True)  # only now: the extraction is verified and in place


def _hub_timeouts(timeout: float, min_rate: int = MIN_RATE) -> None:
    """Give every request the hub client makes a timeout: its client has none, and some of its
    calls (the repo listing) pass `timeout=None` themselves, so it is set on each request. Every
    reply body is also held to `min_rate` bytes/s over `timeout` seconds, as `fetch` holds its own:
    a server trickling a byte every few seconds never trips a per-read timeout."""
    from huggingface_hub import constants
    from huggingface_hub.utils import _http

    constants.HF_HUB_DOWNLOAD_TIMEOUT = int(max(timeout, 1))
    constants.HF_HUB_ETAG_TIMEOUT = int(max(timeout, 1))
    bound = {"connect": CONNECT_TIMEOUT, "read": timeout, "write": timeout, "pool": timeout}

    def bound_request(request) -> None:  # type: ignore[no-untyped-def]
        given = request.extensions.get("timeout") or {}
        request.extensions["timeout"] = {k: given.get(k) or v for k, v in bound.items()}

    factory = getattr(_http, "default_client_factory", None)
    if factory is None or not hasattr(_http, "set_client_factory"):
        return  # huggingface_hub < 1.0 (requests-based): its own timeouts (constants above) apply

    def rate_guarded(response) -> None:  # type: ignore[no-untyped-def]
        response.stream = _rate_guarded_stream(response, min_rate, timeout)

    def client():  # type: ignore[no-untyped-def]
        made = factory()
        made.event_hooks["request"].append(bound_request)
        made.event_hooks["response"] = [*made.event_hooks.get("response", []), rate_guarded]
        return made

    _http.set_client_factory(client)


def _rate_guarded_stream(response, min_rate: int, window: float):  # type: ignore[no-untyped-def]
    """`response`'s body stream (the hub client's httpx), raising TooSlow below `min_rate` bytes/s."""
    import importlib

    inner = response.stream
    base = importlib.import_module(type(response).__module__.partition(".")[0]).SyncByteStream

    class Guarded(base):  # type: ignore[misc, valid-type]
        def __iter__(self):  # type: ignore[no-untyped-def]
            guard = RateGuard(min_rate, window)
            for chunk in inner:
                guard.add(len(chunk))
                yield chunk

        def close(self) -> None:
            inner.close()

    return Guarded() if isinstance(inner, base) else inner  # an async stream: left as it is


def _install_hub(source: Source, dest: Path, opts: Options, console: Console) -> None:
    from huggingface_hub import snapshot_download

    if source.approx_size:
        ensure_free_space({dest.parent: source.approx_size})
    console.print(f"fetching {source.repo_type or 'model'} {source.repo_id} from {opts.endpoint}")
    _hub_timeouts(opts.timeout, opts.min_rate)
    with _staging(dest) as stage:
        try:
            snapshot_download(source.repo_id or "", repo_type=source.repo_type, revision=source.revision,
                              local_dir=stage, endpoint=opts.endpoint, token=opts.token,
                              etag_timeout=opts.timeout)
        except Exception as exc:  # the hub client raises many types; the user needs one line
            first = one_line(exc)
            if "timed out" in first.lower() or "timeout" in type(exc).__name__.lower():
                first = f"no reply within {opts.timeout:g} s (--timeout)"
            raise DownloadError(f"cannot fetch {source.repo_id} from {opts.endpoint}: {first}") from None
        remove_tree(stage / ".cache")  # huggingface_hub's bookkeeping, not part of the model
        _move_into_place(stage, dest)


_WHY = {errno.ENOSPC: "no space left on device", errno.EROFS: "read-only file system",
        errno.EACCES: "permission denied", errno.EPERM: "operation not permitted",
        errno.ENOTDIR: "a file is in the way", errno.EEXIST: "a file is in the way",
        errno.EFBIG: "file too large", errno.EDQUOT: "disk quota exceeded"}


def install(source: Source, opts: Options, console: Console | None = None) -> Result:
    """Fetch `source` under `opts.root`, or report it as already present."""
    if console is None:
        from rich.console import Console

        console = Console(stderr=True, quiet=opts.quiet)
    dest = opts.root / source.dest
    if dest.exists() and not dest.is_dir():
        raise SpmctlError(f"cannot install into {dest}: a file is in the way (it is left as it is)")
    if is_present(dest):
        if not opts.force:
            return Result(dest, "present")
        check_replaceable(opts.root, source, dest)
    try:
        _remove_leftovers(dest)
        if source.fetch == "hub":
            _install_hub(source, dest, opts, console)
        else:
            _install_http(source, dest, opts, console)
    except OSError as exc:
        where = Path(exc.filename) if exc.filename else dest
        if where.name.startswith(f".{dest.name}.spmctl-"):
            where = where.parent  # the staging folder could not be made: its folder is the problem
        elif ".spmctl-" in str(where) and where.is_relative_to(dest.parent):
            where = dest  # a file inside the staging folder: the user knows the destination
        why = _WHY.get(exc.errno or 0, exc.strerror or str(exc))
        raise SpmctlError(f"cannot write {where}: {why}; nothing was installed") from None
    warning = remember(opts.root, source, dest)
    if warning:
        console.print(warning)
    return Result(dest, "fetched")
