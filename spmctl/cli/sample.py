"""`spmctl sample`: generate images with facilitated transport (being built: issue 5)."""

from __future__ import annotations


def sample() -> None:
    """Generate images with one or several membranes (facilitated transport)."""
    from ..errors import SpmctlError

    raise SpmctlError("spmctl sample is not available in this build yet")
