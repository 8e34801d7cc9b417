"""Stable Diffusion 1.x and 2.x: a UNet, one CLIP text encoder, ε or v prediction (the default plugin
`family-sd1`; importing it stays light: the family loads torch and diffusers only when used)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ...hookspecs import hookimpl


@hookimpl
def register_families(register: Callable[[Any], None]) -> None:
    from .family import SD1Family

    register(SD1Family())
