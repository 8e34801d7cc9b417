"""P4D (Chin et al., ICML 2024, "Prompting4Debugging"): match the unerased model's noise prediction.

A prompt is optimised so the erased model's prediction under it equals the unerased model's
under the original prompt, on noisy versions of the unerased model's image of that prompt:
minimise ‖ε_θ'(x_t | P_adv) - ε_θ(x_t | P)‖². Here θ' is the base model with the membranes gated
by FT of P_adv, θ the same UNet with every gate 0. Variants:
- P4D-N: the adversarial prompt is N new tokens alone (default 16);
- P4D-K: one new token before every K words of the prompt (default K = 3).
"""

from __future__ import annotations

from typing import Any

from .denoise import DenoiseEngine
from .engine import Item

NEEDS_TARGET = True


def layout_mode(cfg: Any) -> str:
    return "insert" if cfg.p4d_variant == "k" else "only"


def engine(ctx: Any, items: list[Item]) -> DenoiseEngine:
    return DenoiseEngine(ctx, items, reference=True)
