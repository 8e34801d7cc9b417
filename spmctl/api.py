"""Facilitated transport inside your own diffusers pipeline.

    from diffusers import StableDiffusionPipeline
    import spmctl

    pipe = StableDiffusionPipeline.from_pretrained("CompVis/stable-diffusion-v1-4")
    with spmctl.attach(pipe, ["outputs/van_gogh", "outputs/nudity/nudity_last.safetensors"]) as spm:
        images = pipe(["a starry night by Van Gogh", "a red car"]).images
        print(spm.last_gates)  # (prompts x membranes) the gates the call used

While attached, every call of the pipeline scores its text prompts against each membrane's
erased concepts (the same FT gates as `spmctl sample`) and opens each membrane that far for that
prompt's images; with `multiplier=` the gates are fixed instead. It works with the pipelines of the
model families that can take one (`ModelFamily.bundle_from_pipeline`): StableDiffusionPipeline,
StableDiffusionXLPipeline, StableDiffusion3Pipeline and FluxPipeline, each tested against `spmctl
sample`'s images (tests/test_api.py; the README's "Python API" says which call settings give them).
It hooks `encode_prompt` (the gates) and `check_inputs` (a new call). `family=` names the family; by
default the one whose pipeline class it is.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import SpmctlError
from .names import DEFAULT_FT_METRIC


class Membranes:
    """Membranes attached to a pipeline's UNet; each pipeline call gets its prompts' gates."""

    def __init__(
        self,
        pipe: Any,
        spms: Sequence[str | Path],
        *,
        concepts: Sequence[str] | None = None,
        multiplier: float | Sequence[float] | None = None,
        ft_metric: str = DEFAULT_FT_METRIC,
        facilitate_factor: float = 1.0,
        compat: str = "default",
        family: str | None = None,
    ) -> None:
        from .names import FT_METRICS
        from .sampling.stack import MembraneStack, load_spms

        if ft_metric not in FT_METRICS:
            raise SpmctlError(f"ft_metric {ft_metric!r}: expected one of {', '.join(FT_METRICS)}")
        if compat not in ("default", "original"):
            raise SpmctlError(f"compat {compat!r}: expected 'default' or 'original'")
        if not hasattr(pipe, "encode_prompt"):
            raise SpmctlError(f"{type(pipe).__name__} has no encode_prompt: attach needs a diffusers "
                              "text-to-image pipeline")
        self.pipe = pipe
        self.model = _bundle(pipe, family)
        self.spms = load_spms([str(p) for p in spms], list(concepts) if concepts is not None else None)
        if isinstance(multiplier, int | float):
            multiplier = [float(multiplier)]
        self.multiplier = list(multiplier) if multiplier is not None else None
        self.ft_metric, self.facilitate_factor, self.compat = ft_metric, facilitate_factor, compat
        self.last_gates = None
        if self.multiplier is not None:
            self.gates([""])  # a wrong number of multipliers fails here, not inside the first call
        self._stack = MembraneStack(self.model, self.spms, compat)
        self._encode_prompt = pipe.encode_prompt
        self._encode_signature = inspect.signature(self._encode_prompt)
        # Gates come from a call's first encoding: FluxPipeline encodes its negative prompt in a second
        # encode_prompt call (true CFG), whose gates must not replace the prompt's. Each call of a
        # diffusers pipeline runs check_inputs first, which marks the next encoding as the call's; so
        # does a denoiser pass (the call's encodings are over), so that an encode_prompt of the user's
        # own after a call sets the gates again.
        self._fresh = True
        self._check_inputs = getattr(pipe, "check_inputs", None)
        if self._check_inputs is not None:
            pipe.check_inputs = self._new_call
        self._denoised = self.model.denoiser.register_forward_pre_hook(self._encodings_over)
        pipe.encode_prompt = self._gated_encode_prompt  # the instance attribute wins over the method

    def gates(self, prompts: Sequence[str]) -> Any:
        """(P, N) tensor: the gate each membrane gets for each prompt."""
        from .sampling.stack import spm_gates

        return spm_gates(self.model, list(prompts), self.spms,
                         multiplier=self.multiplier, metric=self.ft_metric,
                         factor=self.facilitate_factor, compat=self.compat)

    def _new_call(self, *args: Any, **kwargs: Any) -> Any:
        self._fresh = True
        return self._check_inputs(*args, **kwargs)

    def _encodings_over(self, *_: Any) -> None:
        self._fresh = True

    def _gated_encode_prompt(self, prompt: Any = None, *args: Any, **kwargs: Any) -> Any:
        if not self._fresh:  # the same call's negative prompt: the membranes keep the prompt's gates
            return self._encode_prompt(prompt, *args, **kwargs)
        self._fresh = self._check_inputs is None
        # SD 1.x's pipeline passes num_images_per_prompt by position, SDXL's, SD3's and FLUX's by name
        bound = self._encode_signature.bind(prompt, *args, **kwargs).arguments
        num_images = bound.get("num_images_per_prompt", 1)
        if isinstance(prompt, str):
            prompts = [prompt]
        elif prompt is not None:
            prompts = list(prompt)
        elif self.multiplier is not None:  # fixed gates need no text: one row serves every image
            prompts = [""]
        else:
            raise SpmctlError("facilitated transport needs the prompt text: call the pipeline with "
                              "prompt=..., not prompt_embeds (or attach with multiplier=...)")
        gates = self.gates(prompts)
        self.last_gates = gates
        # encode_prompt repeats each prompt's embedding num_images_per_prompt times in a row
        self._stack.set_gates(gates.repeat_interleave(int(num_images or 1), dim=0) if prompt is not None
                              else gates)
        return self._encode_prompt(prompt, *args, **kwargs)

    def detach(self) -> None:
        """Take the membranes off: the pipeline is as it was before attach."""
        if self._stack is None:
            return
        self._stack.close()
        self._stack = None
        self._denoised.remove()
        for name, ours in (("encode_prompt", self._gated_encode_prompt), ("check_inputs", self._new_call)):
            if self.pipe.__dict__.get(name) == ours:
                delattr(self.pipe, name)

    def __enter__(self) -> Membranes:
        return self

    def __exit__(self, *exc: object) -> None:
        self.detach()


def _bundle(pipe: Any, family: str | None) -> Any:
    """The loaded-model view of `pipe` its family gives (named, or the one whose pipeline class it is)."""
    from .families import families, get_family

    if family is not None:
        chosen = get_family(family, key="family")
    else:
        from .families import ModelProbe

        probe = ModelProbe(type(pipe).__name__, "pipeline", model_index={"_class_name": type(pipe).__name__})
        chosen = next((f for f in families().values() if f.detect(probe)), None)
        if chosen is None:
            raise SpmctlError(f"{type(pipe).__name__}: no model family takes this pipeline; pass family=")
    return chosen.bundle_from_pipeline(pipe, type(pipe).__name__)


def attach(pipe: Any, spms: Sequence[str | Path] | str | Path, **options: Any) -> Membranes:
    """Attach SPM files (or run folders) to `pipe`; see `Membranes` for the options. Use it as a
    context manager, or call `.detach()` to take the membranes off."""
    if isinstance(spms, str | Path):
        spms = [spms]
    return Membranes(pipe, spms, **options)
