"""Data-parallel training of one membrane: the hooks `run_training` calls when given a `DataParallel`.

The membrane is not an `nn.Module` (it patches the UNet's modules), so instead of wrapping it in
DDP we do what DDP does, explicitly: identical start (broadcast from rank 0), each rank computes
the loss on its slice of the batch, then one all-reduce averages the gradients. Every rank draws
the whole batch from the shared generator and keeps its slice (see `SPMObjective.shard`), so N
ranks with equal slices step exactly like one process with the whole batch and the same seed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from .dist import DistEnv, from_main

T = TypeVar("T")

# loss terms averaged across ranks, so rank 0's log reads like a one-process run's
AVERAGED_TERMS = ("erase_loss", "anchor_loss", "loss")


class DataParallel:
    def __init__(self, env: DistEnv) -> None:
        self.rank = env.rank
        self.world_size = env.world_size

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def shard(self) -> tuple[int, int]:
        return self.rank, self.world_size

    def from_main(self, fn: Callable[[], T]) -> T:
        return from_main(fn)

    def broadcast_(self, params: Sequence[torch.Tensor]) -> None:
        """Give every rank rank 0's values (one flat buffer: one collective, not one per module)."""
        flat = torch.cat([p.detach().reshape(-1) for p in params])
        dist.broadcast(flat, src=0)
        self._unflatten(flat, params, into_grad=False)

    def all_finite(self, loss: torch.Tensor) -> bool:
        """Whether every rank's loss is finite: all ranks must agree to stop, or none step."""
        flag = torch.isfinite(loss.detach()).float().reshape(1)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item() > 0)

    def average(self, params: Sequence[torch.Tensor], terms: dict[str, Any],
                stop_requested: bool) -> tuple[dict[str, Any], bool]:
        """Average gradients and logged loss terms over the ranks; also share a Ctrl-C request, so that
        every rank stops at the same step (a rank stopping alone would leave the others waiting)."""
        device = params[0].device
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        extra = torch.tensor([float(terms[k]) for k in AVERAGED_TERMS] + [float(stop_requested)],
                             device=device, dtype=grads[0].dtype)
        flat = torch.cat([g.reshape(-1) for g in grads] + [extra])
        dist.all_reduce(flat)
        flat /= self.world_size
        self._unflatten(flat, params, into_grad=True)
        tail = flat[-len(extra):].tolist()
        averaged = {**terms, **dict(zip(AVERAGED_TERMS, tail[:-1], strict=True))}
        return averaged, tail[-1] > 0

    @staticmethod
    def _unflatten(flat: torch.Tensor, params: Sequence[torch.Tensor], into_grad: bool) -> None:
        offset = 0
        with torch.no_grad():
            for p in params:
                part = flat[offset:offset + p.numel()].view_as(p)
                offset += p.numel()
                if not into_grad:
                    p.copy_(part)
                elif p.grad is None:
                    p.grad = part.clone()
                else:
                    p.grad.copy_(part)
