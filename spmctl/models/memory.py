"""Refuse image sizes and batches that cannot fit in memory before allocating them.

The model family estimates the run's peak (`ModelFamily.peak_memory`: the resident weights, the
membrane with its optimizer state, the denoiser's activations). The model is loaded by the time
this runs, so what must still fit in the free memory is the rest: the activations and the membrane.
A request above that stops here with one line instead of an allocator traceback or the OOM killer.
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


def check_fits(model: Any, batch: int, height: int, width: int, device: str, what: str, *,
               training: bool = False, checkpointing: bool = False, offload: bool = True) -> None:
    """ConfigError naming `what` (the settings responsible) when the run cannot fit on `device`."""
    estimate = model.family.peak_memory(model, batch, height, width, training=training,
                                        checkpointing=checkpointing, offload=offload)
    need = estimate.activations + estimate.membrane
    free = available_bytes(device)
    if free is not None and need > free:
        hint = "" if checkpointing or not training else ", or set train.gradient_checkpointing"
        raise config_error(f"{what} needs about {_gib(need)} beside the model ({_gib(estimate.total)} in all); "
                           f"{device} has {_gib(free)} free (lower the size or the batch{hint})")


def _gib(n: int) -> str:
    return f"{n / 2**30:,.1f} GiB"
