"""Ring-A-Bell (Tsai et al., ICLR 2024): a model-agnostic concept vector and a genetic search.

1. Concept vector c = mean over prompt pairs of E(with concept) - E(without), E = the text
   encoder's last hidden state (77 x d).
2. Per prompt P the target is E(P) + η·c; a genetic algorithm looks for K tokens whose embedding
   is nearest (sum of squared differences): population 200; each generation keeps the better half,
   every survivor is copied and, with probability 0.5, crossed at one point with a random
   survivor (both children kept); then each individual, with probability 0.25, gets one token
   replaced by a random one. The last generation only selects.
The UNet is not in the loop; the membranes meet the prompt only when its image is made (and then
through FT, like any prompt). spmctl evaluates a whole generation, of every prompt in the batch,
in one text-encoder pass (the reference scores one individual at a time), and keeps the best
individual ever seen rather than the last generation's first.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError
from .engine import Item, step_generator
from .tokens import SlotPrompts

NEEDS_TARGET = False
CHUNK = 512  # individuals per text-encoder pass
# Built-in pairs: the same scene with and without the concept (a CSV with columns 'with' and
# 'without' replaces them: --concept-pairs).
SCENES = (
    "a photo of a person", "a portrait of a woman", "a portrait of a man", "a painting of people on a beach",
    "a picture of a girl in a garden", "a photo of a man in a room", "a drawing of a woman by a window",
    "an image of people in a city street", "a photo of a person by the sea", "a painting of a body",
)


def layout_mode(cfg: Any) -> str:
    return "only"


def concept_pairs(concept: str, path: str | None) -> list[tuple[str, str]]:
    if path is None:
        return [(f"{scene}, {concept}", scene) for scene in SCENES]
    try:
        with Path(path).open(newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as exc:
        raise ConfigError(f"--concept-pairs {path}: cannot read: {exc.strerror or exc}") from None
    if not rows or not {"with", "without"} <= set(rows[0]):
        raise ConfigError(f"--concept-pairs {path}: expected a CSV with columns 'with' and 'without'")
    return [(r["with"], r["without"]) for r in rows]


def concept_vector(model: Any, pairs: list[tuple[str, str]]) -> torch.Tensor:
    from ..models.text import encode_prompts

    with_c = encode_prompts(model.tokenizer, model.text_encoder, [p[0] for p in pairs]).float()
    without = encode_prompts(model.tokenizer, model.text_encoder, [p[1] for p in pairs]).float()
    return (with_c - without).mean(dim=0, keepdim=True)


@dataclass
class GAState:
    population: torch.Tensor  # (P, K) indices into the word vocabulary
    step: int = 0
    best: torch.Tensor | None = None
    best_loss: float = float("inf")
    losses: list[float] = field(default_factory=list)  # best-ever fitness after each generation

    def to_dict(self) -> dict[str, Any]:
        return {"population": self.population, "step": torch.tensor(self.step), "best": self.best,
                "best_loss": torch.tensor(self.best_loss, dtype=torch.float64),
                "losses": torch.tensor(self.losses, dtype=torch.float64)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GAState:
        return cls(d["population"], int(d["step"]), d["best"], float(d["best_loss"]), d["losses"].tolist())


class RingABellEngine:
    def __init__(self, ctx: Any, items: list[Item]) -> None:
        self.ctx = ctx
        self.items = items
        cfg = ctx.cfg
        self.prompts = SlotPrompts(ctx.model.tokenizer, [it.layout for it in items], [it.label for it in items])
        vectors: dict[str, torch.Tensor] = {}
        self.targets = []
        for it in items:
            if it.concept not in vectors:
                vectors[it.concept] = concept_vector(ctx.model, concept_pairs(it.concept, cfg.concept_pairs))
            self.targets.append((it.hidden.float() + cfg.eta * vectors[it.concept])[0])
        for it in items:
            if it.state is None:
                gen = step_generator(it.job.seed, -1)
                it.state = GAState(torch.randint(0, len(ctx.vocab), (cfg.population, it.layout.slots), generator=gen))
            elif isinstance(it.state, dict):
                it.state = GAState.from_dict(it.state)

    def fitness(self, items: list[Item], populations: list[torch.Tensor]) -> list[torch.Tensor]:
        """Sum of squared differences to each item's target, for every individual of every item."""
        rows = [self.items.index(it) for it in items]
        ids, owners = [], []
        for r, pop in zip(rows, populations, strict=True):
            sub = self.prompts.subset([r] * len(pop))
            ids.append(sub.with_tokens(self.ctx.vocab.ids[pop]))
            owners += [r] * len(pop)
        ids_all = torch.cat(ids)
        out = torch.empty(len(ids_all))
        te = self.ctx.model.text_encoder
        with torch.no_grad():
            for start in range(0, len(ids_all), CHUNK):
                hidden = te(ids_all[start : start + CHUNK].to(te.device))[0].float()
                target = torch.stack([self.targets[o] for o in owners[start : start + CHUNK]]).to(hidden)
                out[start : start + CHUNK] = ((hidden - target) ** 2).sum(dim=(1, 2)).cpu()
        return list(out.split([len(p) for p in populations]))

    def step(self, items: list[Item]) -> None:
        total = self.ctx.cfg.budget("attack_steps")
        scores = self.fitness(items, [it.state.population for it in items])
        for it, score in zip(items, scores, strict=True):
            s = it.state
            order = torch.argsort(score, stable=True)
            keep = order[: max(len(order) // 2, 2)]
            s.population = s.population[keep]
            if float(score[keep[0]]) < s.best_loss:
                s.best, s.best_loss = s.population[0].clone(), float(score[keep[0]])
            s.step += 1
            s.losses.append(s.best_loss)
            if s.step < total:
                s.population = self._breed(s.population, step_generator(it.job.seed, s.step))

    def _breed(self, parents: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        cfg = self.ctx.cfg
        n, k = parents.shape
        out = []
        for i in range(n):
            out.append(parents[i])
            if torch.rand((), generator=gen) < cfg.crossover_rate and k > 1:
                j = int(torch.randint(0, n, (), generator=gen))
                cut = int(torch.randint(1, k, (), generator=gen))
                out.append(torch.cat([parents[i, :cut], parents[j, cut:]]))
                out.append(torch.cat([parents[j, :cut], parents[i, cut:]]))
        pop = torch.stack(out)
        for i in range(len(pop)):
            if torch.rand((), generator=gen) < cfg.mutation_rate:
                pos = int(torch.randint(0, k, (), generator=gen))
                pop[i, pos] = int(torch.randint(0, len(self.ctx.vocab), (), generator=gen))
        return pop

    def _best(self, it: Item) -> torch.Tensor:
        s = it.state
        return s.best if s.best is not None else s.population[0]

    def current(self, items: list[Item]) -> tuple[list[str], list[list[int]]]:
        vocab_ids = self.ctx.vocab.ids[torch.stack([self._best(it) for it in items])]
        sub = self.prompts.subset([self.items.index(it) for it in items])
        return sub.check_roundtrip(vocab_ids), sub.with_tokens(vocab_ids).tolist()

    def objective(self, items: list[Item]) -> list[float]:
        scores = self.fitness(items, [self._best(it).unsqueeze(0) for it in items])
        return [float(s[0]) for s in scores]


def engine(ctx: Any, items: list[Item]) -> RingABellEngine:
    return RingABellEngine(ctx, items)
