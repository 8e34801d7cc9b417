"""Ends the interpreter as soon as it is imported."""

raise SystemExit(3)
