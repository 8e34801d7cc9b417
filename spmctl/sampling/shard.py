"""`spmctl sample` over several processes (torchrun): each rank makes its share of the images.

Jobs are numbered in the run's order (file names are decided over the whole run first, so two
ranks never pick the same name) and rank r takes jobs r, r + world, r + 2·world, ... — independent
of what is already on disk, so ranks agree without talking. Each rank appends to its own
`manifest.rank<R>.jsonl`; after a barrier rank 0 merges the parts into `manifest.jsonl` (in run
order) and removes them. Readers take `manifest.jsonl` and any parts an interrupted run left
behind, so a re-run, with any number of processes, skips every image already made.

Who this process is, and how it waits for the others, comes in as a `Ranks` (the front end passes
`spmctl.distributed.dist_env()`): sampling sits below the distributed layer and never imports it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from ..fileio import write_text_atomic
from ..image_index import MANIFEST, read_manifest, read_records
from .output import ManifestWriter

T = TypeVar("T")
PART_GLOB = "manifest.rank*.jsonl"


class Ranks(Protocol):
    """This process's place in a multi-process run, and the coordination sampling needs."""

    @property
    def rank(self) -> int: ...
    @property
    def world_size(self) -> int: ...
    @property
    def local_rank(self) -> int: ...
    @property
    def is_main(self) -> bool: ...
    @property
    def distributed(self) -> bool: ...

    def join(self) -> None:
        """Join the others for barriers (a no-op for one process)."""

    def barrier(self) -> None: ...

    def leave(self) -> None: ...


@dataclass(frozen=True)
class OneProcess:
    """The `Ranks` of an ordinary run: rank 0 of 1, nothing to wait for."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    is_main: bool = True
    distributed: bool = False

    def join(self) -> None:
        pass

    def barrier(self) -> None:
        pass

    def leave(self) -> None:
        pass


def part_path(folder: Path, rank: int) -> Path:
    return folder / f"manifest.rank{rank}.jsonl"


def for_this_rank(cfg: Any, ranks: Ranks) -> Any:
    """A SampleConfig for this process: under torchrun, 'auto'/'cuda' means cuda:LOCAL_RANK (one GPU each)."""
    import torch

    if ranks.distributed and cfg.device in ("auto", "cuda") and torch.cuda.is_available():
        return cfg.model_copy(update={"device": f"cuda:{ranks.local_rank}"})
    return cfg


def _part_rank(path: Path) -> int:
    digits = path.name.removeprefix("manifest.rank").removesuffix(".jsonl")
    return int(digits) if digits.isdigit() else -1


class SampleShard:
    """This process's share of a sampling run and where it records what it made."""

    def __init__(self, folder: Path, env: Ranks) -> None:
        self.folder = folder
        self.env = env

    @classmethod
    def open(cls, folder: Path, ranks: Ranks) -> SampleShard:
        ranks.join()  # barriers only
        return cls(folder, ranks)

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
            self.env.barrier()
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
            self.env.leave()


class _PartWriter(ManifestWriter):
    """A ManifestWriter for this rank's part file, which keeps only this rank's records."""

    def finish(self, order: list[str], failed: bool = False) -> None:
        self._handle.close()
        write_text_atomic(self.path, "".join(json.dumps(self.records[n]) + "\n" for n in order if n in self.records))
