"""Images during training (`save.sample_every_n_steps`), as kohya-style trainers write them.

The membrane of the current step is applied the way `spmctl sample` applies a membrane file, with
its default settings: the facilitated-transport gate per prompt (`compute_gates`), a `MembraneStack`
on the UNet, the same `ImageSampler` and PNG writer (atomic, umask-honouring, parameters in the PNG). The trainer
detaches its own network around the call (a UNet takes one membrane network at a time).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config.train import TrainConfig
from ..membrane.io import MembraneFile
from .generate import ImageSampler, Job, build_pipeline
from .output import save_png
from .stack import MembraneStack

# With the erased concept, one prompt it must leave alone shows both halves of SPM's promise.
UNRELATED_PROMPT = "a photo of a mountain lake at sunrise"


@dataclass(frozen=True)
class PreviewSettings:
    prompts: list[str]
    steps: int
    size: int
    seed: int
    clip_skip: int = 1


def preview_prompts(configured: list[str] | None, targets: list[str]) -> list[str]:
    """`save.sample_prompts`, or each erased target and one unrelated prompt."""
    return list(configured) if configured else [*dict.fromkeys(targets), UNRELATED_PROMPT]


def preview_name(stem: str, step: int, index: int) -> str:
    """`<name>_step<step>_<prompt index>.png`: sorted by step, and a resumed run's continue the series."""
    return f"{stem}_step{step:06d}_{index}.png"


def write_previews(model: Any, membrane: MembraneFile, cfg: TrainConfig, prompt_settings: list[Any], folder: Path,
                   stem: str, step: int) -> tuple[list[Path], float]:
    """The previews of training step `step` (training's `previewer`): one image per prompt with
    `membrane` at its FT gate; returns the files and the seconds taken."""
    settings = PreviewSettings(preview_prompts(cfg.save.sample_prompts, [s.target for s in prompt_settings]),
                               cfg.save.sample_steps, prompt_settings[0].resolution, cfg.seed,
                               cfg.pretrained_model.clip_skip)
    return draw_previews(model, membrane, settings, folder, stem, step)


def draw_previews(model: Any, membrane: MembraneFile, settings: PreviewSettings, folder: Path, stem: str,
                  step: int) -> tuple[list[Path], float]:
    """One image per prompt of `settings`. Training's random state is left as it was (a resumed run
    must not depend on previews)."""
    from ..config.sample import SampleConfig
    from .run import compute_gates, recorded_gates

    began = time.perf_counter()
    # `spmctl sample`'s defaults (FT metric, factor, compat), not its environment: no SPMCTL_* reading here
    sample_cfg = SampleConfig.model_construct(clip_skip=settings.clip_skip, steps=settings.steps)
    prompts = settings.prompts
    device = next(model.denoiser.parameters()).device
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        gates, embeds = compute_gates(sample_cfg, model, [membrane], prompts)
        stack = MembraneStack(model, [membrane], sample_cfg.ft_compat)
        try:
            sampler = ImageSampler(model, build_pipeline(model, sample_cfg.noise_scheduler),
                                   sample_cfg.negative_prompt, settings.clip_skip, settings.steps)
            if embeds is not None:
                sampler.prime(prompts, embeds)
            jobs = [Job(p, settings.seed, 0, sample_cfg.guidance, settings.size, settings.size, i)
                    for i, p in enumerate(prompts)]
            rows = [recorded_gates(row) for row in gates.tolist()]
            stack.set_gates(torch.tensor(rows))
            images = sampler(jobs)
        finally:
            stack.close()
    written = []
    for job, image, row in zip(jobs, images, rows, strict=True):
        path = folder / preview_name(stem, step, job.row)
        save_png(path, image, {
            "file": path.name, "prompt": job.prompt, "negative_prompt": "", "seed": job.seed,
            "image_seed": job.image_seed, "guidance": job.guidance, "width": job.width, "height": job.height,
            "steps": settings.steps, "noise_scheduler": sample_cfg.noise_scheduler, "model": model.source,
            "spms": [stem],
            "gates": row, "concepts": [membrane.concepts], "training_step": step,
        })
        written.append(path)
    return written, time.perf_counter() - began
