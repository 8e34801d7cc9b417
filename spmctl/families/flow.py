"""The SPM method restated for flow-matching transformers (SD3, FLUX): what both families share.

These models predict a velocity v = ε − x₀ on the straight path x_σ = (1 − σ)·x₀ + σ·ε and are
sampled by Euler steps x ← x + (σ_next − σ)·v over a *shifted* σ schedule. The method carries over
term by term:

- erase target: v_tgt is pulled to v_neu − g·(v_pos − v_neu) (`ModelFamily.erase_target`: a
  velocity is affine in ε and x₀, so the ε-space target restates exactly);
- partial denoising: k Euler steps of the model's own `max_denoising_steps` flow schedule (its
  shift; FLUX's shift μ grows with the image's token count, as its pipeline computes it), membrane
  ON, classifier-free guidance 3 where the model has an unconditional branch (SD3; FLUX.1-dev is
  guidance-distilled and gets its guidance embedding instead, see flux/);
- timesteps: k uniform in 1..max_steps−1, as the method prescribes; the training timestep is the
  one the sampler evaluates x_k at, `timesteps[k]` of that same schedule (σ_k·1000). SD 1.x maps k
  onto the 1000-step DDPM grid because its DDIM grid is a subset of it; σ_k is the exact counterpart;
- anchors: drawn per text encoder (`sample_joint_anchors`);
- membranes: on the attention and feed-forward Linear layers of every transformer block and on its
  adaLN modulation Linear (`membrane_targets`; `MODULATION` and the README say why).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import SpmctlError
from .base import (
    Conditioning,
    LoadOptions,
    ModelBundle,
    ModelFamily,
    ModelProbe,
    Target,
    parameter_bytes,
    pooled_pipeline_kwargs,
)

if TYPE_CHECKING:
    import torch
    from torch import nn

Region = tuple[slice, slice]  # (token rows, feature columns) of `Conditioning.embeds` one encoder fills

BLOCKS = ("transformer_blocks", "single_transformer_blocks")  # MMDiT double- and single-stream blocks
# The adaLN modulation Linears (timestep + pooled CLIP embedding -> each block's shift/scale/gate).
# They carry membranes too: on the tiny models (benchmarks/bench_flow_modulation.py, README) the
# membrane then erases more per iteration and changes unrelated prompts less per unit of erasure,
# for a slightly larger anchor drift and ~30% more membrane parameters on FLUX.1-dev.
MODULATION = ("norm1.linear", "norm1_context.linear", "norm.linear")


def sample_joint_anchors(target: Conditioning, regions: Sequence[Region], count: int,
                         gen: torch.Generator) -> Conditioning:
    """`count` latent anchors in the joint text-embedding space.

    The method draws anchors in CLIP's output space: random directions, accepted with probability
    1 − cos(target, direction), scaled by U(0.8, 1.2)·‖target‖. An MMDiT reads several encoders at
    once (SD3: CLIP-L ⊕ CLIP-G per token zero-padded to T5's width, then T5's tokens; FLUX: T5's
    tokens) and a pooled CLIP vector. Each part is drawn so in its own encoder's space, with that
    part's norm: one joint draw would size each part by its element count (T5's 4096-wide tokens
    would swamp CLIP's) and would fill SD3's structural zero padding, which no prompt ever has.
    Everything outside `regions` stays zero."""
    import torch

    from .anchors import sample_anchors

    embeds = torch.zeros((count, *target.embeds.shape[1:]), dtype=target.embeds.dtype,
                         device=target.embeds.device)
    for rows, cols in regions:
        embeds[:, rows, cols] = sample_anchors(target.embeds[:1, rows, cols], count, gen)
    pooled = None if target.pooled is None else sample_anchors(target.pooled[:1], count, gen)
    return Conditioning(embeds, pooled, target.expand(count).extra)


def calculate_mu(config: dict[str, Any], image_seq_len: int) -> float:
    """FLUX's resolution-dependent shift: linear in the image's token count (as its pipeline does)."""
    base_len, max_len = config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096)
    base_shift, max_shift = config.get("base_shift", 0.5), config.get("max_shift", 1.15)
    slope = (max_shift - base_shift) / (max_len - base_len)
    return image_seq_len * slope + base_shift - slope * base_len


class FlowFamily(ModelFamily):
    """A flow-matching MMDiT family. Subclasses set the class names and the number of text encoders,
    and implement `predict`, `encode`, `gate_features`, `text_regions` and `build_tiny`."""

    pipeline_class_name = ""
    text_encoders = 2  # the pipeline's tokenizer/text_encoder, tokenizer_2/text_encoder_2, ... pairs
    denoiser_class_name = ""
    single_file_markers: tuple[str, ...] = ()  # tensor-name fragments of the original single files
    lora_layouts = ("diffusers",)  # what `StableDiffusion3Pipeline`/`FluxPipeline.load_lora_weights` read
    true_cfg = True  # classifier-free guidance 3 while denoising (False: guidance-distilled)
    linear_sigmas = False  # the pipeline passes σ = linspace(1, 1/steps) (FLUX) or lets the scheduler space them
    patch = 2  # latent pixels per token side
    default_text_length = 256  # T5 tokens, as the family's pipeline reads them by default
    clip_tokens = 0  # CLIP tokens ahead of T5's in the text stream (SD3: 77)
    modulation = True  # membranes on the adaLN modulation layers too (False: the measurement's other variant)

    # ------------------------------------------------------------------ finding and loading
    def detect(self, probe: ModelProbe) -> bool:
        if probe.pipeline_class == self.pipeline_class_name:
            return True
        return bool(probe.keys) and any(m in k for k in probe.keys for m in self.single_file_markers)

    def build_tiny(self) -> Any:  # pragma: no cover - abstract in spirit
        raise NotImplementedError

    def load(self, source: str, options: LoadOptions) -> ModelBundle:
        import diffusers

        from ..models.loading import load_pipeline, prepare_parts, quiet_libraries, tiny_threads

        quiet_libraries()
        if self.is_tiny(source):
            from .tiny_t5 import TINY_T5_LENGTH

            model = self.bundle_from_pipeline(self.build_tiny(), self.tiny_names[0])
            model.options["max_sequence_length"] = TINY_T5_LENGTH
            tiny_threads(options.device)
        else:
            pipe = load_pipeline(source, getattr(diffusers, self.pipeline_class_name), self._single_file)
            model = self.bundle_from_pipeline(pipe, source)
        prepare_parts(list(model.parts().values()), options.dtype, options.device)
        return model

    def _part_names(self, stem: str) -> list[str]:
        """The pipeline's names of its text parts, in order: `tokenizer`, `tokenizer_2`, ..."""
        return [stem] + [f"{stem}_{i}" for i in range(2, self.text_encoders + 1)]

    def bundle_from_pipeline(self, pipe: Any, source: str) -> ModelBundle:
        return ModelBundle(self, source, pipe.transformer, pipe.vae, self.scheduler_config_of(pipe),
                           tuple(getattr(pipe, name) for name in self._part_names("tokenizer")),
                           tuple(getattr(pipe, name) for name in self._part_names("text_encoder")))

    def pipeline(self, model: ModelBundle, scheduler: Any) -> Any:
        import diffusers

        parts = {**dict(zip(self._part_names("tokenizer"), model.tokenizers, strict=True)),
                 **dict(zip(self._part_names("text_encoder"), model.text_encoders, strict=True))}
        pipe = getattr(diffusers, self.pipeline_class_name)(transformer=model.denoiser, scheduler=scheduler,
                                                            vae=model.vae, **parts)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def _single_file(self, path: Path) -> Any:
        raise SpmctlError(f"{path}: single-file {self.name} checkpoints are not supported yet; use a "
                          "diffusers folder or a hub id")

    # ------------------------------------------------------------------ membranes
    def membrane_targets(self, denoiser: nn.Module) -> list[Target]:
        """Every Linear in the double- and single-stream blocks: attention (q/k/v/out of both
        streams), feed-forward, FLUX's single-block proj_mlp/proj_out, and the adaLN modulation
        (see MODULATION; not with `modulation` off). Not the embedders before the blocks or the final
        norm/projection after them: the method adapts the blocks where text and image meet."""
        from torch import nn

        found: list[Target] = []
        pattern = re.compile(rf"^({'|'.join(BLOCKS)})\.\d+\.(.+)$")
        for path, layer in denoiser.named_modules():
            match = pattern.match(path)
            if not match or not isinstance(layer, nn.Linear):
                continue
            if match.group(2) in MODULATION and not self.modulation:
                continue
            parent_name, _, attr = path.rpartition(".")
            found.append((path, denoiser.get_submodule(parent_name), attr, layer))
        return found

    # ------------------------------------------------------------------ text
    def text_regions(self, target: Conditioning) -> list[Region]:
        """Where each text encoder's part lies in `target.embeds` (the anchors' parts)."""
        return [(slice(None), slice(None))]

    def sample_anchors(self, target: Conditioning, count: int, gen: torch.Generator) -> Conditioning:
        return sample_joint_anchors(target, self.text_regions(target), count, gen)

    # ------------------------------------------------------------------ the denoiser
    def prediction_type(self, model: ModelBundle) -> str:
        return "flow"

    # ------------------------------------------------------------------ schedules
    def make_scheduler(self, model: ModelBundle, name: str, *, config: dict[str, Any] | None = None) -> Any:
        """Always the model's flow-matching Euler scheduler: ε-space samplers (DDIM, LMS...) do not
        apply to a velocity, so `noise_scheduler` is not used by these families. A sampler named
        on purpose (anything but the defaults `ddim` and `model`) gets a warning rather than
        silence: the images would otherwise not be what the user asked for."""
        from diffusers import FlowMatchEulerDiscreteScheduler

        if name not in ("ddim", "model"):
            warnings.warn(f"noise_scheduler {name!r} does not apply to {self.name} (a flow-matching model): "
                          "it samples with its flow-matching Euler scheduler", stacklevel=2)

        base = config or model.scheduler_config
        return FlowMatchEulerDiscreteScheduler.from_config({k: v for k, v in base.items() if not k.startswith("_")})

    def size_multiple(self, model: ModelBundle) -> int:
        return model.vae_scale_factor * self.patch

    def image_seq_len(self, latents: torch.Tensor) -> int:
        h, w = latents.shape[-2:]
        return (h // self.patch) * (w // self.patch)

    def set_timesteps(self, scheduler: Any, steps: int, latents: torch.Tensor) -> None:
        """The schedule the model's own pipeline samples `steps` steps with."""
        import numpy as np

        kwargs: dict[str, Any] = {}
        if scheduler.config.get("use_dynamic_shifting", False):
            kwargs["mu"] = calculate_mu(dict(scheduler.config), self.image_seq_len(latents))
        if self.linear_sigmas:
            scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), device=latents.device, **kwargs)
        else:
            scheduler.set_timesteps(steps, device=latents.device, **kwargs)

    def partial_denoise(self, model: ModelBundle, network: Any, scheduler: Any, latents: torch.Tensor,
                        uncond: Conditioning, cond: Conditioning, steps: int, max_steps: int,
                        gen: torch.Generator) -> torch.Tensor:
        import torch

        from .base import GUIDANCE_WHILE_DENOISING

        self.set_timesteps(scheduler, max_steps, latents)
        batch = latents.shape[0]
        with network.merged(1.0):
            if self.true_cfg:
                embeds = Conditioning.cat([uncond.expand(batch), cond.expand(batch)])
                for t in scheduler.timesteps[:steps]:
                    v_u, v_c = self.predict(model, torch.cat([latents, latents]), t, embeds).chunk(2)
                    v = v_u + GUIDANCE_WHILE_DENOISING * (v_c - v_u)
                    latents = scheduler.step(v, t, latents, return_dict=False)[0]
            else:
                embeds = cond.expand(batch)
                for t in scheduler.timesteps[:steps]:
                    v = self.predict(model, latents, t, embeds)
                    latents = scheduler.step(v, t, latents, return_dict=False)[0]
        return latents

    def training_input(self, model: ModelBundle, scheduler: Any, x_t: torch.Tensor, k: int,
                       max_steps: int) -> tuple[Any, torch.Tensor]:
        """`timesteps[k]` of the partial denoising's own schedule; flow models take x_t unscaled."""
        self.set_timesteps(scheduler, max_steps, x_t)
        return scheduler.timesteps[k], x_t

    # ------------------------------------------------------------------ export
    def export_lora(self, tensors: dict[str, torch.Tensor], layout: str) -> dict[str, torch.Tensor]:
        """diffusers' LoRA layout (`transformer.<module path>.lora_A/lora_B.weight`), which the family's
        pipeline `load_lora_weights` reads as it is. It has no alpha: alpha/rank is folded into
        lora_B, so the file applies at the membrane's trained strength."""
        from ..membrane.io import ALPHA, DOWN, UP

        super().export_lora(tensors, layout)
        out: dict[str, torch.Tensor] = {}
        for key in sorted(tensors):
            if not key.endswith(DOWN):
                continue
            name = key[: -len(DOWN)]
            path = self.module_path(name)
            down, up = tensors[key], tensors[name + UP]
            rank = down.shape[0]
            alpha = float(tensors[name + ALPHA]) if name + ALPHA in tensors else float(rank)
            out[f"transformer.{path}.lora_A.weight"] = down
            out[f"transformer.{path}.lora_B.weight"] = up.reshape(up.shape[0], rank) * ((alpha or rank) / rank)
        return out

    def module_path(self, lora_name: str) -> str:
        """The module path of a membrane key (`lora_unet_transformer_blocks_0_attn_to_out_0` ->
        `transformer_blocks.0.attn.to_out.0`): the block index is the first number, and the rest is
        one of the block's known layer names."""
        match = re.match(rf"^{re.escape(self.lora_prefix)}({'|'.join(BLOCKS)})_(\d+)_(.+)$", lora_name)
        rest = _LAYER_NAMES.get(match.group(3)) if match else None
        if match is None or rest is None:
            raise SpmctlError(f"{lora_name!r} is not a {self.name} transformer-block layer")
        return f"{match.group(1)}.{match.group(2)}.{rest}"

    # ------------------------------------------------------------------ sampling
    def pipeline_kwargs(self, cond: Conditioning, negative: Conditioning | None) -> dict[str, Any]:
        return pooled_pipeline_kwargs(cond, negative)

    # ------------------------------------------------------------------ memory
    def peak_memory(self, model: ModelBundle, batch: int, height: int, width: int, *, training: bool,
                    checkpointing: bool = False, offload: bool = True):
        """Training keeps the transformer and the membrane (the text encoders, T5's 9 GB among them,
        and the VAE are offloaded once the prompts are encoded, unless `offload` is off); sampling
        keeps every part. The activations are `activation_bytes`'."""
        from .base import MemoryEstimate
        from .memory import membrane_bytes

        denoiser = model.denoiser
        parts = {"denoiser": parameter_bytes(denoiser)}
        if not (training and offload):
            parts["text_encoders"] = sum(parameter_bytes(m) for m in model.text_encoders)
            parts["vae"] = parameter_bytes(model.vae)
        shapes = [(layer.in_features, layer.out_features) for *_, layer in self.membrane_targets(denoiser)]
        side = model.vae_scale_factor * self.patch
        tokens = (height // side) * (width // side) + self.text_length(model)
        activations = self.activation_bytes(denoiser, batch, tokens, training, checkpointing)
        return MemoryEstimate(sum(parts.values()), membrane_bytes(shapes, 1, training), activations, parts)

    def t5_length(self, model: ModelBundle) -> int:
        """T5 tokens the model reads: its pipeline's default (the tiny models read fewer)."""
        return int(model.options.get("max_sequence_length", self.default_text_length))

    def text_length(self, model: ModelBundle) -> int:
        """Tokens of the text stream: CLIP's (SD3) and T5's."""
        return self.clip_tokens + self.t5_length(model)

    def activation_bytes(self, denoiser: Any, batch: int, tokens: int, training: bool,
                         checkpointing: bool) -> int:
        """Activations of the transformer for one call of `batch` x `tokens` (image + text).

        Training: what the membrane-ON call keeps for backward, every block's `SAVED_PER_TOKEN`;
        with checkpointing only each block's input (hidden per token) plus one block recomputed. The
        membrane-OFF call runs first without a graph and frees its working set. Sampling keeps
        nothing between blocks: its peak is one block's working set (twice the batch with CFG)."""
        hidden = int(denoiser.config.num_attention_heads) * int(denoiser.config.attention_head_dim)
        elem = next(denoiser.parameters()).element_size()
        coefs = [_saved_per_token(block) for name in BLOCKS for block in getattr(denoiser, name, [])]
        unit = hidden * elem * tokens * batch
        if not training:
            return int(max(coefs) * unit * (2 if self.true_cfg else 1))
        if checkpointing:
            return int((len(coefs) + max(coefs)) * unit)
        return int(sum(coefs) * unit)


# What one block keeps for backward per token, in units of its width x element size: measured on the
# real shapes (bf16, membranes attached, PyTorch's fused attention) by benchmarks/flow_memory.py.
# (Membranes on the modulation make its shift/scale/gate need a gradient, so the per-token inputs
# they multiply are kept too: ~20% more than a membrane without them.)
SAVED_PER_TOKEN = {"FluxTransformerBlock": 24.2, "FluxSingleTransformerBlock": 21.2, "JointTransformerBlock": 21.0}
SAVED_PER_TOKEN_QK_NORM = 27.1  # SD3.5's joint blocks normalise q and k (RMSNorm) and keep more


def _saved_per_token(block: Any) -> float:
    name = type(block).__name__
    if name == "JointTransformerBlock" and getattr(block.attn, "norm_q", None) is not None:
        return SAVED_PER_TOKEN_QK_NORM
    return SAVED_PER_TOKEN.get(name, max(SAVED_PER_TOKEN_QK_NORM, *SAVED_PER_TOKEN.values()))


# every Linear a block may hold, by its key form (dots as underscores) -> its module path in the block
_LAYER_NAMES = {p.replace(".", "_"): p for p in (
    "attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj",
    "attn.add_v_proj", "attn.to_add_out", "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0",
    "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2", "proj_mlp", "proj_out",
    *MODULATION)}
