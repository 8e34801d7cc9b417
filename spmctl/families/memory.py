"""Expected peak memory of a run, from the model's sizes (each family's `peak_memory` uses these).

peak = weights resident during the run + the membrane's fp32 parameters, gradients and AdamW state
+ the denoiser's activations. Weights are counted exactly (their dtypes as loaded); the activations
are the part that is estimated: what the backward pass keeps per sample and latent pixel, per unit
of the denoiser's width. That coefficient is measured on the real model shapes by
`benchmarks/memory_peak.py` (saved-tensor bytes of one training step) and recorded here; the README's
table comes from the same benchmark.
"""

from __future__ import annotations

from typing import Any

from .base import MemoryEstimate, parameter_bytes

# Elements the backward keeps per sample, latent pixel and channel of the UNet's first block, for an
# SD-style UNet (measured on SD 1.5's shapes; see benchmarks/memory_peak.py). With gradient
# checkpointing only the blocks' inputs stay; the recomputation of one block is what is added back.
UNET_SAVED_PER_PIXEL_CHANNEL = 330.0
UNET_SAVED_PER_PIXEL_CHANNEL_CHECKPOINTED = 40.0
# sampling: the largest working set of one forward pass (activations are not kept between layers)
UNET_WORKING_PER_PIXEL_CHANNEL = 24.0
# AdamW: the parameter, its gradient and two moments, all fp32
MEMBRANE_COPIES_TRAINING = 4


def membrane_bytes(shapes: list[tuple[int, int]], rank: int, training: bool) -> int:
    params = sum(rank * (fan_in + fan_out) for fan_in, fan_out in shapes)
    return params * 4 * (MEMBRANE_COPIES_TRAINING if training else 1)


def unet_estimate(unet: Any, vae: Any, text_bytes: int, vae_factor: int, batch: int, height: int, width: int,
                  *, training: bool, checkpointing: bool, offload: bool,
                  membrane_layers: list[tuple[int, int]], rank: int = 1) -> MemoryEstimate:
    """An SD-style UNet's run: training keeps the UNet and the membrane (the text encoders and the
    VAE are offloaded once the prompts are encoded, unless `offload` is off); sampling keeps them all."""
    param = next(unet.parameters())
    pixels = (height // vae_factor) * (width // vae_factor)
    width_channels = int(unet.config.block_out_channels[0])
    if training:
        per = UNET_SAVED_PER_PIXEL_CHANNEL_CHECKPOINTED if checkpointing else UNET_SAVED_PER_PIXEL_CHANNEL
        # the step's two forward passes: membrane OFF (no grad) and ON; a batch of 2·batch + anchors
        # is bounded by the ON pass, which keeps its activations
        act = int(batch * pixels * width_channels * per * param.element_size())
    else:
        # classifier-free guidance doubles the batch
        act = int(2 * batch * pixels * width_channels * UNET_WORKING_PER_PIXEL_CHANNEL * param.element_size())
    parts = {"denoiser": parameter_bytes(unet)}
    if not (training and offload):
        parts["text_encoders"] = text_bytes
        parts["vae"] = parameter_bytes(vae)
    membrane = membrane_bytes(membrane_layers, rank, training)
    return MemoryEstimate(sum(parts.values()), membrane, act, parts)
