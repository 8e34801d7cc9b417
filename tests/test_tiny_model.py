"""The built-in tiny SD: deterministic, complete, and savable as a diffusers folder."""

from __future__ import annotations

from pathlib import Path

import torch

from spmctl.families import load_model
from spmctl.families.sd1.tiny import build_tiny_pipeline, build_tiny_unet


def _unet_out(unet, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, 8, 8, generator=g)
    emb = torch.randn(2, 77, 32, generator=g)
    with torch.no_grad():
        return unet(x, 500, encoder_hidden_states=emb).sample


def test_same_seed_same_weights_other_seed_other_weights():
    a, b, c = build_tiny_unet(0), build_tiny_unet(0), build_tiny_unet(1)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name
    assert not torch.equal(a.conv_in.weight, c.conv_in.weight)


def test_sd1_architecture_with_cross_attention_transformers():
    pipe = build_tiny_pipeline()
    transformers = [m for m in pipe.unet.modules() if type(m).__name__ == "Transformer2DModel"]
    assert len(transformers) == 4
    assert isinstance(transformers[0].proj_in, torch.nn.Conv2d)  # SD 1.x style
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size
    ids = pipe.tokenizer("An Abstractionism image of a cat").input_ids
    assert pipe.tokenizer.convert_ids_to_tokens(ids)[2] == "abstractionism</w>"  # concept names are one token
    size = sum(p.numel() * 4 for m in (pipe.unet, pipe.vae, pipe.text_encoder) for p in m.parameters())
    assert size < 8 * 2**20  # a few MB


def test_saves_and_reloads_as_a_diffusers_folder(tiny_model_dir: Path):
    assert (tiny_model_dir / "model_index.json").exists()
    loaded = load_model(str(tiny_model_dir))
    builtin = load_model("tiny")
    assert torch.equal(_unet_out(loaded.unet), _unet_out(builtin.unet))
    ids = builtin.tokenizer(["a cat"], return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(loaded.text_encoder(ids)[0], builtin.text_encoder(ids)[0])
    image = build_tiny_pipeline()("a cat", num_inference_steps=2, height=64, width=64,
                                  generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (64, 64)
