"""Generation: a diffusers StableDiffusionPipeline on the SDModel's parts, batched across prompts.

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

from ..models.loading import SDModel, make_scheduler


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


def build_pipeline(model: SDModel, noise_scheduler: str = "ddim", v_pred: bool = False):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=model.vae,
        text_encoder=model.text_encoder,
        tokenizer=model.tokenizer,
        unet=model.unet,
        scheduler=make_scheduler(noise_scheduler, model.scheduler_config, v_pred),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


class ImageSampler:
    """Turns a batch of Jobs (same size and guidance) into float images in [0, 1] (H, W, 3)."""

    def __init__(
        self, model: SDModel, pipe: Any, negative_prompt: str = "", clip_skip: int = 1, steps: int = 30
    ) -> None:
        self.model = model
        self.pipe = pipe
        self.clip_skip = clip_skip
        self.steps = steps
        self._negative = self._encode([negative_prompt])
        self._cache: dict[str, torch.Tensor] = {}

    def _encode(self, prompts: list[str]) -> torch.Tensor:
        from ..models.text import encode_prompts

        return encode_prompts(self.model.tokenizer, self.model.text_encoder, prompts, self.clip_skip)

    def prime(self, prompts: Sequence[str], embeds: torch.Tensor) -> None:
        """Take prompt embeddings computed elsewhere (for FT gates), so they are not encoded again."""
        for p, e in zip(prompts, embeds, strict=True):
            self._cache[p] = e

    def embeds(self, prompts: Sequence[str]) -> torch.Tensor:
        missing = [p for p in dict.fromkeys(prompts) if p not in self._cache]
        if missing:
            for p, e in zip(missing, self._encode(missing), strict=True):
                self._cache[p] = e
        return torch.stack([self._cache[p] for p in prompts])

    def latents(self, jobs: Sequence[Job]) -> tuple[torch.Tensor, list[torch.Generator]]:
        unet = self.model.unet
        factor = self.model.vae_scale_factor
        gens, parts = [], []
        for job in jobs:
            gen = torch.Generator().manual_seed(job.image_seed)
            shape = (1, unet.config.in_channels, job.height // factor, job.width // factor)
            parts.append(torch.randn(shape, generator=gen, dtype=unet.dtype))
            gens.append(gen)
        return torch.cat(parts).to(unet.device), gens

    def __call__(self, jobs: Sequence[Job]) -> np.ndarray:
        width, height, guidance = jobs[0].group
        assert all(j.group == jobs[0].group for j in jobs), "a batch mixes sizes or guidance"
        latents, gens = self.latents(jobs)
        prompt_embeds = self.embeds([j.prompt for j in jobs])
        negative = self._negative.expand(len(jobs), -1, -1)
        with torch.no_grad():
            out = self.pipe(
                prompt_embeds=prompt_embeds,
                negative_prompt_embeds=negative,
                latents=latents,
                generator=gens,
                num_inference_steps=self.steps,
                guidance_scale=guidance,
                width=width,
                height=height,
                output_type="np",
            )
        return out.images
