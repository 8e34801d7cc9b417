"""FLUX.1 (`FluxPipeline`): a flow-matching MMDiT reading T5's per-token states and CLIP-L's pooled
vector; FLUX.1-dev is guidance-distilled (the guidance is an embedding, not a second pass).

Choices (the README's FLUX section gives the reasons at length):
- training predictions and the partial denoising run at guidance embedding `TRAIN_GUIDANCE`;
- FT gates compare prompts by CLIP-L's per-token last hidden states (77 x 768, as SD 1.x's
  clipcos does) and CLIP's tokens, not by T5's states;
- anchors: T5's part and the pooled CLIP vector, each drawn in its own space (flow.sample_joint_anchors).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..base import Conditioning, GateFeatures, ModelBundle
from ..flow import FlowFamily
from .tiny import TINY_FLUX_NAMES

if TYPE_CHECKING:
    import torch

# The guidance embedding FLUX.1-dev gets in every training call (partial denoising and predictions):
# 3.5, FluxPipeline's default, the value the model is sampled at. The membrane is learned at the
# guidance it will be used at; dev has no unconditional branch to guide with, so this embedding
# also stands in for the method's classifier-free guidance 3 while denoising.
TRAIN_GUIDANCE = 3.5


def pack(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, h/2·w/2, 4C): FLUX's 2x2 patch tokens (FluxPipeline._pack_latents)."""
    from diffusers import FluxPipeline

    b, c, h, w = latents.shape
    return FluxPipeline._pack_latents(latents, b, c, h, w)


def unpack(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The inverse of `pack`."""
    b, _, c4 = tokens.shape
    return tokens.view(b, h // 2, w // 2, c4 // 4, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c4 // 4, h, w)


class FluxFamily(FlowFamily):
    name = "flux"
    description = "FLUX.1 dev/schnell (MMDiT, CLIP-L pooled + T5, flow matching, guidance embedding)"
    tiny_names = TINY_FLUX_NAMES
    pipeline_class_name = "FluxPipeline"
    text_encoders = 2  # CLIP-L, T5
    denoiser_class_name = "FluxTransformer2DModel"
    single_file_markers = ("double_blocks.0.img_attn.qkv.weight",)
    true_cfg = False
    linear_sigmas = True
    default_text_length = 512  # FluxPipeline's max_sequence_length

    def build_tiny(self) -> Any:
        from .tiny import build_tiny_flux_pipeline

        return build_tiny_flux_pipeline()

    # ------------------------------------------------------------------ text
    def encode(self, model: ModelBundle, prompts: list[str], *, clip_skip: int = 1) -> Conditioning:
        """FluxPipeline's own encoding: T5's states (B, L, d) and CLIP-L's pooled output (B, 768)."""
        import torch

        pipe = self.pipeline(model, None)
        with torch.no_grad():
            embeds, pooled, _ = pipe.encode_prompt(prompts, prompt_2=None, device=model.text_encoders[1].device,
                                                   max_sequence_length=self.t5_length(model))
        return Conditioning(embeds, pooled.to(embeds.device))

    def gate_features(self, model: ModelBundle, texts: list[str]) -> GateFeatures:
        """CLIP-L's last hidden state (77 x d, padding included) and CLIP's token ids. Not T5's: CLIP
        is causal, so its padding positions each summarise the prompt and the flattened cosine is a
        prompt similarity, as the method's clipcos is on SD 1.x; T5 attends both ways over up to 512
        mostly-padding positions. CLIP-L is also 40x smaller, so gates need not keep T5 loaded."""
        from ...models.text import encode_prompts, tokenize

        tokenizer, encoder = model.tokenizers[0], model.text_encoders[0]
        embeds = encode_prompts(tokenizer, encoder, texts)
        return GateFeatures(embeds.float().flatten(1).cpu(), tokenize(tokenizer, texts).tolist())

    # ------------------------------------------------------------------ the denoiser
    def predict(self, model: ModelBundle, latents: torch.Tensor, t: Any, cond: Conditioning) -> torch.Tensor:
        """The velocity for unpacked latents (B, C, h, w), at guidance embedding TRAIN_GUIDANCE
        (models without one, e.g. schnell, get none)."""
        import torch
        from diffusers import FluxPipeline

        tr = model.denoiser
        param = next(tr.parameters())
        dtype, device = param.dtype, latents.device
        b, _, h, w = latents.shape
        img_ids = FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, device, dtype)
        txt_ids = torch.zeros(cond.embeds.shape[1], 3, device=device, dtype=dtype)
        guidance = (torch.full((b,), TRAIN_GUIDANCE, device=device, dtype=torch.float32)
                    if tr.config.guidance_embeds else None)
        timestep = torch.as_tensor(t, device=device).to(dtype).expand(b) / 1000
        out = tr(hidden_states=pack(latents.to(dtype)), timestep=timestep, guidance=guidance,
                 pooled_projections=cond.pooled.to(device, dtype), encoder_hidden_states=cond.embeds.to(device, dtype),
                 txt_ids=txt_ids, img_ids=img_ids, return_dict=False)[0]
        return unpack(out, h, w)

    # ------------------------------------------------------------------ sampling
    def sample_latents(self, model: ModelBundle, height: int, width: int, gen: torch.Generator,
                       dtype: torch.dtype) -> torch.Tensor:
        """Drawn unpacked as FluxPipeline.prepare_latents draws them, then packed (its `latents=` form)."""
        return pack(super().sample_latents(model, height, width, gen, dtype))

    def pipeline_kwargs(self, cond: Conditioning, negative: Conditioning | None) -> dict[str, Any]:
        """No negative: FLUX.1 is sampled without an unconditional branch (its guidance is embedded)."""
        return {"prompt_embeds": cond.embeds, "pooled_prompt_embeds": cond.pooled}
