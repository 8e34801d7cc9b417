"""Archives built in the test, member by member (files, folders, symbolic and hard links)."""

from __future__ import annotations

import io
import os
import stat
import tarfile
import zipfile

# (kind, name, data-or-target): kind is "file", "dir", "symlink" or "hardlink" (tar only)
Entry = tuple[str, str, bytes | str]


def zip_entries(entries: list[Entry]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for kind, name, payload in entries:
            if kind == "file":
                zf.writestr(name, payload)
            elif kind == "dir":
                info = zipfile.ZipInfo(name.rstrip("/") + "/")
                info.external_attr = (stat.S_IFDIR | 0o755) << 16
                zf.writestr(info, b"")
            elif kind == "symlink":
                info = zipfile.ZipInfo(name)
                info.external_attr = (stat.S_IFLNK | 0o777) << 16
                zf.writestr(info, payload)
            else:
                raise ValueError(f"zip cannot hold a {kind}")
    return buf.getvalue()


def tar_entries(entries: list[Entry], mode: str = "w:gz") -> bytes:
    kinds = {"dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode, format=tarfile.PAX_FORMAT) as tf:
        for kind, name, payload in entries:
            info = tarfile.TarInfo(name)
            if kind == "file":
                data = payload if isinstance(payload, bytes) else payload.encode()
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
                continue
            info.type = kinds[kind]
            if kind == "dir":
                info.mode = 0o755
            else:
                info.linkname = str(payload)
            tf.addfile(info)
    return buf.getvalue()


def zip_bytes(files: dict[str, bytes], symlinks: dict[str, str] | None = None) -> bytes:
    return zip_entries([("file", n, d) for n, d in files.items()]
                       + [("symlink", n, t) for n, t in (symlinks or {}).items()])


def tar_bytes(files: dict[str, bytes], symlinks: dict[str, str] | None = None,
              hardlinks: dict[str, str] | None = None, mode: str = "w:gz") -> bytes:
    return tar_entries([("file", n, d) for n, d in files.items()]
                       + [("symlink", n, t) for n, t in (symlinks or {}).items()]
                       + [("hardlink", n, t) for n, t in (hardlinks or {}).items()], mode)


def pathmax_chain() -> list[Entry]:
    """The CVE-2025-4517 shape: short links to 247-character folders, 16 deep, so the
    physical path exceeds PATH_MAX and `realpath` stops resolving; a link through it
    then climbs out while its text looks like it stays inside."""
    long_dir = "d" * 247
    steps = "abcdefghijklmnop"
    entries: list[Entry] = []
    for i, step in enumerate(steps):
        prefix = "/".join(steps[:i])
        entries.append(("dir", os.path.join(prefix, long_dir), b""))
        entries.append(("symlink", os.path.join(prefix, step), long_dir))
    long_link = os.path.join(*steps, "l" * 254)
    entries.append(("symlink", long_link, "../" * len(steps)))
    entries.append(("symlink", "escape", os.path.join(long_link, "../" * (len(steps) + 1), "outside")))
    entries.append(("file", "escape/planted", b"x"))
    return entries


# `l1 -> .`, then links created through it: the last one's text stays inside, its place does not.
DOT_CHAIN: list[Entry] = [("symlink", "l1", "."), ("symlink", "l1/a", "."),
                          ("symlink", "l1/a/b/l", "../../../outside"), ("file", "l1/a/b/l/planted", b"x")]
