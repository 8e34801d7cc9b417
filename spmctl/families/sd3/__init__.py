"""Stable Diffusion 3 / 3.5: a flow-matching MMDiT with CLIP-L, CLIP-G and T5 (the default plugin
`family-sd3`; importing it stays light: the family loads torch and diffusers only when used). See
family.py."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ...hookspecs import hookimpl


@hookimpl
def register_families(register: Callable[[Any], None]) -> None:
    from .family import SD3Family

    register(SD3Family())
