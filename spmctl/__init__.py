"""spmctl: erase concepts from Stable Diffusion with Semi-Permeable Membranes."""

__version__ = "0.1.0"
