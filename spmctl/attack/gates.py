"""The membranes' gates for prompts being tried, as `spmctl sample` would set them.

Reported gates (original and final adversarial prompt) come from `sampling.run.compute_gates`
itself, so they equal `spmctl sample --show-gates`. Inside the optimisation loop the prompt changes
every step; `StepGates` scores it with the same FT functions against a concept bank encoded once,
from the hidden states the step computed anyway (they are the prompt's own: the slots hold exact
vocabulary embeddings).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..membrane.io import MembraneFile
from ..sampling.ft import concept_bank, concept_scores, membrane_gates
from ..sampling.run import compute_gates, ft_scaling


class StepGates:
    def __init__(self, cfg: Any, model: Any, spms: list[MembraneFile]) -> None:
        self.cfg = cfg
        self.model = model
        self.spms = spms
        self.fixed = None
        if not spms:
            self.fixed = torch.zeros(1, 0)
        elif cfg.multiplier is not None:
            self.fixed = compute_gates(cfg, model, spms, [""])[0]
        else:
            self.bank = concept_bank(model, [s.concepts for s in spms])
            self.factor, self.clip = ft_scaling(cfg)

    def __call__(self, texts: Sequence[str], hidden: torch.Tensor) -> torch.Tensor:
        """(B, N) gates of `texts`, whose last hidden states are `hidden` (B, 77, d)."""
        if self.fixed is not None:
            return self.fixed.expand(len(texts), -1).clone()
        scores = concept_scores(self.model, texts, self.bank, self.cfg.ft_metric, prompt_embeds=hidden.detach())
        return membrane_gates(scores, self.bank, self.factor, self.clip)

    def reported(self, prompts: list[str]) -> torch.Tensor:
        """The gates `spmctl sample` gives these prompts (what results.json reports)."""
        return compute_gates(self.cfg, self.model, self.spms, prompts)[0]
