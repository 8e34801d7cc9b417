"""`spmctl sample`'s run: prompts -> gates -> batched generation -> PNGs + manifest, resumable."""

from __future__ import annotations

import itertools
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from ..config.sample import SampleConfig
from ..config.train import MAX_SEED
from ..errors import SpmctlError
from ..membrane.io import MembraneFile
from ..providers import PromptRow
from .generate import ImageSampler, Job, build_pipeline
from .output import ManifestWriter, differing_setting, file_names, save_png, write_grid
from .shard import OneProcess, Ranks, SampleShard, for_this_rank
from .stack import MembraneStack, base_model_of, ft_scaling_for, load_spms, spm_gates


def load_rows(cfg: SampleConfig) -> list[PromptRow]:
    """Prompts from --prompt, --prompts-file and --dataset, in that order."""
    from ..plugins import get_dataset

    rows = [PromptRow(prompt=p) for p in cfg.prompts]
    if cfg.prompts_file:
        rows += list(get_dataset("prompts").rows(None, path=cfg.prompts_file))
    if cfg.dataset:
        root = Path(cfg.data_root) if cfg.data_root else None
        rows += list(get_dataset(cfg.dataset).rows(root, use_sample=cfg.use_sample, **cfg.dataset_options))
    if not rows:
        raise SpmctlError(
            "no prompts to generate: give --prompt, --prompts-file or --dataset "
            "(or the dataset selection is empty)"
        )
    return rows


def check_inputs(cfg: SampleConfig, model: Any, rows: list[PromptRow], device: str) -> None:
    """Before anything is generated: say what long prompts lose; refuse sizes that cannot fit."""
    from ..models.memory import check_fits

    # printed even under --quiet, like every warning: the images differ from what was asked
    model.family.warn_truncated(model, [*(r.prompt for r in rows), cfg.negative_prompt],
                                lambda msg: print(f"warning: {msg}", file=sys.stderr))
    batch = min(cfg.batch_size, len(rows) * cfg.images_per_prompt * len(cfg.seeds))
    sizes = [(row.width or cfg.width, row.height or cfg.height) if cfg.row_settings else (cfg.width, cfg.height)
             for row in rows]
    width, height = max(sizes, key=lambda size: size[0] * size[1])
    check_fits(model, batch, height, width, device, f"{width}x{height} images with batch_size {cfg.batch_size}")


def plan_jobs(rows: list[PromptRow], cfg: SampleConfig) -> list[Job]:
    jobs = []
    for r, row in enumerate(rows):
        own = cfg.row_settings
        width = row.width if own and row.width else cfg.width
        height = row.height if own and row.height else cfg.height
        if width <= 0 or height <= 0 or width % 8 or height % 8:
            raise SpmctlError(
                f"prompt {r + 1} ({row.prompt[:40]!r}): size {width}x{height} is not a positive "
                "multiple of 8 (use --no-row-settings to use --width/--height)"
            )
        guidance = row.guidance_scale if own and row.guidance_scale is not None else cfg.guidance
        seeds = [row.seed] if own and row.seed is not None else cfg.seeds
        if any(not 0 <= s <= MAX_SEED - cfg.images_per_prompt + 1 for s in seeds):  # a file's own seed
            raise SpmctlError(f"prompt {r + 1} ({row.prompt[:40]!r}): seed {seeds[0]} is outside 0..2^64-1 "
                              "(with the image index added); fix the file or use --no-row-settings")
        for seed, index in itertools.product(seeds, range(cfg.images_per_prompt)):
            jobs.append(
                Job(
                    row.prompt,
                    int(seed),
                    index,
                    float(guidance),
                    int(width),
                    int(height),
                    r,
                    tuple(row.categories),
                    row.concept,
                    dict(row.extra),
                )
            )
    return jobs


# Prompt conditionings kept from the FT scoring for generation: up to this many bytes (I2P's 4,703
# prompts would take over 1 GB at SD 1.x's 77 x 768; those are simply encoded again).
_KEEP_EMBEDS_BYTES = 256 * 2**20


def ft_scaling(cfg: SampleConfig) -> tuple[float, bool]:
    """FT's gate factor and clipping; the original neither clips nor scales, so compat mode doesn't."""
    return ft_scaling_for(cfg.ft_compat, cfg.facilitate_factor)


