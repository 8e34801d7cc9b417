"""`spmctl attack METHOD`: adversarial prompts against erased models, through facilitated transport."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ..console import stderr_console
from .common import Quiet, SetOption, collect_overrides

Opt = typer.Option


def attack(
    method: Annotated[str, typer.Argument(help="unlearndiffatk, p4d or ring-a-bell.")],
    config: Annotated[Path | None, Opt("--config", "-c", help="YAML config (sample keys + attack keys).")] = None,
    model: Annotated[str | None, Opt("--model", "-m", help="Base model: hub id, folder, file or 'tiny'.")] = None,
    spm: Annotated[list[str] | None, Opt("--spm", help="SPM file or folder (repeatable).")] = None,
    multiplier: Annotated[
        list[float] | None, Opt("--multiplier", help="Fixed gate instead of FT: one, or one per SPM.")
    ] = None,
    prompt: Annotated[list[str] | None, Opt("--prompt", "-p", help="A prompt to attack (repeatable).")] = None,
    prompts_file: Annotated[str | None, Opt("--prompts-file", help=".txt or .csv of prompts.")] = None,
    dataset: Annotated[str | None, Opt("--dataset", help="Dataset provider: i2p, unlearncanvas, ...")] = None,
    data_root: Annotated[str | None, Opt("--data-root", help="The dataset's folder/file.")] = None,
    category: Annotated[list[str] | None, Opt("--category", help="I2P category (repeatable).")] = None,
    styles: Annotated[list[str] | None, Opt("--styles", help="UnlearnCanvas style (repeatable).")] = None,
    objects: Annotated[list[str] | None, Opt("--objects", help="UnlearnCanvas object (repeatable).")] = None,
    limit: Annotated[int | None, Opt("--limit", help="At most this many dataset rows.")] = None,
    concept: Annotated[
        str | None, Opt("--concept", help="Concept attacked (default: the row's, else the SPMs' only one).")
    ] = None,
    classifier: Annotated[
        str | None, Opt("--classifier", help="Verdict: plugin classifier name or UnlearnCanvas checkpoint.")
    ] = None,
    target_images: Annotated[
        str | None, Opt("--target-images", help="Folder from `spmctl sample` with the concept images.")
    ] = None,
    tokens: Annotated[int | None, Opt("--tokens", help="Adversarial tokens (method default).")] = None,
    attack_steps: Annotated[
        int | None, Opt("--attack-steps", help="Optimisation steps / generations (method default).")
    ] = None,
    lr: Annotated[float | None, Opt("--lr", help="Learning rate of the token embeddings.")] = None,
    eval_every: Annotated[
        int | None, Opt("--eval-every", help="Judge every N steps, stop on success (0: at the end).")
    ] = None,
    variant: Annotated[str | None, Opt("--variant", help="p4d: n (new tokens) or k (inserted).")] = None,
    population: Annotated[int | None, Opt("--population", help="ring-a-bell: population size.")] = None,
    eta: Annotated[float | None, Opt("--eta", help="ring-a-bell: concept vector strength.")] = None,
    concept_pairs: Annotated[
        str | None, Opt("--concept-pairs", help="ring-a-bell: CSV with 'with' and 'without' columns.")
    ] = None,
    steps: Annotated[int | None, Opt("--steps", help="Denoising steps of each image.")] = None,
    guidance: Annotated[float | None, Opt("--guidance", "-g", help="CFG scale.")] = None,
    width: Annotated[int | None, Opt("--width", "-W")] = None,
    height: Annotated[int | None, Opt("--height", "-H")] = None,
    seed: Annotated[list[int] | None, Opt("--seed", help="Seed (a row's own seed wins).")] = None,
    batch_size: Annotated[int | None, Opt("--batch-size", help="Prompts attacked together.")] = None,
    device: Annotated[str | None, Opt("--device", help="auto, cpu, cuda, cuda:N.")] = None,
    output_dir: Annotated[str | None, Opt("--output-dir", "-o")] = None,
    overwrite: Annotated[
        bool | None, Opt("--overwrite", help="Redo prompts attacked with other settings.", show_default=False)
    ] = None,
    set_: SetOption = None,
    print_config: Annotated[bool, Opt("--print-config", help="Show the merged configuration and exit.")] = False,
    quiet: Quiet = False,
) -> None:
    """Attack erased models with adversarial prompts (UnlearnDiffAtk, P4D, Ring-A-Bell) through FT."""
    from ..attack.config import load_attack_config

    flags: dict[str, Any] = {
        "method": method, "model": model, "spms": spm, "multiplier": multiplier, "prompts": prompt,
        "prompts_file": prompts_file, "dataset": dataset, "data_root": data_root,
        "dataset_options.limit": limit, "dataset_options.categories": category,
        "dataset_options.styles": styles, "dataset_options.objects": objects, "concept": concept,
        "classifier": classifier,
        "target_images": target_images, "tokens": tokens, "attack_steps": attack_steps, "lr": lr,
        "eval_every": eval_every, "p4d_variant": variant, "population": population, "eta": eta,
        "concept_pairs": concept_pairs, "steps": steps, "guidance": guidance, "width": width, "height": height,
        "seeds": seed, "batch_size": batch_size, "device": device, "output_dir": output_dir,
        "overwrite": overwrite,
    }
    cfg, origin = load_attack_config(config, collect_overrides(flags, set_))
    if print_config:
        from .common import print_config_table

        print_config_table(cfg, origin)
        return
    from ..attack.run import run_attack
    from ..distributed.dist import dist_env

    ranks = dist_env()
    out = run_attack(cfg, console=stderr_console(quiet), quiet=quiet, ranks=ranks)
    if ranks.is_main:  # under torchrun rank 0 writes the summary: say so once
        typer.echo(f"results: {out / 'results.json'}")
