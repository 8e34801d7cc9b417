"""Pure-PyTorch reference of the membrane op: the test oracle and the no-compiler fallback.

    out = base_out + sum_k gate[b, k] * scale[k] * (x . down_k^T) . up_k^T

Shapes (K membranes of rank r):
    x        (B, ..., C_in) when ``conv`` is False (a linear layer's input), or (B, C_in, H, W)
             when ``conv`` is True (a 1x1 conv's input, contiguous or channels-last)
    base_out same layout as x with C_out channels (what the wrapped base layer returned)
    down     (K, r, C_in)
    up       (K, C_out, r)
    gate     (B, K)  per sample and membrane strength (not trained)
    scale    (K,)    alpha / rank per membrane

Everything is computed in the "opmath" type (fp32 for fp16/bf16/fp32, fp64 for fp64) and rounded
once at the end, which is what the fused kernels do too; built only from differentiable torch ops,
so autograd, gradcheck and torch.compile all work on it unchanged.
"""

from __future__ import annotations

import torch


def opmath_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def membrane_reference(
    x: torch.Tensor,
    base_out: torch.Tensor,
    down: torch.Tensor,
    up: torch.Tensor,
    gate: torch.Tensor,
    scale: torch.Tensor,
    conv: bool = False,
) -> torch.Tensor:
    acc = opmath_dtype(base_out.dtype)
    k, r, c_in = down.shape
    batch = x.shape[0]
    coef = gate.to(acc).reshape(batch, k) * scale.to(acc).reshape(1, k)  # (B, K)
    rows = x.to(acc).movedim(1, -1) if conv else x.to(acc)  # channels last: (B, ..., C_in)
    h = rows @ down.to(acc).reshape(k * r, c_in).t()  # (B, ..., K*r)
    lead = h.shape[:-1]
    h = (h.reshape(batch, -1, k, r) * coef.view(batch, 1, k, 1)).reshape(*lead, k * r)
    delta = h @ up.to(acc).permute(0, 2, 1).reshape(k * r, -1)  # (B, ..., C_out)
    if conv:
        delta = delta.movedim(-1, 1)
    out = (base_out.to(acc) + delta).to(base_out.dtype)
    # Same output layout rule as the fused op: channels-last only for a channels-last conv input.
    cl = (
        conv and x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
    )
    return out.contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)
