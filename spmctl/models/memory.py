"""Refuse image sizes and batches that cannot fit in memory before allocating them.

The estimate is a lower bound: the UNet's first feature map (batch x its first block's channels x
the latent's height x width), which every forward pass holds at least once. A request above it
cannot run; one below it may still fail later, but the absurd ones (a typo adding a digit to a
resolution) stop here with one line instead of an allocator traceback or the OOM killer.
"""

from __future__ import annotations

import os
from typing import Any

from ..errors import config_error


def available_bytes(device: str) -> int | None:
    """Free memory where tensors of `device` live, or None when it cannot be told."""
    if device.startswith("cuda"):
        import torch

        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    if device != "cpu":
        return None
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def activation_bytes(model: Any, batch: int, height: int, width: int) -> int:
    """The UNet's first feature map for `batch` images of `height` x `width` pixels."""
    factor = model.vae_scale_factor
    channels = int(model.unet.config.block_out_channels[0])
    return batch * channels * (height // factor) * (width // factor) * model.unet.dtype.itemsize


def check_fits(model: Any, batch: int, height: int, width: int, device: str, what: str) -> None:
    """ConfigError naming `what` (the settings responsible) when the lower bound exceeds free memory."""
    need = activation_bytes(model, batch, height, width)
    free = available_bytes(device)
    if free is not None and need > free:
        raise config_error(f"{what} needs at least {_gib(need)} for one UNet feature map; "
                           f"{device} has {_gib(free)} free (lower the size or the batch)")


def _gib(n: int) -> str:
    return f"{n / 2**30:,.1f} GiB"
