"""One adapted layer: the base nn.Linear / nn.Conv2d plus K stacked membranes (peft-style wrapper)."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import module as _nn_module

from spmctl.errors import SpmctlError
from spmctl.membrane.delta import add_delta
from spmctl.ops import linear_membrane, membrane, membrane_


def _has_hooks(layer: nn.Module) -> bool:
    """Forward hooks that calling `layer` would run (its own or global ones): the fused
    linear_membrane path, which does not call the layer, is taken only without them."""
    return bool(
        layer._forward_hooks
        or layer._forward_pre_hooks
        or _nn_module._global_forward_hooks
        or _nn_module._global_forward_pre_hooks
    )


class GateState:
    """The gates shared by every wrapper of one network: a (G, K) fp32 tensor, G = 1 or the batch.

    `active` is computed once per set_gates on the host so that a forward with every gate 0 never
    touches the adapters (and never syncs a GPU to find out).
    """

    def __init__(self, num_membranes: int) -> None:
        self.num_membranes = num_membranes
        self.gates = torch.ones(1, num_membranes)
        self.active = True
        self._cache: dict[tuple[torch.device, int], torch.Tensor] = {}
        self._last: tuple[int, torch.device, torch.Tensor] | None = None

    def set(self, gates: torch.Tensor) -> None:
        self.gates = gates
        self.active = bool((gates != 0).any())
        self._cache = {}
        self._last = None

    def for_batch(self, batch: int, device: torch.device) -> torch.Tensor:
        last = self._last  # every layer of one UNet call asks for the same one
        if last is not None and last[0] == batch and last[1] == device:
            return last[2]
        key = (device, batch)
        cached = self._cache.get(key)
        if cached is None:
            rows = self.gates.shape[0]
            if rows not in (1, batch):
                raise SpmctlError(
                    f"membrane gates have {rows} rows but the UNet batch has {batch} samples; "
                    "give one gate row per sample (or a single row for all)"
                )
            cached = self.gates.to(device).expand(batch, self.num_membranes).contiguous()
            self._cache[key] = cached
        self._last = (batch, device, cached)
        return cached


class MembraneModule(nn.Module):
    """Replaces `base` in its parent; y = base(x) + sum_k gate[b,k] * scale_k * up_k(down_k(x)).

    Parameters are stacked over the K membranes: lora_down (K, r, C_in[, kh, kw]) and
    lora_up (K, C_out, r). `scale` (K,) is alpha_k / rank_k per membrane (non-persistent buffer).
    """

    def __init__(
        self,
        base: nn.Linear | nn.Conv2d,
        lora_name: str,
        rank: int,
        alpha: float,
        num_membranes: int,
        state: GateState,
    ) -> None:
        super().__init__()
        self.base = base
        self.lora_name = lora_name
        self.rank = rank
        self._state = state  # plain attribute: shared, not a submodule
        weight = base.weight
        if isinstance(base, nn.Conv2d):
            in_shape: tuple[int, ...] = (base.in_channels, *base.kernel_size)
            out_features = base.out_channels
            # The fused op covers pointwise convs; others use conv2d with the module's geometry.
            self.pointwise = (
                base.kernel_size == (1, 1)
                and base.stride == (1, 1)
                and base.dilation == (1, 1)
                and base.padding in ((0, 0), "valid")
            )
        else:
            in_shape = (base.in_features,)
            out_features = base.out_features
            self.pointwise = True
        self._is_conv = isinstance(base, nn.Conv2d)
        self._plain_linear = type(base) is nn.Linear  # not a subclass: its forward might differ
        self.lora_down = nn.Parameter(torch.empty(num_membranes, rank, *in_shape, device=weight.device))
        self.lora_up = nn.Parameter(torch.zeros(num_membranes, out_features, rank, device=weight.device))
        for k in range(num_membranes):
            nn.init.kaiming_uniform_(self.lora_down.data[k], a=math.sqrt(5))
        self.register_buffer(
            "scale", torch.full((num_membranes,), alpha / rank, device=weight.device), persistent=False
        )

    def __getattr__(self, name: str) -> Any:
        # Code that reads `layer.weight`, `layer.in_features`, ... keeps working through the wrapper.
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base":
                raise
            return getattr(self._modules["base"], name)

    @property
    def is_conv(self) -> bool:
        return self._is_conv

    @torch.no_grad()
    def merged_weight(self, gates: torch.Tensor) -> torch.Tensor:
        """The base weight with Σ_k gates[k]·scale_k·up_k·down_k folded in (a new tensor)."""
        weight = self.base.weight
        k, r = self.lora_down.shape[:2]
        coef = (gates.to(self.scale.device) * self.scale).repeat_interleave(r)  # (K*r,)
        up = self.lora_up.permute(1, 0, 2).reshape(-1, k * r) * coef  # (C_out, K*r), gated
        return add_delta(weight, up, self.lora_down.reshape(k * r, -1))  # (K*r, C_in*kh*kw)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        # This runs ~50 times per UNet call, so it reads parameters from the module's dicts directly
        # (each `self.lora_down` would go through __getattr__ below) and does no other lookups.
        modules, params = self._modules, self._parameters
        base = modules["base"]
        state = self._state
        if not state.active or x.dim() < 2:
            return base(x, *args, **kwargs)  # exactly the call the UNet made before
        gate = state.for_batch(x.shape[0], x.device)
        down, up, scale = params["lora_down"], params["lora_up"], self._buffers["scale"]
        wants_grad = torch.is_grad_enabled() and (x.requires_grad or up.requires_grad or down.requires_grad)
        if self._plain_linear and not (wants_grad or args or kwargs or _has_hooks(base)):
            # sampling: the layer and its membranes in one op (see csrc/linear_membrane.cpp)
            out = linear_membrane(x, base.weight, base.bias, down, up, gate, scale)
            if out is not None:
                return out
        out = base(x, *args, **kwargs)
        if x.dtype != out.dtype:  # autocast: the base ran in a lower precision
            x = x.to(out.dtype)
        conv = self._is_conv
        if self.pointwise and (not conv or x.dim() == 4):
            if conv:  # (K, r, C_in, 1, 1) -> (K, r, C_in)
                down = down.view(down.shape[0], down.shape[1], -1)
            if wants_grad:
                return membrane(x, out, down, up, gate, scale, conv)
            # no gradient wanted (denoising, sampling): add into the base layer's fresh output
            return membrane_(out, x, down, up, gate, scale, conv)
        return out + self._conv_delta(x, gate).to(out.dtype)

    def _conv_delta(self, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        """Plain path for a non-pointwise conv: all K downs as one conv, gated, then one 1x1 up."""
        conv = self.base
        assert isinstance(conv, nn.Conv2d)
        k, r = self.lora_down.shape[:2]
        down = self.lora_down.reshape(k * r, *self.lora_down.shape[2:]).to(x.dtype)
        h = F.conv2d(x, down, None, conv.stride, conv.padding, conv.dilation)
        coef = (gate.to(h.dtype) * self.scale.to(h.dtype)).repeat_interleave(r, dim=1)
        h = h * coef[:, :, None, None]
        up = self.lora_up.permute(1, 0, 2).reshape(-1, k * r, 1, 1).to(h.dtype)  # (C_out, K*r, 1, 1)
        return F.conv2d(h, up)
