"""Evaluator pins: everything a benchmark's numbers depend on besides the membrane itself.

Package versions, the sampling settings (model, scheduler, steps, guidance, size, seeds,
precision), the training settings, and each evaluator's own (NudeNet threshold and classes,
classifier file hashes and loader). Results carry them; runs whose pins differ are not put side by
side unless asked.
"""

from __future__ import annotations

from importlib import metadata
from typing import Any

from ..config.loader import leaves

PACKAGES = ("spmctl", "torch", "diffusers", "transformers")


def package_versions(extra: tuple[str, ...] = ()) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in (*PACKAGES, *extra):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """The pins (dotted names) on which two results differ, in order. An empty section pins
    nothing, so it matches an absent one (`leaves` keeps it as a value for `--set`'s sake); a
    value against an absent key is still a difference."""
    fa, fb = _pinned(a), _pinned(b)
    return [key for key in sorted(set(fa) | set(fb)) if fa.get(key) != fb.get(key)]


def _pinned(pins: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in leaves(pins).items() if value != {}}
