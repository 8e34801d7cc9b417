"""Safe extraction of zip and tar archives.

Every member is checked before anything is written: no absolute paths, no `..`,
no link whose target leaves the destination, no device files, and a bound on the
total size (a zip bomb is refused up front, and the bytes actually written are
counted too, since a zip header can lie about sizes).
"""

from __future__ import annotations

import os
import posixpath
import re
import shutil
import stat
import tarfile
import zipfile
from pathlib import Path

from ..errors import SpmctlError
from .space import ensure_free_space, human_size

COPY_CHUNK = 1 << 20


class UnsafeArchiveError(SpmctlError):
    """The archive would write outside its destination or is too large."""


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


def _check_link(member: str, target: str, *, hard: bool) -> None:
    """A link's target must stay inside the destination.

    Symlink targets are relative to the link's folder, hard-link targets to the archive root.
    """
    unified = target.replace("\\", "/")
    if unified.startswith("/") or re.match(r"^[A-Za-z]:", unified):
        raise UnsafeArchiveError(f"unsafe archive member {member!r}: link to absolute path {target!r}")
    base = "" if hard else posixpath.dirname(member)
    resolved = posixpath.normpath(posixpath.join(base, unified))
    if resolved == ".." or resolved.startswith("../"):
        raise UnsafeArchiveError(f"unsafe archive member {member!r}: link {target!r} points outside")


def _inside(root: Path, path: Path) -> None:
    # Resolving follows links already extracted, so a chain of in-archive links cannot escape either.
    if not path.resolve().is_relative_to(root):
        raise UnsafeArchiveError(f"unsafe archive member {path.name!r}: resolves outside the destination")


def _check_budget(total: int, max_bytes: int) -> None:
    if total > max_bytes:
        raise UnsafeArchiveError(
            f"archive expands to more than the allowed {human_size(max_bytes)}; refusing to extract")


def _zip_is_link(info: zipfile.ZipInfo) -> bool:
    return stat.S_ISLNK(info.external_attr >> 16)


def _extract_zip(archive: Path, dest: Path, max_bytes: int) -> None:
    root = dest.resolve()
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        names = {info.filename: _clean(info.filename) for info in infos}
        for info in infos:
            if _zip_is_link(info):
                _check_link(names[info.filename], zf.read(info).decode("utf-8", "replace"), hard=False)
        declared = sum(info.file_size for info in infos)
        _check_budget(declared, max_bytes)
        ensure_free_space({dest: declared})
        written = 0
        for info in infos:
            rel = names[info.filename]
            if not rel:
                continue
            out = dest / rel
            _inside(root, out.parent)
            if info.is_dir():
                out.mkdir(parents=True, exist_ok=True)
                continue
            out.parent.mkdir(parents=True, exist_ok=True)
            _inside(root, out)
            if _zip_is_link(info):
                os.symlink(zf.read(info).decode("utf-8"), out)
                continue
            with zf.open(info) as src, out.open("wb") as dst:
                for block in iter(lambda src=src: src.read(COPY_CHUNK), b""):
                    written += len(block)
                    _check_budget(written, max_bytes)
                    dst.write(block)
            if (info.external_attr >> 16) & 0o111:
                out.chmod(0o755)


def _extract_tar(archive: Path, dest: Path, max_bytes: int) -> None:
    with tarfile.open(archive, "r:*") as tf:
        members = tf.getmembers()
        declared = 0
        for member in members:
            rel = _clean(member.name)
            if member.issym() or member.islnk():
                _check_link(rel, member.linkname, hard=member.islnk())
            elif not (member.isreg() or member.isdir()):
                raise UnsafeArchiveError(f"unsafe archive member {member.name!r}: special file")
            declared += member.size if member.isreg() else 0
        _check_budget(declared, max_bytes)
        ensure_free_space({dest: declared})
        if hasattr(tarfile, "data_filter"):
            # Python's own "data" filter repeats these checks at write time (defence in depth).
            tf.extractall(dest, members=members, filter="data")
        else:  # pragma: no cover - Python without PEP 706 filters
            tf.extractall(dest, members=members)


def open_error(archive: Path, kind: str) -> str | None:
    """Why the archive cannot be opened as `kind`, or None when it can."""
    if kind == "zip":
        return None if zipfile.is_zipfile(archive) else f"{archive.name} is not a valid zip archive"
    try:
        with tarfile.open(archive, "r:*"):
            return None
    except (tarfile.TarError, OSError, EOFError):
        return f"{archive.name} is not a valid {kind} archive"


def safe_extract(archive: Path, kind: str, dest: Path, *, max_bytes: int) -> None:
    """Extract `archive` (zip or tar*) into the existing, empty folder `dest`."""
    problem = open_error(archive, kind)
    if problem:
        raise SpmctlError(problem)
    try:
        if kind == "zip":
            _extract_zip(archive, dest, max_bytes)
        else:
            _extract_tar(archive, dest, max_bytes)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError) as exc:
        raise SpmctlError(f"{archive.name} is corrupt: {exc}") from None


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
