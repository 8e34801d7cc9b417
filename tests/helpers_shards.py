"""What DDP relies on, for any family's objective: the ranks' gradients, averaged, are the whole batch's."""

from __future__ import annotations

from typing import Any

import pytest
import torch


def trained_looking(params: list[torch.Tensor], std: float = 0.05) -> None:
    """Nudge a fresh membrane (its up factors start at zero) so that every gradient is nonzero."""
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn_like(p) * std)


def assert_shards_average_to_the_batch(objective: Any, embeds: Any, params: list[torch.Tensor],
                                       ranks: int = 2) -> None:
    """Each rank's share of the batch (objective.shard = (rank, ranks)), averaged over the ranks,
    gives the whole batch's gradient and loss, for parts that split evenly and parts every rank
    computes whole."""

    def gradient(shard: tuple[int, int] | None) -> tuple[list[torch.Tensor], float]:
        objective.shard = shard
        for p in params:
            p.grad = None
        loss, terms = objective.loss(embeds, torch.Generator().manual_seed(5))
        loss.backward()
        return [p.grad.clone() for p in params], float(terms["loss"])

    try:
        full, full_loss = gradient(None)
        parts = [gradient((rank, ranks)) for rank in range(ranks)]
    finally:
        objective.shard = None
    scale = max(float(g.abs().max()) for g in full)
    assert scale > 0
    for whole, *shards in zip(full, *(grads for grads, _ in parts), strict=True):
        torch.testing.assert_close(sum(shards) / ranks, whole, rtol=0, atol=1e-5 * scale)
    assert sum(loss for _, loss in parts) / ranks == pytest.approx(full_loss, rel=1e-5)
