"""The sample image index, `manifest.jsonl`: one JSON line per image `spmctl sample` made.

Low level (no torch): sampling writes it, eval and attack read it, so the reader lives here once.
A line torn by an interrupted run is skipped; the last record for a file wins.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

MANIFEST = "manifest.jsonl"


def read_records(path: Path) -> dict[str, dict[str, Any]]:
    """A JSON-lines index (or one process's part of it): file name -> its last complete record."""
    records: dict[str, dict[str, Any]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line torn by an interruption
            continue
        if isinstance(record, dict) and "file" in record:
            records[record["file"]] = record
    return records


def read_manifest(folder: Path) -> dict[str, dict[str, Any]]:
    """The folder's `manifest.jsonl` as file name -> its last complete record ({} without one)."""
    path = folder / MANIFEST
    return read_records(path) if path.is_file() else {}
