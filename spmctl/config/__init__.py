"""Typed configuration models, one per command, and the layered loader."""
