"""The model-family interface: everything that differs between SD 1.x/2.x, SDXL, SD3 and FLUX.

Training, sampling, FT gates, export and the memory check go through a `ModelFamily` and the
`ModelBundle` it loads; they never look at a UNet or a text encoder directly. A family is
registered through the `register_families` plugin hook (spmctl's own are default plugins, as the
built-in datasets are), found by name (`pretrained_model.family`) or detected from the model
(`spmctl.families.registry.detect`).

What a family provides, in the order a run needs it:

- finding and loading: `detect(probe)`, `load(source, options)`, `tiny_names`, `bundle_from_pipeline`;
- membranes: `membrane_targets(denoiser)` (which layers carry one), `lora_name(path)` (its key);
- text: `encode(model, prompts)` -> `Conditioning`, `negative_conditioning`, `gate_features(model,
  texts)` (what FT gates compare), `sample_anchors(target, count, gen)` (the anchoring term's);
- the denoiser: `predict(model, latents, t, cond)`, `prediction_type(model)`, `erase_target(...)`,
  `guide(uncond, cond, scale)`;
- schedules: `make_scheduler`, `initial_latents`, `partial_denoise`, `training_input`;
- sampling: `pipeline(model, scheduler)`, `sample_latents`, `pipeline_kwargs(cond, negative)`;
- export: `lora_layouts`, `export_lora(tensors, layout)`, `single_file_state(model)`;
- memory: `enable_gradient_checkpointing`, `offload_text_encoders`, `peak_memory(...)`.

Anything with a sensible default for every family is implemented here; the rest is abstract.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import SpmctlError

if TYPE_CHECKING:  # torch stays out of `spmctl --help` and `spmctl plugins list`
    import torch
    from torch import nn

# what a family is written against; `spmctl.families` re-exports these names
__all__ = ["Conditioning", "GateFeatures", "LoadOptions", "MemoryEstimate", "ModelBundle", "ModelFamily",
           "ModelProbe", "Target"]

# (module path, parent, attribute, layer): one layer that carries a membrane (see membrane.network)
Target = tuple[str, Any, str, Any]


@dataclass(frozen=True)
class LoadOptions:
    """How to load a model (the config's `pretrained_model` keys and the run's precision/device)."""

    dtype: str = "float32"
    device: str = "cpu"
    v2: bool = False
    v_pred: bool = False
    config: str | None = None  # a single file's configs: a diffusers folder or hub id


@dataclass(frozen=True)
class ModelProbe:
    """What detection knows about a model source, read cheaply (no weights loaded).

    kind: "tiny" (a built-in name), "folder" (a diffusers folder), "file" (a single-file
    checkpoint), "hub" (an 'owner/name' id). `model_index`: the folder's (or the hub cache's)
    model_index.json; `keys`: a single .safetensors file's tensor names (a .ckpt: None, since
    reading its names means unpickling it)."""

    source: str
    kind: str
    model_index: dict[str, Any] | None = None
    keys: frozenset[str] | None = None

    @property
    def pipeline_class(self) -> str:
        return str((self.model_index or {}).get("_class_name", ""))


@dataclass
class Conditioning:
    """What the denoiser is conditioned on, for a batch of prompts (every tensor batch-first).

    embeds: per-token embeddings (B, T, d) — SD's 77 x 768 CLIP states, SDXL's two encoders
    concatenated, SD3's CLIP+T5 sequence, FLUX's T5 sequence. pooled: (B, d') pooled embeddings
    (SDXL, SD3, FLUX) or None. extra: any other per-prompt tensors a family needs (B, ...), e.g.
    SDXL's add_time_ids. What is the same for every prompt (FLUX's text ids, the guidance value)
    is the family's to add when it calls the denoiser, not stored here.
    """

    embeds: torch.Tensor
    pooled: torch.Tensor | None = None
    extra: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.embeds.shape[0])

    def _map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> Conditioning:
        return Conditioning(fn(self.embeds), None if self.pooled is None else fn(self.pooled),
                            {k: fn(v) for k, v in self.extra.items()})

    def __getitem__(self, index: Any) -> Conditioning:
        """Rows `index` (an int keeps the batch dimension: one prompt is a batch of 1)."""
        if isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)
        return self._map(lambda t: t[index])

    def expand(self, batch: int) -> Conditioning:
        """A batch-1 conditioning as `batch` rows (a view, as `tensor.expand`)."""
        return self._map(lambda t: t.expand(batch, *t.shape[1:]))

    def repeat(self, times: int) -> Conditioning:
        return self._map(lambda t: t.repeat(times, *([1] * (t.dim() - 1))))

    def to(self, device: Any = None, dtype: torch.dtype | None = None) -> Conditioning:
        return self._map(lambda t: t.to(device=device, dtype=dtype if t.is_floating_point() else None))

    def float(self) -> Conditioning:
        return self._map(lambda t: t.float())

    @staticmethod
    def cat(parts: Sequence[Conditioning]) -> Conditioning:
        import torch

        first = parts[0]
        return Conditioning(
            torch.cat([p.embeds for p in parts]),
            None if first.pooled is None else torch.cat([p.pooled for p in parts]),  # type: ignore[misc]
            {k: torch.cat([p.extra[k] for p in parts]) for k in first.extra},
        )

    @staticmethod
    def of(value: Conditioning | torch.Tensor) -> Conditioning:
        """A Conditioning as it is, or per-token embeddings alone (SD 1.x's whole conditioning)."""
        return value if isinstance(value, Conditioning) else Conditioning(value)


@dataclass(frozen=True)
class GateFeatures:
    """What FT gates compare: per text, one flat fp32 embedding (on the CPU) and its token ids."""

    embeds: torch.Tensor  # (P, F)
    token_ids: list[list[int]]


@dataclass(frozen=True)
class MemoryEstimate:
    """Peak memory of a run, in bytes, by part (what `check_fits` compares with the free memory)."""

    weights: int  # the model parts resident during the run
    membrane: int  # membrane parameters, gradients and optimizer state (fp32)
    activations: int  # the denoiser's saved activations (training) or its largest working set
    parts: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return self.weights + self.membrane + self.activations


@dataclass
class ModelBundle:
    """A loaded model: its family, its parts, where it came from.

    `denoiser` is the UNet (SD, SDXL) or the transformer (SD3, FLUX); `tokenizers` and
    `text_encoders` are in the family's own order (SDXL: CLIP-L then OpenCLIP-G; SD3: CLIP-L,
    CLIP-G, T5; FLUX: CLIP-L, T5). `options` are the family's loading choices (e.g. v_pred)."""

    family: ModelFamily
    source: str
    denoiser: Any
    vae: Any
    scheduler_config: dict[str, Any]
    tokenizers: tuple[Any, ...] = ()
    text_encoders: tuple[Any, ...] = ()
    options: dict[str, Any] = field(default_factory=dict)

    # SD-era names, kept for the code and tests written against SD 1.x
    @property
    def unet(self) -> Any:
        return self.denoiser

    @property
    def tokenizer(self) -> Any:
        return self.tokenizers[0] if self.tokenizers else None

    @property
    def text_encoder(self) -> Any:
        return self.text_encoders[0] if self.text_encoders else None

    @property
    def dtype(self) -> torch.dtype:
        """The denoiser's dtype (its first parameter's: diffusers' own `.dtype` walks every module)."""
        return next(self.denoiser.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.denoiser.parameters()).device

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1) if self.vae is not None else 8

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels) if self.vae is not None else 4

    def parts(self) -> dict[str, Any]:
        """Every torch module of the model, by name (for dtype/device moves and counting)."""
        named = {"denoiser": self.denoiser, "vae": self.vae}
        named.update({f"text_encoder_{i}": m for i, m in enumerate(self.text_encoders)})
        return {k: v for k, v in named.items() if v is not None}

    def with_parts(self, **changes: Any) -> ModelBundle:
        known = {f.name for f in fields(self)}
        return replace(self, **{k: v for k, v in changes.items() if k in known})


