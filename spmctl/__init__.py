"""spmctl: erase concepts from Stable Diffusion with Semi-Permeable Membranes."""

from .api import Membranes, attach  # light: torch and diffusers load on use
from .version import __version__

__all__ = ["Membranes", "attach", "__version__"]
