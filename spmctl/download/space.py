"""Free-space checks and human-readable sizes, shared by the transfer and the extraction."""

from __future__ import annotations

import shutil
from pathlib import Path

from ..errors import SpmctlError

# Keep a little room so the file system (and the user's other work) never hits zero.
HEADROOM = 64 * 1024 * 1024


def human_size(n: int | None) -> str:
    if n is None:
        return "unknown"
    size = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.2f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


def _existing_ancestor(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def free_bytes(path: Path) -> int:
    return shutil.disk_usage(_existing_ancestor(path)).free


def same_device(a: Path, b: Path) -> bool:
    import os

    return os.stat(_existing_ancestor(a)).st_dev == os.stat(_existing_ancestor(b)).st_dev


def ensure_free_space(needs: dict[Path, int]) -> None:
    """Fail before writing when the disks cannot hold what is about to be written.

    `needs` maps a path to the bytes that will land under it; paths on the same
    file system add up (each byte once: callers count a moved file on one side only),
    and HEADROOM is kept free on top, which the message says.
    """
    import os

    by_device: dict[int, tuple[Path, int]] = {}
    for path, need in needs.items():
        anchor = _existing_ancestor(path)
        dev = os.stat(anchor).st_dev
        prev = by_device.get(dev, (anchor, 0))
        by_device[dev] = (prev[0], prev[1] + max(need, 0))
    for anchor, need in by_device.values():
        free = free_bytes(anchor)
        if need + HEADROOM > free:
            raise SpmctlError(
                f"not enough free space on {anchor}: need {human_size(need)} plus {human_size(HEADROOM)} "
                f"kept free, {human_size(free)} free"
            )
