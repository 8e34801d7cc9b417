"""FLUX.1 (dev, schnell) as a model family (family.py) and its built-in tiny model (tiny.py)."""
