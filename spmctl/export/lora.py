"""A membrane as a LoRA file, and several membranes merged into one (exactly, no SVD).

An SPM file already uses kohya's LoRA layout (`lora_unet_<path>.lora_down.weight`,
`.lora_up.weight`, `.alpha`), which diffusers' `load_lora_weights`, A1111, ComfyUI and kohya's
scripts read; exporting checks the keys and shapes, converts the dtype and adds kohya's `ss_*`
metadata. A LoRA applies at one fixed strength: it has no facilitated transport.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError, SpmctlError
from ..membrane import load_membrane
from ..membrane.delta import scaled, stack_factors
from ..membrane.io import ALPHA, DOWN, UP

NO_FT_NOTE = (
    "note: an exported LoRA or merged model applies the membrane at a fixed strength: it has no "
    "facilitated transport (unrelated prompts are affected too); use `spmctl sample` for FT"
)


@dataclass
class Weighted:
    """A membrane file with the strength it is applied at."""

    path: Path
    strength: float = 1.0


def parse_weighted(text: str) -> Weighted:
    """`path.safetensors:0.5` -> (path, 0.5); without a numeric `:suffix` the strength is 1.0."""
    head, sep, tail = text.rpartition(":")
    if sep and head:
        try:
            strength = float(tail)
        except ValueError:
            return Weighted(Path(text), 1.0)
        if not math.isfinite(strength):  # would merge NaN/Inf into every adapted weight
            raise ConfigError(f"{text}: strength {tail!r} is not a finite number")
        return Weighted(Path(head), strength)
    return Weighted(Path(text), 1.0)


def modules_of(
    tensors: dict[str, torch.Tensor], source: str
) -> dict[str, tuple[torch.Tensor, torch.Tensor, float]]:
    """kohya module name -> (down, up as 2-D (out, r), alpha); checks that every pair is complete."""
    out = {}
    for key in sorted(tensors):
        if not key.endswith(DOWN):
            if not key.endswith((UP, ALPHA)):
                raise SpmctlError(f"{source}: unexpected key {key!r} (not a kohya/SPM LoRA key)")
            continue
        name = key[: -len(DOWN)]
        if name + UP not in tensors:
            raise SpmctlError(f"{source}: {key!r} has no matching {name + UP!r}")
        down, up = tensors[key], tensors[name + UP]
        rank = down.shape[0]
        if up.dim() not in (2, 4) or up.shape[1] != rank or (up.dim() == 4 and tuple(up.shape[2:]) != (1, 1)):
            raise SpmctlError(
                f"{source}: {name + UP!r} has shape {tuple(up.shape)}, expected (out, {rank}[, 1, 1])"
            )
        alpha = float(tensors[name + ALPHA]) if name + ALPHA in tensors else float(rank)
        out[name] = (down, up.reshape(up.shape[0], rank), alpha or float(rank))
    if not out:
        raise SpmctlError(f"{source}: no '*{DOWN}' keys")
    return out


def check_against_model(tensors: dict[str, torch.Tensor], model: Any, source: str) -> None:
    """Load into a membrane network on the model (validates every key and shape), then detach."""
    from ..membrane import MembraneNetwork

    rank = max(int(v.shape[0]) for k, v in tensors.items() if k.endswith(DOWN))
    net = MembraneNetwork.for_model(model, rank=rank, alpha=float(rank))
    try:
        net.load_state_dict_for(0, tensors)
    except SpmctlError as exc:
        raise SpmctlError(f"{source}: not a membrane for this model: {exc}") from None
    finally:
        net.detach()


def _kohya_metadata(rank: int, alpha: float, extra: dict[str, str]) -> dict[str, str]:
    return {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(rank),
        "ss_network_alpha": str(alpha),
        "spmctl_facilitated_transport": "none (fixed strength)",
        **extra,
    }


def _write(
    out: Path,
    tensors: dict[str, torch.Tensor],
    prompts: list[str],
    rank: int,
    alpha: float,
    dtype: torch.dtype,
    extra: dict[str, str],
) -> Path:
    """Weights in `dtype`; alphas stay fp32 (0.3 would not survive fp16; loaders read them as floats).
    Metadata as `save_membrane` writes it (prompts, rank, alpha) plus kohya's; written atomically."""
    from safetensors.torch import save_file

    from ..fileio import atomic_write

    data = {}
    for key, value in tensors.items():
        value = value.detach().cpu().float() if key.endswith(ALPHA) else value.detach().cpu().to(dtype)
        if not torch.isfinite(value).all():
            # only a narrower dtype can be the cause worth suggesting a change of
            hint = "lower the strengths" if dtype == torch.float32 else "lower the strengths or try --dtype float32"
            raise SpmctlError(f"{out}: {key} is not finite in {dtype}; refusing to write it ({hint})")
        data[key] = value.contiguous()
    metadata = {
        "prompts": ",".join(prompts),
        "rank": str(int(rank)),
        "alpha": str(float(alpha)),
        **_kohya_metadata(rank, alpha, extra),
    }
    atomic_write(out, lambda tmp: save_file(data, str(tmp), metadata=metadata))
    return out