def compute_gates(
    cfg: SampleConfig, model: Any, spms: list[MembraneFile], prompts: list[str]
) -> tuple[torch.Tensor, Any]:
    """(P, N): one gate per prompt and SPM, from --multiplier or from facilitated transport; and the
    prompts' generation conditioning when the gates could be read off it (the family says when: SD 1.x
    at clip_skip 1), else None."""
    if not spms or cfg.multiplier is not None:
        return spm_gates(model, prompts, spms, multiplier=cfg.multiplier,
                         factor=cfg.facilitate_factor, compat=cfg.compat), None
    family = model.family
    cond, gate_embeds = None, None
    probe = family.encode(model, prompts[:1], clip_skip=cfg.clip_skip)  # one prompt: its size
    size = len(prompts) * sum(t.numel() for t in (probe.embeds, probe.pooled) if t is not None) * 4
    if size <= _KEEP_EMBEDS_BYTES and family.gate_embeds_of(model, probe, cfg.clip_skip) is not None:
        cond = family.encode(model, prompts, clip_skip=cfg.clip_skip)
        gate_embeds = family.gate_embeds_of(model, cond, cfg.clip_skip)
    gates = spm_gates(model, prompts, spms, metric=cfg.ft_metric,
                      factor=cfg.facilitate_factor, compat=cfg.ft_compat, prompt_embeds=gate_embeds)
    return gates, cond


def print_gates(prompts: list[str], spms: list[MembraneFile], gates: torch.Tensor) -> None:
    from rich.table import Table

    from ..console import table_console

    table = Table("prompt", *(f"{s.name} ({', '.join(s.concepts) or '-'})" for s in spms), box=None)
    for prompt, row in zip(prompts, gates.tolist(), strict=True):
        table.add_row(prompt, *(f"{g:.4f}" for g in row))
    table_console().print(table)  # the terminal's width; one line per row when piped


def recorded_gates(gates: list[float]) -> list[float]:
    """Gates as the manifest records them; images are made with exactly these, so a manifest line
    reproduces its image."""
    return [round(g, 6) for g in gates]


def _record(
    cfg: SampleConfig, model: Any, spms: list[MembraneFile], job: Job, name: str, gates: list[float]
) -> dict[str, Any]:
    return {
        "file": name,
        "prompt": job.prompt,
        "seed": job.seed,
        "index": job.index,
        "image_seed": job.image_seed,
        "guidance": job.guidance,
        "width": job.width,
        "height": job.height,
        "steps": cfg.steps,
        "spms": [str(s.path.resolve()) for s in spms],
        "spm_sha256": [s.digest for s in spms],
        "gates": recorded_gates(gates),
        "concepts": [s.concepts for s in spms],
        "negative_prompt": cfg.negative_prompt,
        "model": model.source,
        "noise_scheduler": cfg.noise_scheduler,
        "ft_compat": cfg.ft_compat,
        "clip_skip": cfg.clip_skip,
        "precision": cfg.resolved_precision(),
        "ft": cfg.multiplier is None,
        "ft_metric": cfg.ft_metric,
        "categories": list(job.categories),
        "concept": job.concept,
    }


def run_sampling(
    cfg: SampleConfig, console: Console | None = None, quiet: bool = False, show_gates: bool = False,
    ranks: Ranks | None = None,
) -> Path:
    """`ranks`: this process's place when several run (torchrun); the CLI passes the launcher's."""
    from ..families import load_model

    console = console or Console(stderr=True, quiet=quiet)
    ranks = ranks or OneProcess()
    cfg = for_this_rank(cfg, ranks)  # under torchrun: one GPU per process
    rows = load_rows(cfg)
    spms = load_spms(cfg.spms, cfg.concepts)
    if cfg.multiplier is not None and len(cfg.multiplier) not in (1, len(spms)):
        raise SpmctlError(
            f"--multiplier: give one value or one per SPM ({len(spms)}), not {len(cfg.multiplier)}"
        )
    device = cfg.resolved_device()  # a device this machine lacks stops here, before the model loads
    model_path = cfg.model
    if model_path is None:
        model_path, why = base_model_of(spms)
        console.print(why)
    model = load_model(model_path, family=cfg.family or _recorded_family(spms, cfg.model), v2=cfg.v2,
                       v_pred=cfg.v_pred, dtype=cfg.resolved_precision(), device=device)
    check_inputs(cfg, model, rows, device)
    # attach first: an SPM for another model fails here, before any output is touched
    stack = MembraneStack(model, spms, cfg.ft_compat) if spms else None
    try:
        return _sample(cfg, model, rows, spms, stack, console, quiet, show_gates, ranks)
    finally:
        if stack is not None:
            stack.close()


def _recorded_family(spms: list[MembraneFile], model: str | None) -> str | None:
    """The family the membranes record, when the base model is theirs too (no -m given)."""
    families = {s.model_family for s in spms if s.model_family}
    return families.pop() if model is None and len(families) == 1 else None


