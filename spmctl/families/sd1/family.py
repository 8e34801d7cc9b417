"""The SD 1.x/2.x family: a UNet2DConditionModel, one CLIP text encoder, ε or v prediction.

- Membranes: every Linear/Conv2d inside the UNet's Transformer2DModels (attention projections,
  feed-forward, proj_in/proj_out), as the original SPM code places them.
- Conditioning: the text encoder's last hidden state (77 x d), or with clip_skip the n-th last layer
  through the final layer norm.
- FT gates: the flattened last hidden state (padding positions included, as the original computes
  it) and the prompt's CLIP token ids.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..base import (
    Conditioning,
    GateFeatures,
    LoadOptions,
    MemoryEstimate,
    ModelBundle,
    ModelFamily,
    ModelProbe,
    Target,
)

if TYPE_CHECKING:
    import torch
    from torch import nn

PIPELINES = ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline", "StableDiffusionInpaintPipeline")
_CHUNK = 64  # texts per text-encoder call when scoring FT gates


class SD1Family(ModelFamily):
    name = "sd1"
    description = "Stable Diffusion 1.x and 2.x (UNet, one CLIP text encoder; ε or v prediction)"
    tiny_names = ("tiny", "builtin:tiny-sd")
    memory_architecture = "sd15"  # whose measured activation coefficients (families.memory) apply

    # ------------------------------------------------------------------ finding and loading
    def detect(self, probe: ModelProbe) -> bool:
        if probe.model_index is not None:
            return probe.pipeline_class in PIPELINES
        if probe.keys is not None:  # CompVis/A1111 layout: the LDM UNet and a CLIP (1.x) or OpenCLIP (2.x)
            has_unet = any(k.startswith("model.diffusion_model.input_blocks.") for k in probe.keys)
            return has_unet and any(k.startswith("cond_stage_model.") for k in probe.keys)
        return False

    def load(self, source: str, options: LoadOptions) -> ModelBundle:
        from .loading import load_sd1

        return load_sd1(self, source, options)

    def bundle_from_pipeline(self, pipe: Any, source: str) -> ModelBundle:
        from .loading import from_pipeline

        return from_pipeline(self, pipe, source, pipe.scheduler.config.get("prediction_type") == "v_prediction")

    # ------------------------------------------------------------------ membranes
    def membrane_targets(self, denoiser: nn.Module) -> list[Target]:
        from ...membrane.network import find_targets

        return find_targets(denoiser)  # every Linear/Conv2d of its Transformer2DModels

    # ------------------------------------------------------------------ text
    def encode(self, model: ModelBundle, prompts: list[str], *, clip_skip: int = 1) -> Conditioning:
        from ...models.text import encode_prompts

        return Conditioning(encode_prompts(model.tokenizer, model.text_encoder, prompts, clip_skip))

    def gate_features(self, model: ModelBundle, texts: list[str]) -> GateFeatures:
        """Flattened fp32 last hidden states and the token ids (padded to 77, as SD encodes prompts)."""
        import torch

        from ...models.text import tokenize

        ids = tokenize(model.tokenizer, texts)
        outs = []
        with torch.no_grad():
            for start in range(0, len(texts), _CHUNK):
                part = ids[start : start + _CHUNK].to(model.text_encoder.device)
                outs.append(model.text_encoder(part)[0].float().flatten(1).cpu())
        return GateFeatures(torch.cat(outs), ids.tolist())

    def gate_embeds_of(self, model: ModelBundle, cond: Conditioning, clip_skip: int) -> torch.Tensor | None:
        # at clip_skip 1 the generation embeddings are the last hidden states the gates compare
        return cond.embeds.float().flatten(1).cpu() if clip_skip <= 1 else None

    # ------------------------------------------------------------------ the denoiser
    def predict(self, model: ModelBundle, latents: torch.Tensor, t: Any, cond: Conditioning) -> torch.Tensor:
        unet = model.denoiser
        return unet(latents, t, encoder_hidden_states=cond.embeds.to(model.dtype)).sample

    def make_scheduler(self, model: ModelBundle, name: str, *, config: dict[str, Any] | None = None) -> Any:
        from ...models.loading import make_scheduler

        return make_scheduler(name, model.scheduler_config if config is None else config,
                              bool(model.options.get("v_pred")))

    def latent_shape(self, model: ModelBundle, batch: int, height: int, width: int) -> tuple[int, ...]:
        factor = model.vae_scale_factor  # the UNet's input channels, as StableDiffusionPipeline draws them
        return (batch, int(model.denoiser.config.in_channels), height // factor, width // factor)

    def size_multiple(self, model: ModelBundle) -> int:
        return model.vae_scale_factor * 2 ** (len(model.denoiser.config.block_out_channels) - 1)

    # ------------------------------------------------------------------ sampling and export
    def pipeline(self, model: ModelBundle, scheduler: Any) -> Any:
        from diffusers import StableDiffusionPipeline

        return StableDiffusionPipeline(
            vae=model.vae, text_encoder=model.text_encoder, tokenizer=model.tokenizer, unet=model.denoiser,
            scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )

    def single_file_state(self, model: ModelBundle) -> dict[str, torch.Tensor]:
        from .ldm import to_ldm_checkpoint

        return to_ldm_checkpoint(model)

    # ------------------------------------------------------------------ memory
    def peak_memory(self, model: ModelBundle, batch: int, height: int, width: int, *, training: bool,
                    checkpointing: bool = False, offload: bool = True) -> MemoryEstimate:
        from ..memory import unet_estimate

        return unet_estimate(model, self.membrane_targets(model.denoiser), batch, height, width,
                             training=training, checkpointing=checkpointing, offload=offload,
                             architecture=self.memory_architecture)
