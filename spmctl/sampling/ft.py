"""Facilitated transport (FT): each membrane's strength adapts to the prompt.

For prompt p and each erased concept c of a membrane:

- clipcos  = cos(E(p), E(c)), E = the model family's gate embedding (`ModelFamily.gate_features`;
             SD 1.x: the flattened last hidden state, 77 x d, padding positions included, as the
             original code computes it);
- tokenuni = |tokens(p) ∩ tokens(c)| / |tokens(c)|, special tokens (BOS/EOS/pad) excluded;
- score    = max of the chosen metrics; the membrane's gate = max over its concepts x factor.

Gate clipping: by default the gate is clipped to [0, 1]. A gate above 1 would push a membrane
beyond the strength it was trained at, and a negative one (clipcos can be < 0) would *add* the
concept back; neither is what "let unrelated prompts through" means. The original code does not
clip: its evaluation (evaluate_task.py) multiplies the max score by the factor and uses that as the
gate as it is, so `clip=False` with the factor reproduces it exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..names import DEFAULT_FT_METRIC, FT_METRICS


@dataclass
class ConceptBank:
    """Every membrane's concepts, encoded once: embeddings (C, F) and token-id sets."""

    owners: list[int]  # concept i belongs to membrane owners[i]
    embeds: torch.Tensor
    tokens: list[set[int]]
    num_membranes: int


def concept_bank(model: Any, concepts: Sequence[Sequence[str]]) -> ConceptBank:
    """`concepts[k]` are membrane k's erased concepts (a membrane without any gets gate 0 from FT)."""
    flat = [c for group in concepts for c in group]
    owners = [k for k, group in enumerate(concepts) for _ in group]
    special = model.family.gate_special_ids(model)
    if flat:
        features = model.family.gate_features(model, flat)
        embeds, ids = features.embeds, features.token_ids
    else:
        embeds, ids = torch.zeros(0, 1), []
    return ConceptBank(owners, embeds, [set(row) - special for row in ids], len(concepts))


def concept_scores(
    model: Any,
    prompts: Sequence[str],
    bank: ConceptBank,
    metric: str = DEFAULT_FT_METRIC,
    prompt_embeds: torch.Tensor | None = None,
) -> torch.Tensor:
    """(P, C) matching score of every prompt against every concept.

    `prompt_embeds` (P, F): the prompts' gate embeddings when the caller has them already (the
    sampler encodes prompts for generation anyway), so they are not encoded twice."""
    if metric not in FT_METRICS:
        raise ValueError(f"unknown FT metric {metric!r}; expected one of {', '.join(FT_METRICS)}")
    if not bank.owners:
        return torch.zeros(len(prompts), 0)
    family = model.family
    special = family.gate_special_ids(model)
    if prompt_embeds is not None:
        return _scores(prompt_embeds.float().flatten(1).cpu(), family.gate_token_ids(model, list(prompts)),
                       bank, metric, special)
    # In chunks: 4,703 I2P prompts at once would hold over 1 GB of embeddings (77 x 768 floats each).
    prompts = list(prompts)
    parts = []
    for start in range(0, len(prompts), _SCORE_CHUNK):
        features = family.gate_features(model, prompts[start : start + _SCORE_CHUNK])
        parts.append(_scores(features.embeds, features.token_ids, bank, metric, special))
    return torch.cat(parts)


_SCORE_CHUNK = 256


def _scores(embeds: torch.Tensor, ids: list, bank: ConceptBank, metric: str, special: set[int]) -> torch.Tensor:
    """(P, C) scores of flattened prompt embeddings and their token ids against the bank."""
    scores = []
    if "clipcos" in metric:
        a = torch.nn.functional.normalize(embeds, dim=1)
        b = torch.nn.functional.normalize(bank.embeds, dim=1)
        scores.append(a @ b.T)
    if "tokenuni" in metric:
        uni = torch.zeros(len(ids), len(bank.tokens))
        for i, row in enumerate(ids):
            have = set(row) - special
            for j, want in enumerate(bank.tokens):
                uni[i, j] = len(have & want) / len(want) if want else 0.0
        scores.append(uni)
    return torch.stack(scores).amax(dim=0)


def membrane_gates(
    scores: torch.Tensor, bank: ConceptBank, factor: float = 1.0, clip: bool = True
) -> torch.Tensor:
    """(P, K): per prompt, each membrane's max score over its concepts x factor (clipped to [0, 1])."""
    gates = torch.zeros(scores.shape[0], bank.num_membranes)
    for k in range(bank.num_membranes):
        cols = [i for i, owner in enumerate(bank.owners) if owner == k]
        if cols:
            gates[:, k] = scores[:, cols].amax(dim=1) * factor
    return gates.clamp(0.0, 1.0) if clip else gates


def ft_gates(
    model: Any,
    prompts: Sequence[str],
    concepts: Sequence[Sequence[str]],
    *,
    metric: str = DEFAULT_FT_METRIC,
    factor: float = 1.0,
    clip: bool = True,
    prompt_embeds: torch.Tensor | None = None,
) -> torch.Tensor:
    """(P, K) FT gates of `prompts` for K membranes whose concepts are `concepts[k]`."""
    bank = concept_bank(model, concepts)
    scores = concept_scores(model, prompts, bank, metric, prompt_embeds)
    return membrane_gates(scores, bank, factor, clip)
