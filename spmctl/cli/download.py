"""`spmctl download model|dataset|list`: fetch the seed's models and datasets into its layout.

The sources come from the manifest (`spmctl_datasets/sources.yaml`); this module only
parses options and reports. Progress and notes go to stderr, the resulting path to stdout.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ..console import stderr_console
from .common import Quiet

if TYPE_CHECKING:
    from ..download import Source

app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, help="Download models and datasets (seed layout).")

Dest = Annotated[Path, typer.Option("--dest", help="Root of the layout: models/… and data/… go under it.")]
Endpoint = Annotated[str | None, typer.Option(
    "--endpoint",
    help="Hub endpoint or mirror [default: $SPMCTL_HUB_ENDPOINT, $HF_ENDPOINT, https://huggingface.co].")]
Force = Annotated[bool, typer.Option(
    "--force", help="Fetch again, replacing what an earlier download installed there (never other files).")]
CacheDir = Annotated[Path | None, typer.Option(
    "--cache-dir", help="Where partial downloads wait for resume [default: $SPMCTL_CACHE_DIR or "
                        "~/.cache/spmctl/downloads].")]
ManifestOpt = Annotated[Path | None, typer.Option(
    "--manifest", help="Another sources manifest (YAML/JSON) [default: $SPMCTL_SOURCES or the built-in].")]
Retries = Annotated[int, typer.Option("--retries", min=0, help="Resume attempts after a dropped connection.")]
Timeout = Annotated[float, typer.Option(
    "--timeout", min=1, help="Seconds without data before a transfer is given up (also the window for "
                             "--min-rate).")]
MinRate = Annotated[int, typer.Option(
    "--min-rate", min=0, help="Bytes/s a transfer must average over --timeout seconds (0: no minimum).")]


def _run(source: Source, dest: Path, endpoint: str | None, force: bool, cache_dir: Path | None,
         retries: int, quiet: bool, timeout: float, min_rate: int) -> None:
    from ..download import Options, default_cache_dir, install, resolve_endpoint

    console = stderr_console(quiet)
    opts = Options(root=dest, endpoint=resolve_endpoint(endpoint), cache_dir=cache_dir or default_cache_dir(),
                   force=force, quiet=quiet, retries=retries, timeout=timeout, min_rate=min_rate)
    result = install(source, opts, console)
    if result.status == "present":
        console.print(f"{source.label}: already present at {result.path} (use --force to fetch again)")
    else:
        console.print(f"{source.label}: ready at {result.path}")
    typer.echo(str(result.path))


@app.command("model")
def model(
    name: Annotated[str, typer.Argument(help="compvis, diffuser, or a hub model id (org/name).")],
    dest: Dest = Path("."),
    endpoint: Endpoint = None,
    revision: Annotated[str | None, typer.Option("--revision", help="Hub revision (hub ids only).")] = None,
    force: Force = False,
    cache_dir: CacheDir = None,
    manifest: ManifestOpt = None,
    retries: Retries = 3,
    timeout: Timeout = 60.0,
    min_rate: MinRate = 1024,
    quiet: Quiet = False,
) -> None:
    """Download a model: the seed's `compvis`/`diffuser` archives, or any hub id into models/<id>."""
    from ..download import hub_model_source, load_manifest
    from ..errors import ConfigError, unknown_message

    sources = load_manifest(manifest)
    source = sources.model(name)
    if source is None:
        if "/" not in name:
            known = unknown_message("model", name, list(sources.models))
            raise ConfigError(f"{known}, or a hub id (org/name)")
        source = hub_model_source(name, revision)
    _run(source, dest, endpoint, force, cache_dir, retries, quiet, timeout, min_rate)


@app.command("dataset")
def dataset(
    name: Annotated[str, typer.Argument(help="quick-canvas (UnlearnCanvas) or i2p.")],
    variant: Annotated[str, typer.Argument(help="sample or full.")] = "sample",
    dest: Dest = Path("."),
    endpoint: Endpoint = None,
    force: Force = False,
    cache_dir: CacheDir = None,
    manifest: ManifestOpt = None,
    retries: Retries = 3,
    timeout: Timeout = 60.0,
    min_rate: MinRate = 1024,
    quiet: Quiet = False,
) -> None:
    """Download a dataset into data/<name>-dataset/<sample|full>/ (the seed's layout)."""
    from ..download import load_manifest

    source = load_manifest(manifest).dataset(name, variant)
    _run(source, dest, endpoint, force, cache_dir, retries, quiet, timeout, min_rate)


@app.command("list")
def list_sources(manifest: ManifestOpt = None) -> None:
    """Show what can be downloaded, with sizes and destinations."""
    from rich.console import Console
    from rich.table import Table

    from ..download import load_manifest
    from ..download.space import human_size

    table = Table(title="spmctl download sources")
    for column in ("command", "size", "source", "destination"):
        table.add_column(column)
    for src in load_manifest(manifest).all_sources():
        command = f"model {src.name}" if src.kind == "model" else f"dataset {src.name} {src.variant}"
        size = human_size(src.size) if src.size else (
            f"~{human_size(src.approx_size)}" if src.approx_size else "unknown")
        origin = f"hub {src.repo_type or 'model'} {src.repo_id}" if src.fetch == "hub" else src.url or ""
        table.add_row(command, size, origin, src.dest)
    table.caption = "model <org/name>: any hub model → models/<org>/<name>"
    console = Console()
    if not console.is_terminal:
        console.width = 200  # piped output: don't squeeze URLs into 80 columns
    console.print(table)
