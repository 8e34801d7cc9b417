"""Stable Diffusion XL: a UNet conditioned on two CLIP text encoders, a pooled embedding and size ids."""
