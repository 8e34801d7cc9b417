"""Several SPM files on one model's denoiser, with a gate per sample and membrane.

Composition. Default: each membrane keeps its own gate,

    y = base(x) + Σ_i g_i · scale_i · up_i(down_i(x)),

which is exactly the K-membrane network with a (B, K) gate tensor. `compat="original"`
reproduces the original SPM code, which loads Σ_i g_i·down_i and Σ_i g_i·up_i into one
adapter (scale of the first file):

    y = base(x) + scale_0 · (Σ_i g_i up_i)(Σ_j g_j down_j) = base(x) + Σ_ij g_i g_j · scale_0 · up_i down_j.

That is still a sum of rank-r adapters, one per pair (i, j) with gate g_i·g_j, so it batches the
same way: the network holds K² "pair" membranes instead of K. The original does the same for
fixed multipliers (it sums `value * multiplier` for every key), so they are squared there too.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import Any

import torch

from ..errors import SpmctlError
from ..membrane.io import ALPHA, DOWN, UP, MembraneFile, resolve_spm_path
from ..names import DEFAULT_FT_METRIC


def load_spms(paths: list[str], concepts: list[str] | None = None) -> list[MembraneFile]:
    """Read every SPM file; `concepts[i]` (comma-joined) overrides file i's `prompts` metadata."""
    from ..membrane import load_membrane

    out = []
    for i, raw in enumerate(paths):
        path = resolve_spm_path(raw)
        mf = load_membrane(path)
        names = mf.concepts
        if concepts is not None:
            names = [c.strip() for c in concepts[i].split(",") if c.strip()]
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        stem = path.stem.removesuffix("_last")
        out.append(replace(mf, concepts=names, path=path, name=stem, digest=digest))
    return out


DEFAULT_BASE_MODEL = "CompVis/stable-diffusion-v1-4"


def base_model_of(spms: list[MembraneFile]) -> tuple[str, str]:
    """The model to sample with when none is given, and why: the one the membranes were trained
    on (they must agree), else SD 1.4 (what the original code assumes)."""
    recorded = {s.base_model for s in spms if s.base_model}
    if len(recorded) > 1:
        raise SpmctlError(
            "the SPMs were trained on different base models ("
            + ", ".join(f"{s.path.name}: {s.base_model}" for s in spms if s.base_model)
            + "); choose one with -m"
        )
    if recorded:
        model = recorded.pop()
        first = next(s for s in spms if s.base_model == model)
        return model, f"base model {model}, recorded in {first.path.name} (-m chooses another)"
    why = "the SPMs do not record theirs" if spms else "no -m given"
    return DEFAULT_BASE_MODEL, f"base model {DEFAULT_BASE_MODEL} ({why}; -m chooses another)"


def spm_gates(
    model: Any,
    prompts: list[str],
    spms: list[MembraneFile],
    *,
    multiplier: list[float] | None = None,
    metric: str = DEFAULT_FT_METRIC,
    factor: float = 1.0,
    compat: str = "default",
    prompt_embeds: torch.Tensor | None = None,
) -> torch.Tensor:
    """(P, N): one gate per prompt and SPM, fixed by `multiplier` (one value, or one per SPM) or
    from facilitated transport. `compat="original"` multiplies by the factor (a fixed multiplier too) and
    does not clip, as the original's evaluation does."""
    if not spms:
        return torch.zeros(len(prompts), 0)
    if multiplier is not None:
        if len(multiplier) not in (1, len(spms)):
            raise SpmctlError(
                f"multiplier: give one value or one per SPM ({len(spms)}), not {len(multiplier)}"
            )
        values = list(multiplier) * len(spms) if len(multiplier) == 1 else list(multiplier)
        gates = torch.tensor(values, dtype=torch.float32).expand(len(prompts), len(spms)).clone()
        # compat: the original multiplies a fixed multiplier by the factor as well
        return gates * factor if compat == "original" else gates
    from .ft import ft_gates

    factor, clip = ft_scaling_for(compat, factor)
    return ft_gates(
        model,
        prompts,
        [s.concepts for s in spms],
        metric=metric,
        factor=factor,
        clip=clip,
        prompt_embeds=prompt_embeds,
    )


def ft_scaling_for(compat: str, factor: float) -> tuple[float, bool]:
    """FT's gate factor and clipping. The original (evaluate_task.py) multiplies the max score by the
    factor and does not clip, so compat mode doesn't clip."""
    return factor, compat != "original"


