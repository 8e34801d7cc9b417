"""Shared by the download tests: a manifest for one test source, the CLI in-process, one-line errors."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from spmctl.cli.download import app
from spmctl.errors import SpmctlError


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def everything(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def write_manifest(path: Path, url: str, data: bytes | None, *, archive: str = "zip",
                   sha256: str | None = "auto", dest: str = "models/tiny", **extra: object) -> Path:
    entry = {"kind": "archive", "url": url, "archive": archive, "dest": dest,
             "size": len(data) if data is not None else None,
             "sha256": sha(data) if sha256 == "auto" and data is not None else sha256, **extra}
    path.write_text(yaml.safe_dump({"version": 1, "models": {"tiny": entry}, "datasets": {}}))
    return path


def isolate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private cache dir, no endpoint/manifest from the environment, retries without waiting."""
    for var in ("SPMCTL_HUB_ENDPOINT", "HF_ENDPOINT", "SPMCTL_SOURCES"):
        monkeypatch.delenv(var, raising=False)
    cache_dir = tmp_path / "cache"
    monkeypatch.setenv("SPMCTL_CACHE_DIR", str(cache_dir))
    monkeypatch.setattr("spmctl.download.transfer.time.sleep", lambda _s: None)
    return cache_dir


def invoke(*args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(app, list(args))


def invoke_tiny(root: Path, endpoint: str, manifest: Path, *extra: str):  # type: ignore[no-untyped-def]
    """Fetch the test manifest's `tiny` model from `endpoint` into `root`."""
    return invoke("model", "tiny", "--dest", str(root), "--endpoint", endpoint, "--manifest", str(manifest),
                  *extra)


def error_line(result) -> str:  # type: ignore[no-untyped-def]
    """The one line a user sees (the CLI's main prints SpmctlError messages)."""
    assert result.exit_code != 0
    assert isinstance(result.exception, SpmctlError), result.output
    message = str(result.exception)
    assert "\n" not in message
    return message
