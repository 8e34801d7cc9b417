"""A plain re-statement of the original SPM training loop, for benchmarking against `spmctl train`.

It keeps the original's cost structure on purpose (this is the baseline, not code to use):
- one LoRA-style adapter per module computed eagerly, `base(x) + up(down(x)) * multiplier * scale`,
  even when the multiplier is 0 (membrane "off");
- separate UNet calls for the positive, neutral and target predictions and for the anchors
  with and without the membrane, each at guidance 1 with an unconditional half that is computed
  and thrown away;
- the original's anchor slip: the anchor batch is built as [uncond, s1, uncond, s2, ...] (2N rows for
  N anchors) and predicted like a CFG pair at guidance 1, which keeps the second half of the rows. The
  anchoring term is therefore the MSE over [eps(uncond), eps(s3), eps(uncond), eps(s4)] for 4 anchors:
  s1 and s2 are dropped and the unconditional prediction is anchored with half the weight.

As written, the original also flushes (`gc.collect()`, CUDA cache) and updates a tqdm bar every
iteration; `train(..., as_written=True)` does that too.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class EagerAdapter(nn.Module):
    def __init__(self, base: nn.Module, rank: int, alpha: float) -> None:
        super().__init__()
        self.base = base
        if isinstance(base, nn.Conv2d):
            self.down = nn.Conv2d(base.in_channels, rank, base.kernel_size, base.stride, base.padding, bias=False)
            self.up = nn.Conv2d(rank, base.out_channels, 1, 1, bias=False)
        else:
            self.down = nn.Linear(base.in_features, rank, bias=False)
            self.up = nn.Linear(rank, base.out_features, bias=False)
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.up.weight)
        self.scale = alpha / rank
        self.multiplier = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.up(self.down(x)) * self.multiplier * self.scale


def attach(unet: nn.Module, rank: int = 1, alpha: float = 1.0) -> list[EagerAdapter]:
    adapters = []
    for block in [m for m in unet.modules() if type(m).__name__ == "Transformer2DModel"]:
        for name, module in list(block.named_modules()):
            if isinstance(module, nn.Linear | nn.Conv2d) and name:
                parent = block.get_submodule(name.rsplit(".", 1)[0]) if "." in name else block
                adapter = EagerAdapter(module, rank, alpha)
                setattr(parent, name.rsplit(".", 1)[-1], adapter)
                adapters.append(adapter)
    return adapters


def set_multiplier(adapters: list[EagerAdapter], value: float) -> None:
    for a in adapters:
        a.multiplier = value


def predict_noise(unet: Any, scheduler: Any, t: Any, latents: torch.Tensor, embeds: torch.Tensor,
                  guidance: float) -> torch.Tensor:
    model_in = scheduler.scale_model_input(torch.cat([latents] * 2), t)
    eps = unet(model_in, t, encoder_hidden_states=embeds).sample
    uncond, text = eps.chunk(2)
    return uncond + guidance * (text - uncond)


def pair(uncond: torch.Tensor, cond: torch.Tensor, batch: int) -> torch.Tensor:
    """[uncond x batch, cond x batch], the original's CFG batch for `batch` latents."""
    return torch.cat([uncond, cond]).repeat_interleave(batch, dim=0)


def sample_anchors(target: torch.Tensor, uncond: torch.Tensor, count: int) -> torch.Tensor:
    import random

    out = []
    while len(out) < count:
        while True:
            noise = torch.randn_like(target)
            noise = noise / noise.view(-1).norm()
            if random.random() < 1 - torch.cosine_similarity(target.view(-1), noise.view(-1), dim=0):
                break
        out.append((random.random() * 0.4 + 0.8) * noise * target.view(-1).norm())
    return torch.cat([torch.cat([uncond, s]) for s in out])


def train(model: Any, make_scheduler: Any, settings: Any, iterations: int, max_steps: int, lr: float,
          seed: int = 0, ks: list[int] | None = None, as_written: bool = False) -> dict[str, float]:
    """`ks`: the denoising depth of each iteration (replayed from a spmctl run, so that both loops do
    the same amount of denoising work); drawn at random as the original does when not given.
    `as_written`: also the original's per-iteration flush (gc.collect, CUDA cache) and its progress
    bars (one over the iterations, one over each iteration's denoising steps), drawn to os.devnull."""
    import gc
    import os

    from tqdm import tqdm

    from spmctl.models.text import encode_prompts

    torch.manual_seed(seed)
    unet = model.unet
    adapters = attach(unet)
    params = [p for a in adapters for p in (a.down.weight, a.up.weight)]
    opt = torch.optim.AdamW(params, lr=lr)
    uncond, target, positive, neutral = encode_prompts(
        model.tokenizer, model.text_encoder,
        [settings.unconditional, settings.target, settings.positive, settings.neutral]).split(1)
    sched = make_scheduler()
    batch = settings.batch_size
    vae_factor = model.vae_scale_factor
    sink = open(os.devnull, "w")  # noqa: SIM115 - closed below; the bars' text is drawn, not shown
    bar = tqdm(range(iterations), file=sink, disable=not as_written)
    start = time.perf_counter()
    for it in bar:
        with torch.no_grad():
            sched.set_timesteps(max_steps)
            opt.zero_grad()
            k = ks[it] if ks is not None else int(torch.randint(1, max_steps, (1,)))
            res = settings.resolution
            latents = torch.randn(batch, 4, res // vae_factor, res // vae_factor) * sched.init_noise_sigma
            set_multiplier(adapters, 1.0)
            embeds = torch.cat([uncond.repeat(batch, 1, 1), target.repeat(batch, 1, 1)])
            for t in tqdm(sched.timesteps[:k], file=sink, disable=not as_written):
                eps = predict_noise(unet, sched, t, latents, embeds, 3.0)
                latents = sched.step(eps, t, latents).prev_sample
            sched.set_timesteps(1000)
            t = sched.timesteps[int(k * 1000 / max_steps)]
            set_multiplier(adapters, 0.0)
            pos = predict_noise(unet, sched, t, latents, pair(uncond, positive, batch), 1)
            neu = predict_noise(unet, sched, t, latents, pair(uncond, neutral, batch), 1)
        set_multiplier(adapters, 1.0)
        tgt = predict_noise(unet, sched, t, latents, pair(uncond, target, batch), 1)
        loss = F.mse_loss(tgt, neu - settings.guidance_scale * (pos - neu))
        if settings.action == "erase_with_la":
            anchors = sample_anchors(target, uncond, settings.sampling_batch_size)
            repeat = settings.sampling_batch_size // batch
            anchor_on = predict_noise(unet, sched, t, latents.repeat(repeat, 1, 1, 1), anchors, 1)
            with torch.no_grad():
                set_multiplier(adapters, 0.0)
                anchor_off = predict_noise(unet, sched, t, latents.repeat(repeat, 1, 1, 1), anchors, 1)
            loss = loss + settings.la_strength * F.mse_loss(anchor_on, anchor_off)
        loss.backward()
        opt.step()
        if as_written:
            bar.set_description(f"Loss*1k: {loss.item() * 1000:.4f}")
            del pos, neu, tgt, latents
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            gc.collect()
    elapsed = time.perf_counter() - start
    bar.close()
    sink.close()
    return {"seconds": elapsed, "seconds_per_iteration": elapsed / iterations}
