"""`spmctl export`: membranes to LoRA files and merged models (being built: issue 5)."""

from __future__ import annotations


def export() -> None:
    """Export membranes as LoRA files or merge them into a model."""
    from ..errors import SpmctlError

    raise SpmctlError("spmctl export is not available in this build yet")
