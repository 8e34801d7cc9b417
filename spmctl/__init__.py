"""spmctl: erase concepts from Stable Diffusion with Semi-Permeable Membranes."""

__version__ = "0.1.0"

from .api import Membranes, attach  # noqa: E402  (light: torch and diffusers load on use)

__all__ = ["Membranes", "attach", "__version__"]
