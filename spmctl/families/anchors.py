"""The anchoring term's embeddings, drawn around the target's (the SPM method's latent anchoring).

Family-neutral maths on one embedding tensor; a family decides which of its embeddings it applies
to (`ModelFamily.sample_anchors`): SD 1.x's per-token CLIP states, a joint space for others.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def sample_anchors(target: torch.Tensor, count: int, gen: torch.Generator) -> torch.Tensor:
    """`count` latent anchors: random directions accepted with probability 1 − cos(target, direction),
    scaled by U(0.8, 1.2)·‖target‖. Returns (count, *target.shape[1:]) on the target's device."""
    import torch

    flat = target.reshape(-1).float().cpu()
    norm = flat.norm()
    unit_target = flat / norm
    accepted: list[torch.Tensor] = []
    while len(accepted) < count:
        directions = torch.randn(max(2 * count, 8), flat.numel(), generator=gen)
        directions = directions / directions.norm(dim=1, keepdim=True)
        cos = directions @ unit_target
        keep = torch.rand(cos.shape, generator=gen) < (1 - cos)
        accepted.extend(directions[keep])
    anchors = torch.stack(accepted[:count])
    scale = torch.rand(count, 1, generator=gen) * 0.4 + 0.8
    anchors = anchors * scale * norm
    return anchors.reshape(count, *target.shape[1:]).to(device=target.device, dtype=target.dtype)
