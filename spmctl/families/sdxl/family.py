"""The SDXL family: a UNet2DConditionModel with `addition_embed_type="text_time"`, two CLIP text
encoders (CLIP ViT-L and OpenCLIP ViT-bigG), ε prediction (v with `pretrained_model.v_pred`).

What differs from SD 1.x (everything else, e.g. which layers carry membranes, is SD 1.x's):
- conditioning (`text.encode_xl`): both encoders' penultimate hidden states concatenated per token
  (77 x 2048 for SDXL base) and encoder 2's pooled projection (1280); the UNet also takes six size
  "time ids", which `predict` derives from the latents' size as the pipeline does by default
  (original = target = the image size, no crop);
- membranes: every Linear of the UNet's Transformer2DModels (SDXL's proj_in/proj_out are Linear, not
  1x1 convs): 722 layers on SDXL base (70 transformer layers x 10 + 11 x proj_in/proj_out);
- anchors: drawn around the target's per-token embeddings and, independently, around its pooled
  embedding (the original SPM's SDXL trainer draws both the same way);
- FT gates: the concatenated per-token embeddings of both encoders (see `gate_features`);
- export: kohya's SDXL layout (`lora.py`), the names ComfyUI and A1111 read for SDXL;
- sampling: diffusers' StableDiffusionXLPipeline; an empty negative prompt is zeros, as that
  pipeline does by default (`force_zeros_for_empty_prompt`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...errors import SpmctlError, one_line
from ..base import Conditioning, GateFeatures, LoadOptions, ModelBundle, ModelProbe, pooled_pipeline_kwargs
from ..sd1.family import SD1Family
from .tiny import TINY_SDXL_NAMES

if TYPE_CHECKING:
    import torch

PIPELINES = ("StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline", "StableDiffusionXLInpaintPipeline")
_CHUNK = 64  # texts per text-encoder call when scoring FT gates
GUIDANCE_RESCALE = 0.7  # train_spm_xl.py's partial denoising (predict_noise_xl's default)


class SDXLFamily(SD1Family):
    name = "sdxl"
    description = "Stable Diffusion XL (UNet, two CLIP text encoders, pooled embedding and size ids; ε)"
    tiny_names = TINY_SDXL_NAMES
    lora_layouts = ("kohya", "diffusers")  # kohya: the sgm names SDXL tools read; diffusers: the file's own
    memory_architecture = "sdxl"  # activation coefficients measured on the real SDXL UNet (families.memory)

    # ------------------------------------------------------------------ finding and loading
    def detect(self, probe: ModelProbe) -> bool:
        if probe.model_index is not None:
            return probe.pipeline_class in PIPELINES
        if probe.keys is not None:  # Stability's single file: `conditioner.embedders` and the UNet's label_emb
            return (any(k.startswith("conditioner.embedders.") for k in probe.keys)
                    and any(k.startswith("model.diffusion_model.label_emb.") for k in probe.keys))
        return False

    def load(self, source: str, options: LoadOptions) -> ModelBundle:
        from diffusers import StableDiffusionXLPipeline

        from ...models.loading import load_pipeline, prepare_parts, quiet_libraries, tiny_threads

        quiet_libraries()
        if self.is_tiny(source):
            from .tiny import build_tiny_sdxl_pipeline

            pipe = build_tiny_sdxl_pipeline()
            source = "builtin:tiny-sdxl"
            tiny_threads(options.device)
        else:
            pipe = load_pipeline(source, StableDiffusionXLPipeline, lambda file: _single_file(file, options),
                                 {"add_watermarker": False})
            local = Path(source).expanduser()
            source = str(local) if local.exists() else source
        model = self._bundle(pipe, source, options.v_pred)
        prepare_parts([model.denoiser, *model.text_encoders, model.vae], options.dtype, options.device)
        return model

    def bundle_from_pipeline(self, pipe: Any, source: str) -> ModelBundle:
        return self._bundle(pipe, source, pipe.scheduler.config.get("prediction_type") == "v_prediction")

    def _bundle(self, pipe: Any, source: str, v_pred: bool) -> ModelBundle:
        if getattr(pipe.unet.config, "addition_embed_type", None) != "text_time" or pipe.text_encoder_2 is None:
            raise SpmctlError(f"{source}: not an SDXL model (its UNet has no text_time conditioning or it "
                              "lacks the second text encoder); set pretrained_model.family")
        if pipe.text_encoder is None:
            raise SpmctlError(f"{source}: an SDXL refiner (one text encoder) is not supported; use an SDXL base")
        zeros = bool(pipe.config.get("force_zeros_for_empty_prompt", True))
        return ModelBundle(self, source, pipe.unet, pipe.vae, self.scheduler_config_of(pipe),
                           (pipe.tokenizer, pipe.tokenizer_2), (pipe.text_encoder, pipe.text_encoder_2),
                           {"v_pred": v_pred, "force_zeros_for_empty_prompt": zeros})

    # ------------------------------------------------------------------ text
    def encode(self, model: ModelBundle, prompts: list[str], *, clip_skip: int = 1) -> Conditioning:
        from .text import encode_xl

        embeds = encode_xl(model.tokenizers, model.text_encoders, prompts, clip_skip)
        return Conditioning(embeds.tokens, embeds.pooled)

    def gate_features(self, model: ModelBundle, texts: list[str]) -> GateFeatures:
        """FT compares prompts by the concatenated per-token embeddings of both encoders (penultimate
        layers, 77 x (d1 + d2), padding positions included), flattened. Why these: they are what the
        UNet's cross-attention reads, i.e. the space the membranes act in; both encoders' views of the
        concept count (the pooled vector is encoder 2's alone, one summary per prompt); and it is SD
        1.x's definition carried over (the conditioning tokens, as the original SPM's clipcos), so a
        gate means the same in both families. The sampler has them already: no extra encoding."""
        import torch

        parts = [self.encode(model, texts[i:i + _CHUNK]).embeds.float().flatten(1).cpu()
                 for i in range(0, len(texts), _CHUNK)]
        return GateFeatures(torch.cat(parts), self.gate_token_ids(model, texts))

    def gate_special_ids(self, model: ModelBundle) -> set[int]:
        # the ids compared are the first tokenizer's; the second pads with "!", which is a word there
        tokenizer = model.tokenizer
        ids = set(getattr(tokenizer, "all_special_ids", []) or [])
        ids |= {int(v) for v in (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
                if v is not None}
        return ids

    def warn_truncated(self, model: ModelBundle, texts: list[str], warn: Any) -> None:
        super().warn_truncated(model, texts, warn)  # both tokenizers read the same 77 tokens

    def negative_conditioning(self, model: ModelBundle, prompt: str, *, clip_skip: int = 1) -> Conditioning:
        """An empty negative prompt is zeros, as StableDiffusionXLPipeline makes it by default (its
        `force_zeros_for_empty_prompt`, true for SDXL base): the same images as diffusers' own."""
        cond = self.encode(model, [prompt], clip_skip=clip_skip)
        if prompt == "" and model.options.get("force_zeros_for_empty_prompt", True):
            import torch

            assert cond.pooled is not None
            return Conditioning(torch.zeros_like(cond.embeds), torch.zeros_like(cond.pooled), cond.extra)
        return cond

    def sample_anchors(self, target: Conditioning, count: int, gen: torch.Generator) -> Conditioning:
        from ..anchors import sample_anchors

        assert target.pooled is not None, "an SDXL conditioning has a pooled embedding"
        tokens = sample_anchors(target.embeds, count, gen)
        pooled = sample_anchors(target.pooled, count, gen)
        return Conditioning(tokens, pooled, target.expand(count).extra)

    # ------------------------------------------------------------------ the denoiser
    def predict(self, model: ModelBundle, latents: torch.Tensor, t: Any, cond: Conditioning) -> torch.Tensor:
        from .text import time_ids

        dtype = model.dtype
        ids = cond.extra.get("time_ids")
        if ids is None:  # the pipeline's default: original = target = the image size, no crop
            factor = model.vae_scale_factor
            ids = time_ids(latents.shape[-2] * factor, latents.shape[-1] * factor).expand(latents.shape[0], -1)
        assert cond.pooled is not None, "an SDXL conditioning has a pooled embedding"
        added = {"text_embeds": cond.pooled.to(dtype), "time_ids": ids.to(device=latents.device, dtype=dtype)}
        return model.denoiser(latents, t, encoder_hidden_states=cond.embeds.to(dtype),
                              added_cond_kwargs=added).sample

    def guide(self, uncond: torch.Tensor, cond: torch.Tensor, scale: float) -> torch.Tensor:
        """The partial denoising's guidance as the original SPM's SDXL trainer does it: CFG, then
        diffusers' `rescale_noise_cfg` at 0.7 (SDXL's own recipe against over-exposure at high CFG)."""
        from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg

        return rescale_noise_cfg(super().guide(uncond, cond, scale), cond, guidance_rescale=GUIDANCE_RESCALE)

    def make_scheduler(self, model: ModelBundle, name: str, *, config: dict[str, Any] | None = None) -> Any:
        # SDXL's published scheduler config carries DDIM's keys; one without them must not give
        # training a DDIM that clips its x0 estimate to [-1, 1] (diffusers' default), unlike SD's
        own = model.scheduler_config if config is None else config
        return super().make_scheduler(model, name, config={"clip_sample": False, "set_alpha_to_one": False, **own})

    # ------------------------------------------------------------------ sampling and export
    def pipeline(self, model: ModelBundle, scheduler: Any) -> Any:
        from diffusers import StableDiffusionXLPipeline

        (tok1, tok2), (enc1, enc2) = model.tokenizers, model.text_encoders
        return StableDiffusionXLPipeline(
            vae=model.vae, text_encoder=enc1, text_encoder_2=enc2, tokenizer=tok1, tokenizer_2=tok2,
            unet=model.denoiser, scheduler=scheduler, add_watermarker=False,
            force_zeros_for_empty_prompt=bool(model.options.get("force_zeros_for_empty_prompt", True)),
        )

    def pipeline_kwargs(self, cond: Conditioning, negative: Conditioning | None) -> dict[str, Any]:
        return pooled_pipeline_kwargs(cond, negative)

    def export_lora(self, tensors: dict[str, torch.Tensor], layout: str) -> dict[str, torch.Tensor]:
        from .lora import to_kohya

        tensors = super().export_lora(tensors, layout)
        return to_kohya(tensors) if layout == "kohya" else tensors

    def single_file_state(self, model: ModelBundle) -> dict[str, torch.Tensor]:
        raise SpmctlError("sdxl: single-file export is not supported yet (export --format diffusers)")


def _single_file(path: Path, options: LoadOptions) -> Any:
    """Stability's single-file SDXL (`sd_xl_base_1.0.safetensors`); offline it needs the configs."""
    from diffusers import StableDiffusionXLPipeline

    kwargs: dict[str, Any] = {"add_watermarker": False}
    if options.v_pred:
        kwargs["prediction_type"] = "v_prediction"
    if options.config:
        kwargs["config"] = options.config
        kwargs["local_files_only"] = Path(options.config).expanduser().is_dir()
    try:
        return StableDiffusionXLPipeline.from_single_file(str(path), **kwargs)
    except Exception as exc:
        hint = "" if options.config else ("; offline, set pretrained_model.config to a diffusers SDXL folder "
                                          "(or hub id) holding this model's configs")
        raise SpmctlError(f"{path}: cannot load single-file SDXL checkpoint: {one_line(exc, limit=300)}"
                          f"{hint}") from None
