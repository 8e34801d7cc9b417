"""Peak memory of SPM training and sampling on SD3 and FLUX at 1024 px, from the real models' sizes.

    python benchmarks/flow_memory.py --out flow_memory.json

Weights are counted exactly: each real model part is built from its published config on the meta
device (no memory, no download) and its parameters counted. The transformer's saved activations
are measured, not guessed: one real-width block of each kind (bf16, membranes attached as training
attaches them) runs forward at two token counts under `saved_tensors_hooks`, and the bytes it keeps
for backward give a per-token slope (linear: the attention is PyTorch's fused SDPA, which keeps no
tokens x tokens matrix, as on a GPU). The table then assumes the method's defaults (one latent and
4 anchors in the membrane-ON pass), bf16 weights with the fp32 membrane, AdamW, the text encoders
and the VAE offloaded after encoding, and gradient checkpointing (or not).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import torch

GiB = 2**30

TRANSFORMERS: dict[str, tuple[str, dict[str, Any]]] = {
    "FLUX.1-dev": ("FluxTransformer2DModel", {
        "patch_size": 1, "in_channels": 64, "num_layers": 19, "num_single_layers": 38,
        "attention_head_dim": 128, "num_attention_heads": 24, "joint_attention_dim": 4096,
        "pooled_projection_dim": 768, "guidance_embeds": True, "axes_dims_rope": (16, 56, 56)}),
    "SD3-medium": ("SD3Transformer2DModel", {
        "sample_size": 128, "patch_size": 2, "in_channels": 16, "num_layers": 24, "attention_head_dim": 64,
        "num_attention_heads": 24, "joint_attention_dim": 4096, "caption_projection_dim": 1536,
        "pooled_projection_dim": 2048, "out_channels": 16, "pos_embed_max_size": 192}),
    "SD3.5-large": ("SD3Transformer2DModel", {
        "sample_size": 128, "patch_size": 2, "in_channels": 16, "num_layers": 38, "attention_head_dim": 64,
        "num_attention_heads": 38, "joint_attention_dim": 4096, "caption_projection_dim": 2432,
        "pooled_projection_dim": 2048, "out_channels": 16, "pos_embed_max_size": 192, "qk_norm": "rms_norm"}),
}
FAMILY = {"FLUX.1-dev": "flux", "SD3-medium": "sd3", "SD3.5-large": "sd3"}
TEXT_LENGTH = {"flux": 512, "sd3": 77 + 256}  # tokens of the text stream

CLIP_L = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
          "projection_dim": 768, "vocab_size": 49408}
CLIP_G = {"hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32, "num_attention_heads": 20,
          "projection_dim": 1280, "vocab_size": 49408}
T5_XXL = {"d_model": 4096, "d_ff": 10240, "d_kv": 64, "num_heads": 64, "num_layers": 24, "vocab_size": 32128,
          "feed_forward_proj": "gated-gelu"}
VAE_16 = {"in_channels": 3, "out_channels": 3, "latent_channels": 16, "layers_per_block": 2,
          "block_out_channels": (128, 256, 512, 512), "down_block_types": ("DownEncoderBlock2D",) * 4,
          "up_block_types": ("UpDecoderBlock2D",) * 4, "use_quant_conv": False, "use_post_quant_conv": False}


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def meta_parts() -> dict[str, torch.nn.Module]:
    import diffusers
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    with torch.device("meta"):
        parts = {name: getattr(diffusers, cls)(**cfg) for name, (cls, cfg) in TRANSFORMERS.items()}
        parts["CLIP-L"] = CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_L))
        parts["CLIP-G"] = CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_G))
        parts["T5-XXL"] = T5EncoderModel(T5Config(**T5_XXL))
        parts["VAE"] = diffusers.AutoencoderKL(**VAE_16)
    return parts


def saved_bytes(block: torch.nn.Module, family: Any, img: int, txt: int, hidden: int, kind: str) -> int:
    """Bytes a membrane-carrying block keeps for backward at `img` + `txt` tokens (batch 1)."""
    from spmctl.membrane.network import MembraneNetwork

    holder = torch.nn.Module()
    holder.transformer_blocks = torch.nn.ModuleList([block])  # the path membrane_targets matches
    network = MembraneNetwork(holder, targets=family.membrane_targets(holder))
    seen: dict[int, int] = {}
    # weights (and views of them, e.g. a transposed weight) are counted as weights, not activations
    weights = {p.untyped_storage().data_ptr() for p in holder.parameters()}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in weights:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    x = torch.randn(1, img, hidden, dtype=torch.bfloat16, requires_grad=True)
    ctx = torch.randn(1, txt, hidden, dtype=torch.bfloat16, requires_grad=True)
    temb = torch.randn(1, hidden, dtype=torch.bfloat16)
    kwargs: dict[str, Any] = {}
    if kind.startswith("flux"):  # rotary position embeddings over text + image tokens: (cos, sin)
        head_dim = block.attn.head_dim
        kwargs["image_rotary_emb"] = (torch.randn(txt + img, head_dim), torch.randn(txt + img, head_dim))
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            block(x, ctx, temb, **kwargs)
    finally:
        network.detach()
    return sum(seen.values())


def block_slopes(parts: dict[str, torch.nn.Module]) -> dict[str, dict[str, float]]:
    """Saved bytes per token (bf16) of each block kind, from two token counts."""
    from diffusers.models.transformers.transformer_flux import FluxSingleTransformerBlock, FluxTransformerBlock
    from diffusers.models.transformers.transformer_sd3 import JointTransformerBlock

    from spmctl.families.registry import get_family

    out: dict[str, dict[str, float]] = {}
    for name, (cls, cfg) in TRANSFORMERS.items():
        family = get_family(FAMILY[name])
        hidden = cfg["num_attention_heads"] * cfg["attention_head_dim"]
        heads, head_dim = cfg["num_attention_heads"], cfg["attention_head_dim"]
        if cls == "FluxTransformer2DModel":
            kinds = {"flux_double": (FluxTransformerBlock, {}), "flux_single": (FluxSingleTransformerBlock, {})}
        else:
            kinds = {"joint": (JointTransformerBlock, {"context_pre_only": False, "qk_norm": cfg.get("qk_norm")})}
        slopes = {}
        for kind, (block_cls, extra) in kinds.items():
            with torch.device("meta"):
                block = block_cls(hidden, heads, head_dim, **extra)
            block = block.to_empty(device="cpu").to(torch.bfloat16).requires_grad_(False)
            with torch.no_grad():  # values do not change what is saved; skip the slow default init
                for p in block.parameters():
                    p.normal_(0, 0.02)
            low, high = (saved_bytes(block, family, n, 64, hidden, kind) for n in (128, 256))
            # bytes per token, in units of the width x 2 bytes (what flow.SAVED_PER_TOKEN records)
            slopes[kind] = (high - low) / 128 / (hidden * 2)
            slopes[kind + "_ratio_256_over_128"] = high / low  # 320/192 tokens = 1.67 if linear
            del block
        out[name] = slopes
    return out


def table(parts: dict[str, torch.nn.Module], size: int = 1024, on_batch: int = 5) -> list[dict[str, Any]]:
    """The families' own estimates (`peak_memory`, what `spmctl train` checks against free memory)
    on the real shapes, in bf16."""
    from spmctl.families import ModelBundle
    from spmctl.families.registry import get_family

    rows = []
    for name in TRANSFORMERS:
        family = get_family(FAMILY[name])
        encoders = ["CLIP-L", "T5-XXL"] if FAMILY[name] == "flux" else ["CLIP-L", "CLIP-G", "T5-XXL"]
        model = ModelBundle(family, name, parts[name], parts["VAE"], {},
                            text_encoders=tuple(parts[e] for e in encoders))
        row: dict[str, Any] = {"model": name, "tokens": family.text_length(model) + (size // 16) ** 2}
        for label, kwargs in {
            "train": {"training": True},
            "train_checkpointing": {"training": True, "checkpointing": True},
            "train_checkpointing_no_offload": {"training": True, "checkpointing": True, "offload": False},
            "sample": {"training": False},
        }.items():
            est = family.peak_memory(model, on_batch if kwargs["training"] else 1, size, size, **kwargs)
            row[label] = {"total_GiB": est.total / GiB, "weights_GiB": est.weights / GiB,
                          "membrane_MiB": est.membrane / 2**20, "activations_GiB": est.activations / GiB}
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="flow_memory.json")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    parts = {k: v.to(torch.bfloat16) for k, v in meta_parts().items()}
    slopes = block_slopes(parts)
    rows = table(parts)
    result = {"size": 1024, "on_batch": 5, "dtype": "bfloat16 weights, fp32 membrane (rank 1)",
              "saved_per_token_in_width_x_bytes": slopes, "rows": rows}
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=2)
    for name, kinds in slopes.items():
        print(name, {k: round(v, 2) for k, v in kinds.items()})
    for r in rows:
        print(f"{r['model']:12} train {r['train']['total_GiB']:6.1f} GiB, with checkpointing "
              f"{r['train_checkpointing']['total_GiB']:5.1f} GiB (text encoders kept: "
              f"{r['train_checkpointing_no_offload']['total_GiB']:5.1f}), sample {r['sample']['total_GiB']:5.1f} GiB")


if __name__ == "__main__":
    main()
