"""SDXL's conditioning, computed as diffusers' `StableDiffusionXLPipeline.encode_prompt` does.

- per-token embeddings: each encoder's *penultimate* hidden state (no final layer norm), the two
  concatenated along the channel axis: (B, 77, d1 + d2);
- pooled: encoder 2's projected pooled output (B, p), which enters the UNet's added embedding;
- time ids: (original h, w, crop top, left, target h, w) per sample, also in the added embedding.

`clip_skip` keeps spmctl's meaning (1 = the family's default layer): for SDXL that default is the
penultimate layer, and clip_skip c reads `hidden_states[-(c + 1)]` (diffusers' `clip_skip=c-1`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ...models.text import tokenize


@dataclass
class XLEmbeds:
    """What SDXL's UNet is conditioned on, for a batch of prompts."""

    tokens: torch.Tensor  # (B, 77, d1 + d2): the cross-attention input
    pooled: torch.Tensor  # (B, p): encoder 2's projected pooled output

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def expand(self, batch: int) -> XLEmbeds:
        return XLEmbeds(self.tokens.expand(batch, -1, -1), self.pooled.expand(batch, -1))

    def index(self, rows: Sequence[int] | slice) -> XLEmbeds:
        return XLEmbeds(self.tokens[rows], self.pooled[rows])

    def to(self, device: Any = None, dtype: torch.dtype | None = None) -> XLEmbeds:
        return XLEmbeds(self.tokens.to(device=device, dtype=dtype), self.pooled.to(device=device, dtype=dtype))

    @staticmethod
    def cat(parts: Sequence[XLEmbeds]) -> XLEmbeds:
        return XLEmbeds(torch.cat([p.tokens for p in parts]), torch.cat([p.pooled for p in parts]))

    def zeros_like(self) -> XLEmbeds:
        return XLEmbeds(torch.zeros_like(self.tokens), torch.zeros_like(self.pooled))


def encode_xl(
    tokenizers: Sequence[Any], text_encoders: Sequence[Any], prompts: list[str], clip_skip: int = 1
) -> XLEmbeds:
    """Both encoders on `prompts`; see the module docstring for what is taken from each."""
    if clip_skip < 1:
        raise ValueError(f"clip_skip must be >= 1, got {clip_skip}")
    tokens, pooled = [], None
    with torch.no_grad():
        for tokenizer, encoder in zip(tokenizers, text_encoders, strict=True):
            ids = tokenize(tokenizer, prompts).to(encoder.device)
            out = encoder(ids, output_hidden_states=True)
            tokens.append(out.hidden_states[-(clip_skip + 1)])
            pooled = out[0]  # the last encoder's (CLIPTextModelWithProjection) projected pooled output
    assert pooled is not None and pooled.dim() == 2, "SDXL's last text encoder must have a projection"
    return XLEmbeds(torch.cat(tokens, dim=-1), pooled)


def time_ids(height: int, width: int, original: tuple[int, int] | None = None,
             crop: tuple[int, int] = (0, 0), target: tuple[int, int] | None = None) -> torch.Tensor:
    """SDXL's six size conditions (1, 6); by default what the pipeline uses: original = target =
    the generated size, no crop."""
    original = original or (height, width)
    target = target or (height, width)
    return torch.tensor([[*original, *crop, *target]], dtype=torch.float32)


def added_cond(embeds: XLEmbeds, ids: torch.Tensor, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The UNet's `added_cond_kwargs` for a batch: pooled embeddings and one row of time ids each."""
    batch = embeds.pooled.shape[0]
    device = embeds.pooled.device
    return {"text_embeds": embeds.pooled.to(dtype),
            "time_ids": ids.to(device=device, dtype=dtype).expand(batch, -1)}
