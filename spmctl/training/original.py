"""`compat: original`: what the original SPM code (Con6924/SPM, train_spm.py) does differently.

The default corrects these; compat mode reproduces them so that published numbers can
be reproduced. Each is listed in the README's "Differences from the original SPM" table.
"""

from __future__ import annotations

from typing import Any

from ..families.base import Conditioning

# The original builds its noise scheduler from these values alone (its create_noise_scheduler), so
# every other setting is the diffusers default: steps_offset = 0 and, for DDIM, set_alpha_to_one =
# True. spmctl's default reads the model's own scheduler config instead (steps_offset = 1 for SD 1.4).
ORIGINAL_SCHEDULER_CONFIG: dict[str, Any] = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "clip_sample": False,
}


def scheduler_config(compat: str, model_config: dict[str, Any]) -> dict[str, Any]:
    """The config the training schedules are built from: the model's, or the original's fixed one."""
    return dict(ORIGINAL_SCHEDULER_CONFIG) if compat == "original" else model_config


def anchor_rows(anchors: Conditioning, unconditional: Conditioning) -> Conditioning:
    """The embeddings whose predictions the original's anchoring term compares.

    The original interleaves [uncond, s1, uncond, s2, ...] (2N rows for N anchors), doubles the latents
    as for classifier-free guidance and keeps the second half of the prediction (`chunk(2)`, guidance
    1): rows N..2N-1 of the interleaved batch. For 4 anchors that is [uncond, s3, uncond, s4]: s1 and
    s2 are dropped and the unconditional prediction is anchored with half the weight."""
    count = len(anchors)
    interleaved = [unconditional if i % 2 == 0 else anchors[i // 2] for i in range(2 * count)]
    return Conditioning.cat(interleaved[count:]).to(dtype=anchors.embeds.dtype)


def resolution_steps(resolution: int, step: int, compat: str) -> tuple[int, int]:
    """Dynamic resolution's size range in units of `step`, as [low, end) for torch.randint.

    Default: multiples from resolution/2 (rounded up) up to and including the resolution. Original:
    from resolution/2 rounded down, up to and not including the resolution."""
    if compat == "original":
        low = max(1, resolution // 2 // step)
        return low, max(low + 1, resolution // step)  # a range the original leaves empty keeps `low`
    low = max(1, (resolution // 2 + step - 1) // step)
    return low, max(low, resolution // step) + 1


def membrane_lr(train: Any, compat: str) -> float:
    """`train.unet_lr` overrides `train.lr` by default; the original always trains at `train.lr`."""
    if compat == "original" or train.unet_lr is None:
        return float(train.lr)
    return float(train.unet_lr)


def membrane_dtypes(train_precision: str, save_precision: str, compat: str) -> tuple[str | None, str]:
    """(dtype the membrane trains in, dtype it is saved in). By default it trains in fp32 whatever the
    model's precision and is saved in `save.precision`; the original casts it to `train.precision`
    for both (`save.precision` is read but unused there)."""
    if compat == "original":
        return train_precision, train_precision
    return None, save_precision
