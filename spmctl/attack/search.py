"""Prompt-token optimisation with projection to vocabulary tokens (PEZ), batched across prompts.

Each prompt owns continuous embeddings e (K, d). Every step the forward pass uses their projection
onto the nearest word embedding (cosine), the loss's gradient with respect to that projection is
applied to e, and Adam with L2 weight decay (torch's `Adam(weight_decay=...)` arithmetic) steps e.
The optimiser state is kept per prompt (its own step count), so a prompt's trajectory does not
depend on which prompts share its batch, and a saved state resumes exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from .tokens import project

BETAS = (0.9, 0.999)
EPS = 1e-8


@dataclass
class TokenState:
    """One prompt's optimisation: its embeddings, Adam moments, steps taken and loss trace."""

    embeds: torch.Tensor  # (K, d)
    exp_avg: torch.Tensor
    exp_avg_sq: torch.Tensor
    step: int = 0
    losses: list[float] = field(default_factory=list)

    @classmethod
    def start(cls, table: torch.Tensor, slots: int, generator: torch.Generator) -> TokenState:
        """Random words to start from (the references start from random vocabulary tokens)."""
        pick = torch.randint(0, table.shape[0], (slots,), generator=generator)
        embeds = table[pick].detach().float().cpu().clone()
        return cls(embeds, torch.zeros_like(embeds), torch.zeros_like(embeds))

    def to_dict(self) -> dict[str, Any]:
        return {"embeds": self.embeds, "exp_avg": self.exp_avg, "exp_avg_sq": self.exp_avg_sq,
                "step": torch.tensor(self.step), "losses": torch.tensor(self.losses, dtype=torch.float64)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TokenState:
        return cls(d["embeds"], d["exp_avg"], d["exp_avg_sq"], int(d["step"]), d["losses"].tolist())


def chosen_words(states: list[TokenState], table: torch.Tensor) -> torch.Tensor:
    """(B, K) indices into `table` of each prompt's projected tokens (K: the largest slot count)."""
    width = max(s.embeds.shape[0] for s in states)
    out = torch.zeros(len(states), width, dtype=torch.long)
    for b, s in enumerate(states):
        out[b, : s.embeds.shape[0]] = project(s.embeds.to(table.device), table).cpu()
    return out


def pez_step(
    states: list[TokenState],
    table: torch.Tensor,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    lr: float,
    weight_decay: float,
) -> torch.Tensor:
    """One step for every prompt. `loss_fn(word_idx (B, K), slot_embeds (B, K, d))` -> losses (B,),
    each prompt's loss depending on its own row only. Returns the losses."""
    idx = chosen_words(states, table)
    proj = table[idx.to(table.device)].detach().float().requires_grad_(True)
    losses = loss_fn(idx, proj)
    (grad,) = torch.autograd.grad(losses.sum(), proj)
    grad = grad.float().cpu()
    for b, s in enumerate(states):
        k = s.embeds.shape[0]
        _adam(s, grad[b, :k], lr, weight_decay)
        s.losses.append(float(losses[b].detach()))
    return losses.detach()


def _adam(s: TokenState, grad: torch.Tensor, lr: float, weight_decay: float) -> None:
    s.step += 1
    grad = grad + weight_decay * s.embeds
    b1, b2 = BETAS
    s.exp_avg.mul_(b1).add_(grad, alpha=1 - b1)
    s.exp_avg_sq.mul_(b2).addcmul_(grad, grad, value=1 - b2)
    denom = (s.exp_avg_sq / (1 - b2**s.step)).sqrt_().add_(EPS)
    s.embeds.addcdiv_(s.exp_avg, denom, value=-lr / (1 - b1**s.step))
