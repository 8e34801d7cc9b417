"""The gradient attacks' engine: PEZ token search on a denoising objective, through the membranes.

Per step and prompt: a timestep t and noise ε (from the prompt's own generator), x_t = √ᾱ_t·x0 +
√(1-ᾱ_t)·ε with x0 the target image's latents; the erased model (membranes gated by FT of the
prompt as it is now) predicts from x_t under the adversarial prompt, and the loss is the MSE to
- ε (or the velocity for v-prediction models) for UnlearnDiffAtk (`reference=False`);
- the unerased model's prediction (every gate 0) under the original prompt for P4D.
Timesteps follow UnlearnDiffAtk's schedule: 50 values 10, 30, ..., 990, 40 steps at each in turn.
"""

from __future__ import annotations

from typing import Any

import torch

from .engine import Item, step_generator
from .search import TokenState, chosen_words, pez_step
from .tokens import SlotPrompts, encode_with_slots

TIMESTEPS = tuple(range(10, 1000, 20))
STEPS_PER_T = 40
OBJECTIVE_DRAWS = 4  # the draws of steps 0..3: the fixed set start and end prompts are scored on


class DenoiseEngine:
    def __init__(self, ctx: Any, items: list[Item], reference: bool) -> None:
        from diffusers import DDPMScheduler

        self.ctx = ctx
        self.items = items
        self.reference = reference
        self.prompts = SlotPrompts(ctx.model.tokenizer, [it.layout for it in items], [it.label for it in items])
        self.alphas = DDPMScheduler.from_config(ctx.model.scheduler_config).alphas_cumprod
        for it in items:
            if it.state is None:
                it.state = TokenState.start(ctx.table, it.layout.slots, step_generator(it.job.seed, -1))
            elif isinstance(it.state, dict):
                it.state = TokenState.from_dict(it.state)

    def _rows(self, items: list[Item]) -> list[int]:
        return [self.items.index(it) for it in items]

    def losses(self, items: list[Item], word_idx: torch.Tensor, proj: torch.Tensor, steps: list[int]) -> torch.Tensor:
        ctx = self.ctx
        rows = self._rows(items)
        sub = self.prompts.subset(rows)
        vocab_ids = ctx.vocab.ids[word_idx]
        flat = torch.cat([proj[b, : lay.slots] for b, lay in enumerate(sub.layouts)])
        hidden = encode_with_slots(ctx.model.text_encoder, sub.with_tokens(vocab_ids), sub.mask, flat)
        gates = ctx.step_gates(sub.texts(vocab_ids), hidden)
        x0 = torch.cat([self.items[r].x0 for r in rows])
        noise, t = self._draws(items, steps, x0)
        a = self.alphas[t].view(-1, 1, 1, 1).to(x0)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
        unet = ctx.model.unet
        dtype = unet.dtype
        t_dev = t.to(unet.device)
        if self.reference:
            with torch.no_grad():
                ctx.set_gates(torch.zeros_like(gates))  # the unerased model: every membrane closed
                ref_hidden = torch.cat([self.items[r].hidden for r in rows])
                target = unet(x_t.to(dtype), t_dev, encoder_hidden_states=ref_hidden.to(dtype)).sample.float()
        elif ctx.v_pred:
            target = a.sqrt() * noise - (1 - a).sqrt() * x0
        else:
            target = noise
        ctx.set_gates(gates)
        pred = unet(x_t.to(dtype), t_dev, encoder_hidden_states=hidden.to(dtype)).sample.float()
        return ((pred - target) ** 2).mean(dim=(1, 2, 3))

    def _draws(self, items: list[Item], steps: list[int], x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        noises, ts = [], []
        for it, step in zip(items, steps, strict=True):
            gen = step_generator(it.job.seed, step)
            noises.append(torch.randn(x0.shape[1:], generator=gen))
            ts.append(TIMESTEPS[(step // STEPS_PER_T) % len(TIMESTEPS)])
        return torch.stack(noises).to(x0), torch.tensor(ts)

    def step(self, items: list[Item]) -> None:
        states = [it.state for it in items]
        steps = [s.step for s in states]
        pez_step(states, self.ctx.table, lambda idx, proj: self.losses(items, idx, proj, steps),
                 self.ctx.lr, self.ctx.cfg.weight_decay)

    def _words(self, items: list[Item]) -> torch.Tensor:
        return chosen_words([it.state for it in items], self.ctx.table)

    def current(self, items: list[Item]) -> tuple[list[str], list[list[int]]]:
        vocab_ids = self.ctx.vocab.ids[self._words(items)]
        sub = self.prompts.subset(self._rows(items))
        texts = sub.check_roundtrip(vocab_ids)
        return texts, sub.with_tokens(vocab_ids).tolist()

    def objective(self, items: list[Item]) -> list[float]:
        idx = self._words(items)
        proj = self.ctx.table[idx.to(self.ctx.table.device)].float()
        with torch.no_grad():
            total = sum(self.losses(items, idx, proj, [d] * len(items)) for d in range(OBJECTIVE_DRAWS))
        return [float(v) / OBJECTIVE_DRAWS for v in total]
