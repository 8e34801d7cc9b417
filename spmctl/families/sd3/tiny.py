"""The built-in tiny SD3 (`-m tiny-sd3`): Stable Diffusion 3's architecture scaled down, random
weights from a fixed seed, no download.

What is kept from the real model: a 16-channel VAE without quant convs, an MMDiT with patch 2,
two CLIP encoders with projections (CLIP-L and a wider CLIP-G, their penultimate states concatenated
and zero-padded to T5's width, their projected pooled outputs concatenated), T5's per-token states
after the CLIP tokens, and SD3's own scheduler config (flow matching, shift 3).
"""

from __future__ import annotations

from typing import Any

from ...models.tiny import VAE_CONFIG, build_tiny_tokenizer, tiny_clip_config
from ..tiny_t5 import build_tiny_t5_encoder, build_tiny_t5_tokenizer

TINY_SD3_NAMES = ("tiny-sd3", "builtin:tiny-sd3")

CLIP_L_WIDTH = 32
CLIP_G_WIDTH = 48
T5_WIDTH = 96  # wider than CLIP-L + CLIP-G (80), as 4096 is wider than 768 + 1280 in SD3

TRANSFORMER_CONFIG: dict[str, Any] = {
    "sample_size": 8,
    "patch_size": 2,
    "in_channels": 16,
    "out_channels": 16,
    "num_layers": 2,
    "attention_head_dim": 16,
    "num_attention_heads": 2,
    "joint_attention_dim": T5_WIDTH,
    "caption_projection_dim": 32,  # = heads x head dim, as in SD3
    "pooled_projection_dim": CLIP_L_WIDTH + CLIP_G_WIDTH,
    "pos_embed_max_size": 32,  # up to 512 px
}

SD3_VAE_CONFIG: dict[str, Any] = {
    **VAE_CONFIG,
    "latent_channels": 16,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
    "scaling_factor": 1.5305,  # SD3's
    "shift_factor": 0.0609,
}

SCHEDULER_CONFIG: dict[str, Any] = {"num_train_timesteps": 1000, "shift": 3.0}  # SD3's


def build_tiny_sd3_pipeline(seed: int = 0):
    """The whole tiny SD3 pipeline; same seed, same weights, every time."""
    import torch
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import CLIPTextModelWithProjection

    torch.manual_seed(seed + 20)
    transformer = SD3Transformer2DModel(**TRANSFORMER_CONFIG).eval()
    torch.manual_seed(seed + 21)
    vae = AutoencoderKL(**SD3_VAE_CONFIG).eval()
    torch.manual_seed(seed + 22)
    clip_l = CLIPTextModelWithProjection(tiny_clip_config(projection_dim=CLIP_L_WIDTH)).eval()
    torch.manual_seed(seed + 23)
    clip_g = CLIPTextModelWithProjection(tiny_clip_config(
        hidden_size=CLIP_G_WIDTH, intermediate_size=2 * CLIP_G_WIDTH, projection_dim=CLIP_G_WIDTH)).eval()
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG),
        vae=vae,
        text_encoder=clip_l,
        tokenizer=build_tiny_tokenizer(),
        text_encoder_2=clip_g,
        tokenizer_2=build_tiny_tokenizer(),
        text_encoder_3=build_tiny_t5_encoder(T5_WIDTH, seed + 24),
        tokenizer_3=build_tiny_t5_tokenizer(),
    )