def export_lora(spm: Path, out: Path, dtype: torch.dtype = torch.float32, model: Any = None,
                layout: str | None = None) -> Path:
    """`spm` as a LoRA file in its model family's `layout` (default: the family's first, kohya's
    for SD 1.x). The family is the model's (`model` given: the keys are checked against it too), else
    the one the file records, else SD 1.x."""
    mf = load_membrane(spm)
    modules_of(mf.tensors, str(spm))
    if model is not None:
        check_against_model(mf.tensors, model, str(spm))
    family = _family(model, mf.model_family)
    tensors = family.export_lora(mf.tensors, layout or family.lora_layouts[0])
    extra = {"spmctl_source": spm.name}
    return _write(out, tensors, mf.concepts, mf.rank, mf.alpha, dtype, extra)


def merge_membranes(items: list[Weighted]) -> tuple[dict[str, torch.Tensor], list[str], int]:
    """Σ_i s_i·scale_i·up_i·down_i as ONE rank-Σr_i adapter (`stack_factors`), alpha = rank (scale 1).
    Exact: no SVD, no truncation."""
    if not items:
        raise SpmctlError("nothing to merge: give one or more SPM:STRENGTH")
    parts, prompts = [], []
    for item in items:
        mf = load_membrane(item.path)
        parts.append((item, modules_of(mf.tensors, str(item.path))))
        prompts += [p for p in mf.concepts if p not in prompts]
    names = set(parts[0][1])
    for item, mods in parts[1:]:
        if set(mods) != names:
            odd = sorted(set(mods) ^ names)[0]
            raise SpmctlError(
                f"{item.path}: not a membrane for the same UNet as {parts[0][0].path} "
                f"(module {odd!r} is in only one of them)"
            )
    merged: dict[str, torch.Tensor] = {}
    rank = 0
    for name in sorted(names):
        down, up = stack_factors(scaled(*mods[name], strength=item.strength) for item, mods in parts)
        conv = parts[0][1][name][0].dim() == 4
        rank = down.shape[0]
        merged[name + DOWN] = down
        merged[name + UP] = up[:, :, None, None] if conv else up
        merged[name + ALPHA] = torch.tensor(float(rank))
    return merged, prompts, rank


def export_merged(
    items: list[Weighted], out: Path, dtype: torch.dtype = torch.float32, model: Any = None
) -> Path:
    merged, prompts, rank = merge_membranes(items)
    if model is not None:
        check_against_model(merged, model, str(out))
    # in the family's first layout, as `export lora` writes one membrane (FLUX/SD3: diffusers')
    family = _family(model, load_membrane(items[0].path).model_family)
    merged = family.export_lora(merged, family.lora_layouts[0])
    extra = {"spmctl_merged_from": json.dumps([[str(i.path), i.strength] for i in items])}
    return _write(out, merged, prompts, rank, float(rank), dtype, extra)


def _family(model: Any, recorded: str | None) -> Any:
    """The model's family (`model` given), else the one the membrane file records, else SD 1.x."""
    from ..families import get_family
    from ..families.registry import DEFAULT_FAMILY

    return model.family if model is not None else get_family(recorded or DEFAULT_FAMILY)
