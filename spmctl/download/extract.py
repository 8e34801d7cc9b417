"""Safe extraction of zip and tar archives, written by spmctl itself (no `extractall`).

Every member is checked before anything is written: no absolute paths, no `..`, no
device files, a bound on the total size (a zip bomb is refused up front, and the
bytes actually written are counted too, since a zip header can lie about sizes).

Links are refused unless the manifest entry opts in (`links: true`): none of the
seed's sources needs them, and every known escape (CVE-2025-4517's PATH_MAX chain,
`l1 -> .` chains) goes through one. When allowed, links are created *after* all
files and folders, no member is ever written through a link, and each link is then
resolved physically, one component at a time with `readlink`, refusing any that
leaves the destination; `Path.resolve()`/`realpath` are not used because they stop
resolving silently on a path longer than PATH_MAX. Python's tar `data` filter is not
relied on either: its behaviour depends on the interpreter's patch level.
"""

from __future__ import annotations

import errno
import os
import posixpath
import re
import shutil
import stat
import tarfile
import zipfile
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import IO, Literal

from ..errors import SpmctlError
from .space import ensure_free_space, human_size

COPY_CHUNK = 1 << 20
MAX_LINK_HOPS = 40  # the kernel's own limit on symlinks followed in one lookup (Linux)


class ArchiveContentError(SpmctlError):
    """The archive itself is bad (corrupt, not an archive, unsafe): fetching it again is needed."""


class UnsafeArchiveError(ArchiveContentError):
    """The archive would write outside its destination, holds links or special files, or is too large."""


@dataclass(frozen=True)
class Member:
    name: str  # as stored, for messages
    rel: str  # the cleaned relative POSIX path ('' for the archive root)
    kind: Literal["file", "dir", "symlink", "hardlink"]
    size: int = 0
    executable: bool = False
    target: str = ""  # link text (symlink: relative to its folder; hard link: to the archive root)
    open: Callable[[], IO[bytes]] | None = None


