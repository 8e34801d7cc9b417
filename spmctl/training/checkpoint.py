"""Training state on disk: membranes every `save.per_steps`, and a resume state.

Every file is written to a temporary name in the same folder and renamed, so a
crash or Ctrl-C never leaves a half-written checkpoint. The resume state holds
the fp32 membrane, optimizer, LR schedule, RNG and step; it is read back with
`weights_only=True` (no arbitrary pickle).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..errors import SpmctlError, one_line

STATE_SUFFIX = "_state.pt"


def atomic_write(path: Path, write: Any) -> None:
    """Call `write(tmp_path)` then rename onto `path` (same folder, so the rename is atomic)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def state_path(output_dir: Path, name: str) -> Path:
    return output_dir / f"{name}{STATE_SUFFIX}"


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
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_state(path: Path) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise SpmctlError(f"{path}: cannot read the resume state: {one_line(exc)}") from None
    state["extra"] = json.loads(state.get("extra") or "{}")
    return state
