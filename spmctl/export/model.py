"""A model with membranes merged into its denoiser's weights: W += s · scale · up @ down
(`membrane/delta.py`).

Written as a diffusers folder (the family's pipeline), or as one `.safetensors` in the original
layout where the family has one (SD 1.x: CompVis/A1111, `families/sd1/ldm.py`). A merged model
applies the membranes at fixed strengths for every prompt: it has no facilitated transport.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import SpmctlError
from ..fileio import (
    fsync_dir,
    make_parents,
    remove_dead_stages,
    remove_empty,
    settle_tree,
    temp_dir,
    write_error,
    write_problem,
)
from ..membrane import load_membrane
from ..membrane.delta import add_delta, scaled, stack_factors
from .lora import Weighted, modules_of


def _adapted_layers(model: Any) -> dict[str, nn.Module]:
    """Membrane key -> Linear/Conv2d for every layer of the denoiser (a membrane may name any of them)."""
    name = model.family.lora_name
    return {name(path): m for path, m in model.denoiser.named_modules() if isinstance(m, nn.Linear | nn.Conv2d)}


@torch.no_grad()
def merge_into_model(model: Any, items: list[Weighted]) -> int:
    """Add every membrane (at its strength) into the denoiser's weights in place; returns the layers
    changed. Validates all files first and refuses a non-finite result, leaving the model unchanged then."""
    layers = _adapted_layers(model)
    factors: dict[str, list[tuple[torch.Tensor, torch.Tensor, float]]] = {}
    for item in items:
        mf = load_membrane(item.path)
        for name, (down, up, alpha) in modules_of(mf.tensors, str(item.path)).items():
            if name not in layers:
                raise SpmctlError(f"{item.path}: not a membrane for this model (no layer for {name!r})")
            factors.setdefault(name, []).append(scaled(down, up, alpha, item.strength))
    new = {}
    for name, parts in factors.items():
        weight = layers[name].weight
        down, up = stack_factors(parts)
        try:
            merged = add_delta(weight, up.to(weight.device), down.to(weight.device))
        except SpmctlError as exc:
            raise SpmctlError(f"{name}: {exc}") from None
        if not torch.isfinite(merged).all():
            raise SpmctlError(
                f"merging gives non-finite weights in {name}; refusing to write the model "
                "(lower the strengths)"  # merged in fp32 already
            )
        new[name] = merged
    for name, merged in new.items():
        layers[name].weight.copy_(merged)
    return len(new)


def save_diffusers(model: Any, out: Path) -> Path:
    """The whole pipeline (its own scheduler kept) as a diffusers folder, written beside `out` and
    renamed into place."""
    import diffusers

    if out.exists():
        raise SpmctlError(f"{out} exists; choose another output or remove it")
    config = model.scheduler_config
    scheduler_cls = getattr(
        diffusers, str(config.get("_class_name", "DDIMScheduler")), diffusers.DDIMScheduler
    )
    pipe = model.family.pipeline(model, scheduler_cls.from_config(config))
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # its "Writing model shards" bar is noise here
    created = make_parents(out)
    remove_dead_stages(out)  # what a killed export of this folder left beside it
    tmp = temp_dir(out)
    try:
        pipe.save_pretrained(tmp, safe_serialization=True)
        settle_tree(tmp)
        tmp.rename(out)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        remove_empty(created)
        if isinstance(exc, Exception) and write_problem(exc) is not None:
            raise write_error(out, exc) from None
        raise
    fsync_dir(out.parent)
    return out


def save_single_file(model: Any, out: Path) -> Path:
    """One `.safetensors` in the family's original layout (SD: UNet, VAE, text encoder)."""
    from safetensors.torch import save_file

    from ..fileio import atomic_write

    state = {k: v.detach().cpu().contiguous() for k, v in model.family.single_file_state(model).items()}
    atomic_write(out, lambda tmp: save_file(state, str(tmp), metadata={"format": "pt", "spmctl_merged": "1"}))
    return out


def export_model(
    model_path: str,
    items: list[Weighted],
    out: Path,
    fmt: str = "diffusers",
    dtype: str = "float32",
    v2: bool = False,
    v_pred: bool = False,
    family: str | None = None,
) -> Path:
    from ..families import load_model
    from ..models.loading import torch_dtype

    if fmt not in ("diffusers", "safetensors"):
        raise SpmctlError(f"--format must be diffusers or safetensors, not {fmt!r}")
    if fmt == "diffusers" and out.exists():
        raise SpmctlError(f"{out} exists; choose another output or remove it")
    model = load_model(model_path, family=family, v2=v2, v_pred=v_pred, dtype="float32")  # merge in fp32
    merge_into_model(model, items)
    for part in model.parts().values():
        part.to(torch_dtype(dtype))
    for name, param in model.denoiser.named_parameters():  # fp16 can overflow where fp32 did not
        if not torch.isfinite(param).all():
            hint = "lower the strengths" if dtype == "float32" else "export in float32 or lower the strengths"
            raise SpmctlError(f"the merged denoiser's {name} is not finite in {dtype}; refusing to write it ({hint})")
    return save_single_file(model, out) if fmt == "safetensors" else save_diffusers(model, out)
