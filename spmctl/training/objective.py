"""One SPM training step, arranged to spend as few UNet calls as possible.

Per iteration the original code makes five separate UNet calls at guidance 1,
each doubled by an unconditional half it throws away. Here the same quantities
come from two calls: every membrane-OFF prediction (positive, neutral, anchors)
in one no-grad call, and every membrane-ON prediction that needs a gradient
(target, anchors) in one call. Merging those two as well (gates per sample)
would run the backward through the OFF samples for nothing, so they stay apart.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..config.train import PromptSettings
from .original import anchor_rows, resolution_steps

GUIDANCE_WHILE_DENOISING = 3.0


@dataclass
class Embeds:
    """Text embeddings of one prompt setting, each (1, 77, d)."""

    settings: PromptSettings
    unconditional: torch.Tensor
    target: torch.Tensor
    positive: torch.Tensor
    neutral: torch.Tensor


def sample_anchors(target: torch.Tensor, count: int, gen: torch.Generator) -> torch.Tensor:
    """`count` latent anchors: random directions accepted with probability 1 − cos(target, direction),
    scaled by U(0.8, 1.2)·‖target‖. Returns (count, *target.shape[1:]) on the target's device."""
    flat = target.reshape(-1).float().cpu()
    norm = flat.norm()
    unit_target = flat / norm
    accepted: list[torch.Tensor] = []
    while len(accepted) < count:
        directions = torch.randn(max(2 * count, 8), flat.numel(), generator=gen)
        directions = directions / directions.norm(dim=1, keepdim=True)
        cos = directions @ unit_target
        keep = torch.rand(cos.shape, generator=gen) < (1 - cos)
        accepted.extend(directions[keep])
    anchors = torch.stack(accepted[:count])
    scale = torch.rand(count, 1, generator=gen) * 0.4 + 0.8
    anchors = anchors * scale * norm
    return anchors.reshape(count, *target.shape[1:]).to(device=target.device, dtype=target.dtype)


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


def _step_kwargs(scheduler: Any, gen: torch.Generator) -> dict[str, Any]:
    return {"generator": gen} if "generator" in inspect.signature(scheduler.step).parameters else {}


class SPMObjective:
    """Computes the SPM loss of one iteration for a membrane network on a UNet."""

    def __init__(self, unet: Any, network: Any, make_scheduler: Any, max_denoising_steps: int,
                 vae_scale_factor: int = 8, compat: str = "default") -> None:
        self.unet = unet
        self.network = network
        self.compat = compat  # "original": the original code's anchoring slip and resolution range
        self.denoise_scheduler = make_scheduler()
        self.train_scheduler = make_scheduler()
        self.max_steps = max_denoising_steps
        self.vae_scale_factor = vae_scale_factor
        down = 2 ** (len(unet.config.block_out_channels) - 1)
        self.size_multiple = vae_scale_factor * down
        self._param = next(unet.parameters())
        # (rank, world size) under data-parallel training: this process's part of each batch
        self.shard: tuple[int, int] | None = None

    @property
    def device(self) -> torch.device:
        return self._param.device

    @property
    def dtype(self) -> torch.dtype:
        # not unet.dtype: diffusers finds that by walking every module, each time it is asked
        return self._param.dtype

    def _unet(self, latents: torch.Tensor, t: Any, embeds: torch.Tensor) -> torch.Tensor:
        return self.unet(latents, t, encoder_hidden_states=embeds.to(self.dtype)).sample

    @torch.inference_mode()  # lighter than no_grad: no version counters or views tracked
    def denoise(self, latents: torch.Tensor, uncond: torch.Tensor, cond: torch.Tensor, steps: int,
                gen: torch.Generator) -> torch.Tensor:
        """`steps` steps of the `max_denoising_steps` schedule, membrane ON, CFG 3 on [uncond, cond]."""
        sched = self.denoise_scheduler
        sched.set_timesteps(self.max_steps, device=self.device)
        batch = latents.shape[0]
        embeds = torch.cat([uncond.expand(batch, -1, -1), cond.expand(batch, -1, -1)])
        kwargs = _step_kwargs(sched, gen)
        # one gate for every sample and no gradient: the membrane can be folded into the weights
        with self.network.merged(1.0):
            for t in sched.timesteps[:steps]:
                model_in = sched.scale_model_input(torch.cat([latents, latents]), t)
                eps_u, eps_c = self._unet(model_in, t, embeds).chunk(2)
                eps = eps_u + GUIDANCE_WHILE_DENOISING * (eps_c - eps_u)
                latents = sched.step(eps, t, latents, **kwargs).prev_sample
        # an inference tensor: fine to read afterwards (the loss only feeds it through new ops)
        return latents

    def initial_latents(self, batch: int, height: int, width: int, gen: torch.Generator) -> torch.Tensor:
        shape = (batch, self.unet.config.in_channels, height // self.vae_scale_factor,
                 width // self.vae_scale_factor)
        sigma = float(getattr(self.denoise_scheduler, "init_noise_sigma", 1.0))
        return (torch.randn(shape, generator=gen) * sigma).to(self.device, self.dtype)

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

        off_embeds = [embeds.positive.expand(batch, -1, -1), embeds.neutral.expand(batch, -1, -1)]
        on_embeds = [embeds.target.expand(batch, -1, -1)]
        if anchors is not None:
            off_embeds.append(anchors)
            on_embeds.append(anchors)
        with torch.inference_mode(), self.network.gated(0.0):
            off = self._unet(torch.cat([x_in, x_in, x_anchor]), t, torch.cat(off_embeds)).float()
        off = off.clone()  # outside inference mode: the loss may save it for backward
        with self.network.gated(1.0):
            on = self._unet(torch.cat([x_in, x_anchor]), t, torch.cat(on_embeds)).float()

        eps_pos, eps_neu, eps_anchor_off = off[:batch], off[batch:2 * batch], off[2 * batch:]
        eps_tgt, eps_anchor_on = on[:batch], on[batch:]
        erase = F.mse_loss(eps_tgt, eps_neu - s.guidance_scale * (eps_pos - eps_neu))
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
        """The 1000-step timestep of denoising depth k, and x_t scaled for the UNet at it.

        The schedule is set afresh each time: schedulers that keep a step index (euler_a, lms) fix it
        at the first timestep they scale after `set_timesteps`, so a schedule set once would scale
        every later iteration's input with the first iteration's sigma."""
        sched = self.train_scheduler
        sched.set_timesteps(1000)
        t = sched.timesteps[int(k * 1000 / self.max_steps)]
        return t, sched.scale_model_input(x_t, t)

    def anchor_embeds(self, embeds: Embeds, count: int, gen: torch.Generator) -> torch.Tensor:
        """The anchoring term's `count` text embeddings: every sampled anchor by default; under
        compat: original the rows its batching slip actually compares (see original.anchor_rows)."""
        anchors = sample_anchors(embeds.target, count, gen)
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
