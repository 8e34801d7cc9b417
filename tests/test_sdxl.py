"""SDXL end to end on the tiny SDXL (`-m tiny-sdxl`): training erases while anchors hold, `spmctl
sample` at a fixed multiplier equals diffusers' SDXL pipeline with the exported LoRA, facilitated
transport, and `spmctl eval` on what it made. One trained membrane is shared (`sdxl_trained`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_spm, run_spmctl
from PIL import Image
from safetensors import safe_open
from test_sample import generate
from test_training import objective_terms

SDXL = "tiny-sdxl"


@pytest.fixture(scope="module")
def sdxl():
    from spmctl.families import load_model

    return load_model(SDXL)


@pytest.fixture(scope="module")
def sdxl_spms(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sdxl_spms")
    return {"cat": make_spm(root / "cat.safetensors", ["cat"], seed=1, model=SDXL),
            "dog": make_spm(root / "dog.safetensors", ["dog", "horse"], seed=2, rank=2, model=SDXL)}


def test_training_erases_the_concept_while_anchors_hold(sdxl_trained):
    cfg, membrane = sdxl_trained
    before = objective_terms(cfg, None, SDXL)
    after = objective_terms(cfg, membrane, SDXL)
    assert before["anchor_loss"] < 1e-10  # a fresh membrane changes nothing
    assert after["erase_loss"] < 0.5 * before["erase_loss"], (before, after)  # measured: ~3x lower
    assert after["anchor_loss"] < 0.05 * before["erase_loss"], (before, after)  # measured: ~0.03x


def _png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


@pytest.mark.slow
def test_sample_export_and_diffusers_sdxl_agree(sdxl_trained, tmp_path: Path):
    pytest.importorskip("peft", reason="diffusers' load_lora_weights needs peft")
    from diffusers import DDIMScheduler

    from spmctl.families.sdxl.tiny import build_tiny_sdxl_pipeline

    _, membrane = sdxl_trained
    strength, prompts, seed = 0.6, ["a cat", "a red car"], 3
    out = tmp_path / "samples"
    done = run_spmctl("sample", "-m", SDXL, "--spm", str(membrane), "--multiplier", str(strength),
                      "-p", prompts[0], "-p", prompts[1], "--seed", str(seed), "--steps", "3", "-W", "64", "-H", "64",
                      "--device", "cpu", "-o", str(out), "--quiet")
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    ours = {r["prompt"]: _png(out / r["file"]) for r in records}

    lora = tmp_path / "cat_kohya.safetensors"
    done = run_spmctl("export", "lora", str(membrane), "-o", str(lora), "--model", SDXL, "--quiet")
    assert done.returncode == 0, done.stderr
    with safe_open(str(lora), "pt") as fh:
        keys, meta = list(fh.keys()), fh.metadata()
    assert keys and all(k.startswith(("lora_unet_input_blocks_", "lora_unet_middle_block_1_",
                                      "lora_unet_output_blocks_")) for k in keys)  # kohya's SDXL names
    assert meta["ss_network_dim"] == "1" and meta["ss_network_alpha"] == "1.0" and meta["prompts"] == "cat"

    pipe = build_tiny_sdxl_pipeline()
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)  # spmctl sample's default sampler
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(str(lora), adapter_name="cat")
    pipe.set_adapters(["cat"], adapter_weights=[strength])
    wrapped = [n for n, m in pipe.unet.named_modules() if hasattr(m, "lora_A") and "cat" in m.lora_A]
    assert len(wrapped) == 88  # every membrane became a LoRA layer
    for prompt in prompts:
        image = pipe(prompt, num_inference_steps=3, guidance_scale=7.5, height=64, width=64, output_type="pil",
                     generator=torch.Generator().manual_seed(seed)).images[0]
        theirs = np.asarray(image, dtype=np.int16)
        assert np.abs(ours[prompt] - theirs).max() <= 1, prompt  # the same image, up to PNG rounding
    pipe.delete_adapters("cat")
    base = np.asarray(pipe(prompts[0], num_inference_steps=3, guidance_scale=7.5, height=64, width=64,
                           generator=torch.Generator().manual_seed(seed)).images[0], dtype=np.int16)
    assert np.abs(base - ours[prompts[0]]).max() > 2  # the membrane changed the image

    # eval reads SDXL runs like any other: the training folder and the sample folder
    report = tmp_path / "report"
    done = run_spmctl("eval", "cost", str(membrane.parent), str(out), "-l", "train,sample", "-o", str(report))
    assert done.returncode == 0, done.stderr
    table = json.loads((report / "results.json").read_text())["results"]["cost"]["table"]
    assert table["train"] == table["sample"] and table["train"]["adapter_mib"] > 0, table


def test_ft_gate_is_one_for_the_concept(sdxl):
    from spmctl.sampling.ft import ft_gates

    prompts = ["cat", "a photo of a cat", "a red car on a street", "a dog"]
    gates = ft_gates(sdxl, prompts, [["cat"], ["dog"]])
    assert gates[0, 0] == pytest.approx(1.0) and gates[1, 0] == pytest.approx(1.0)
    assert gates[2, 0] < 1.0 and gates[2, 1] < 1.0 and gates[3, 1] == pytest.approx(1.0)
    assert gates[3, 0] < 1.0 and (gates >= 0).all()
    # the sampler scores prompts by the embeddings it generates with (both encoders' per-token states,
    # concatenated); they must be the very features the concepts are encoded to
    family = sdxl.family
    embeds = family.gate_embeds_of(sdxl, family.encode(sdxl, prompts), 1)
    assert embeds.shape == (4, 77 * (32 + 48))
    clip = ft_gates(sdxl, prompts, [["cat"]], metric="clipcos", prompt_embeds=embeds)
    assert clip[0, 0] == pytest.approx(1.0, abs=1e-5) and 0 < clip[1, 0] < 1.0


def test_gates_zero_give_exactly_the_base_model(sdxl, sdxl_spms):
    prompts = ["a cat", "a red car"]
    base = generate(sdxl, [], prompts, torch.zeros(2, 0))
    off = generate(sdxl, [sdxl_spms["cat"], sdxl_spms["dog"]], prompts, torch.zeros(2, 2))
    on = generate(sdxl, [sdxl_spms["cat"], sdxl_spms["dog"]], prompts, torch.ones(2, 2))
    assert np.array_equal(base, off)
    assert np.abs(base - on).max() > 1e-3


def test_batched_prompts_with_different_gates_equal_one_prompt_at_a_time(sdxl, sdxl_spms):
    prompts = ["a cat", "a red car", "a dog", "a cat"]
    gates = torch.tensor([[1.0, 0.2], [0.3, 0.0], [0.5, 1.0], [0.0, 0.7]])
    spms = [sdxl_spms["cat"], sdxl_spms["dog"]]
    batched = generate(sdxl, spms, prompts, gates, seeds=[5, 6, 7, 8])
    alone = generate(sdxl, spms, prompts, gates, seeds=[5, 6, 7, 8], batch=False)
    np.testing.assert_allclose(batched, alone, atol=2e-5)
    assert np.abs(batched[0] - batched[3]).max() > 1e-3


def test_example_config_is_an_sdxl_run_at_1024_px():
    from spmctl.config.train import load_train_config
    from spmctl.training.prompts import resolve_prompt_settings

    example = Path(__file__).parents[1] / "examples" / "sdxl_style_van_gogh.yaml"
    cfg, _ = load_train_config(example)
    assert cfg.pretrained_model.family == "sdxl" and cfg.train.precision == "bfloat16"
    settings = resolve_prompt_settings(cfg)
    assert settings[0].target == "Van Gogh" and settings[0].resolution == 1024
    text = example.read_text()
    assert "ESTIMATE" in text and "GB" in text and f"spmctl train -c examples/{example.name}" in text
