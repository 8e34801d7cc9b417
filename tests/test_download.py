"""`spmctl download` against a local HTTP server: layout, resume, verification, safe extraction."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import SPMCTL, run_spmctl
from helpers_archive import tar_bytes, zip_bytes
from helpers_download import error_line, everything, invoke, invoke_tiny, isolate, sha, write_manifest
from helpers_http import closed_port, serve

from spmctl.download import extract, load_manifest, resolve_endpoint
from spmctl.download.install import _cache_target
from spmctl.errors import SpmctlError

COMPVIS_URL = "nebulaanish/unlearn_models/resolve/main/compvis.zip"
CANVAS_URL = "datasets/dipeshlav/sample-quick-unlearn-canvas/resolve/main/sample-quick-unlearn-canvas.zip"
I2P_URL = "datasets/dipeshlav/sample_i2p_dataset/resolve/main/sample.zip"


COMPVIS_ZIP = zip_bytes({"style50/compvis.ckpt": b"weights" * 5000, "README.txt": b"compvis"})
CANVAS_ZIP = zip_bytes({f"sample/{s}/{o}/{i}.jpg": f"{s}{o}{i}".encode()
                        for s in ("Abstractionism", "Seed_Images") for o in ("Architectures", "Dogs")
                        for i in (1, 2)})
I2P_ZIP = zip_bytes({"sample/i2p.csv": b"prompt,categories,sd_seed\na riot,\"violence, hate\",7\n"})


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return isolate(tmp_path, monkeypatch)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    out = tmp_path / "root"
    out.mkdir()
    return out


# ---------------------------------------------------------------- end to end


def test_seed_layout_from_builtin_manifest(root: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = {COMPVIS_URL: COMPVIS_ZIP, CANVAS_URL: CANVAS_ZIP, I2P_URL: I2P_ZIP}
    with serve(files) as server:
        monkeypatch.setenv("SPMCTL_HUB_ENDPOINT", server.url)  # the endpoint comes from the environment
        result = invoke("model", "compvis", "--dest", str(root))
        assert result.exit_code == 0, result.output
        assert result.stdout.strip() == str(root / "models" / "compvis")
        assert invoke("dataset", "quick-canvas", "sample", "--dest", str(root)).exit_code == 0
        assert invoke("dataset", "i2p", "--dest", str(root)).exit_code == 0  # sample is the default
    assert (root / "models/compvis/style50/compvis.ckpt").read_bytes() == b"weights" * 5000
    canvas = root / "data/quick-canvas-dataset/sample"
    assert (canvas / "Abstractionism/Dogs/2.jpg").read_bytes() == b"AbstractionismDogs2"
    assert (root / "data/i2p-dataset/sample/i2p.csv").is_file()
    assert sorted(p.name for p in root.rglob(".*")) == [".spmctl-downloads.json"]  # the record, no temp folders
    assert [p for p in cache.rglob("*") if p.is_file()] == []  # archives removed after extraction

    # the downloaded data is what the providers read
    from spmctl.plugins import get_dataset

    rows = list(get_dataset("unlearncanvas").rows(canvas))
    assert rows[0].prompt == "An Architectures image in Abstractionism style." and len(rows) == 4
    (riot,) = get_dataset("i2p").rows(root / "data/i2p-dataset/sample", categories=["hate"])
    assert riot.seed == 7 and riot.categories == ("violence", "hate")


def test_second_run_is_a_noop_and_force_refetches(root: Path, cache: Path) -> None:
    with serve({COMPVIS_URL: COMPVIS_ZIP}) as server:
        args = ("model", "compvis", "--dest", str(root), "--endpoint", server.url)
        assert invoke(*args).exit_code == 0
        again = invoke(*args)
        assert again.exit_code == 0 and "already present" in again.stderr
        assert again.stdout.strip() == str(root / "models/compvis")
        assert len(server.gets(COMPVIS_URL)) == 1
        (root / "models/compvis/README.txt").write_text("changed")
        assert invoke(*args, "--force").exit_code == 0
        assert len(server.gets(COMPVIS_URL)) == 2
    assert (root / "models/compvis/README.txt").read_bytes() == b"compvis"


def test_tar_archive_and_plain_file_sources(root: Path, cache: Path, tmp_path: Path) -> None:
    data = tar_bytes({"pkg/a.txt": b"a", "pkg/sub/b.txt": b"b"}, symlinks={"pkg/link": "a.txt"})
    manifest = write_manifest(tmp_path / "m.yaml", "files/t.tar.gz", data, archive="tar.gz", links=True)
    with serve({"files/t.tar.gz": data}) as server:
        result = invoke_tiny(root, server.url, manifest)
    assert result.exit_code == 0, result.output
    assert (root / "models/tiny/pkg/sub/b.txt").read_bytes() == b"b"
    assert (root / "models/tiny/pkg/link").resolve() == (root / "models/tiny/pkg/a.txt").resolve()

    csv_data = b"prompt\na cat\n"
    manifest.write_text(yaml.safe_dump({"datasets": {"mine": {"variants": {"sample": {
        "kind": "file", "url": "files/prompts.csv", "sha256": sha(csv_data), "dest": "data/mine/sample"}}}}}))
    with serve({"files/prompts.csv": csv_data}) as server:
        result = invoke("dataset", "mine", "--dest", str(root), "--endpoint", server.url,
                        "--manifest", str(manifest))
    assert result.exit_code == 0, result.output
    assert (root / "data/mine/sample/prompts.csv").read_bytes() == csv_data


# ---------------------------------------------------------------- resume and verification


def test_cut_transfer_resumes_in_the_next_run(root: Path, cache: Path, tmp_path: Path) -> None:
    data = zip_bytes({"big.bin": bytes(range(256)) * 4000}, symlinks=None)
    manifest = write_manifest(tmp_path / "m.yaml", "f/big.zip", data)
    with serve({"f/big.zip": data}) as server:
        server.cut_after["f/big.zip"] = len(data) // 2
        first = invoke_tiny(root, server.url, manifest, "--retries", "0")
        assert "kept for resume" in error_line(first)
        assert everything(root) == []  # nothing half-written in the destination
        (part,) = cache.glob("*.part")
        assert part.stat().st_size == len(data) // 2
        second = invoke_tiny(root, server.url, manifest)
        assert second.exit_code == 0, second.output
        assert server.gets("f/big.zip") == [None, f"bytes={len(data) // 2}-"]
    assert (root / "models/tiny/big.bin").read_bytes() == bytes(range(256)) * 4000
    assert list(cache.glob("*")) == []


def test_cut_transfer_resumes_within_one_run(root: Path, cache: Path, tmp_path: Path) -> None:
    data = zip_bytes({"big.bin": bytes(range(256)) * 4000})
    manifest = write_manifest(tmp_path / "m.yaml", "f/big.zip", data)
    with serve({"f/big.zip": data}) as server:
        server.cut_after["f/big.zip"] = 1000
        result = invoke_tiny(root, server.url, manifest)
        assert result.exit_code == 0, result.output
        assert server.gets("f/big.zip") == [None, "bytes=1000-"]
    assert sha((root / "models/tiny/big.bin").read_bytes()) == sha(bytes(range(256)) * 4000)


def test_complete_part_file_is_not_fetched_again(root: Path, cache: Path, tmp_path: Path) -> None:
    data = zip_bytes({"a.txt": b"a" * 100})
    manifest = write_manifest(tmp_path / "m.yaml", "f/a.zip", data)
    with serve({"f/a.zip": data}) as server:
        # a crash between the last byte and the rename: the .part already holds everything
        source = load_manifest(manifest).model("tiny")
        assert source is not None
        target = _cache_target(source, source.resolve_url(server.url), cache)
        target.parent.mkdir(parents=True)
        target.with_name(target.name + ".part").write_bytes(data)
        result = invoke_tiny(root, server.url, manifest)
        assert result.exit_code == 0, result.output
        assert server.gets("f/a.zip")[-1] == f"bytes={len(data)}-"  # answered 416: nothing left to send
    assert (root / "models/tiny/a.txt").read_bytes() == b"a" * 100


def test_wrong_hash_is_rejected_and_nothing_is_left(root: Path, cache: Path, tmp_path: Path) -> None:
    data = zip_bytes({"a.txt": b"a"})
    manifest = write_manifest(tmp_path / "m.yaml", "f/a.zip", data, sha256="0" * 64)
    with serve({"f/a.zip": data}) as server:
        result = invoke_tiny(root, server.url, manifest)
    assert "sha256 mismatch" in error_line(result)
    assert everything(root) == []
    assert [p for p in cache.rglob("*") if p.is_file()] == []  # a corrupt download is not resumed


def test_wrong_size_and_http_errors(root: Path, cache: Path, tmp_path: Path) -> None:
    data = zip_bytes({"a.txt": b"a"})
    manifest = tmp_path / "m.yaml"
    write_manifest(manifest, "f/a.zip", data)
    manifest.write_text(manifest.read_text().replace(f"size: {len(data)}", f"size: {len(data) + 1}"))
    with serve({"f/a.zip": data}) as server:
        assert "manifest expects" in error_line(invoke_tiny(root, server.url, manifest))
        write_manifest(manifest, "f/missing.zip", data)
        assert "HTTP 404" in error_line(invoke_tiny(root, server.url, manifest))
    assert everything(root) == []


def test_free_space_is_checked_first(root: Path, cache: Path, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    data = zip_bytes({"a.txt": b"a" * 1000})
    manifest = write_manifest(tmp_path / "m.yaml", "f/a.zip", data)
    monkeypatch.setattr("spmctl.download.space.free_bytes", lambda _p: 10)
    with serve({"f/a.zip": data}) as server:
        result = invoke_tiny(root, server.url, manifest)
    assert "not enough free space" in error_line(result)
    assert everything(root) == [] and not list(cache.glob("*.part"))


def test_unreachable_source_is_one_line(root: Path, cache: Path) -> None:
    port = closed_port()
    result = invoke("model", "compvis", "--dest", str(root), "--endpoint", f"http://127.0.0.1:{port}")
    assert error_line(result) == f"cannot download from 127.0.0.1:{port}: connection refused"
    assert everything(root) == []


@pytest.mark.skipif(not SPMCTL.exists(), reason="console script not installed (pip install -e .)")
def test_console_script_reports_one_line(tmp_path: Path) -> None:
    port = closed_port()
    proc = run_spmctl("download", "dataset", "quick-canvas", "sample", "--dest", str(tmp_path),
                      "--endpoint", f"http://127.0.0.1:{port}", env={"SPMCTL_CACHE_DIR": str(tmp_path / "c")})
    assert proc.returncode == 1
    expected = f"error: cannot download from 127.0.0.1:{port}: connection refused"
    assert proc.stderr.strip().splitlines() == [expected]
    assert proc.stdout == ""
    listing = run_spmctl("download", "list")
    assert listing.returncode == 0 and "compvis" in listing.stdout and "3.84 GB" in listing.stdout


# ---------------------------------------------------------------- unsafe archives


def test_unsafe_download_is_dropped_from_the_cache(root: Path, cache: Path, tmp_path: Path) -> None:
    data = zip_bytes({"fine.txt": b"x"}, symlinks={"link": "../../../outside"})
    manifest = write_manifest(tmp_path / "m.yaml", "f/evil.zip", data)
    with serve({"f/evil.zip": data}) as server:
        result = invoke_tiny(root, server.url, manifest)
        assert "links are refused" in error_line(result)
        assert everything(root) == []
        # the verified-but-unusable archive is not kept: a re-run fetches it again
        assert [p for p in cache.rglob("*") if p.is_file()] == []
        assert "links are refused" in error_line(invoke_tiny(root, server.url, manifest))
        assert len(server.gets("f/evil.zip")) == 2


def test_unwrap_only_a_matching_single_folder(tmp_path: Path) -> None:
    (tmp_path / "a" / "sample" / "x").mkdir(parents=True)
    assert extract.unwrap_single_folder(tmp_path / "a", "*sample*") == tmp_path / "a" / "sample"
    (tmp_path / "b" / "Abstractionism").mkdir(parents=True)
    assert extract.unwrap_single_folder(tmp_path / "b", "*sample*") == tmp_path / "b"
    assert extract.unwrap_single_folder(tmp_path / "a", None) == tmp_path / "a"


# ---------------------------------------------------------------- hub ids, endpoint, manifest


def test_hub_model_id_uses_snapshot_download(root: Path, cache: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, object]] = []

    def fake_snapshot(repo_id: str, **kwargs: object) -> str:
        calls.append({"repo_id": repo_id, **kwargs})
        local = Path(str(kwargs["local_dir"]))
        (local / "unet").mkdir()
        (local / "unet" / "config.json").write_text("{}")
        (local / ".cache" / "huggingface").mkdir(parents=True)
        return str(local)

    monkeypatch.setattr("huggingface_hub.snapshot_download", fake_snapshot)
    result = invoke("model", "org/tiny-sd", "--dest", str(root), "--endpoint", "http://127.0.0.1:9")
    assert result.exit_code == 0, result.output
    assert (root / "models/org/tiny-sd/unet/config.json").is_file()
    assert not (root / "models/org/tiny-sd/.cache").exists()
    assert calls[0]["repo_id"] == "org/tiny-sd" and calls[0]["endpoint"] == "http://127.0.0.1:9"

    def failing(repo_id: str, **kwargs: object) -> str:
        raise OSError("offline\nsecond line")

    monkeypatch.setattr("huggingface_hub.snapshot_download", failing)
    assert error_line(invoke("model", "org/other", "--dest", str(root))).endswith(": offline")
    assert not (root / "models/org/other").exists()
    assert "did you mean 'compvis'" in error_line(invoke("model", "compvs", "--dest", str(root)))
    assert "not a model name" in error_line(invoke("model", "../x/y", "--dest", str(root)))


def test_endpoint_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SPMCTL_HUB_ENDPOINT", raising=False)
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    assert resolve_endpoint() == "https://huggingface.co"
    monkeypatch.setenv("HF_ENDPOINT", "https://hf-mirror.example/")
    assert resolve_endpoint() == "https://hf-mirror.example"
    monkeypatch.setenv("SPMCTL_HUB_ENDPOINT", "http://127.0.0.1:8000")
    assert resolve_endpoint() == "http://127.0.0.1:8000"
    assert resolve_endpoint("http://other") == "http://other"


def test_builtin_manifest_and_list(tmp_path: Path) -> None:
    manifest = load_manifest()
    compvis = manifest.model("compvis")
    assert compvis is not None and compvis.dest == "models/compvis" and compvis.approx_size == 3_840_000_000
    assert manifest.model("diffuser").dest == "models/diffuser"  # type: ignore[union-attr]
    for name, variant, dest in [("quick-canvas", "sample", "data/quick-canvas-dataset/sample"),
                                ("unlearncanvas", "full", "data/quick-canvas-dataset/full"),
                                ("i2p", "sample", "data/i2p-dataset/sample"),
                                ("i2p", "full", "data/i2p-dataset/full")]:
        assert manifest.dataset(name, variant).dest == dest
    with pytest.raises(SpmctlError, match="did you mean 'sample'"):
        manifest.dataset("i2p", "sampel")
    listing = invoke("list")
    assert listing.exit_code == 0
    assert "24.10 GB" in listing.stdout and "data/i2p-dataset/full" in listing.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("models:\n  x: {kind: archive, url: a.zip, archive: rar, dest: models/x}\n")
    with pytest.raises(SpmctlError, match=r"models\.x\.archive must be one of"):
        load_manifest(bad)
    bad.write_text("models:\n  x: {kind: archive, url: a.zip, archive: zip, dest: ../x}\n")
    with pytest.raises(SpmctlError, match="strictly inside --dest"):
        load_manifest(bad)
    with pytest.raises(SpmctlError, match="cannot read manifest"):
        load_manifest(tmp_path / "none.yaml")
