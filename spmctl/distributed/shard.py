"""`spmctl sample` over several processes (torchrun): each rank makes its share of the images.

Jobs are numbered in the run's order (file names are decided over the whole run first, so two
ranks never pick the same name) and rank r takes jobs r, r + world, r + 2·world, ... — independent
of what is already on disk, so ranks agree without talking. Each rank appends to its own
`manifest.rank<R>.jsonl`; after a barrier rank 0 merges the parts into `manifest.jsonl` (in run
order) and removes them. Readers take `manifest.jsonl` and any parts an interrupted run left
behind, so a re-run, with any number of processes, skips every image already made.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypeVar

from ..fileio import write_text_atomic
from ..sampling.output import MANIFEST, ManifestWriter, read_manifest, read_records
from . import dist

T = TypeVar("T")
PART_GLOB = "manifest.rank*.jsonl"


def part_path(folder: Path, rank: int) -> Path:
    return folder / f"manifest.rank{rank}.jsonl"


def for_this_rank(cfg: Any) -> Any:
    """A SampleConfig for this process: under torchrun, 'auto'/'cuda' means cuda:LOCAL_RANK (one GPU each)."""
    env = dist.dist_env()
    if env.distributed and cfg.device in ("auto", "cuda") and dist.is_cuda("0"):
        return cfg.model_copy(update={"device": f"cuda:{env.local_rank}"})
    return cfg


def _part_rank(path: Path) -> int:
    digits = path.name.removeprefix("manifest.rank").removesuffix(".jsonl")
    return int(digits) if digits.isdigit() else -1


class SampleShard:
    """This process's share of a sampling run and where it records what it made."""

    def __init__(self, folder: Path, env: dist.DistEnv) -> None:
        self.folder = folder
        self.env = env

    @classmethod
    def open(cls, folder: Path) -> SampleShard:
        env = dist.dist_env()
        dist.init("cpu", collectives_on_device=False)  # barriers only: gloo, long timeout
        return cls(folder, env)

    @property
    def is_main(self) -> bool:
        return self.env.is_main

    def take(self, items: list[T]) -> list[T]:
        return items[self.env.rank::self.env.world_size]

    def read_manifest(self) -> dict[str, dict[str, Any]]:
        """`manifest.jsonl` and every part left behind (parts are newer: they win)."""
        records = read_manifest(self.folder)
        for part in sorted(self.folder.glob(PART_GLOB)):
            records.update(read_records(part))
        return records

    def writer(self, existing: dict[str, dict[str, Any]], names: list[str]) -> Any:
        """The manifest writer: the usual one alone, this rank's part when several processes run."""
        if not self.env.distributed:
            return ManifestWriter(self.folder, existing)
        return _PartWriter(self.folder, {n: existing[n] for n in names if n in existing},
                           part_path(self.folder, self.env.rank))

    def close(self, all_names: list[str]) -> None:
        """After every rank is done: rank 0 merges the parts into `manifest.jsonl`; parts go away."""
        try:
            dist.barrier()
            if not self.is_main:
                return
            parts = list(self.folder.glob(PART_GLOB))
            if self.env.distributed:
                # this run's parts last: they are newer than the manifest and than parts an earlier run
                # with more processes left behind
                records = read_manifest(self.folder)
                for part in sorted(parts, key=lambda p: (_part_rank(p) < self.env.world_size, _part_rank(p))):
                    records.update(read_records(part))
                known = set(all_names)
                order = [n for n in records if n not in known] + [n for n in all_names if n in records]
                write_text_atomic(self.folder / MANIFEST, "".join(json.dumps(records[n]) + "\n" for n in order))
            # (one process: its ManifestWriter already folded any old parts into manifest.jsonl)
            for part in parts:
                part.unlink(missing_ok=True)
        finally:
            dist.shutdown()


class _PartWriter(ManifestWriter):
    """A ManifestWriter for this rank's part file, which keeps only this rank's records."""

    def finish(self, order: list[str], failed: bool = False) -> None:
        self._handle.close()
        write_text_atomic(self.path, "".join(json.dumps(self.records[n]) + "\n" for n in order if n in self.records))
