"""`spmctl sample`: generate images with one or several membranes (facilitated transport)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ..console import stderr_console
from ..names import DTYPES, FT_METRICS, MODEL_SCHEDULER, NOISE_SCHEDULERS, either
from .common import Quiet, SetOption, collect_overrides

Opt = typer.Option


HELP_PANELS = {
    "Configuration": ["config", "set_", "print_config"],
    "Model and membranes": ["model", "spm", "concepts", "multiplier", "ft_metric", "facilitate_factor",
                            "ft_compat", "show_gates"],
    "Prompts": ["prompt", "prompts_file", "dataset", "data_root", "use_sample", "category", "styles",
                "objects", "limit", "row_settings", "negative_prompt"],
    "Generation": ["steps", "guidance", "width", "height", "seed", "images_per_prompt", "batch_size",
                   "noise_scheduler", "precision", "device"],
    "Output": ["output_dir", "grid", "overwrite", "quiet", "verbose"],
}
# option -> its config key, for the defaults --help shows
_CONFIG_KEYS = {"use_sample": "use_sample", "row_settings": "row_settings", "steps": "steps",
                "guidance": "guidance", "width": "width", "height": "height", "seed": "seeds",
                "images_per_prompt": "images_per_prompt", "batch_size": "batch_size",
                "noise_scheduler": "noise_scheduler", "precision": "precision", "device": "device",
                "output_dir": "output_dir", "ft_metric": "ft_metric", "facilitate_factor": "facilitate_factor",
                "ft_compat": "ft_compat", "grid": "grid", "overwrite": "overwrite"}


def help_defaults() -> dict[str, str]:
    from ..config.sample import SampleConfig
    from .helpfmt import config_defaults

    return config_defaults(SampleConfig, _CONFIG_KEYS)


def sample(
    config: Annotated[
        Path | None,
        Opt(
            "--config",
            "-c",
            "--config_path",
            "--config-path",
            help="YAML config (also the original SPM generation.yaml).",
        ),
    ] = None,
    model: Annotated[
        str | None, Opt("--model", "-m", help="Base model: hub id, folder, file or 'tiny' (default: the "
                        "membranes' recorded base model, else CompVis/stable-diffusion-v1-4).")
    ] = None,
    spm: Annotated[
        list[str] | None,
        Opt("--spm", help="SPM file, or a folder with <name>_last.safetensors (repeatable)."),
    ] = None,
    prompt: Annotated[list[str] | None, Opt("--prompt", "-p", help="A prompt (repeatable).")] = None,
    prompts_file: Annotated[
        str | None,
        Opt("--prompts-file", "--prompts_file", help=".txt (one per line) or .csv with a 'prompt' column."),
    ] = None,
    dataset: Annotated[str | None, Opt("--dataset", help="Dataset provider: i2p, unlearncanvas, ...")] = None,
    data_root: Annotated[
        str | None, Opt("--data-root", "--data_root", help="The dataset's folder/file.")
    ] = None,
    use_sample: Annotated[
        bool | None,
        Opt("--use-sample/--no-use-sample", help="Use the dataset's sample variant.", show_default=False),
    ] = None,
    category: Annotated[list[str] | None, Opt("--category", help="I2P category (repeatable).")] = None,
    styles: Annotated[list[str] | None, Opt("--styles", help="UnlearnCanvas style (repeatable).")] = None,
    objects: Annotated[list[str] | None, Opt("--objects", help="UnlearnCanvas object (repeatable).")] = None,
    limit: Annotated[int | None, Opt("--limit", help="At most this many dataset rows.")] = None,
    row_settings: Annotated[
        bool | None,
        Opt(
            "--row-settings/--no-row-settings",
            help="Use a dataset row's own seed, guidance and size.",
            show_default=False,
        ),
    ] = None,
    negative_prompt: Annotated[str | None, Opt("--negative-prompt", "-n")] = None,
    steps: Annotated[int | None, Opt("--steps", help="Denoising steps.")] = None,
    guidance: Annotated[float | None, Opt("--guidance", "-g", help="CFG scale.")] = None,
    width: Annotated[int | None, Opt("--width", "-W")] = None,
    height: Annotated[int | None, Opt("--height", "-H")] = None,
    seed: Annotated[
        list[int] | None, Opt("--seed", help="Seed (repeatable: one image set per seed).")
    ] = None,
    images_per_prompt: Annotated[int | None, Opt("--images-per-prompt", "--images_per_prompt")] = None,
    batch_size: Annotated[
        int | None, Opt("--batch-size", "--batch_size", help="Images per UNet pass.")
    ] = None,
    noise_scheduler: Annotated[
        str | None,
        Opt("--noise-scheduler", help=f"{either([*NOISE_SCHEDULERS, MODEL_SCHEDULER])} (the model's own scheduler)."),
    ] = None,
    precision: Annotated[str | None, Opt("--precision", help=f"auto, {either(DTYPES)}.")] = None,
    device: Annotated[str | None, Opt("--device", help="auto, cpu, cuda, cuda:N.")] = None,
    output_dir: Annotated[str | None, Opt("--output-dir", "--output_dir", "-o")] = None,
    grid: Annotated[bool | None, Opt("--grid", help="Also write grid.png.", show_default=False)] = None,
    overwrite: Annotated[
        bool | None,
        Opt("--overwrite", help="Regenerate images made with other settings.", show_default=False),
    ] = None,
    multiplier: Annotated[
        list[float] | None,
        Opt("--multiplier", help="Fixed gate instead of FT: one value, or one per SPM (repeatable)."),
    ] = None,
    concepts: Annotated[
        list[str] | None,
        Opt(
            "--concepts",
            help="Per SPM, comma-joined concepts for FT (repeatable; default: the file's metadata).",
        ),
    ] = None,
    ft_metric: Annotated[
        str | None, Opt("--ft-metric", help=f"{either(FT_METRICS)}.")
    ] = None,
    facilitate_factor: Annotated[
        float | None, Opt("--facilitate-factor", help="FT gate = clip(score x factor, 0, 1).")
    ] = None,
    compat: Annotated[
        str | None,
        Opt(
            "--compat",
            help="default, or 'original': the original code's inference (the model's own scheduler, "
            "gates x factor unclipped, squared gates and cross terms).",
        ),
    ] = None,
    ft_compat: Annotated[str | None, Opt("--ft-compat", help="Alias of --compat.")] = None,
    show_gates: Annotated[bool, Opt("--show-gates", help="Print each prompt's gates and exit.")] = False,
    set_: SetOption = None,
    print_config: Annotated[
        bool, Opt("--print-config", help="Show the merged configuration and exit.")
    ] = False,
    quiet: Quiet = False,
) -> None:
    """Generate images with one or several membranes (facilitated transport)."""
    from ..config.sample import load_sample_config

    options: dict[str, Any] = {"categories": category, "styles": styles, "objects": objects, "limit": limit}
    flags: dict[str, Any] = {
        "model": model,
        "spms": spm,
        "prompts": prompt,
        "prompts_file": prompts_file,
        "dataset": dataset,
        "data_root": data_root,
        "use_sample": use_sample,
        "row_settings": row_settings,
        "negative_prompt": negative_prompt,
        "steps": steps,
        "guidance": guidance,
        "width": width,
        "height": height,
        "seeds": seed,
        "images_per_prompt": images_per_prompt,
        "batch_size": batch_size,
        "noise_scheduler": noise_scheduler,
        "precision": precision,
        "device": device,
        "output_dir": output_dir,
        "grid": grid,
        "overwrite": overwrite,
        "multiplier": multiplier,
        "concepts": concepts,
        "ft_metric": ft_metric,
        "facilitate_factor": facilitate_factor,
        "compat": compat,
        "ft_compat": ft_compat,
        **{f"dataset_options.{k}": v for k, v in options.items()},
    }
    cfg, origin = load_sample_config(config, collect_overrides(flags, set_))
    if print_config:
        from .common import print_config_table

        print_config_table(cfg, origin)
        return
    from ..distributed.dist import dist_env
    from ..sampling.run import run_sampling

    run_sampling(cfg, console=stderr_console(quiet), quiet=quiet, show_gates=show_gates, ranks=dist_env())
