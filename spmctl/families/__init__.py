"""Model families: what is specific to SD 1.x/2.x, SDXL, SD3, FLUX (see `base.ModelFamily`).

Light to import (no torch): `spmctl plugins list` loads the families' plugin modules.
"""

from __future__ import annotations

from .base import (
    Conditioning,
    GateFeatures,
    LoadOptions,
    MemoryEstimate,
    ModelBundle,
    ModelFamily,
    ModelProbe,
    Target,
)
from .registry import detect, families, get_family, load_model, probe, tiny_names

__all__ = [
    "Conditioning", "GateFeatures", "LoadOptions", "MemoryEstimate", "ModelBundle", "ModelFamily", "ModelProbe",
    "Target", "detect", "families", "get_family", "load_model", "probe", "tiny_names",
]
