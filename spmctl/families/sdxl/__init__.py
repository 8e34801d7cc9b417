"""Stable Diffusion XL: a UNet conditioned on two CLIP text encoders, a pooled embedding and size ids
(the default plugin `family-sdxl`; importing it stays light: torch and diffusers load when used)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ...hookspecs import hookimpl


@hookimpl
def register_families(register: Callable[[Any], None]) -> None:
    from .family import SDXLFamily

    register(SDXLFamily())
