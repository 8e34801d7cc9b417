"""A plain Vision Transformer that loads timm's ViT state dicts, for machines where timm cannot import.

timm needs torchvision, and torchvision's wheel does not load beside every torch build (the CPU
torch here: "operator torchvision::nms does not exist"). The UnlearnCanvas classifiers are timm
`vit_large_patch16_224` state dicts; this module has timm's module names (`patch_embed.proj`,
`blocks.N.norm1`, `blocks.N.attn.qkv`, `blocks.N.attn.proj`, `blocks.N.norm2`, `blocks.N.mlp.fc1`,
`blocks.N.mlp.fc2`, `norm`, `head`, `cls_token`, `pos_embed`), so such a state dict loads strictly,
and it computes what timm's ViT computes for them: pre-norm blocks, LayerNorm eps 1e-6, exact GELU,
class token through the final norm into the head.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

HEAD_DIM = 64  # every timm ViT of the standard family (tiny .. huge) has 64-dim heads


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, patch: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class VisionTransformer(nn.Module):
    def __init__(self, dim: int, depth: int, heads: int, hidden: int, patch: int, tokens: int,
                 num_classes: int) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed(patch, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, tokens, dim))
        self.blocks = nn.ModuleList(Block(dim, heads, hidden) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(images)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x)[:, 0])


def image_size(state: dict[str, Any]) -> int:
    """The input size a timm ViT state dict was trained at (from its position table and patch size)."""
    patch = int(state["patch_embed.proj.weight"].shape[-1])
    side = round((int(state["pos_embed"].shape[1]) - 1) ** 0.5)
    return side * patch


def from_state_dict(state: dict[str, Any]) -> VisionTransformer:
    """A ViT shaped after a timm ViT state dict, its weights loaded strictly (a missing or extra key
    raises ValueError naming it, a shape that does not fit RuntimeError, a key the shape needs KeyError)."""
    dim = int(state["patch_embed.proj.weight"].shape[0])
    depth = 1 + max(int(key.split(".")[1]) for key in state if key.startswith("blocks."))
    model = VisionTransformer(
        dim=dim, depth=depth, heads=max(1, dim // HEAD_DIM), hidden=int(state["blocks.0.mlp.fc1.weight"].shape[0]),
        patch=int(state["patch_embed.proj.weight"].shape[-1]), tokens=int(state["pos_embed"].shape[1]),
        num_classes=int(state["head.weight"].shape[0]))
    result = model.load_state_dict(state, strict=False)  # shapes that do not fit raise RuntimeError
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(f"missing keys {result.missing_keys[:3]}, unexpected keys {result.unexpected_keys[:3]}")
    return model
