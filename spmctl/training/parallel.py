"""What `run_training` asks of a data-parallel run, so training never imports `spmctl.distributed`.

`spmctl.distributed.ddp.DataParallel` implements `Parallel` (the distributed layer sits above
training and passes it in); ranks other than 0 log to a `NullLogger`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:
    import torch

T = TypeVar("T")


class Parallel(Protocol):
    """One rank of a data-parallel run: identical start, averaged gradients, one shared decision."""

    rank: int
    world_size: int

    @property
    def is_main(self) -> bool: ...
    @property
    def shard(self) -> tuple[int, int]: ...

    def from_main(self, fn: Callable[[], T]) -> T: ...
    def broadcast_(self, params: Sequence[torch.Tensor]) -> None: ...
    def all_finite(self, loss: torch.Tensor) -> bool: ...
    def average(self, params: Sequence[torch.Tensor], terms: dict[str, Any],
                stop_requested: bool) -> tuple[dict[str, Any], bool]: ...


def batch_note(world_size: int, settings: Sequence[Any]) -> str | None:
    """A warning when a prompt setting's batch does not split over the ranks (then every rank
    computes that part whole: still correct, but no faster)."""
    for s in settings:
        anchors = s.sampling_batch_size if s.action == "erase_with_la" else 0
        if s.batch_size % world_size and (not anchors or anchors % world_size):
            return (f"DDP over {world_size} processes: neither prompt.batch_size ({s.batch_size}) nor "
                    f"prompt.sampling_batch_size ({anchors}) splits evenly, so every process computes the "
                    "whole batch (no speed-up); use sizes divisible by the number of processes")
        if s.batch_size % world_size:
            return (f"DDP over {world_size} processes: prompt.batch_size ({s.batch_size}) does not "
                    "split evenly, so every process denoises the whole batch and only the anchors are "
                    f"split; a batch_size divisible by {world_size} splits the denoising too")
    return None


class NullLogger:
    """What ranks other than 0 log to: nothing (rank 0 logs the averaged terms)."""

    def log(self, record: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass
