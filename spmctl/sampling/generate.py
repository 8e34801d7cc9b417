"""Generation: the model family's diffusers pipeline on the loaded model's parts, batched across prompts.

Reproducibility rule: every image has its own CPU `torch.Generator` seeded with its image seed; its
initial latents are drawn from it (exactly as the pipeline draws them for a single prompt with
`generator=torch.Generator().manual_seed(seed)`), and the same generator then feeds the
scheduler's noise (ancestral samplers). A sample therefore does not depend on what else is in its
batch: a batched run gives the images of one-prompt-at-a-time runs, and of plain diffusers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..families.base import Conditioning, ModelBundle


@dataclass(frozen=True)
class Job:
    """One image to make."""

    prompt: str
    seed: int  # the prompt's seed; the image's generator seed is seed + index
    index: int
    guidance: float
    width: int
    height: int
    row: int  # position of the prompt in the run (for gates and progress)
    categories: tuple[str, ...] = ()
    concept: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def image_seed(self) -> int:
        return self.seed + self.index

    @property
    def group(self) -> tuple[int, int, float]:
        """Jobs batch together only when the pipeline call's scalars agree."""
        return (self.width, self.height, self.guidance)


def build_pipeline(model: ModelBundle, noise_scheduler: str = "ddim"):
    family = model.family
    pipe = family.pipeline(model, family.make_scheduler(model, noise_scheduler))
    pipe.set_progress_bar_config(disable=True)
    return pipe


class ImageSampler:
    """Turns a batch of Jobs (same size and guidance) into float images in [0, 1] (H, W, 3)."""

    def __init__(
        self, model: ModelBundle, pipe: Any, negative_prompt: str = "", clip_skip: int = 1, steps: int = 30
    ) -> None:
        self.model = model
        self.pipe = pipe
        self.clip_skip = clip_skip
        self.steps = steps
        self._negative = model.family.negative_conditioning(model, negative_prompt, clip_skip=clip_skip)
        self._cache: dict[str, Conditioning] = {}

    def _encode(self, prompts: list[str]) -> Conditioning:
        return self.model.family.encode(self.model, prompts, clip_skip=self.clip_skip)

    def prime(self, prompts: Sequence[str], cond: Conditioning) -> None:
        """Take prompt conditionings computed elsewhere (for FT gates), so they are not encoded again."""
        for i, p in enumerate(prompts):
            self._cache[p] = cond[i]

    def embeds(self, prompts: Sequence[str]) -> Conditioning:
        missing = [p for p in dict.fromkeys(prompts) if p not in self._cache]
        if missing:
            cond = self._encode(missing)
            for i, p in enumerate(missing):
                self._cache[p] = cond[i]
        return Conditioning.cat([self._cache[p] for p in prompts])

    def latents(self, jobs: Sequence[Job]) -> tuple[torch.Tensor, list[torch.Generator]]:
        model = self.model
        dtype = model.dtype
        gens, parts = [], []
        for job in jobs:
            gen = torch.Generator().manual_seed(job.image_seed)
            parts.append(model.family.sample_latents(model, job.height, job.width, gen, dtype))
            gens.append(gen)
        return torch.cat(parts).to(model.device), gens

    def __call__(self, jobs: Sequence[Job]) -> np.ndarray:
        width, height, guidance = jobs[0].group
        assert all(j.group == jobs[0].group for j in jobs), "a batch mixes sizes or guidance"
        latents, gens = self.latents(jobs)
        cond = self.embeds([j.prompt for j in jobs])
        negative = self._negative.expand(len(jobs))
        with torch.no_grad():
            out = self.pipe(
                **self.model.family.pipeline_kwargs(cond, negative),
                latents=latents,
                generator=gens,
                num_inference_steps=self.steps,
                guidance_scale=guidance,
                width=width,
                height=height,
                output_type="np",
            )
        return out.images
