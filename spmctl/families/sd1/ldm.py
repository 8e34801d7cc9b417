"""diffusers -> original Stable Diffusion (CompVis/A1111) key names, for single-file export.

diffusers ships only the other direction (`convert_ldm_*_checkpoint`, what `from_single_file`
uses). The mapping here is derived from the block structure in the UNet/VAE configs, and every
export is *verified* by running diffusers' own converters on the result: the round trip must give
back exactly the diffusers state dicts, key for key and bit for bit, or the export is refused. So a
file we write is one diffusers (and hence A1111/ComfyUI, which use the same layout) reads back as
the model we merged. SD 1.x text encoders (CLIP) only: SD 2.x's OpenCLIP layout is refused.
"""

from __future__ import annotations

from typing import Any

import torch

from ...errors import SpmctlError

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."

_UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_UNET_TOP = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
_VAE_RESNET = {"conv_shortcut": "nin_shortcut"}
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _swap(key: str, table: dict[str, str]) -> str:
    for old, new in table.items():
        if key == old or key.startswith(old + "."):
            return new + key[len(old) :]
    return key


def _unet_prefixes(config: Any) -> dict[str, str]:
    """diffusers module prefix -> LDM module prefix for every block of the UNet."""
    per = config.layers_per_block
    levels = len(config.block_out_channels)
    out: dict[str, str] = {}
    for i in range(levels):
        for j in range(per):
            n = 1 + i * (per + 1) + j
            out[f"down_blocks.{i}.resnets.{j}."] = f"input_blocks.{n}.0."
            out[f"down_blocks.{i}.attentions.{j}."] = f"input_blocks.{n}.1."
        if i < levels - 1:
            out[f"down_blocks.{i}.downsamplers.0.conv."] = f"input_blocks.{(i + 1) * (per + 1)}.0.op."
    for i in range(levels):
        has_attn = "CrossAttn" in config.up_block_types[i]
        for j in range(per + 1):
            n = i * (per + 1) + j
            out[f"up_blocks.{i}.resnets.{j}."] = f"output_blocks.{n}.0."
            out[f"up_blocks.{i}.attentions.{j}."] = f"output_blocks.{n}.1."
        if i < levels - 1:
            n = i * (per + 1) + per
            out[f"up_blocks.{i}.upsamplers.0."] = f"output_blocks.{n}.{2 if has_attn else 1}."
    out["mid_block.resnets.0."] = "middle_block.0."
    out["mid_block.attentions.0."] = "middle_block.1."
    out["mid_block.resnets.1."] = "middle_block.2."
    return out


def unet_to_ldm(state: dict[str, torch.Tensor], config: Any) -> dict[str, torch.Tensor]:
    prefixes = _unet_prefixes(config)
    out = {}
    for key, value in state.items():
        new = _swap(key, _UNET_TOP)
        for old, ldm in prefixes.items():
            if key.startswith(old):
                rest = key[len(old) :]
                new = ldm + (_swap(rest, _UNET_RESNET) if ".resnets." in old else rest)
                break
        out[UNET_PREFIX + new] = value
    return out


def vae_to_ldm(state: dict[str, torch.Tensor], config: Any) -> dict[str, torch.Tensor]:
    levels = len(config.block_out_channels)
    out = {}
    for key, value in state.items():
        new = key.replace("conv_norm_out", "norm_out")
        new = new.replace("mid_block.resnets.0.", "mid.block_1.").replace(
            "mid_block.resnets.1.", "mid.block_2."
        )
        if "mid_block.attentions.0." in new:
            head, rest = new.split("mid_block.attentions.0.")
            new = head + "mid.attn_1." + _swap(rest, _VAE_ATTN)
            if value.dim() == 2:  # LDM's attention projections are 1x1 convs
                value = value[:, :, None, None]
        new = new.replace("encoder.down_blocks.", "encoder.down.")
        if new.startswith("decoder.up_blocks."):
            i, rest = new.removeprefix("decoder.up_blocks.").split(".", 1)
            new = f"decoder.up.{levels - 1 - int(i)}.{rest}"  # LDM counts decoder levels bottom-up
        new = new.replace(".resnets.", ".block.").replace(".downsamplers.0.", ".downsample.")
        new = new.replace(".upsamplers.0.", ".upsample.")
        if ".block." in new or ".mid.block_" in new:
            head, _, leaf = new.rpartition(".")
            parent, _, name = head.rpartition(".")
            new = f"{parent}.{_VAE_RESNET.get(name, name)}.{leaf}"
        out[VAE_PREFIX + new] = value
    return out


def clip_to_ldm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # transformers >= 5.6 flattened CLIPTextModel (no `text_model.` level); the file layout keeps it
    return {
        CLIP_PREFIX + (k if k.startswith("text_model.") else "text_model." + k): v for k, v in state.items()
    }


def _clip_back(back: dict[str, torch.Tensor], clip_sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    flat = not any(k.startswith("text_model.") for k in clip_sd)
    back = {(k.removeprefix("text_model.") if flat else k): v for k, v in back.items()}
    return {k: v for k, v in back.items() if k in clip_sd or not k.endswith("position_ids")}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], part: str) -> None:
    if set(a) != set(b):
        odd = sorted(set(a) ^ set(b))[0]
        raise SpmctlError(
            f"single-file export: the {part}'s key layout does not round-trip through diffusers' "
            f"converter (key {odd!r}); use --format diffusers"
        )
    for key in a:
        if not torch.equal(a[key].reshape(b[key].shape), b[key]):
            raise SpmctlError(
                f"single-file export: {part} tensor {key!r} changes in the round trip; use --format diffusers"
            )


def to_ldm_checkpoint(model: Any) -> dict[str, torch.Tensor]:
    """The whole model under original SD keys, verified against diffusers' own converters."""
    from diffusers.loaders.single_file_utils import (
        convert_ldm_clip_checkpoint,
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
    )

    if (
        type(model.text_encoder).__name__ != "CLIPTextModel"
        or getattr(model.unet.config, "cross_attention_dim", 768) == 1024
    ):
        raise SpmctlError(
            "single-file export supports SD 1.x (CLIP text encoder) only; use --format diffusers"
        )
    unet_sd = {k: v.detach().cpu() for k, v in model.unet.state_dict().items()}
    vae_sd = {k: v.detach().cpu() for k, v in model.vae.state_dict().items()}
    clip_sd = {k: v.detach().cpu() for k, v in model.text_encoder.state_dict().items()}
    ckpt = {
        **unet_to_ldm(unet_sd, model.unet.config),
        **vae_to_ldm(vae_sd, model.vae.config),
        **clip_to_ldm(clip_sd),
    }
    _same(convert_ldm_unet_checkpoint(ckpt, dict(model.unet.config)), unet_sd, "UNet")
    _same(convert_ldm_vae_checkpoint(ckpt, dict(model.vae.config)), vae_sd, "VAE")
    _same(_clip_back(convert_ldm_clip_checkpoint(ckpt), clip_sd), clip_sd, "text encoder")
    return ckpt
