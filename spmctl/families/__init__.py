"""Model families: what is specific to SD 1.x/2.x, SDXL, SD3, FLUX (see `base.ModelFamily`).

Light to import (no torch): `spmctl plugins list` loads the families' plugin modules.
"""

from __future__ import annotations

from . import base
from .base import *  # noqa: F403 -- the interface: the names `base.__all__` lists, kept in one place
from .registry import detect, families, get_family, load_model, probe, tiny_names

__all__ = ["detect", "families", "get_family", "load_model", "probe", "tiny_names"]
__all__ += base.__all__
