"""Training state on disk: the resume state.

It is written through `spmctl.fileio.atomic_write` (temp file, fsync, rename, folder fsync), so a
crash, kill or power cut never leaves a half-written checkpoint. It holds the fp32 membrane,
optimizer, LR schedule, RNG and step, and is read back with `weights_only=True` (no arbitrary
pickle). A state with a non-finite number in it is never written: it could only resume into NaN.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from ..errors import SpmctlError, one_line
from ..fileio import atomic_write
from .folder import STATE_SUFFIX


def state_path(output_dir: Path, name: str) -> Path:
    return output_dir / f"{name}{STATE_SUFFIX}"


def all_finite(membrane: dict[str, torch.Tensor], optimizer: Any) -> bool:
    """Whether the membrane and every floating tensor of the optimizer's state are finite
    (one device sync, however many tensors)."""
    tensors: Iterable[torch.Tensor] = [*membrane.values(), *(
        v for s in optimizer.state.values() for v in s.values()
        if isinstance(v, torch.Tensor) and v.is_floating_point())]
    flags = [torch.isfinite(t).all() for t in tensors]
    return bool(torch.stack(flags).all()) if flags else True


def save_state(path: Path, *, step: int, membrane: dict[str, torch.Tensor], optimizer: Any,
               lr_scheduler: Any, generator: torch.Generator, extra: dict[str, Any]) -> None:
    state = {
        "step": step,
        "membrane": {k: v.detach().cpu().clone() for k, v in membrane.items()},
        "optimizer": optimizer.state_dict(),
        "lr_scheduler": lr_scheduler.state_dict(),
        "generator": generator.get_state(),
        "torch_rng": torch.get_rng_state(),
        "extra": json.dumps(extra),
    }
    buffer = io.BytesIO()  # serialised first: a full disk is then a plain OSError, not torch's riddle
    torch.save(state, buffer)
    atomic_write(path, lambda tmp: tmp.write_bytes(buffer.getbuffer()))


def load_state(path: Path) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise SpmctlError(f"{path}: cannot read the resume state: {one_line(exc)}") from None
    state["extra"] = json.loads(state.get("extra") or "{}")
    return state


__all__ = ["all_finite", "load_state", "save_state", "state_path"]
