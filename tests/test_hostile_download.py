"""Hostile and broken downloads (issue 12): each case is a row, run against real archives
built here and a real HTTP server on 127.0.0.1 (`helpers_http`) that misbehaves on demand.

Areas: archive escapes, destinations, integrity, deadlines, writers, free space.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers_archive import DOT_CHAIN, pathmax_chain, tar_entries, zip_entries

from spmctl.download.extract import ArchiveContentError, UnsafeArchiveError, safe_extract

# ---------------------------------------------------------------- archives (class 1)

FILE = ("file", "ok.txt", b"fine")
# id: (archive type, entries, manifest allows links, expected error or None when it must extract)
ARCHIVES = {
    "zip ..": ("zip", [FILE, ("file", "../evil", b"x")], False, "'..'"),
    "zip absolute": ("zip", [("file", "/tmp/evil", b"x")], False, "absolute"),
    "zip backslash ..": ("zip", [("file", "..\\evil", b"x")], False, "'..'"),
    "tar ..": ("tar.gz", [("file", "d/../../evil", b"x")], False, "'..'"),
    "tar absolute": ("tar.gz", [("file", "/evil", b"x")], False, "absolute"),
    # links are refused by default, even harmless ones
    "zip symlink inside": ("zip", [FILE, ("symlink", "link", "ok.txt")], False, "links are refused"),
    "tar symlink inside": ("tar.gz", [FILE, ("symlink", "link", "ok.txt")], False, "links are refused"),
    "tar hardlink inside": ("tar", [FILE, ("hardlink", "h", "ok.txt")], False, "links are refused"),
    "zip PATH_MAX chain": ("zip", pathmax_chain(), False, "links are refused"),
    "tar PATH_MAX chain": ("tar.gz", pathmax_chain(), False, "links are refused"),
    "zip l1 -> . chain": ("zip", DOT_CHAIN, False, "links are refused"),
    "tar l1 -> . chain": ("tar", DOT_CHAIN, False, "links are refused"),
    # a manifest entry that opts in still gets every escape refused
    "links: zip PATH_MAX chain": ("zip", pathmax_chain(), True, "unsafe archive member"),
    "links: tar PATH_MAX chain": ("tar.gz", pathmax_chain(), True, "unsafe archive member"),
    "links: zip l1 -> . chain": ("zip", DOT_CHAIN, True, "clashes|is a link"),
    "links: tar l1 -> . chain": ("tar", DOT_CHAIN, True, "clashes|is a link"),
    "links: zip l1 -> . links only": ("zip", DOT_CHAIN[:3], True, "its folder 'l1' is a link"),
    "links: symlink out": ("zip", [("symlink", "link", "../../etc")], True, "points outside"),
    "links: symlink absolute": ("tar", [("symlink", "link", "/etc/passwd")], True, "absolute"),
    "links: hardlink out": ("tar", [("hardlink", "h", "../x")], True, "points outside"),
    "links: hardlink absolute": ("tar", [("hardlink", "h", "/etc/passwd")], True, "absolute"),
    # text inside, place outside: `s -> .` makes `s/s/../..` climb two levels above the root
    "links: physical escape": ("zip", [("symlink", "s", "."), ("symlink", "t", "s/s/../../outside")],
                               True, "resolves outside"),
    "links: file through a link": ("tar", [("dir", "real", b""), ("symlink", "d", "real"),
                                           ("file", "d/x", b"x")], True, "clashes|is a link"),
    "links: hardlink to a link": ("tar", [FILE, ("symlink", "s", "ok.txt"), ("hardlink", "h", "s")],
                                  True, "non-file"),
    "tar fifo": ("tar", [FILE, ("fifo", "pipe", b"")], False, "special file"),
    "zip bomb": ("zip", [("file", "zeros", bytes(3_000_000))], False, "expands to more than"),
    "zip twice": ("zip", [FILE, FILE], False, "clashes"),
    # accepted
    "plain zip": ("zip", [("dir", "sub", b""), ("file", "sub/a.txt", b"a"), FILE], False, None),
    "links: symlink and hardlink inside": ("tar", [FILE, ("symlink", "sub/l", "../ok.txt"),
                                                   ("hardlink", "h", "ok.txt")], True, None),
}


def _build(kind: str, entries: list) -> bytes:  # type: ignore[type-arg]
    if any(e[0] == "fifo" for e in entries):
        import io
        import tarfile

        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tf:
            for e in entries:
                info = tarfile.TarInfo(e[1])
                if e[0] == "fifo":
                    info.type = tarfile.FIFOTYPE
                    tf.addfile(info)
                else:
                    info.size = len(e[2])
                    tf.addfile(info, io.BytesIO(e[2]))
        return buf.getvalue()
    if kind == "zip":
        return zip_entries(entries)
    return tar_entries(entries, mode="w:gz" if kind == "tar.gz" else "w")


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.filterwarnings("ignore:Duplicate name")
@pytest.mark.parametrize("case", list(ARCHIVES))
def test_archive(case: str, tmp_path: Path) -> None:
    kind, entries, links, expected = ARCHIVES[case]
    archive = tmp_path / f"a.{kind}"
    archive.write_bytes(_build(kind, entries))
    box = tmp_path / "box" / "deeper"  # room for `..` escapes that stay inside tmp_path
    dest = box / "dest"
    dest.mkdir(parents=True)
    if expected is None:
        safe_extract(archive, kind, dest, max_bytes=1 << 20, allow_links=links)
        assert (dest / "ok.txt").read_bytes() == b"fine"
        for link in ("sub/l", "h"):
            if (dest / link).exists():
                assert (dest / link).read_bytes() == b"fine"
        return
    with pytest.raises(ArchiveContentError, match=expected) as info:
        safe_extract(archive, kind, dest, max_bytes=1 << 20, allow_links=links)
    assert isinstance(info.value, UnsafeArchiveError)
    assert "\n" not in str(info.value)
    assert tree(dest) == []  # refused before writing, or emptied again
    assert tree(tmp_path / "box") == ["deeper", "deeper/dest"]  # nothing outside it either
    assert not Path("/tmp/evil").exists()