def _sample(
    cfg: SampleConfig,
    model: Any,
    rows: list[PromptRow],
    spms: list[MembraneFile],
    stack: MembraneStack | None,
    console: Console,
    quiet: bool,
    show_gates: bool,
    ranks: Ranks,
) -> Path:
    prompts = list(dict.fromkeys(r.prompt for r in rows))
    gates, prompt_embeds = compute_gates(cfg, model, spms, prompts)
    if show_gates:
        print_gates(prompts, spms, gates)
        return Path(cfg.output_dir)
    gate_of = dict(zip(prompts, gates.tolist(), strict=True))
    jobs = plan_jobs(rows, cfg)
    if not spms:  # said once the inputs are known good: a refused run stays one line
        console.print("no --spm given: generating with the base model alone")
    names = file_names(jobs)
    out_dir = Path(cfg.output_dir)
    # under torchrun each process makes its share (names are decided over the whole run first)
    share = SampleShard.open(out_dir, ranks)
    all_names, jobs, names = names, share.take(jobs), share.take(names)
    existing = share.read_manifest()
    records = [
        _record(cfg, model, spms, job, name, gate_of[job.prompt])
        for job, name in zip(jobs, names, strict=True)
    ]
    todo = _pending(out_dir, records, existing, cfg.overwrite)
    writer = share.writer(existing, names)
    pending = set(todo)
    for i, record in enumerate(records):  # an image on disk whose manifest line was lost: restore it
        if i not in pending and existing.get(record["file"]) is None:
            writer.add(record)
    if len(todo) < len(jobs):
        console.print(f"{len(jobs) - len(todo)} of {len(jobs)} images already in {out_dir}: skipped")
    failed = True
    try:
        pipe = build_pipeline(model, cfg.noise_scheduler)
        generate = ImageSampler(model, pipe, cfg.negative_prompt, cfg.clip_skip, cfg.steps)
        if prompt_embeds is not None:
            generate.prime(prompts, prompt_embeds)
        _generate_all(generate, stack, jobs, records, todo, writer, cfg.batch_size, console, quiet, len(rows))
        failed = False
    finally:
        writer.finish(names, failed)
        share.close(all_names)  # rank 0 merges the processes' manifests
    if cfg.grid and share.is_main:
        grid = write_grid(out_dir, all_names)
        if grid is not None:
            console.print(f"grid: {grid}")
    if not share.env.distributed:
        console.print(f"{len(todo)} images written to {out_dir}")
    elif share.is_main:  # after every process is done: count all of them, not rank 0's share
        present = sum((out_dir / name).is_file() for name in all_names)
        console.print(f"{present} of {len(all_names)} images of this run in {out_dir} "
                      f"(all {share.env.world_size} processes)")
    return out_dir


def _pending(
    out_dir: Path, records: list[dict[str, Any]], existing: dict[str, dict[str, Any]], overwrite: bool
) -> list[int]:
    todo = []
    for i, record in enumerate(records):
        if not (out_dir / record["file"]).is_file():
            todo.append(i)
            continue
        old = existing.get(record["file"])
        changed = differing_setting(old, record) if old is not None else None
        if changed is not None:
            if not overwrite:
                raise SpmctlError(
                    f"{out_dir / record['file']} exists with another {changed} "
                    f"({old.get(changed)!r} vs {record[changed]!r}); use another --output-dir "
                    "or pass --overwrite"
                )
            todo.append(i)
    return todo


def _generate_all(
    generate: ImageSampler,
    stack: MembraneStack | None,
    jobs: list[Job],
    records: list[dict[str, Any]],
    todo: list[int],
    writer: ManifestWriter,
    batch_size: int,
    console: Console,
    quiet: bool,
    num_prompts: int,
) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    left = defaultdict(int)  # images still to make per prompt row
    for i in todo:
        left[jobs[i].row] += 1
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i in todo:  # batch only jobs sharing size and guidance; keep the run's order inside a group
        groups[jobs[i].group].append(i)
    progress = Progress(
        TextColumn("[bold]prompts"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[images]} images"),
        TimeRemainingColumn(),
        console=console,
        disable=quiet,
    )
    with progress:
        task = progress.add_task("sampling", total=num_prompts, completed=num_prompts - len(left), images=0)
        made = 0
        for members in groups.values():
            for start in range(0, len(members), batch_size):
                batch = members[start : start + batch_size]
                if stack is not None:
                    stack.set_gates(torch.tensor([records[i]["gates"] for i in batch]))
                images = generate([jobs[i] for i in batch])
                for i, image in zip(batch, images, strict=True):
                    save_png(writer.folder / records[i]["file"], image, records[i])
                    writer.add(records[i])
                    made += 1
                    left[jobs[i].row] -= 1
                    if left[jobs[i].row] == 0:
                        progress.advance(task)
                progress.update(task, images=made)
