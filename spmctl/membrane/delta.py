"""The one formula that folds membranes into a weight: W + Σ_i c_i · up_i · down_i.

Merged weights (`MembraneNetwork.merged`, used by training's partial denoising), a model exported
with membranes merged in, and several membranes merged into one LoRA file all go through here.
`c_i` is a membrane's strength times its scale alpha/rank (times its gate, for merged weights).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from ..errors import SpmctlError


def scaled(down: torch.Tensor, up: torch.Tensor, alpha: float, strength: float = 1.0
           ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """A membrane file's (down, up, alpha) at `strength`, as `stack_factors` takes it: c = strength·alpha/rank."""
    return down, up, strength * alpha / down.shape[0]


def stack_factors(parts: Iterable[tuple[torch.Tensor, torch.Tensor, float]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(down (r_i, in[, kh, kw]), up (out, r_i), c_i) pairs as ONE pair, in fp32: downs stacked, ups side
    by side with c_i folded in, so up @ down = Σ_i c_i · up_i @ down_i exactly (no SVD, no truncation)."""
    downs, ups = [], []
    for down, up, coef in parts:
        downs.append(down.float())
        ups.append(up.float() * coef)
    return torch.cat(downs), torch.cat(ups, dim=1)


def add_delta(weight: torch.Tensor, up: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
    """weight + up (out, R) @ down (R, in[, kh, kw]), a new tensor of weight's shape and dtype.

    For a conv, a k×k down followed by a 1×1 up is the k×k conv whose kernel is up·down (composition
    of linear maps per tap). An fp32 weight takes one fused addmm; any other is summed in fp32 and
    cast back once, so a low-precision weight is rounded once, not per membrane."""
    down = down.reshape(down.shape[0], -1)
    if up.shape[0] * down.shape[1] != weight.numel():
        raise SpmctlError(f"membrane delta {(up.shape[0], down.shape[1])} does not fit a weight of shape "
                          f"{tuple(weight.shape)}")
    if weight.dtype == torch.float32:
        return torch.addmm(weight.reshape(weight.shape[0], -1), up, down).view(weight.shape)
    return (weight.float() + (up.float() @ down.float()).view(weight.shape)).to(weight.dtype)
