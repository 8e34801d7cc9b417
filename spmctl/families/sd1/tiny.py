"""The built-in tiny Stable Diffusion (`-m tiny`): SD 1.x architecture, random weights, no download.

Its UNet is built here; the tokenizer, text encoder, VAE and scheduler are the tiny parts every
family shares (`spmctl.models.tiny`). Same seed, same weights, every time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ...models.tiny import build_tiny_scheduler, build_tiny_text_encoder, build_tiny_tokenizer, build_tiny_vae

if TYPE_CHECKING:  # heavy imports stay inside functions so the CLI starts fast
    from diffusers import StableDiffusionPipeline

UNET_CONFIG: dict[str, Any] = {
    "sample_size": 8,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
    "block_out_channels": (32, 64),
    "layers_per_block": 1,
    "cross_attention_dim": 32,
    "attention_head_dim": 8,
    "norm_num_groups": 8,
    "use_linear_projection": False,  # SD 1.x: proj_in/proj_out are 1x1 convs
}

def build_tiny_unet(seed: int = 0):
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(**UNET_CONFIG).eval()


def build_tiny_pipeline(seed: int = 0) -> StableDiffusionPipeline:
    """The whole tiny pipeline; same seed, same weights, every time."""
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(
        vae=build_tiny_vae(seed),
        text_encoder=build_tiny_text_encoder(seed),
        tokenizer=build_tiny_tokenizer(),
        unet=build_tiny_unet(seed),
        scheduler=build_tiny_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )

