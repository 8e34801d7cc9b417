"""Scaling out: concept sweeps, several devices and machines (torchrun)."""