def _clean(name: str) -> str:
    """The member's relative POSIX path, or an UnsafeArchiveError if it could escape."""
    # Backslashes are separators on Windows; treat them as such so `..\\x` is caught everywhere.
    unified = name.replace("\\", "/")
    if unified.startswith("/") or re.match(r"^[A-Za-z]:", unified):
        raise UnsafeArchiveError(f"unsafe archive member {name!r}: absolute path")
    parts = [p for p in unified.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchiveError(f"unsafe archive member {name!r}: '..' escapes the destination")
    return "/".join(parts)


def _check_link_text(member: Member) -> None:
    """A link's text must stay inside the destination (the physical check comes after extraction)."""
    unified = member.target.replace("\\", "/")
    if unified.startswith("/") or re.match(r"^[A-Za-z]:", unified):
        raise UnsafeArchiveError(f"unsafe archive member {member.name!r}: link to absolute path {member.target!r}")
    base = "" if member.kind == "hardlink" else posixpath.dirname(member.rel)
    resolved = posixpath.normpath(posixpath.join(base, unified))
    if resolved == ".." or resolved.startswith("../"):
        raise UnsafeArchiveError(f"unsafe archive member {member.name!r}: link {member.target!r} points outside")


def _check_budget(total: int, max_bytes: int) -> None:
    if total > max_bytes:
        raise UnsafeArchiveError(
            f"archive expands to more than the allowed {human_size(max_bytes)}; refusing to extract")


def _zip_members(zf: zipfile.ZipFile) -> list[Member]:
    out = []
    for info in zf.infolist():
        mode = info.external_attr >> 16
        rel = _clean(info.filename)
        if stat.S_ISLNK(mode):
            target = zf.read(info).decode("utf-8", "replace")
            out.append(Member(info.filename, rel, "symlink", target=target))
        elif info.is_dir():
            out.append(Member(info.filename, rel, "dir"))
        elif stat.S_IFMT(mode) not in (0, stat.S_IFREG):  # some writers store permission bits only
            raise UnsafeArchiveError(f"unsafe archive member {info.filename!r}: special file")
        else:
            out.append(Member(info.filename, rel, "file", info.file_size, bool(mode & 0o111),
                              open=partial(zf.open, info)))
    return out


def _tar_members(tf: tarfile.TarFile) -> list[Member]:
    out = []
    for m in tf.getmembers():
        rel = _clean(m.name)
        if m.issym():
            out.append(Member(m.name, rel, "symlink", target=m.linkname))
        elif m.islnk():
            out.append(Member(m.name, rel, "hardlink", target=m.linkname))
        elif m.isdir():
            out.append(Member(m.name, rel, "dir"))
        elif m.isfile():
            out.append(Member(m.name, rel, "file", m.size, bool(m.mode & 0o111),
                              open=partial(tf.extractfile, m)))  # type: ignore[arg-type]
        else:
            raise UnsafeArchiveError(f"unsafe archive member {m.name!r}: special file")
    return out


def _physical_path(root: Path, member: Member, rel: str, *, create: bool) -> Path:
    """`root/rel`, checking that none of its folders is a link or a file (creating them if asked)."""
    here = root
    parts = rel.split("/")
    for part in parts[:-1]:
        here = here / part
        try:
            st = os.lstat(here)
        except FileNotFoundError:
            if not create:
                raise
            here.mkdir()
            continue
        if stat.S_ISLNK(st.st_mode):
            raise UnsafeArchiveError(f"unsafe archive member {member.name!r}: its folder {part!r} is a link")
        if not stat.S_ISDIR(st.st_mode):
            raise UnsafeArchiveError(f"unsafe archive member {member.name!r}: {part!r} is not a folder")
    return here / parts[-1]


def resolves_inside(root: Path, rel: str) -> bool:
    """Whether `root/rel` stays under `root` when every link on the way is followed.

    Resolution is done here, component by component, so a path too long for the OS
    (ENAMETOOLONG) or a loop is an answer ("no"), never a silently unresolved path.
    """
    pending = deque(rel.split("/"))
    current: list[str] = []
    hops = 0
    while pending:
        part = pending.popleft()
        if part in ("", "."):
            continue
        if part == "..":
            if not current:
                return False
            current.pop()
            continue
        candidate = os.path.join(root, *current, part)
        try:
            st = os.lstat(candidate)
        except FileNotFoundError:
            current.append(part)  # dangling: nothing further can lead out physically
            continue
        except OSError:  # ENAMETOOLONG, ELOOP, ENOTDIR...: not provably inside
            return False
        if not stat.S_ISLNK(st.st_mode):
            current.append(part)
            continue
        hops += 1
        text = os.readlink(candidate)
        if hops > MAX_LINK_HOPS or text.startswith("/"):
            return False
        pending.extendleft(reversed(text.split("/")))
    return True


def _clash(member: Member) -> UnsafeArchiveError:
    return UnsafeArchiveError(f"unsafe archive member {member.name!r}: clashes with another member of the same name")


def _write_file(root: Path, member: Member, written: int, max_bytes: int) -> int:
    out = _physical_path(root, member, member.rel, create=True)
    # O_NOFOLLOW + O_EXCL: never write through a link, never into an earlier member's file.
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(out, flags, 0o777 if member.executable else 0o666)  # the umask applies
    except FileExistsError:
        raise _clash(member) from None
    assert member.open is not None
    with member.open() as src, os.fdopen(fd, "wb") as dst:
        for block in iter(lambda: src.read(COPY_CHUNK), b""):
            written += len(block)
            _check_budget(written, max_bytes)
            dst.write(block)
    return written


def _make_link(root: Path, member: Member) -> None:
    out = _physical_path(root, member, member.rel, create=True)
    try:
        if member.kind == "symlink":
            os.symlink(member.target, out)
            return
        # A hard link may only name a regular file of this archive, reached without links.
        src = _physical_path(root, member, _clean(member.target), create=False)
        if not stat.S_ISREG(os.lstat(src).st_mode):
            raise UnsafeArchiveError(f"unsafe archive member {member.name!r}: hard link to a non-file")
        os.link(src, out, follow_symlinks=False)
    except FileExistsError:
        raise _clash(member) from None
    except FileNotFoundError:
        raise UnsafeArchiveError(f"unsafe archive member {member.name!r}: hard link to a missing file") from None


def _extract(members: list[Member], dest: Path, max_bytes: int, allow_links: bool) -> None:
    links = [m for m in members if m.kind in ("symlink", "hardlink")]
    for link in links:
        if not allow_links:
            what = "symbolic link" if link.kind == "symlink" else "hard link"
            raise UnsafeArchiveError(f"archive member {link.name!r} is a {what}; links are refused "
                                     "(a manifest entry may allow them with `links: true`)")
        _check_link_text(link)
    declared = sum(m.size for m in members)
    _check_budget(declared, max_bytes)
    ensure_free_space({dest: declared})
    root = dest.absolute()
    written = 0
    for member in members:
        if not member.rel:
            continue
        if member.kind == "dir":
            _physical_path(root, member, member.rel + "/.", create=True)  # the folder and its parents
        elif member.kind == "file":
            written = _write_file(root, member, written, max_bytes)
    # Links last: nothing above was written through one, and each is checked where it landed.
    for link in links:
        _make_link(root, link)
    for link in links:
        if link.kind == "symlink" and not resolves_inside(root, link.rel):
            raise UnsafeArchiveError(f"unsafe archive member {link.name!r}: resolves outside the destination")


def open_error(archive: Path, kind: str) -> str | None:
    """Why the archive cannot be opened as `kind`, or None when it can."""
    if kind == "zip":
        return None if zipfile.is_zipfile(archive) else f"{archive.name} is not a valid zip archive"
    try:
        with tarfile.open(archive, "r:*"):
            return None
    except (tarfile.TarError, OSError, EOFError):
        return f"{archive.name} is not a valid {kind} archive"


def _empty(dest: Path) -> None:
    for entry in list(dest.iterdir()):
        remove_tree(entry)


def safe_extract(archive: Path, kind: str, dest: Path, *, max_bytes: int, allow_links: bool = False) -> None:
    """Extract `archive` (zip or tar*) into the existing, empty folder `dest`.

    On any failure `dest` is emptied again, so a refused archive leaves nothing behind.
    """
    problem = open_error(archive, kind)
    if problem:
        raise ArchiveContentError(problem)
    try:
        if kind == "zip":
            with zipfile.ZipFile(archive) as zf:
                _extract(_zip_members(zf), dest, max_bytes, allow_links)
        else:
            with tarfile.open(archive, "r:*") as tf:
                _extract(_tar_members(tf), dest, max_bytes, allow_links)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zipfile.LargeZipFile) as exc:
        _empty(dest)
        raise ArchiveContentError(f"{archive.name} is corrupt: {exc}") from None
    except OSError as exc:
        _empty(dest)
        if exc.errno == errno.ENAMETOOLONG:
            raise UnsafeArchiveError(f"unsafe archive {archive.name}: a member path is too long") from None
        raise
    except BaseException:
        _empty(dest)
        raise


def unwrap_single_folder(dest: Path, pattern: str | None) -> Path:
    """If `dest` holds only one folder whose name matches `pattern`, return that folder.

    The seed unzipped its sample archives into the parent of the final folder, and the
    archives carry that final folder (e.g. `sample/`) themselves.
    """
    if not pattern:
        return dest
    entries = [e for e in dest.iterdir() if e.name != "__MACOSX"]
    if len(entries) == 1 and entries[0].is_dir() and not entries[0].is_symlink():
        from fnmatch import fnmatch

        if fnmatch(entries[0].name, pattern):
            return entries[0]
    return dest


def remove_tree(path: Path) -> None:
    """Remove a file, a link or a folder without following links out of it."""
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.exists():
        shutil.rmtree(path)
