"""Plugins that misbehave on purpose, one module per way (tests only)."""
