"""The built-in tiny SDXL: SDXL's architecture at toy size, random weights, no download.

Like the tiny SD 1.x (`spmctl.models.tiny`), every part is built from a small config with a fixed
seed, so two builds are bit-identical. What makes it SDXL rather than SD 1.x:

- two text encoders: a `CLIPTextModel` and a `CLIPTextModelWithProjection` whose hidden sizes
  differ (32 and 48), so code that mixes them up fails on shapes;
- the UNet's cross-attention reads both encoders' penultimate hidden states concatenated per token
  (cross_attention_dim = 32 + 48), and `addition_embed_type="text_time"`: it is also conditioned on
  encoder 2's pooled, projected output and on six "time ids" (original size, crop corner, target
  size), each embedded in `addition_time_embed_dim` channels;
- SDXL's block layout (a plain first block, attention below it, linear proj_in/proj_out, more than
  one transformer layer per attention block), the SDXL VAE scaling factor and the Euler scheduler
  SDXL ships with.
Both tokenizers are the tiny SD tokenizer; the second pads with "!" as SDXL's second tokenizer does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ...models.tiny import SCHEDULER_CONFIG, TEXT_CONFIG, VAE_CONFIG, build_tiny_tokenizer, tiny_clip_config

if TYPE_CHECKING:  # heavy imports stay inside functions so the CLI starts fast
    from diffusers import StableDiffusionXLPipeline

TINY_SDXL_NAMES = ("tiny-sdxl", "builtin:tiny-sdxl")

TEXT_CONFIG_2: dict[str, Any] = {**TEXT_CONFIG, "hidden_size": 48, "intermediate_size": 96, "projection_dim": 48}
ADDITION_TIME_EMBED_DIM = 8
TIME_IDS = 6  # original (h, w), crop (top, left), target (h, w)

UNET_CONFIG: dict[str, Any] = {
    "sample_size": 8,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
    "block_out_channels": (32, 64),
    "layers_per_block": 1,
    "transformer_layers_per_block": (1, 2),  # SDXL stacks several transformer layers per block
    "cross_attention_dim": TEXT_CONFIG["hidden_size"] + TEXT_CONFIG_2["hidden_size"],
    "attention_head_dim": (4, 8),
    "norm_num_groups": 8,
    "use_linear_projection": True,  # SDXL: proj_in/proj_out are Linear layers
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": ADDITION_TIME_EMBED_DIM,
    "projection_class_embeddings_input_dim": TEXT_CONFIG_2["projection_dim"] + TIME_IDS * ADDITION_TIME_EMBED_DIM,
}

# SDXL reads text mainly through cross-attention; the pooled embedding is a global nudge through the
# time embedding. At random init the tiny UNet's pooled path would outweigh its cross-attention
# several times over (membranes, on the cross-attention side, could then hardly move a prediction),
# so encoder 2's projection starts this much smaller.
POOLED_SCALE = 0.1

VAE_SCALING_FACTOR = 0.13025  # SDXL's VAE latent scale (SD 1.x: 0.18215)

# SDXL ships an Euler scheduler on the SD 1.x noise schedule with "leading" spacing; its config also
# carries DDIM's keys (clip_sample, set_alpha_to_one off), which training's DDIM is built from
SCHEDULER_CONFIG_XL: dict[str, Any] = {
    **SCHEDULER_CONFIG,
    "timestep_spacing": "leading",
    "interpolation_type": "linear",
    "skip_prk_steps": True,
}


def is_tiny_sdxl(name: str) -> bool:
    return name in TINY_SDXL_NAMES


def build_tiny_sdxl_unet(seed: int = 0):
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(**UNET_CONFIG).eval()


def build_tiny_sdxl_vae(seed: int = 0):
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(seed + 1)
    return AutoencoderKL(**{**VAE_CONFIG, "scaling_factor": VAE_SCALING_FACTOR}).eval()


def build_tiny_sdxl_text_encoders(seed: int = 0):
    """(CLIPTextModel, CLIPTextModelWithProjection), each from its own seed."""
    import torch
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed + 2)
    first = CLIPTextModel(tiny_clip_config()).eval()
    torch.manual_seed(seed + 3)
    second = CLIPTextModelWithProjection(tiny_clip_config(**TEXT_CONFIG_2)).eval()
    with torch.no_grad():  # see POOLED_SCALE
        second.text_projection.weight.mul_(POOLED_SCALE)
    return first, second


def build_tiny_sdxl_tokenizers():
    first = build_tiny_tokenizer()
    second = build_tiny_tokenizer()
    second.pad_token = "!"  # SDXL's second tokenizer pads with "!", its first with the end token
    return first, second


def build_tiny_sdxl_scheduler():
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler.from_config(SCHEDULER_CONFIG_XL)  # keeps the DDIM keys it does not use


def build_tiny_sdxl_pipeline(seed: int = 0) -> StableDiffusionXLPipeline:
    """The whole tiny SDXL pipeline; same seed, same weights, every time."""
    from diffusers import StableDiffusionXLPipeline

    text_encoder, text_encoder_2 = build_tiny_sdxl_text_encoders(seed)
    tokenizer, tokenizer_2 = build_tiny_sdxl_tokenizers()
    return StableDiffusionXLPipeline(
        vae=build_tiny_sdxl_vae(seed),
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=build_tiny_sdxl_unet(seed),
        scheduler=build_tiny_sdxl_scheduler(),
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )
