"""Hostile and broken downloads (issue 12): each case is a row, run against real archives
built here and a real HTTP server on 127.0.0.1 (`helpers_http`) that misbehaves on demand.

Areas: archive escapes, destinations, integrity, deadlines, writers, free space.
"""

from __future__ import annotations

import os
import random
import re
import resource
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import SPMCTL, run_spmctl
from helpers_archive import DOT_CHAIN, pathmax_chain, tar_entries, zip_entries
from helpers_download import error_line, invoke, invoke_tiny, isolate, sha, write_manifest
from helpers_http import FileServer, serve

from spmctl.download import load_manifest
from spmctl.download.extract import ArchiveContentError, UnsafeArchiveError, safe_extract
from spmctl.download.install import _cache_target
from spmctl.download.space import HEADROOM

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


# ---------------------------------------------------------------- destinations and writers (classes 2, 7)

PAYLOAD = zip_entries([("file", "weights.bin", b"w" * 4000), ("file", "README.txt", b"tiny")])
URL = "f/tiny.zip"


def _install_first(root: Path, server: FileServer, manifest: Path) -> None:
    assert invoke_tiny(root, server.url, manifest).exit_code == 0


def _user_folder(root: Path, server: FileServer, manifest: Path) -> None:
    (root / "models/tiny").mkdir(parents=True)
    (root / "models/tiny/mine.txt").write_text("mine")


def _user_file_added(root: Path, server: FileServer, manifest: Path) -> None:
    _install_first(root, server, manifest)
    (root / "models/tiny/mine.txt").write_text("mine")


def _file_at_dest(root: Path, server: FileServer, manifest: Path) -> None:
    (root / "models").mkdir()
    (root / "models/tiny").write_text("mine")


def _file_at_parent(root: Path, server: FileServer, manifest: Path) -> None:
    (root / "models").write_text("mine")


def _killed_run_left_a_stage(root: Path, server: FileServer, manifest: Path) -> None:
    proc = subprocess.Popen(["true"])
    proc.wait()  # its pid now names no process
    (root / "models" / f".tiny.spmctl-{proc.pid}-x1y2" / "half").mkdir(parents=True)


def _disk_full_in_cache(root: Path, server: FileServer, manifest: Path) -> None:
    # the kernel's own "no space left on device": the partial download is /dev/full
    source = load_manifest(manifest).model("tiny")
    assert source is not None
    target = _cache_target(source, source.resolve_url(server.url), root.parent / "cache")
    target.parent.mkdir(parents=True)
    target.with_name(target.name + ".part").symlink_to("/dev/full")


def _read_only_parent(root: Path, server: FileServer, manifest: Path) -> Callable[[], None]:
    (root / "models").mkdir()
    # root ignores permission bits; an immutable folder refuses it too (where chattr works)
    if subprocess.run(["chattr", "+i", str(root / "models")], capture_output=True).returncode != 0:
        if os.geteuid() == 0:
            pytest.skip("no way to make a folder read-only for root here")
        (root / "models").chmod(0o555)
    return lambda: (subprocess.run(["chattr", "-i", str(root / "models")], capture_output=True),
                    (root / "models").chmod(0o755))


def _file_size_limit(root: Path, server: FileServer, manifest: Path) -> Callable[[], None]:
    # Writes past RLIMIT_FSIZE fail like a full disk does (EFBIG instead of ENOSPC): the
    # archive (small, compressed) downloads, its 4000-byte member cannot be written out.
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (3000, old_limit[1]))

    def undo() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
        signal.signal(signal.SIGXFSZ, old_handler)
    return undo


@dataclass
class DestCase:
    expect: str | None  # a regex found in the one error line; None: it must succeed
    setup: Callable[[Path, FileServer, Path], Callable[[], None] | None] | None = None
    dest: str = "models/tiny"
    force: bool = False
    kept: dict[str, str] = field(default_factory=dict)  # user files that must be intact after the run
    installed: bool = False  # whether models/tiny holds the download afterwards
    downloads: int = 0  # GETs this run made (refusals happen before downloading)


