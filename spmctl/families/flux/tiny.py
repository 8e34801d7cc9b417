"""The built-in tiny FLUX (`-m tiny-flux`): FLUX.1-dev's architecture scaled down, random weights
from a fixed seed, no download. Like the tiny SD it runs the whole path on a CPU in seconds.

What is kept from the real model: a 16-channel VAE without quant convs (latents packed 2x2 into
64-channel tokens), double-stream and single-stream blocks, rotary position axes, the guidance
embedding of the guidance-distilled dev model, CLIP-L's pooled output as the pooled projection,
T5's per-token states as the text stream, and FLUX.1-dev's own scheduler config (dynamic shift).
"""

from __future__ import annotations

from typing import Any

from ...models.tiny import VAE_CONFIG, build_tiny_tokenizer, tiny_clip_config
from ..tiny_t5 import build_tiny_t5_encoder, build_tiny_t5_tokenizer

TINY_FLUX_NAMES = ("tiny-flux", "builtin:tiny-flux")

T5_WIDTH = 48

TRANSFORMER_CONFIG: dict[str, Any] = {
    "patch_size": 1,
    "in_channels": 64,  # 16 latent channels x 2 x 2 packed
    "num_layers": 2,  # double-stream blocks
    "num_single_layers": 2,
    "attention_head_dim": 16,
    "num_attention_heads": 2,
    "joint_attention_dim": T5_WIDTH,
    "pooled_projection_dim": 32,  # CLIP-L's width (tiny_clip_config's hidden_size)
    "guidance_embeds": True,
    "axes_dims_rope": (4, 6, 6),  # sums to attention_head_dim
}

FLUX_VAE_CONFIG: dict[str, Any] = {
    **VAE_CONFIG,
    "latent_channels": 16,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
    "scaling_factor": 0.3611,  # FLUX.1's
    "shift_factor": 0.1159,
}

# FLUX.1-dev's scheduler config: the shift grows with the image's token count (mu)
SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
    "base_shift": 0.5,
    "max_shift": 1.15,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
}


def build_tiny_flux_pipeline(seed: int = 0):
    """The whole tiny FLUX pipeline; same seed, same weights, every time."""
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel

    torch.manual_seed(seed + 10)
    transformer = FluxTransformer2DModel(**TRANSFORMER_CONFIG).eval()
    torch.manual_seed(seed + 11)
    vae = AutoencoderKL(**FLUX_VAE_CONFIG).eval()
    torch.manual_seed(seed + 12)
    clip = CLIPTextModel(tiny_clip_config()).eval()
    return FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG),
        vae=vae,
        text_encoder=clip,
        tokenizer=build_tiny_tokenizer(),
        text_encoder_2=build_tiny_t5_encoder(T5_WIDTH, seed + 13),
        tokenizer_2=build_tiny_t5_tokenizer(),
        transformer=transformer,
    )
