"""The built-in tiny SD3 and FLUX: deterministic, offline, and real diffusers pipelines."""

from __future__ import annotations

import hashlib

import pytest

from spmctl.models.tiny import save_tiny

FAMILIES = ["sd3", "flux"]


def _build(name: str, seed: int = 0):
    if name == "sd3":
        from spmctl.families.sd3.tiny import build_tiny_sd3_pipeline

        return build_tiny_sd3_pipeline(seed)
    from spmctl.families.flux.tiny import build_tiny_flux_pipeline

    return build_tiny_flux_pipeline(seed)


def _digest(pipe) -> str:
    h = hashlib.sha256()
    for part in ("transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3"):
        module = getattr(pipe, part, None)
        if module is None:
            continue
        for key, value in sorted(module.state_dict().items()):
            h.update(key.encode())
            h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _generate(pipe, prompt: str = "a photo of a cat"):
    import torch

    out = pipe(prompt, num_inference_steps=3, height=64, width=64, max_sequence_length=32,
               generator=torch.Generator().manual_seed(0), output_type="np")
    return out.images


@pytest.fixture(scope="module", params=FAMILIES)
def tiny(request):
    return request.param, _build(request.param)


def test_same_seed_same_weights_other_seed_other_weights(tiny):
    name, pipe = tiny
    assert _digest(_build(name)) == _digest(pipe)
    assert _digest(_build(name, seed=1)) != _digest(pipe)


def test_generates_and_round_trips_as_a_diffusers_folder(tiny, tmp_path):
    import numpy as np

    name, pipe = tiny
    images = _generate(pipe)
    assert images.shape == (1, 64, 64, 3) and np.isfinite(images).all() and images.std() > 0
    loaded = type(pipe).from_pretrained(save_tiny(pipe, tmp_path / name))
    # the same weights (loading may lay tensors out differently: float noise only)
    assert np.abs(_generate(loaded) - images).max() < 1e-5
    assert _generate(pipe, "van gogh").tolist() != images.tolist()  # the prompt matters


def test_tiny_t5_tokenizer_reads_concept_words_whole():
    from spmctl.families.tiny_t5 import build_tiny_t5_tokenizer

    tok = build_tiny_t5_tokenizer()
    pieces = tok.convert_ids_to_tokens(tok("Van Gogh painting of a cat").input_ids)
    assert pieces == ["▁Van", "▁Gogh", "▁painting", "▁of", "▁a", "▁cat", "</s>"]
    assert tok("zqx").input_ids[-1] == tok.eos_token_id == 1  # unknown words: characters, then </s>
    assert tok.pad_token_id == 0