DESTINATIONS = {
    "dest .": DestCase("strictly inside --dest", _user_folder, dest=".", force=True,
                       kept={"models/tiny/mine.txt": "mine"}),
    "dest ./": DestCase("strictly inside --dest", _user_folder, dest="./", force=True),
    "dest models/..": DestCase("strictly inside --dest", dest="models/..", force=True),
    "force on a folder spmctl did not install": DestCase(
        "was not installed by `spmctl download`", _user_folder, force=True, kept={"models/tiny/mine.txt": "mine"}),
    "force with a user file added": DestCase(
        "'mine.txt' was not installed", _user_file_added, force=True, kept={"models/tiny/mine.txt": "mine"},
        installed=True),
    "force on its own install": DestCase(None, _install_first, force=True, installed=True, downloads=1),
    "no force on a user folder": DestCase(None, _user_folder, kept={"models/tiny/mine.txt": "mine"}),
    "file in the way at dest": DestCase("a file is in the way", _file_at_dest, kept={"models/tiny": "mine"}),
    "file in the way above dest": DestCase("a file is in the way", _file_at_parent, kept={"models": "mine"}),
    "read-only destination": DestCase("root/models: (operation not permitted|permission denied)", _read_only_parent),
    "disk full while downloading": DestCase(".zip.part: no space left on device", _disk_full_in_cache, downloads=1),
    "file too large while extracting": DestCase("root/models/tiny: file too large; nothing was installed",
                                                _file_size_limit, downloads=1),
    "leftover of a killed run": DestCase(None, _killed_run_left_a_stage, installed=True, downloads=1),
}


