"""SDXL's building blocks on the tiny SDXL: the model itself, prompt encoding as diffusers' SDXL
pipeline does it, which layers carry membranes, and kohya's SDXL LoRA layout as diffusers reads it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from spmctl.families.sdxl.lora import layers_per_block_of, sgm_path, to_kohya
from spmctl.families.sdxl.text import encode_xl, time_ids
from spmctl.families.sdxl.tiny import build_tiny_sdxl_pipeline, build_tiny_sdxl_unet
from spmctl.membrane import MembraneNetwork
from spmctl.models.tiny import save_tiny

GEN_KW = {"num_inference_steps": 3, "height": 64, "width": 64, "output_type": "np"}


@pytest.fixture(scope="module")
def pipe():
    p = build_tiny_sdxl_pipeline()
    p.set_progress_bar_config(disable=True)
    return p


def _image(pipe, prompt: str = "a photo of a cat", seed: int = 0):
    with torch.no_grad():
        return pipe(prompt, generator=torch.Generator().manual_seed(seed), **GEN_KW).images


def test_tiny_sdxl_is_deterministic_and_sdxl_shaped(pipe, tmp_path: Path):
    a, b, c = build_tiny_sdxl_unet(0), build_tiny_sdxl_unet(0), build_tiny_sdxl_unet(1)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name
    assert not torch.equal(a.conv_in.weight, c.conv_in.weight)
    cfg = pipe.unet.config
    hidden = pipe.text_encoder.config.hidden_size, pipe.text_encoder_2.config.hidden_size
    assert hidden[0] != hidden[1] and cfg.cross_attention_dim == sum(hidden)
    assert cfg.addition_embed_type == "text_time"
    assert cfg.projection_class_embeddings_input_dim == (
        pipe.text_encoder_2.config.projection_dim + 6 * cfg.addition_time_embed_dim)
    image = _image(pipe)
    assert image.shape == (1, 64, 64, 3) and image.std() > 0.01
    # written as a diffusers folder, it loads back into diffusers' SDXL pipeline with the same weights
    from diffusers import StableDiffusionXLPipeline

    folder = save_tiny(build_tiny_sdxl_pipeline(), tmp_path / "tiny-sdxl")
    loaded = StableDiffusionXLPipeline.from_pretrained(folder)
    loaded.set_progress_bar_config(disable=True)
    assert abs(_image(loaded) - image).max() < 1e-5  # (float noise: transformers picks its attention kernel)


def test_prompt_encoding_matches_diffusers_sdxl_pipeline(pipe):
    prompts = ["a photo of a cat", "van gogh style"]
    ours = encode_xl([pipe.tokenizer, pipe.tokenizer_2], [pipe.text_encoder, pipe.text_encoder_2], prompts)
    tokens, _, pooled, _ = pipe.encode_prompt(prompts, do_classifier_free_guidance=False)
    assert torch.equal(ours.tokens, tokens) and torch.equal(ours.pooled, pooled)
    # clip_skip 2 (spmctl: one layer before the family's default) is diffusers' clip_skip=1
    ours2 = encode_xl([pipe.tokenizer, pipe.tokenizer_2], [pipe.text_encoder, pipe.text_encoder_2], prompts, 2)
    tokens2, *_ = pipe.encode_prompt(prompts, do_classifier_free_guidance=False, clip_skip=1)
    assert torch.equal(ours2.tokens, tokens2) and not torch.equal(tokens2, tokens)
    # the pipeline's own size conditioning for a 64x64 image
    ids = pipe._get_add_time_ids((64, 64), (0, 0), (64, 64), torch.float32, pipe.text_encoder_2.config.projection_dim)
    assert torch.equal(time_ids(64, 64), ids)


def test_membranes_sit_on_every_linear_of_the_transformer_blocks_only(pipe):
    net = MembraneNetwork(pipe.unet)
    try:
        names = net.module_names
        # 4 Transformer2DModels (proj_in, proj_out) holding 8 transformer layers of 10 linears each
        assert len(names) == 4 * 2 + 8 * 10
        assert all(".attentions." in n for n in names)
        assert not any(n.startswith(("add_embedding", "time_embedding")) or ".resnets." in n for n in names)
        assert all(m.is_conv is False for _, m in net.named_wrappers())  # SDXL: linear proj_in/proj_out
    finally:
        net.detach()


def test_sgm_block_arithmetic_of_real_sdxl():
    # SDXL base: layers_per_block 2; kohya's names of well-known SDXL modules
    assert sgm_path("down_blocks.1.attentions.0.proj_in", 2) == "input_blocks.4.1.proj_in"
    assert sgm_path("down_blocks.2.attentions.1.transformer_blocks.9.attn2.to_k", 2) == (
        "input_blocks.8.1.transformer_blocks.9.attn2.to_k")
    assert sgm_path("mid_block.attentions.0.transformer_blocks.0.ff.net.2", 2) == (
        "middle_block.1.transformer_blocks.0.ff.net.2")
    assert sgm_path("up_blocks.0.attentions.2.proj_out", 2) == "output_blocks.2.1.proj_out"
    assert sgm_path("up_blocks.1.attentions.0.proj_out", 2) == "output_blocks.3.1.proj_out"
    # a membrane file's names tell the layers per block: up levels hold one attention block more
    names = [f"lora_unet_up_blocks_{b}_attentions_{j}_proj_in" for b in (0, 1) for j in range(3)]
    assert layers_per_block_of(names + ["lora_unet_down_blocks_1_attentions_1_proj_in"]) == 2


def test_kohya_sdxl_layout_loads_in_diffusers_with_the_same_effect(pipe, tmp_path: Path):
    from safetensors.torch import save_file

    net = MembraneNetwork(pipe.unet, rank=2, alpha=1.0)
    gen = torch.Generator().manual_seed(5)
    for _, m in net.named_wrappers():
        m.lora_up.data.copy_(torch.randn(m.lora_up.shape, generator=gen) * 0.5)
    strength = 0.7
    with net.gated(strength):
        ours = _image(pipe)
    tensors = to_kohya(net.state_dict_for(0))
    net.detach()
    base = _image(pipe)
    assert all(k.startswith(("lora_unet_input_blocks", "lora_unet_middle_block", "lora_unet_output_blocks"))
               for k in tensors)
    path = tmp_path / "kohya.safetensors"
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    pipe.load_lora_weights(str(path), adapter_name="spm")
    try:
        pipe.set_adapters(["spm"], adapter_weights=[strength])
        theirs = _image(pipe)
    finally:
        pipe.delete_adapters("spm")
    assert abs(ours - base).max() > 0.01  # the membrane does something...
    assert abs(ours - theirs).max() < 1e-4  # ...and diffusers applies exactly that
