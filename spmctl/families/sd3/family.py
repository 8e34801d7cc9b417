"""Stable Diffusion 3 / 3.5 (`StableDiffusion3Pipeline`): a flow-matching MMDiT reading CLIP-L ⊕
CLIP-G's penultimate per-token states (zero-padded to T5's width) followed by T5's, and their
projected pooled outputs; sampled with classifier-free guidance.

Choices (the README's SD3 section gives the reasons):
- FT gates compare prompts by the CLIP part of the conditioning (77 x (768 + 1280): both CLIP
  encoders' states, as the model reads them) and CLIP-L's tokens; T5's part is left out;
- anchors: the CLIP part (without its zero padding), T5's part and the pooled vector, each drawn
  in its own space (flow.sample_joint_anchors).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..base import Conditioning, GateFeatures, ModelBundle
from ..flow import FlowFamily, Region
from .tiny import TINY_SD3_NAMES

if TYPE_CHECKING:
    import torch


class SD3Family(FlowFamily):
    name = "sd3"
    description = "Stable Diffusion 3/3.5 (MMDiT, CLIP-L + CLIP-G + T5, flow matching)"
    tiny_names = TINY_SD3_NAMES
    pipeline_class_name = "StableDiffusion3Pipeline"
    text_encoders = 3  # CLIP-L, CLIP-G, T5
    denoiser_class_name = "SD3Transformer2DModel"
    single_file_markers = ("joint_blocks.0.x_block.attn.qkv.weight",)
    true_cfg = True
    linear_sigmas = False
    default_text_length = 256  # StableDiffusion3Pipeline's max_sequence_length
    clip_tokens = 77

    def build_tiny(self) -> Any:
        from .tiny import build_tiny_sd3_pipeline

        return build_tiny_sd3_pipeline()

    # ------------------------------------------------------------------ text
    def encode(self, model: ModelBundle, prompts: list[str], *, clip_skip: int = 1) -> Conditioning:
        """StableDiffusion3Pipeline's own encoding: [CLIP-L ⊕ CLIP-G padded; T5] and the pooled pair."""
        import torch

        pipe = self.pipeline(model, None)
        with torch.no_grad():
            embeds, _, pooled, _ = pipe.encode_prompt(
                prompts, prompt_2=None, prompt_3=None, device=model.text_encoders[0].device,
                do_classifier_free_guidance=False, max_sequence_length=self.t5_length(model),
                clip_skip=None if clip_skip <= 1 else clip_skip - 1)
        return Conditioning(embeds, pooled.to(embeds.device))

    def clip_width(self, model: ModelBundle) -> int:
        return sum(int(enc.config.hidden_size) for enc in model.text_encoders[:2])

    def gate_features(self, model: ModelBundle, texts: list[str]) -> GateFeatures:
        """Both CLIP encoders' per-token states (what the model reads of CLIP), and CLIP-L's tokens.
        Not T5's part: CLIP is causal, so its padding positions each summarise the prompt and the
        flattened cosine is a prompt similarity, as the method's clipcos is on SD 1.x."""
        import torch

        from ...models.text import tokenize

        pipe = self.pipeline(model, None)
        device = model.text_encoders[0].device
        with torch.no_grad():
            parts = [pipe._get_clip_prompt_embeds(texts, device=device, clip_model_index=i)[0] for i in (0, 1)]
        embeds = torch.cat(parts, dim=-1)
        return GateFeatures(embeds.float().flatten(1).cpu(), tokenize(model.tokenizers[0], texts).tolist())

    def gate_embeds_of(self, model: ModelBundle, cond: Conditioning, clip_skip: int) -> torch.Tensor | None:
        if clip_skip > 1:
            return None  # gates compare the states the model reads by default
        tokens = int(model.tokenizers[0].model_max_length)
        return cond.embeds[:, :tokens, : self.clip_width(model)].float().flatten(1).cpu()

    def text_regions(self, target: Conditioning) -> list[Region]:
        """CLIP's 77 tokens up to its width (the rest of those columns is the pipeline's zero
        padding: found as the columns that are zero in every CLIP token), then T5's tokens."""
        import torch

        clip = target.embeds[0, :77]
        used = torch.nonzero(clip.abs().sum(dim=0)).flatten()
        width = int(used.max()) + 1 if used.numel() else clip.shape[-1]
        return [(slice(0, 77), slice(0, width)), (slice(77, None), slice(None))]

    # ------------------------------------------------------------------ the denoiser
    def predict(self, model: ModelBundle, latents: torch.Tensor, t: Any, cond: Conditioning) -> torch.Tensor:
        """The velocity; SD3 takes the timestep on the 0..1000 scale."""
        import torch

        tr = model.denoiser
        param = next(tr.parameters())
        b = latents.shape[0]
        timestep = torch.as_tensor(t, device=latents.device).to(param.dtype).expand(b)
        return tr(hidden_states=latents.to(param.dtype), timestep=timestep,
                  encoder_hidden_states=cond.embeds.to(latents.device, param.dtype),
                  pooled_projections=cond.pooled.to(latents.device, param.dtype), return_dict=False)[0]
