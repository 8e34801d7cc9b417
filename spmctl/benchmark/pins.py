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
    """The pins (dotted names) on which two results differ, in order."""
    fa, fb = leaves(a), leaves(b)
    return [key for key in sorted(set(fa) | set(fb)) if fa.get(key) != fb.get(key)]
