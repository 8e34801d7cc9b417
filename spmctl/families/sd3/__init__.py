"""Stable Diffusion 3 / 3.5 as a model family (family.py) and its built-in tiny model (tiny.py)."""
