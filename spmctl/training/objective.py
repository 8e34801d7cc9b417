"""One SPM training step, arranged to spend as few UNet calls as possible.

Per iteration the original code makes five separate UNet calls at guidance 1,
each doubled by an unconditional half it throws away. Here the same quantities
come from two calls: every membrane-OFF prediction (positive, neutral, anchors)
in one no-grad call, and every membrane-ON prediction that needs a gradient
(target, anchors) in one call. Merging those two as well (gates per sample)
would run the backward through the OFF samples for nothing, so they stay apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..config.train import PromptSettings
from ..families.anchors import sample_anchors
from ..families.base import Conditioning
from .original import anchor_rows, resolution_steps

__all__ = ["Embeds", "SPMObjective", "random_resolution", "sample_anchors"]


@dataclass
class Embeds:
    """The conditionings of one prompt setting, each of one prompt (a plain tensor is taken as
    per-token embeddings, SD 1.x's whole conditioning)."""

    settings: PromptSettings
    unconditional: Conditioning
    target: Conditioning
    positive: Conditioning
    neutral: Conditioning

    def __post_init__(self) -> None:
        for name in ("unconditional", "target", "positive", "neutral"):
            setattr(self, name, Conditioning.of(getattr(self, name)))


def random_resolution(settings: PromptSettings, gen: torch.Generator, multiple: int,
                      compat: str = "default") -> tuple[int, int]:
    """Height and width: fixed, or (dynamic_resolution) multiples of 64 in [resolution/2, resolution]
    ([resolution/2, resolution) under compat: original).

    Below 128 px (the tiny model) the step is the smallest size the UNet accepts."""
    res = settings.resolution
    if not settings.dynamic_resolution:
        return res, res
    step = 64 if res >= 128 else multiple
    low, end = resolution_steps(res, step, compat)
    hw = torch.randint(low, end, (2,), generator=gen)
    return int(hw[0]) * step, int(hw[1]) * step


class SPMObjective:
    """Computes the SPM loss of one iteration for a membrane network on a model (a `ModelBundle`);
    what is model-specific (calling the denoiser, schedules, anchors) is its family's."""

    def __init__(self, model: Any, network: Any, make_scheduler: Any, max_denoising_steps: int,
                 compat: str = "default") -> None:
        self.model = model
        self.family = model.family
        self.network = network
        self.compat = compat  # "original": the original code's anchoring slip and resolution range
        self.denoise_scheduler = make_scheduler()
        self.train_scheduler = make_scheduler()
        self.max_steps = max_denoising_steps
        self.size_multiple = self.family.size_multiple(model)
        self._param = next(model.denoiser.parameters())
        # (rank, world size) under data-parallel training: this process's part of each batch
        self.shard: tuple[int, int] | None = None

    @property
    def device(self) -> torch.device:
        return self._param.device

    @property
    def dtype(self) -> torch.dtype:
        # not unet.dtype: diffusers finds that by walking every module, each time it is asked
        return self._param.dtype

    def _predict(self, latents: torch.Tensor, t: Any, cond: Conditioning) -> torch.Tensor:
        return self.family.predict(self.model, latents, t, cond)

    @torch.inference_mode()  # lighter than no_grad: no version counters or views tracked
    def denoise(self, latents: torch.Tensor, uncond: Conditioning, cond: Conditioning, steps: int,
                gen: torch.Generator) -> torch.Tensor:
        """`steps` steps of the `max_denoising_steps` schedule, membrane ON (the family's partial denoising)."""
        # an inference tensor: fine to read afterwards (the loss only feeds it through new ops)
        return self.family.partial_denoise(self.model, self.network, self.denoise_scheduler, latents,
                                           Conditioning.of(uncond), Conditioning.of(cond), steps, self.max_steps, gen)

    def initial_latents(self, batch: int, height: int, width: int, gen: torch.Generator) -> torch.Tensor:
        return self.family.initial_latents(self.model, self.denoise_scheduler, batch, height, width, gen,
                                           self.device, self.dtype)

    def loss(self, embeds: Embeds, gen: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        s = embeds.settings
        k = int(torch.randint(1, self.max_steps, (1,), generator=gen))
        height, width = random_resolution(s, gen, self.size_multiple, self.compat)
        with_la = s.action == "erase_with_la" and s.sampling_batch_size > 0
        n_anchor = s.sampling_batch_size if with_la else 0
        # the whole batch is drawn on every rank (the generator stays in step), then sliced
        latent_idx, anchor_idx = self.shard_indices(s.batch_size, n_anchor)
        latents = self.initial_latents(s.batch_size, height, width, gen)[latent_idx]
        x_t = self.denoise(latents, embeds.unconditional, embeds.target, k, gen)

        t, x_in = self.training_input(x_t, k)
        batch = len(latent_idx)
        anchors = self.anchor_embeds(embeds, n_anchor, gen)[anchor_idx] if with_la else None
        # anchor j sees latent j % batch_size (sampling_batch_size is a multiple of batch_size)
        position = {b: i for i, b in enumerate(latent_idx)}
        x_anchor = x_in[[position[j % s.batch_size] for j in anchor_idx]] if with_la else x_in[:0]

        off_embeds = [embeds.positive.expand(batch), embeds.neutral.expand(batch)]
        on_embeds = [embeds.target.expand(batch)]
        if anchors is not None:
            off_embeds.append(anchors)
            on_embeds.append(anchors)
        with torch.inference_mode(), self.network.gated(0.0):
            off = self._predict(torch.cat([x_in, x_in, x_anchor]), t, Conditioning.cat(off_embeds)).float()
        off = off.clone()  # outside inference mode: the loss may save it for backward
        # set, not a context: with gradient checkpointing the backward pass runs the ON forward again,
        # after this returns, and must see the same gates
        self.network.set_gates(1.0)
        on = self._predict(torch.cat([x_in, x_anchor]), t, Conditioning.cat(on_embeds)).float()

        eps_pos, eps_neu, eps_anchor_off = off[:batch], off[batch:2 * batch], off[2 * batch:]
        eps_tgt, eps_anchor_on = on[:batch], on[batch:]
        erase = F.mse_loss(eps_tgt, self.family.erase_target(eps_pos, eps_neu, s.guidance_scale))
        total = erase
        terms = {"erase_loss": float(erase.detach()), "anchor_loss": 0.0, "k": k, "timestep": int(t),
                 "height": height, "width": width}
        if with_la:
            anchor = F.mse_loss(eps_anchor_on, eps_anchor_off)
            total = erase + s.la_strength * anchor
            terms["anchor_loss"] = float(anchor.detach())
        terms["loss"] = float(total.detach())
        return total, terms

    def training_input(self, x_t: torch.Tensor, k: int) -> tuple[Any, torch.Tensor]:
        """The training timestep of denoising depth k, and x_t as the denoiser takes it (the family's)."""
        return self.family.training_input(self.model, self.train_scheduler, x_t, k, self.max_steps)

    def anchor_embeds(self, embeds: Embeds, count: int, gen: torch.Generator) -> Conditioning:
        """The anchoring term's `count` conditionings (drawn by the family): every sampled anchor by
        default; under compat: original the rows its batching slip actually compares (original.anchor_rows)."""
        anchors = self.family.sample_anchors(embeds.target, count, gen)
        return anchor_rows(anchors, embeds.unconditional) if self.compat == "original" else anchors

    def shard_indices(self, batch: int, anchors: int) -> tuple[list[int], list[int]]:
        """Which latents and anchors this rank computes: every world-th one from its rank on (strided,
        so with world | batch each anchor's latent is on the same rank), or all of a part that
        does not split evenly (each rank then computes it whole; averaging identical gradients
        leaves them unchanged). Equal slices make the mean of the ranks' losses the full batch's."""
        rank, world = self.shard or (0, 1)
        split_latents = batch % world == 0
        latent_idx = list(range(rank, batch, world)) if split_latents else list(range(batch))
        anchor_idx = list(range(rank, anchors, world)) if anchors % world == 0 else list(range(anchors))
        return latent_idx, anchor_idx

    @torch.no_grad()
    def evaluate(self, embeds: Embeds, seed: int = 1234, draws: int = 8) -> dict[str, float]:
        """Mean erase and anchoring terms over `draws` fixed draws (same seed, same draws):
        comparable across membranes, unlike the per-step training loss whose k varies."""
        gen = torch.Generator().manual_seed(seed)
        # anchors are always drawn so that membranes trained without them are measured the same way
        settings = embeds.settings.model_copy(update={"action": "erase_with_la"})
        probe = Embeds(settings, embeds.unconditional, embeds.target, embeds.positive, embeds.neutral)
        totals = {"erase_loss": 0.0, "anchor_loss": 0.0}
        for _ in range(draws):
            _, terms = self.loss(probe, gen)
            for key in totals:
                totals[key] += terms[key] / draws
        return totals