class MembraneStack:
    """K SPMs attached to a model's denoiser (`model`: a `ModelBundle`); `set_gates((B, N))` takes one
    gate per sample and SPM.

    The denoiser's batch may be a multiple of B: with classifier-free guidance diffusers runs
    [unconditional; conditional] in one call, and both halves of a sample get its gates (as the
    original code does: its membrane is on for the whole pipeline call).
    """

    def __init__(self, model: Any, spms: list[MembraneFile], compat: str = "default") -> None:
        from ..membrane import MembraneNetwork

        if not spms:
            raise SpmctlError("no SPM given")
        self.spms = spms
        self.compat = compat
        n = len(spms)
        if compat == "original":
            ranks = {s.rank for s in spms}
            if len(ranks) > 1:
                raise SpmctlError(
                    "SPMs of different rank cannot be composed the original way "
                    f"({', '.join(f'{s.path.name}: {s.rank}' for s in spms)}); "
                    "drop --ft-compat original"
                )
            self.pairs = [(i, j) for i in range(n) for j in range(n)]
        else:
            self.pairs = [(i, i) for i in range(n)]
        denoiser = model.denoiser
        self.network = MembraneNetwork.for_model(
            model, rank=max(s.rank for s in spms), alpha=1.0, num_membranes=len(self.pairs)
        )
        param = next(denoiser.parameters())
        self.network.to(device=param.device, dtype=param.dtype)
        try:
            for k, (i, j) in enumerate(self.pairs):
                self.network.load_state_dict_for(k, self._pair_tensors(i, j))
        except SpmctlError as exc:
            self.network.detach()
            bad = spms[self.pairs[k][1]]
            raise SpmctlError(f"{bad.path}: {exc}") from None
        self._rows = 1
        self._gates = torch.ones(1, n)
        self._hook = denoiser.register_forward_pre_hook(self._expand_for_batch, with_kwargs=True)

    def _pair_tensors(self, i: int, j: int) -> dict[str, torch.Tensor]:
        if i == j and self.compat != "original":
            return self.spms[i].tensors
        # pair (i, j): up of SPM i, down (and kohya alpha) of SPM j, at the first file's scale
        up_src, down_src, first = self.spms[i].tensors, self.spms[j].tensors, self.spms[0]
        out = {}
        for key in down_src:
            if key.endswith(DOWN):
                out[key] = down_src[key]
            elif key.endswith(UP):
                out[key] = up_src[key]
            elif key.endswith(ALPHA):
                out[key] = torch.tensor(first.alpha or first.rank, dtype=torch.float32)
        return out

    def pair_gates(self, gates: torch.Tensor) -> torch.Tensor:
        """(B, N) per-SPM gates -> (B, K) network gates (products g_i·g_j for the original composition)."""
        gates = torch.as_tensor(gates, dtype=torch.float32)
        if gates.dim() == 1:
            gates = gates.unsqueeze(0)
        return (
            torch.stack([gates[:, i] * gates[:, j] for i, j in self.pairs], dim=1)
            if self.compat == "original"
            else gates
        )

    def set_gates(self, gates: torch.Tensor | float) -> None:
        g = torch.as_tensor(gates, dtype=torch.float32)
        if g.dim() == 0:
            g = g.expand(1, len(self.spms))
        self._gates = self.pair_gates(g)
        self._rows = -1  # re-expanded on the next UNet call
        self.network.set_gates(self._gates)

    def _expand_for_batch(self, module: Any, args: tuple, kwargs: dict) -> None:
        # a UNet's input is `sample`, a transformer's `hidden_states`
        sample = args[0] if args else kwargs.get("sample", kwargs.get("hidden_states"))
        batch = int(sample.shape[0])
        if batch == self._rows:
            return
        rows = self._gates.shape[0]
        if rows != 1 and batch % rows:
            raise SpmctlError(f"denoiser batch {batch} is not a multiple of the {rows} gate rows")
        # torch.cat([uncond, cond]) keeps sample order in each half, so a tiled copy lines up
        self.network.set_gates(self._gates.repeat(batch // rows, 1) if rows != 1 else self._gates)
        self._rows = batch

    def close(self) -> None:
        self._hook.remove()
        self.network.detach()