@pytest.mark.parametrize("case", list(DESTINATIONS))
def test_destination(case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    row = DESTINATIONS[case]
    isolate(tmp_path, monkeypatch)
    root = tmp_path / "root"
    root.mkdir()
    manifest = write_manifest(tmp_path / "m.yaml", URL, PAYLOAD, dest="models/tiny")
    with serve({URL: PAYLOAD}) as server:
        undo = row.setup(root, server, manifest) if row.setup else None
        try:
            write_manifest(manifest, URL, PAYLOAD, dest=row.dest)
            before = len(server.gets(URL))
            result = invoke_tiny(root, server.url, manifest, *(["--force"] if row.force else []))
        finally:
            if undo:
                undo()
        if row.expect is None:
            assert result.exit_code == 0, result.output
        else:
            assert re.search(row.expect, error_line(result)), result.output
        assert len(server.gets(URL)) - before == row.downloads
    for rel, text in row.kept.items():
        assert (root / rel).read_text() == text
    assert (root / "models/tiny/weights.bin").is_file() == row.installed
    leftovers = [p.name for p in root.rglob(".*") if p.name != ".spmctl-downloads.json"]
    assert leftovers == []  # no staging folder, no half-installed copy
    assert not (tmp_path / "weights.bin").exists() and not (tmp_path / "README.txt").exists()


# ---------------------------------------------------------------- integrity and deadlines (classes 3, 4)

V1 = zip_entries([("file", "big.bin", bytes(range(256)) * 64)])
V2 = zip_entries([("file", "big.bin", bytes(range(255, -1, -1)) * 64)])  # a new version on the server
HALF = len(V1) // 2
BLOB = "blobs/tiny.zip"  # where a hub-style redirect leads


def _cut(server: FileServer) -> None:
    server.cut_after[URL] = HALF


def _new_version(server: FileServer) -> None:
    server.files[URL] = V2


def _published(sha256: str) -> Callable[[FileServer], None]:
    def setup(server: FileServer) -> None:  # /resolve/ answers 302 with the LFS file's hash, like the hub
        server.files[BLOB] = server.files.pop(URL)
        server.redirects[URL] = (BLOB, {"X-Linked-Etag": f'"{sha256}"', "X-Linked-Size": str(len(V1))})
    return setup


@dataclass
class ServerCase:
    expect: str | None  # a regex in the one error line; None: V1 or V2 must end up installed
    before: Callable[[FileServer], None] | None = None  # misbehaviour for the first run
    between: Callable[[FileServer], None] | None = None  # after a first run cut at HALF, before the second
    manifest: dict[str, object] = field(default_factory=dict)  # size/sha256 overrides (default: both None)
    installed: bytes | None = V1  # the archive whose content must be installed (None: nothing)
    gets: list[str | None] | None = None  # Range headers of the final run's GETs
    args: tuple[str, ...] = ()
    hub: bool = False  # fetch a hub id (snapshot through huggingface_hub) instead of the archive
    thread: bool = False  # run the download off the main thread (a library user's worker thread)


SERVERS = {
    "resume continues the same file": ServerCase(None, between=lambda s: None, gets=[f"bytes={HALF}-"]),
    "206 from byte 0 restarts": ServerCase(None, between=lambda s: s.range_from_zero.add(URL),
                                           gets=[f"bytes={HALF}-", None]),
    "new version, If-Range honoured": ServerCase(None, between=_new_version, installed=V2,
                                                 gets=[f"bytes={HALF}-"]),
    "new version, 206 with a new ETag restarts": ServerCase(
        None, between=lambda s: (_new_version(s), s.ignore_if_range.add(URL)), installed=V2,
        gets=[f"bytes={HALF}-", None]),
    "close-delimited, hash known": ServerCase(None, before=lambda s: s.close_delimited.add(URL),
                                              manifest={"sha256": sha(V1)}),
    "close-delimited, no length, no hash": ServerCase(
        "no length and no sha256 is known", before=lambda s: s.close_delimited.add(URL), installed=None),
    "close-delimited cut short, size known": ServerCase(
        "closed early .* kept for resume", before=lambda s: (s.close_delimited.add(URL), _cut(s)),
        manifest={"size": len(V1)}, installed=None, args=("--retries", "0")),
    "close-delimited cut short, hash known": ServerCase(
        "sha256 mismatch", before=lambda s: (s.close_delimited.add(URL), _cut(s)),
        manifest={"sha256": sha(V1)}, installed=None),
    "hub-published sha256 verified": ServerCase(None, before=_published(sha(V1))),
    "hub-published sha256 mismatch": ServerCase("the hub publishes", before=_published(sha(V2)), installed=None),
    "archive that fails to extract": ServerCase("not a valid zip", before=lambda s: s.files.update({URL: b"junk"}),
                                                installed=None),
    "trickling server": ServerCase("too slow: .* kept for resume", before=lambda s: s.trickle.update({URL: 0.05}),
                                   installed=None, args=("--timeout", "1", "--min-rate", "1000", "--retries", "0")),
    "headers trickled": ServerCase("no complete reply within 1 s", installed=None, args=("--timeout", "1"),
                                   before=lambda s: s.trickle_headers.update({URL: 0.05})),
    "headers trickled, off the main thread": ServerCase(
        "no complete reply within 1 s", installed=None, args=("--timeout", "1"), thread=True,
        before=lambda s: s.trickle_headers.update({URL: 0.05})),
    "silent server": ServerCase("timed out|no complete reply within 1 s", installed=None, args=("--timeout", "1"),
                                before=lambda s: setattr(s, "silent", True)),
    "silent hub": ServerCase("org/tiny .*: no reply within 1 s", before=lambda s: setattr(s, "silent", True),
                             installed=None, args=("--timeout", "1"), hub=True),
}


@pytest.mark.parametrize("case", list(SERVERS))
def test_server(case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    row = SERVERS[case]
    cache = isolate(tmp_path, monkeypatch)
    root = tmp_path / "root"
    manifest = write_manifest(tmp_path / "m.yaml", URL, None, sha256=None)
    write_manifest(manifest, URL, None, **{"sha256": None, **row.manifest})  # type: ignore[arg-type]
    with serve({URL: V1}) as server:
        if row.between:
            _cut(server)
            assert "kept for resume" in error_line(invoke_tiny(root, server.url, manifest, "--retries", "0"))
            row.between(server)
        if row.before:
            row.before(server)
        first = len(server.requests)
        started = time.monotonic()
        if row.hub:
            result = invoke("model", "org/tiny", "--dest", str(root), "--endpoint", server.url, *row.args)
        elif row.thread:
            results: list = []
            worker = threading.Thread(target=lambda: results.append(
                invoke_tiny(root, server.url, manifest, *row.args)))
            worker.start()
            worker.join(30)
            result = results[0]
        else:
            result = invoke_tiny(root, server.url, manifest, *row.args)
        if row.expect is None:
            assert result.exit_code == 0, result.output
        else:
            assert re.search(row.expect, error_line(result))
        assert time.monotonic() - started < 20  # deadlines hold
        if row.gets is not None:
            assert [rng for _p, rng in server.requests[first:]] == row.gets
    if row.installed is None:
        assert not root.exists()  # not even the empty folders this run would have made
        if "kept for resume" not in (row.expect or ""):
            assert [p for p in cache.rglob("*") if p.is_file()] == []  # nothing untrusted is kept either
    else:
        import io
        import zipfile

        expected = zipfile.ZipFile(io.BytesIO(row.installed)).read("big.bin")
        assert (root / "models/tiny/big.bin").read_bytes() == expected


def test_hub_file_bodies_are_held_to_the_minimum_rate(tmp_path: Path) -> None:
    """A hub snapshot downloads each file with huggingface_hub's own `http_get`; a server trickling
    the body (a byte every 0.05 s: per-read timeouts never fire) is given up on after --timeout."""
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import _http

    from spmctl.download.install import _hub_timeouts
    from spmctl.download.integrity import TooSlow

    with serve({URL: V1}) as server:
        server.trickle[URL] = 0.05
        _hub_timeouts(1, 1000)  # what `spmctl download model ORG/NAME --timeout 1 --min-rate 1000` sets
        try:
            started = time.monotonic()
            with open(tmp_path / "part", "wb") as part, pytest.raises(TooSlow, match="too slow: .* below the minimum"):
                http_get(f"{server.url}/{URL}", part)
            assert time.monotonic() - started < 10
        finally:
            _http.set_client_factory(_http.default_client_factory)


# ---------------------------------------------------------------- free space (class 13)

NOISE = zip_entries([("file", "noise.bin", random.Random(0).randbytes(20_000))])  # incompressible: archive ≈ contents
FREE = {  # id: (manifest kind, free bytes beyond the headroom as a multiple of the file's size, error)
    "file moved, counted once": ("file", 1.5, None),
    "archive and its contents both counted": ("archive", 1.5, r"need .* plus .* kept free, .* free"),
    "archive with room for both": ("archive", 2.5, None),
}


@pytest.mark.parametrize("case", list(FREE))
def test_free_space(case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kind, times, expect = FREE[case]
    isolate(tmp_path, monkeypatch)  # the cache and the destination share tmp_path's disk
    root = tmp_path / "root"
    manifest = write_manifest(tmp_path / "m.yaml", URL, NOISE, kind=kind)
    # the disk's free space is the one thing a test cannot arrange for real
    monkeypatch.setattr("spmctl.download.space.free_bytes", lambda _p: HEADROOM + int(times * len(NOISE)))
    with serve({URL: NOISE}) as server:
        result = invoke_tiny(root, server.url, manifest)
    if expect is None:
        assert result.exit_code == 0, result.output
        assert any((root / "models/tiny").iterdir())
    else:
        assert re.search(expect, error_line(result))
        assert not (root / "models").exists()


# ---------------------------------------------------------------- as a user sees it (the installed script)

EVIL = zip_entries([FILE, ("symlink", "link", "ok.txt")])
SCRIPT = {  # id: (manifest dest, served archive, make a user folder first, exit code, the line's start)
    "refused archive": ("models/tiny", EVIL, False, 1, "error: archive member 'link' is a symbolic link"),
    "dest . in the manifest": (".", EVIL, False, 2, "error: manifest .*m.yaml: models.tiny.dest must be"),
    "force on a user folder": ("models/tiny", PAYLOAD, True, 1, "error: refusing to replace .*models/tiny"),
}


@pytest.mark.skipif(not SPMCTL.exists(), reason="console script not installed (pip install -e .)")
@pytest.mark.parametrize("case", list(SCRIPT))
def test_console_script_one_line(case: str, tmp_path: Path) -> None:
    dest, served, user_folder, code, line = SCRIPT[case]
    manifest = write_manifest(tmp_path / "m.yaml", URL, served, dest=dest)
    root = tmp_path / "root"
    if user_folder:
        (root / dest).mkdir(parents=True)
        (root / dest / "mine.txt").write_text("mine")
    with serve({URL: served}) as server:
        proc = run_spmctl("download", "model", "tiny", "--dest", str(root), "--endpoint", server.url,
                          "--manifest", str(manifest), "--force", env={"SPMCTL_CACHE_DIR": str(tmp_path / "c")})
    assert proc.returncode == code
    errors = [text for text in proc.stderr.splitlines() if text.startswith("error")]
    assert len(errors) == 1 and re.match(line, errors[0]), proc.stderr  # progress notes may come before
    assert proc.stderr.rstrip().endswith(errors[0]) and "Traceback" not in proc.stderr
    assert proc.stdout == ""
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["m.yaml"] + (["mine.txt"] * user_folder)
