"""Membrane files: safetensors in the kohya/SPM layout, written atomically.

Keys `lora_unet_<module path, '.' -> '_'>.lora_down.weight`, `.lora_up.weight`, `.alpha` (0-dim);
metadata `prompts` (comma-joined erased concepts), `rank`, `alpha` (strings) - what the original SPM
code writes and A1111/ComfyUI/kohya read.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from spmctl.errors import SpmctlError, one_line
from spmctl.fileio import atomic_write

# the kohya key suffixes after `lora_unet_<path>`; this module owns the file format
DOWN, UP, ALPHA = ".lora_down.weight", ".lora_up.weight", ".alpha"

SAVE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@dataclass
class MembraneFile:
    """One membrane (SPM) file as read: its weights, the concepts it erases (metadata `prompts`), its
    rank and alpha; `path`, `name` and `digest` are set where a run needs to tell files apart."""

    tensors: dict[str, torch.Tensor]
    concepts: list[str]
    rank: int
    alpha: float
    metadata: dict[str, str] = field(default_factory=dict)
    path: Path | None = None
    name: str = ""
    digest: str = ""  # sha256 prefix of the file: a retrained membrane at the same path is another SPM

    @property
    def scale(self) -> float:
        return (self.alpha or self.rank) / self.rank

    @property
    def base_model(self) -> str | None:
        """The model it was trained on, as `spmctl train` records it."""
        return self.metadata.get("spmctl_base_model") or None

    @property
    def model_family(self) -> str | None:
        """The model family it was trained for (files from before families: None)."""
        return self.metadata.get("spmctl_model_family") or None


def resolve_spm_path(path: str | Path) -> Path:
    """A file as is; a folder means `<folder>/<folder name>_last.safetensors` (the original's rule)
    or else the folder's only `*_last.safetensors` (what `spmctl train` writes)."""
    p = Path(path).expanduser()
    if p.is_dir():
        named = p / f"{p.name}_last.safetensors"
        if named.is_file():
            return named
        found = sorted(p.glob("*_last.safetensors"))
        if len(found) == 1:
            return found[0]
        if not found:
            raise SpmctlError(f"{p}: folder holds no *_last.safetensors membrane")
        # runs of several concepts share a folder: which one is meant is the user's choice
        raise SpmctlError(
            f"{p}: folder holds several membranes; pass the one you mean, or each with its own --spm to "
            f"apply them together: {' '.join(f'--spm {f}' for f in found)}"
        )
    if not p.exists():
        raise SpmctlError(f"SPM file not found: {p}")
    return p


def save_membrane(
    path: str | os.PathLike,
    tensors: dict[str, torch.Tensor],
    *,
    prompts: list[str],
    rank: int,
    alpha: float,
    dtype: torch.dtype = torch.float32,
    extra_metadata: dict[str, str] | None = None,
) -> Path:
    """Write `tensors` (kohya keys) to `path` through `fileio.atomic_write` (temp file, fsync,
    rename), so a crash leaves either the old file or the new one, never half of one."""
    if dtype not in SAVE_DTYPES:
        raise SpmctlError(f"membrane files are saved as float32, float16 or bfloat16, not {dtype}")
    path = Path(path)
    metadata = {"prompts": ",".join(prompts), "rank": str(int(rank)), "alpha": str(float(alpha))}
    for key, value in (extra_metadata or {}).items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise SpmctlError(f"membrane metadata must be str -> str, got {key!r}: {type(value).__name__}")
        metadata.setdefault(key, value)
    data = {
        k: (v.detach().to("cpu", dtype) if v.is_floating_point() else v.detach().cpu()).contiguous()
        for k, v in tensors.items()
    }
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(_reproducible_bytes(data, metadata)))
    return path


def _reproducible_bytes(data: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    """The safetensors bytes of `data` with the metadata in a fixed (sorted) order.

    safetensors keeps `__metadata__` in a hash map whose order changes from process to process, so
    two identical training runs would write different bytes; here the JSON header is written again
    with sorted keys (tensor offsets are unchanged) and padded, as safetensors pads it, to 8 bytes."""
    import json

    from safetensors.torch import save

    raw = save(data, metadata=metadata)
    size = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + size])
    fixed = {"__metadata__": dict(sorted(header.pop("__metadata__", {}).items()))}
    fixed.update(sorted(header.items()))
    text = json.dumps(fixed, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + raw[8 + size:]


def load_membrane(path: str | os.PathLike) -> MembraneFile:
    """Read a membrane file; a missing, truncated or corrupt file is one clear SpmctlError."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise SpmctlError(f"membrane file not found: {path}")
    try:
        tensors: dict[str, torch.Tensor] = {}
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            metadata = dict(fh.metadata() or {})
            for key in fh.keys():  # noqa: SIM118 - safe_open handles are not iterable
                tensors[key] = fh.get_tensor(key)
    except Exception as exc:  # safetensors raises its own error types (and OSError, ValueError)
        detail = one_line(exc)
        raise SpmctlError(f"{path} is not a readable membrane (safetensors) file: {detail}") from None
    if not any(k.endswith(DOWN) for k in tensors):
        raise SpmctlError(f"{path} holds no membrane weights (no '*{DOWN}' keys)")
    _check_values(path, tensors)
    concepts = [p.strip() for p in metadata.get("prompts", "").split(",") if p.strip()]
    try:
        rank = int(metadata["rank"]) if "rank" in metadata else _first_rank(tensors)
        alpha = float(metadata["alpha"]) if "alpha" in metadata else _first_alpha(tensors, rank)
    except ValueError:
        raise SpmctlError(
            f"{path}: bad rank/alpha metadata {metadata.get('rank')!r}/{metadata.get('alpha')!r}"
        ) from None
    return MembraneFile(tensors=tensors, concepts=concepts, rank=rank, alpha=alpha, metadata=metadata, path=path)


def _check_values(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Refuse what would silently ruin every image: non-finite weights, and an `.alpha` that is not
    one number (the scale alpha/rank is applied as a scalar)."""
    for key in sorted(tensors):
        value = tensors[key]
        if key.endswith(ALPHA) and value.numel() != 1:
            raise SpmctlError(f"{path}: {key} should hold one number, not a tensor of shape "
                              f"{tuple(value.shape)}")
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            bad = int((~torch.isfinite(value)).sum())
            raise SpmctlError(f"{path}: {key} holds {bad} non-finite value{'s' * (bad > 1)} (NaN or Inf); "
                              "the membrane is unusable (retrain, or use an earlier checkpoint)")


def _first_rank(tensors: dict[str, torch.Tensor]) -> int:
    for key in sorted(tensors):
        if key.endswith(DOWN):
            return int(tensors[key].shape[0])
    return 1


def _first_alpha(tensors: dict[str, torch.Tensor], rank: int) -> float:
    for key in sorted(tensors):
        if key.endswith(ALPHA):
            return float(tensors[key])
    return float(rank)
