"""Crash-safe, permission-honest writes shared by every command (no torch import).

An output is written to a temporary name in its own folder, flushed to disk (fsync), given the
permissions the user's umask asks for, renamed onto its final name, and the folder is fsynced so
the rename itself survives a power cut. A crash or Ctrl-C therefore leaves the old file or the new
one, never half of one. `tempfile` creates files 0600 and folders 0700 whatever the umask: left as
they are, teammates, a web UI's service account or another node could not read the outputs.

A failure to write (a file in the way, a folder given where a file goes, a read-only place, a full
disk) is one `SpmctlError` line naming the path and the problem.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from .errors import SpmctlError

TEMP_SUFFIX = ".tmp"


def current_umask() -> int:
    """The process umask, read without changing it where Linux allows (no race with other threads)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def honour_umask(path: Path, directory: bool = False) -> None:
    """Give a temp file (0600) or temp folder (0700) the mode a plain open()/mkdir() would have."""
    os.chmod(path, (0o777 if directory else 0o666) & ~current_umask())


def fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable; some file systems cannot fsync a folder: nothing to do there."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


# what safetensors, torch and others say about an I/O failure without raising OSError
_IO_TEXT = re.compile(r'message: "([^"]+)"|(No space left on device|File too large|Disk quota exceeded|'
                      r"Read-only file system|Permission denied|file write failed)")


def write_problem(exc: BaseException) -> str | None:
    """The I/O problem behind `exc` in a few words, or None when it is not an I/O failure."""
    if isinstance(exc, OSError):
        if exc.errno == errno.EISDIR:
            return "is a folder (a file name was expected)"
        if exc.errno in (errno.ENOTDIR, errno.EEXIST):
            return "a file is in the way (a folder was expected)"
        return exc.strerror or str(exc) or type(exc).__name__
    match = _IO_TEXT.search(str(exc))
    return (match.group(1) or match.group(2)) if match else None


def write_error(path: Path, exc: BaseException) -> SpmctlError:
    return SpmctlError(f"{path}: cannot write: {write_problem(exc) or exc}")


def make_parents(path: Path) -> list[Path]:
    """Create `path`'s missing parent folders; returns those created (deepest first) so a failed
    command can remove them again. A file in the way is one line naming it."""
    missing = [p for p in [path.parent, *path.parent.parents] if not p.exists()]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        blocker = next((p for p in reversed([path.parent, *path.parent.parents]) if p.is_file()), path.parent)
        raise write_error(blocker, exc) from None
    return missing


def remove_empty(folders: list[Path]) -> None:
    """Remove folders a failed command created, deepest first, as long as they are empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            break


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Call `write(tmp_path)`, then fsync, chmod per umask and rename onto `path` (same folder, so
    the rename is atomic); on any failure the temporary file goes and `path` is untouched."""
    path = Path(path)
    if path.is_dir():
        raise SpmctlError(f"{path}: cannot write: is a folder (a file name was expected)")
    created = make_parents(path)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    except OSError as exc:
        remove_empty(created)
        raise write_error(path, exc) from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        fsync_file(tmp)
        honour_umask(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        remove_empty(created)  # a failed write leaves no empty folder behind
        if isinstance(exc, Exception) and write_problem(exc) is not None:
            raise write_error(path, exc) from None
        raise
    fsync_dir(path.parent)


def write_text_atomic(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def settle_tree(folder: Path) -> None:
    """Before a staged folder is renamed into place: fsync every file and folder under it, and give
    each the umask's mode (libraries writing into it may use temp files of their own: 0600)."""
    for sub, _, files in os.walk(folder):
        for name in files:
            fsync_file(Path(sub) / name)
            honour_umask(Path(sub) / name)
        honour_umask(Path(sub), directory=True)
        fsync_dir(Path(sub))


def stage_prefix(dest: Path, kind: str = "") -> str:
    """The name a staging folder for `dest` starts with. The pid in it lets a later run tell a
    killed run's leftovers (`remove_dead_stages`) from a live one's."""
    return f".{dest.name}.spmctl-{kind}{os.getpid()}-"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_dead_stages(dest: Path, remove: Callable[[Path], None] | None = None) -> list[Path]:
    """Remove the staging folders for `dest` (`stage_prefix`) whose process is gone: what a killed
    export or download left beside it. A live run's stays (two runs may write beside one folder)."""
    if not dest.parent.is_dir():
        return []
    pattern = re.compile(rf"^\.{re.escape(dest.name)}\.spmctl-(?:[a-z]+-)?(\d+)-")
    removed = []
    for entry in dest.parent.iterdir():
        match = pattern.match(entry.name)
        if match and not pid_alive(int(match.group(1))):
            (remove or (lambda p: shutil.rmtree(p, ignore_errors=True)))(entry)
            removed.append(entry)
    return removed


def temp_dir(beside: Path) -> Path:
    """A staging folder beside `beside` (same file system, so it can be renamed into place), with
    the umask's mode rather than mkdtemp's 0700. A killed run's is removed by the next one
    (`remove_dead_stages`)."""
    try:
        stage = Path(tempfile.mkdtemp(prefix=stage_prefix(beside), dir=beside.parent))
    except OSError as exc:
        raise write_error(beside, exc) from None
    honour_umask(stage, directory=True)
    return stage


def remove_leftovers(folder: Path, names: Callable[[str], bool] | None = None) -> list[Path]:
    """Remove temporary files (and staging folders) that a killed writer left in `folder`:
    `.<name>.<random>.tmp` files, and `.<name>.<random>` folders whose `<name>` passes `names`.
    Call it only while holding the folder's lock, so nothing removed is still being written."""
    removed = []
    with contextlib.suppress(OSError):
        for entry in folder.iterdir():
            if not entry.name.startswith("."):
                continue
            if entry.is_file() and entry.name.endswith(TEMP_SUFFIX):
                entry.unlink(missing_ok=True)
                removed.append(entry)
            elif entry.is_dir() and not entry.is_symlink() and names is not None and names(entry.name[1:]):
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry)
    return removed
