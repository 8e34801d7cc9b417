"""Expected peak memory of a run, from the model's sizes (each family's `peak_memory` uses these).

peak(training) = the denoiser's weights + the membrane's fp32 parameters, gradients and AdamW moments
                 + the activations the backward keeps (text encoders and VAE offloaded after encoding)
peak(sampling) = every part's weights + the forward's working set (classifier-free guidance: batch x 2)

Weights are counted exactly (their dtypes as loaded). Activations are the estimated part: the
elements kept per sample and latent pixel (1/8 of the image side), measured once on each real model's
shapes by `benchmarks/memory_peak.py` (every storage one training step's forward saves, counted once
on PyTorch's meta device, views of the weights left out, attention counted as a fused kernel keeps
it; checked against the peak memory of a real step on random weights) and recorded here; the README's
table comes from the same benchmark. With gradient checkpointing only each checkpointed unit's input
stays, and the largest unit's activations come back during the backward; sampling holds about that
much too (the residual stream and skips, and one unit at a time).
"""

from __future__ import annotations

from typing import Any

from .base import MemoryEstimate, parameter_bytes

# (kept for the backward, kept with gradient checkpointing / sampling's working set): elements per sample
# and latent pixel, measured on the published configs (benchmarks/memory_peak.py); `width` is the
# model's first UNet channel count (UNets: the estimate scales with it, so the tiny models are not
# charged as SD 1.5)
PER_LATENT_PIXEL: dict[str, tuple[float, float]] = {
    "sd15": (117267.0, 20589.0),
    "sdxl": (217747.0, 32588.0),
    "sd3": (209174.0, 18672.0),
    "flux": (1128948.0, 70924.0),
}
REFERENCE_WIDTH = 320  # SD 1.5's and SDXL's first UNet block
# AdamW: the parameter, its gradient and two moments, all fp32
MEMBRANE_COPIES_TRAINING = 4


def membrane_bytes(shapes: list[tuple[int, int]], rank: int, training: bool) -> int:
    params = sum(rank * (fan_in + fan_out) for fan_in, fan_out in shapes)
    return params * 4 * (MEMBRANE_COPIES_TRAINING if training else 1)


def layer_shapes(targets: list[Any]) -> list[tuple[int, int]]:
    """(fan-in, fan-out) of each layer a family's `membrane_targets` names."""
    return [(int(layer.weight[0].numel()), int(layer.weight.shape[0])) for _, _, _, layer in targets]


def estimate(*, denoiser: Any, others: dict[str, Any], membrane_layers: list[tuple[int, int]], batch: int,
             latent_pixels: int, per_pixel: tuple[float, float], training: bool, checkpointing: bool,
             offload: bool, rank: int = 1) -> MemoryEstimate:
    """A run's peak from its parts (`others`: text encoders, VAE... by name, resident unless training
    offloads them) and the per-latent-pixel activation coefficients of its architecture."""
    itemsize = next(denoiser.parameters()).element_size()
    saved, working = per_pixel
    if training:
        act = batch * latent_pixels * (working if checkpointing else saved) * itemsize
    else:
        act = 2 * batch * latent_pixels * working * itemsize
    parts = {"denoiser": parameter_bytes(denoiser)}
    if not (training and offload):
        parts.update({name: parameter_bytes(module) for name, module in others.items()})
    return MemoryEstimate(sum(parts.values()), membrane_bytes(membrane_layers, rank, training), int(act), parts)


def unet_estimate(model: Any, targets: list[Any], batch: int, height: int, width: int, *, training: bool,
                  checkpointing: bool, offload: bool, architecture: str = "sd15") -> MemoryEstimate:
    """An SD-style UNet model's run; the coefficients scale with its first block's width."""
    unet = model.denoiser
    factor = model.vae_scale_factor
    scale = int(unet.config.block_out_channels[0]) / REFERENCE_WIDTH
    saved, working = PER_LATENT_PIXEL[architecture]
    others = {f"text_encoder_{i}": m for i, m in enumerate(model.text_encoders)}
    others["vae"] = model.vae
    return estimate(denoiser=unet, others=others, membrane_layers=layer_shapes(targets), batch=batch,
                    latent_pixels=(height // factor) * (width // factor),
                    per_pixel=(saved * scale, working * scale), training=training,
                    checkpointing=checkpointing, offload=offload)
