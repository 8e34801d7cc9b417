"""`sweep.json`: each concept's status in a sweep, so a re-run continues where the last one stopped.

Ranks never write the same file: each rank writes its own part (`sweep.rank<R>.json`, only the
concepts it trained), and only rank 0 writes `sweep.json`, merging the parts into it whenever it
updates its own and once more after the final barrier, when the parts are removed. A reader merges
`sweep.json` and every part left by an interrupted run, the newest entry of each concept winning.
Every write is atomic (temporary file + rename), so a kill never leaves a torn file.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from ..fileio import write_text_atomic

SWEEP_FILE = "sweep.json"
PART_GLOB = "sweep.rank*.json"
STATUSES = ("pending", "running", "done", "failed", "interrupted")


def part_path(root: Path, rank: int) -> Path:
    return root / f"sweep.rank{rank}.json"


def _read(path: Path) -> dict[str, dict[str, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}  # a missing or foreign file holds no progress; the run redoes what it can't prove done
    concepts = data.get("concepts") if isinstance(data, dict) else None
    return {name: e for name, e in concepts.items() if isinstance(e, dict)} if isinstance(concepts, dict) else {}


def read_entries(root: Path) -> dict[str, dict[str, Any]]:
    """Every concept's latest entry: `sweep.json`, then the parts (which are never older than it)."""
    entries = _read(root / SWEEP_FILE)
    for part in sorted(root.glob(PART_GLOB)):
        for name, entry in _read(part).items():
            old = entries.get(name)
            if old is None or entry.get("updated", 0) >= old.get("updated", 0):
                entries[name] = entry
    return entries


def is_done(root: Path, entry: dict[str, Any]) -> bool:
    output = entry.get("output")  # relative to the sweep's folder, which may move
    return entry.get("status") == "done" and bool(output) and (root / output).is_file()


def still_to_do(root: Path, names: list[str]) -> list[str]:
    entries = read_entries(root)
    return [n for n in names if not is_done(root, entries.get(n, {}))]


def _dump(entries: dict[str, dict[str, Any]], meta: dict[str, Any]) -> str:
    return json.dumps({**meta, "concepts": entries}, indent=2) + "\n"


class SweepState:
    """This rank's view and writer of the sweep's state (`sweep.json` and its per-rank parts)."""

    def __init__(self, root: Path, rank: int, meta: dict[str, Any]) -> None:
        self.root = root
        self.rank = rank
        self.meta = meta  # template, concept order: what the sweep is
        self.mine: dict[str, dict[str, Any]] = {}

    def plan(self, names: list[str], slugs: dict[str, str]) -> tuple[list[str], dict[str, dict[str, Any]]]:
        """(rank 0) The concepts still to train, in order, and every entry; writes the merged `sweep.json`
        (new concepts as pending) and removes the parts it merged, before any rank starts."""
        entries = read_entries(self.root)
        todo = []
        for name in names:
            entry = entries.setdefault(name, {"status": "pending", "attempts": 0})
            entry["slug"] = slugs[name]
            if is_done(self.root, entry):
                continue
            if entry.get("status") == "done":  # its membrane is gone: train it again
                entry["status"] = "pending"
            elif entry.get("status") == "running":  # no rank runs yet: the last run was killed during it
                entry["status"] = "interrupted"
            todo.append(name)
        self._write_merged(entries)
        return todo, entries

    def update(self, name: str, entry: dict[str, Any], **fields: Any) -> dict[str, Any]:
        """Record a concept's new state in this rank's part (and, on rank 0, in `sweep.json` too)."""
        entry = {**entry, **fields, "rank": self.rank, "updated": time.time()}
        self.mine[name] = entry
        write_text_atomic(part_path(self.root, self.rank), _dump(self.mine, self.meta))
        if self.rank == 0:  # keeps sweep.json current while the run goes on; only rank 0 writes it
            self._write_merged(read_entries(self.root), remove_parts=False)
        return entry

    def finish(self) -> dict[str, dict[str, Any]]:
        """(rank 0, after every rank is done) Merge the parts into `sweep.json` and remove them."""
        entries = read_entries(self.root)
        self._write_merged(entries)
        return entries

    def _write_merged(self, entries: dict[str, dict[str, Any]], remove_parts: bool = True) -> None:
        order = list(self.meta.get("order", []))
        ordered = {n: entries[n] for n in order if n in entries}
        ordered.update({n: e for n, e in entries.items() if n not in ordered})  # earlier sweeps' concepts
        write_text_atomic(self.root / SWEEP_FILE, _dump(ordered, self.meta))
        if remove_parts:
            for part in self.root.glob(PART_GLOB):
                part.unlink(missing_ok=True)