def _step_kwargs(scheduler: Any, gen: torch.Generator) -> dict[str, Any]:
    import inspect

    return {"generator": gen} if "generator" in inspect.signature(scheduler.step).parameters else {}


# Classifier-free guidance of the partial denoising that makes x_t for training (the original SPM's)
GUIDANCE_WHILE_DENOISING = 3.0


class ModelFamily(abc.ABC):
    """One model family (see the module docstring). Subclasses set `name`, `description` and
    `tiny_names`, and implement the abstract methods; the defaults fit an ε/v UNet with CFG."""

    name: str = ""
    description: str = ""
    tiny_names: tuple[str, ...] = ()  # `-m` names of the family's built-in tiny test models
    lora_prefix: str = "lora_unet_"
    lora_layouts: tuple[str, ...] = ("kohya",)  # `spmctl export lora --layout`, first = default

    def __repr__(self) -> str:
        return f"<model family {self.name!r}>"

    # ------------------------------------------------------------------ finding and loading
    @abc.abstractmethod
    def detect(self, probe: ModelProbe) -> bool:
        """Whether `probe` is a model of this family (cheap: configs and key names only)."""

    @abc.abstractmethod
    def load(self, source: str, options: LoadOptions) -> ModelBundle:
        """Load `source` (a tiny name, folder, single file or hub id) with every part frozen, in
        eval mode, in `options.dtype` on `options.device`. Failures: one SpmctlError line."""

    def bundle_from_pipeline(self, pipe: Any, source: str) -> ModelBundle:
        """The bundle of an already-built diffusers pipeline (what `spmctl.attach` is given)."""
        raise SpmctlError(f"{self.name}: attaching to a pipeline is not supported for this family")

    @staticmethod
    def scheduler_config_of(pipe: Any) -> dict[str, Any]:
        """A pipeline's scheduler config with its class name (a bundle's `scheduler_config`):
        `--noise-scheduler model` rebuilds the model's own scheduler from it."""
        return {**pipe.scheduler.config, "_class_name": type(pipe.scheduler).__name__}

    def is_tiny(self, source: str) -> bool:
        return source in self.tiny_names

    # ------------------------------------------------------------------ membranes
    @abc.abstractmethod
    def membrane_targets(self, denoiser: nn.Module) -> list[Target]:
        """The layers that carry membranes, in `denoiser.named_modules()` order."""

    def lora_name(self, module_path: str) -> str:
        """A membrane's key in SPM files (kohya's layout): `lora_unet_` + the path, dots as `_`."""
        return self.lora_prefix + module_path.replace(".", "_")

    # ------------------------------------------------------------------ text
    @abc.abstractmethod
    def encode(self, model: ModelBundle, prompts: list[str], *, clip_skip: int = 1) -> Conditioning:
        """The conditioning of `prompts` (no gradient), on the text encoders' device."""

    @abc.abstractmethod
    def gate_features(self, model: ModelBundle, texts: list[str]) -> GateFeatures:
        """What FT gates compare texts by (the family documents which embeddings and why)."""

    def gate_special_ids(self, model: ModelBundle) -> set[int]:
        """Token ids that never count for the token-overlap metric (BOS, EOS, padding...)."""
        ids: set[int] = set()
        for tokenizer in model.tokenizers:
            ids |= set(getattr(tokenizer, "all_special_ids", []) or [])
            for name in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id"):
                value = getattr(tokenizer, name, None)
                if value is not None:
                    ids.add(int(value))
        return ids

    def gate_token_ids(self, model: ModelBundle, texts: list[str]) -> list[list[int]]:
        """The token ids the token-overlap metric compares (the first tokenizer's, padded as encoded)."""
        tokenizer = model.tokenizer
        return tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length,
                         truncation=True).input_ids

    def gate_embeds_of(self, model: ModelBundle, cond: Conditioning, clip_skip: int) -> torch.Tensor | None:
        """The gate embeddings (P, F) of prompts whose generation conditioning is `cond`, when they
        can be read off it (so prompts are not encoded twice); None: compute `gate_features`."""
        return None

    def warn_truncated(self, model: ModelBundle, texts: list[str], warn: Callable[[str], None]) -> None:
        """Say once per prompt what a prompt longer than the text encoder reads loses."""
        from ..models.text import warn_truncated

        if model.tokenizer is not None:
            warn_truncated(model.tokenizer, texts, warn)

    def negative_conditioning(self, model: ModelBundle, prompt: str, *, clip_skip: int = 1) -> Conditioning:
        """The conditioning of the negative prompt at sampling (SDXL: zeros for "", as its pipeline)."""
        return self.encode(model, [prompt], clip_skip=clip_skip)

    def sample_anchors(self, target: Conditioning, count: int, gen: torch.Generator) -> Conditioning:
        """`count` anchor conditionings around `target` for the anchoring term. Default: anchors drawn
        in the per-token embedding space (see `anchors.sample_anchors`), everything else as the target's."""
        from .anchors import sample_anchors

        anchors = sample_anchors(target.embeds, count, gen)
        rest = target.expand(count)
        return Conditioning(anchors, rest.pooled, rest.extra)

    # ------------------------------------------------------------------ the denoiser
    @abc.abstractmethod
    def predict(self, model: ModelBundle, latents: torch.Tensor, t: Any, cond: Conditioning) -> torch.Tensor:
        """The denoiser's output for `latents` at timestep `t` (what `prediction_type` names)."""

    def guide(self, uncond: torch.Tensor, cond: torch.Tensor, scale: float) -> torch.Tensor:
        """Classifier-free guidance of two predictions (the partial denoising's)."""
        return uncond + scale * (cond - uncond)

    def prediction_type(self, model: ModelBundle) -> str:
        """"epsilon", "v_prediction" or "flow" (a flow-matching velocity)."""
        return "v_prediction" if model.options.get("v_pred") else "epsilon"

    def erase_target(self, positive: torch.Tensor, neutral: torch.Tensor, guidance: float) -> torch.Tensor:
        """What the membrane-ON target prediction is pulled to: neutral − g·(positive − neutral), in
        the prediction's own space (ε, v or velocity: each is linear in the conditioning's effect)."""
        return neutral - guidance * (positive - neutral)

    # ------------------------------------------------------------------ schedules
    @abc.abstractmethod
    def make_scheduler(self, model: ModelBundle, name: str, *, config: dict[str, Any] | None = None) -> Any:
        """A noise scheduler: `name` (spmctl.names.NOISE_SCHEDULERS or 'model'), built from `config`
        (default: the model's own scheduler config), with the model's prediction type."""

    def size_multiple(self, model: ModelBundle) -> int:
        """Image sizes must be multiples of this (the VAE's and the denoiser's downsampling)."""
        return model.vae_scale_factor

    def latent_shape(self, model: ModelBundle, batch: int, height: int, width: int) -> tuple[int, ...]:
        factor = model.vae_scale_factor
        return (batch, model.latent_channels, height // factor, width // factor)

    def initial_latents(self, model: ModelBundle, scheduler: Any, batch: int, height: int, width: int,
                        gen: torch.Generator, device: Any, dtype: torch.dtype) -> torch.Tensor:
        """Pure-noise latents for training's partial denoising, scaled by the scheduler's initial sigma."""
        import torch

        sigma = float(getattr(scheduler, "init_noise_sigma", 1.0))
        shape = self.latent_shape(model, batch, height, width)
        return (torch.randn(shape, generator=gen) * sigma).to(device, dtype)

    def partial_denoise(self, model: ModelBundle, network: Any, scheduler: Any, latents: torch.Tensor,
                        uncond: Conditioning, cond: Conditioning, steps: int, max_steps: int,
                        gen: torch.Generator) -> torch.Tensor:
        """`steps` steps of the `max_steps` schedule from `latents`, membrane ON, classifier-free
        guidance 3 on [uncond, cond] (the original SPM's x_t); called under inference mode."""
        import torch

        scheduler.set_timesteps(max_steps, device=latents.device)
        batch = latents.shape[0]
        embeds = Conditioning.cat([uncond.expand(batch), cond.expand(batch)])
        kwargs = _step_kwargs(scheduler, gen)
        # one gate for every sample and no gradient: the membrane can be folded into the weights
        with network.merged(1.0):
            for t in scheduler.timesteps[:steps]:
                model_in = scheduler.scale_model_input(torch.cat([latents, latents]), t)
                eps_u, eps_c = self.predict(model, model_in, t, embeds).chunk(2)
                eps = self.guide(eps_u, eps_c, GUIDANCE_WHILE_DENOISING)
                latents = scheduler.step(eps, t, latents, **kwargs).prev_sample
        return latents

    def training_input(self, model: ModelBundle, scheduler: Any, x_t: torch.Tensor, k: int,
                       max_steps: int) -> tuple[Any, torch.Tensor]:
        """The training timestep of denoising depth k (of `max_steps`), and x_t as the denoiser takes it.

        The schedule is set afresh each time: schedulers that keep a step index (euler_a, lms) fix it
        at the first timestep they scale after `set_timesteps`, so a schedule set once would scale
        every later iteration's input with the first iteration's sigma."""
        scheduler.set_timesteps(1000)
        t = scheduler.timesteps[int(k * 1000 / max_steps)]
        return t, scheduler.scale_model_input(x_t, t)

    # ------------------------------------------------------------------ sampling
    @abc.abstractmethod
    def pipeline(self, model: ModelBundle, scheduler: Any) -> Any:
        """The family's diffusers pipeline on the bundle's parts (sampling, saving a merged model)."""

    def sample_latents(self, model: ModelBundle, height: int, width: int, gen: torch.Generator,
                       dtype: torch.dtype) -> torch.Tensor:
        """One image's initial latents (batch 1), drawn from `gen` exactly as the family's pipeline
        draws them for `generator=gen`, in the layout its `latents=` argument takes."""
        import torch

        return torch.randn(self.latent_shape(model, 1, height, width), generator=gen, dtype=dtype)

    def pipeline_kwargs(self, cond: Conditioning, negative: Conditioning | None) -> dict[str, Any]:
        """The pipeline call's conditioning arguments (`prompt_embeds=`...) for `cond`."""
        kwargs: dict[str, Any] = {"prompt_embeds": cond.embeds}
        if negative is not None:
            kwargs["negative_prompt_embeds"] = negative.embeds
        return kwargs

    # ------------------------------------------------------------------ export
    def export_lora(self, tensors: dict[str, torch.Tensor], layout: str) -> dict[str, torch.Tensor]:
        """An SPM file's tensors in an export `layout` (one of `lora_layouts`); kohya's is the file's own."""
        if layout not in self.lora_layouts:
            raise SpmctlError(f"LoRA layout {layout!r} is not one the {self.name} family writes "
                              f"({', '.join(self.lora_layouts)})")
        return dict(tensors)

    def single_file_state(self, model: ModelBundle) -> dict[str, torch.Tensor]:
        """The model as one original-layout state dict (export --format safetensors)."""
        raise SpmctlError(f"{self.name}: single-file export is not supported for this family "
                          "(export a diffusers folder)")

    # ------------------------------------------------------------------ memory
    def enable_gradient_checkpointing(self, model: ModelBundle) -> None:
        """Recompute the denoiser's activations in the backward pass instead of keeping them.

        The fused membrane kernel's first-use self-check (per device and dtype) runs here, first:
        inside a checkpointed block its tensors would count as the block's, and the recomputation,
        which no longer checks, would not match them (torch's CheckpointError)."""
        import torch

        from ..ops import fused, selfcheck

        if fused.load_fused() == "fused":
            selfcheck.device_ok(torch.empty(0, device=model.device, dtype=model.dtype))
        model.denoiser.enable_gradient_checkpointing()

    def offload_text_encoders(self, model: ModelBundle) -> None:
        """Free the text encoders' (and the VAE's) accelerator memory once the prompts are encoded:
        training needs neither afterwards (moved to the CPU; nothing to do when the run is there)."""
        import torch

        device = next(model.denoiser.parameters()).device
        if device.type == "cpu":
            return
        for part in (*model.text_encoders, model.vae):
            if part is not None:
                part.to("cpu")
        if device.type == "cuda":
            torch.cuda.empty_cache()

    def onload_text_encoders(self, model: ModelBundle) -> None:
        """Undo `offload_text_encoders` (training previews encode prompts and decode images)."""
        device = next(model.denoiser.parameters()).device
        for part in (*model.text_encoders, model.vae):
            if part is not None:
                part.to(device)

    @abc.abstractmethod
    def peak_memory(self, model: ModelBundle, batch: int, height: int, width: int, *, training: bool,
                    checkpointing: bool = False, offload: bool = True) -> MemoryEstimate:
        """Expected peak memory of training (one step at `batch` x `height` x `width`) or sampling."""


def parameter_bytes(module: Any) -> int:
    """The bytes of a module's parameters and buffers as they are (their own dtypes)."""
    if module is None:
        return 0
    tensors = [*module.parameters(), *module.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def read_json(path: Path) -> dict[str, Any] | None:
    import json

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def pooled_pipeline_kwargs(cond: Conditioning, negative: Conditioning | None) -> dict[str, Any]:
    """The embeddings a diffusers pipeline with a pooled text vector (SDXL, SD3, FLUX) takes."""
    kwargs: dict[str, Any] = {"prompt_embeds": cond.embeds, "pooled_prompt_embeds": cond.pooled}
    if negative is not None:
        kwargs["negative_prompt_embeds"] = negative.embeds
        kwargs["negative_pooled_prompt_embeds"] = negative.pooled
    return kwargs
