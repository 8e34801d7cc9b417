"""`spmctl export`: membranes as LoRA files, merged into one membrane, or merged into a model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..console import stderr_console
from ..names import DTYPES, either
from .common import Quiet

app = typer.Typer(no_args_is_help=True, rich_markup_mode=None,
                  help="Export membranes as LoRA files or merge them into a model.")

Output = Annotated[Path, typer.Option("--output", "-o", help="Where to write.")]
Dtype = Annotated[str, typer.Option("--dtype", help=f"{either(DTYPES)}.")]
Model = Annotated[
    str | None,
    typer.Option(
        "--model", "-m", help="Check the keys against this model's UNet (e.g. tiny, a folder, a hub id)."
    ),
]
Weighted = Annotated[
    list[str],
    typer.Argument(
        help="SPM files, each optionally with :STRENGTH (default 1.0).", metavar="SPM[:STRENGTH]..."
    ),
]


def _dtype(name: str):
    from ..errors import SpmctlError
    from ..models.loading import torch_dtype
    from ..names import dtype_name

    name = dtype_name(name)
    if name not in DTYPES:
        raise SpmctlError(f"--dtype must be {either(DTYPES)}, not {name!r}")
    return torch_dtype(name)


def _model(model: str | None):
    if model is None:
        return None
    from ..families import load_model

    return load_model(model)


@app.command("lora")
def lora(
    spm: Annotated[Path, typer.Argument(help="The SPM file (or its training folder).")],
    output: Output,
    dtype: Dtype = "float32",
    model: Model = None,
    layout: Annotated[str | None, typer.Option(
        "--layout", help="LoRA key layout (the model family's; SD 1.x: kohya).")] = None,
    quiet: Quiet = False,
) -> None:
    """One membrane as a LoRA file (diffusers load_lora_weights, A1111, ComfyUI, kohya)."""
    from ..export.lora import NO_FT_NOTE, export_lora
    from ..membrane.io import resolve_spm_path

    console = stderr_console(quiet)
    out = export_lora(resolve_spm_path(spm), output, _dtype(dtype), _model(model), layout)
    console.print(NO_FT_NOTE, markup=False, soft_wrap=True)
    if model is None:
        console.print("keys not checked against a UNet (pass --model to check them)")
    typer.echo(str(out))


@app.command("merge")
def merge(
    spms: Weighted, output: Output, dtype: Dtype = "float32", model: Model = None, quiet: Quiet = False
) -> None:
    """Several membranes as one LoRA at fixed strengths (exact: rank = sum of ranks, no SVD)."""
    from ..export.lora import NO_FT_NOTE, export_merged

    console = stderr_console(quiet)
    out = export_merged(_weighted(spms), output, _dtype(dtype), _model(model))
    console.print(NO_FT_NOTE, markup=False, soft_wrap=True)
    typer.echo(str(out))


@app.command("model")
def model_cmd(
    spms: Weighted,
    output: Output,
    model: Annotated[str, typer.Option("--model", "-m", help="Base model: hub id, folder, file or 'tiny'.")],
    fmt: Annotated[
        str,
        typer.Option(
            "--format", "-f", help="diffusers (a folder) or safetensors (one file, original SD key layout)."
        ),
    ] = "diffusers",
    dtype: Dtype = "float32",
    v2: Annotated[bool, typer.Option("--v2", help="The base model is SD 2.x.")] = False,
    v_pred: Annotated[bool, typer.Option("--v-pred", help="v-prediction model.")] = False,
    family: Annotated[str | None, typer.Option(
        "--family", help="Model family of the base model (default: detected).")] = None,
    quiet: Quiet = False,
) -> None:
    """A model with the membranes merged into its denoiser's weights (W += s·scale·up·down)."""
    from ..export.lora import NO_FT_NOTE
    from ..export.model import export_model

    console = stderr_console(quiet)
    _dtype(dtype)
    out = export_model(
        model,
        _weighted(spms),
        output,
        fmt.lower(),
        dtype=str(_dtype(dtype)).removeprefix("torch."),
        v2=v2,
        v_pred=v_pred,
        family=family,
    )
    console.print(NO_FT_NOTE, markup=False, soft_wrap=True)
    typer.echo(str(out))


def _weighted(items: list[str]):
    from ..export.lora import Weighted, parse_weighted
    from ..membrane.io import resolve_spm_path

    parsed = [parse_weighted(text) for text in items]
    return [Weighted(resolve_spm_path(p.path), p.strength) for p in parsed]
