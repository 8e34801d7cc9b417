"""`spmctl train`: the seed's flags (underscored and kebab-case) plus `--set` for any key."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ..console import quiet_mode, stderr_console
from .common import Quiet, SetOption, collect_overrides

ConfigPath = Annotated[
    Path | None,
    typer.Option("--config", "-c", "--config_path", "--config-path",
                 help="YAML config (the seed's train_config.yaml or the original SPM config.yaml)."),
]


HELP_PANELS = {
    "Configuration": ["config", "set_", "print_config"],
    "What to erase": ["template", "template_name", "dataset_type", "use_sample"],
    "Model and run": ["model", "family", "iterations", "seed", "devices", "output_dir", "resume",
                      "gradient_checkpointing"],
    "Many concepts, many devices": ["sweep", "sweep_template", "sweep_names", "ddp"],
    "Output": ["quiet", "verbose"],
}
# option -> its config key, for the defaults --help shows
_CONFIG_KEYS = {"dataset_type": "dataset_type", "devices": "devices", "output_dir": "output_dir",
                "use_sample": "use_sample", "model": "pretrained_model.ckpt_path",
                "family": "pretrained_model.family", "gradient_checkpointing": "train.gradient_checkpointing",
                "iterations": "train.iterations", "seed": "seed", "verbose": "verbose"}


def help_defaults() -> dict[str, str]:
    from ..config.train import TrainConfig
    from .helpfmt import config_defaults

    return config_defaults(TrainConfig, _CONFIG_KEYS)


def train(
    config: ConfigPath = None,
    dataset_type: Annotated[str | None, typer.Option("--dataset_type", "--dataset-type",
                                                     help="Dataset provider, e.g. unlearncanvas or i2p.")] = None,
    template: Annotated[str | None, typer.Option("--template",
                                                 help="Template provider: object, style, i2p or concept.")] = None,
    template_name: Annotated[str | None, typer.Option("--template_name", "--template-name",
                                                      help="What to erase, e.g. Abstractionism.")] = None,
    devices: Annotated[str | None, typer.Option(
        "--devices", help='CUDA devices, e.g. "0" or "0,1" (with --sweep or --ddp: one process each), "cpu", '
        'or "cpu,cpu" for several CPU processes.')] = None,
    output_dir: Annotated[str | None, typer.Option("--output_dir", "--output-dir",
                                                   help="Where membranes and logs go.")] = None,
    use_sample: Annotated[bool | None, typer.Option("--use_sample", "--use-sample/--no-use-sample",
                                                    help="Use the dataset's sample variant.",
                                                    show_default=False)] = None,
    model: Annotated[str | None, typer.Option("--model", "-m",
                                              help="Base model (pretrained_model.ckpt_path), e.g. tiny.")] = None,
    family: Annotated[str | None, typer.Option(
        "--family", help="Model family (pretrained_model.family), e.g. sd1; default: detected.")] = None,
    iterations: Annotated[int | None, typer.Option("--iterations", help="train.iterations")] = None,
    gradient_checkpointing: Annotated[bool | None, typer.Option(
        "--gradient-checkpointing", "--gradient_checkpointing",
        help="Recompute activations in the backward pass (less memory, ~30% slower).",
        show_default=False)] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Random seed of the run.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the latest checkpoint.")] = False,
    sweep: Annotated[Path | None, typer.Option(
        "--sweep", help="Text file, one concept per line: one membrane per concept in output_dir/<concept>/ "
        "(a re-run continues the sweep).")] = None,
    sweep_template: Annotated[str | None, typer.Option(
        "--sweep-template", "--sweep_template", help="Template whose names the sweep erases, e.g. style.")] = None,
    sweep_names: Annotated[str | None, typer.Option(
        "--sweep-names", "--sweep_names", help='Sweep these names: "all" (every name of the template) or A,B,C.')
    ] = None,
    ddp: Annotated[bool, typer.Option(
        "--ddp", help="Train each membrane data-parallel over all --devices (distributed: ddp).")] = False,
    compat: Annotated[str | None, typer.Option(
        "--compat", help="default, or 'original': the original SPM code's training iteration, defects "
        "included (README: Differences from the original SPM).")] = None,
    verbose: Annotated[bool | None, typer.Option("--verbose", help="Verbose logging.",
                                                 show_default=False)] = None,
    set_: SetOption = None,
    print_config: Annotated[bool, typer.Option("--print-config",
                                               help="Show the merged configuration and exit.")] = False,
    quiet: Quiet = False,
) -> None:
    """Train a membrane that erases one or more concepts."""
    if quiet:  # first: the processes a DDP run or sweep starts inherit it (and torch is not loaded yet)
        quiet_mode()
    from ..config.train import load_train_config

    flags: dict[str, Any] = {
        "dataset_type": dataset_type, "template": template, "template_name": template_name,
        "devices": devices, "output_dir": output_dir, "use_sample": use_sample, "seed": seed,
        "verbose": verbose, "pretrained_model.ckpt_path": model, "train.iterations": iterations,
        "pretrained_model.family": family, "train.gradient_checkpointing": gradient_checkpointing,
        "resume": resume or None, "distributed": "ddp" if ddp else None, "compat": compat,
    }
    overrides = collect_overrides(flags, set_)
    cfg, origin = load_train_config(config, overrides)
    from ..config.train import OPTIMIZER_FALLBACK

    if origin.get("train.optimizer_type") == OPTIMIZER_FALLBACK and not print_config:
        stderr_console(quiet).print(f"note: train.optimizer_type: {OPTIMIZER_FALLBACK}", highlight=False,
                                    markup=False, soft_wrap=True)
    if print_config:
        from .common import print_config_table

        print_config_table(cfg, origin)
        return
    from ..distributed.launch import needs_scale_out, train_scaled
    from ..distributed.sweep import SweepSpec

    spec = SweepSpec(sweep, sweep_template, sweep_names)
    if needs_scale_out(cfg, spec):  # a sweep, --ddp, or one of torchrun's processes
        code = train_scaled(cfg, spec, quiet=quiet)
        if code:
            raise typer.Exit(code)
        return
    from ..sampling.preview import write_previews
    from ..training.run import run_training

    console = stderr_console(quiet)
    if cfg.verbose:
        show_prompts(cfg, console)
    run_training(cfg, console=console, quiet=quiet, previewer=write_previews)


def show_prompts(cfg: Any, console: Any) -> None:
    """--verbose: the prompts each setting resolved to (what a template made of template_name)."""
    from ..training.prompts import resolve_prompt_settings

    for i, s in enumerate(resolve_prompt_settings(cfg, warn=lambda _msg: None), 1):
        console.print(f"prompt setting {i}: target {s.target!r}, positive {s.positive!r}, neutral {s.neutral!r}, "
                      f"unconditional {s.unconditional!r} ({s.action}, guidance {s.guidance_scale}, "
                      f"{s.resolution} px)", highlight=False, markup=False)
