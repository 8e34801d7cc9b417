"""UnlearnDiffAtk (Zhang et al., ECCV 2024): the erased model as its own diffusion classifier.

k adversarial tokens (default 5) are put before the prompt and optimised so that the erased model,
conditioned on the prompt, denoises an image of the concept well: minimise E_t,ε ‖ε_θ(x_t | P_adv)
- ε‖² over noisy versions x_t of the target image. No external classifier is differentiated; one
judges only the images made at the checkpoints (every 40 steps, one per timestep of the schedule,
as the reference evaluates), and a prompt stops at its first success.
"""

from __future__ import annotations

from typing import Any

from .denoise import DenoiseEngine
from .engine import Item

LAYOUT = "prefix"
NEEDS_TARGET = True


def layout_mode(cfg: Any) -> str:
    return LAYOUT


def engine(ctx: Any, items: list[Item]) -> DenoiseEngine:
    return DenoiseEngine(ctx, items, reference=False)
