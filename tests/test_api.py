"""The Python API: membranes attached to a plain diffusers pipeline give `spmctl sample`'s images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_spmctl
from PIL import Image
from test_sample import make_spm

import spmctl
from spmctl.errors import SpmctlError

PROMPTS = ["a cat", "a dog on a hill", "a red car"]
SEED, STEPS, SIZE = 3, 3, 64


@pytest.fixture(scope="module")
def membranes(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("api-spms")
    return [make_spm(root / "cat.safetensors", ["cat"], seed=1),
            make_spm(root / "dog.safetensors", ["dog", "horse"], seed=2, rank=2)]


@pytest.fixture(scope="module")
def pipe(tiny_model_dir: Path):
    """What a diffusers user has: the pipeline from the model folder, with a DDIM scheduler."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_model_dir, safety_checker=None,
                                                   requires_safety_checker=False)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def call(pipe, prompts: list[str], per_prompt: int = 1) -> np.ndarray:
    gens = [torch.Generator().manual_seed(SEED + i) for _ in prompts for i in range(per_prompt)]
    out = pipe(prompts, generator=gens, num_inference_steps=STEPS, width=SIZE, height=SIZE,
               num_images_per_prompt=per_prompt, output_type="np")
    return (out.images * 255).round().astype(np.int16)


def cli_images(tiny_model_dir: Path, out: Path, spms: list[Path], per_prompt: int = 1) -> dict:
    args = ["sample", "-m", str(tiny_model_dir), "--seed", str(SEED), "--steps", str(STEPS),
            "-W", str(SIZE), "-H", str(SIZE), "--images-per-prompt", str(per_prompt), "-o", str(out), "-q"]
    for p in PROMPTS:
        args += ["-p", p]
    for s in spms:
        args += ["--spm", str(s)]
    proc = run_spmctl(*args)
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    return {(r["prompt"], r["index"]): (np.asarray(Image.open(out / r["file"]), dtype=np.int16), r["gates"])
            for r in records}


def test_attached_pipeline_gives_spmctl_sample_images(pipe, membranes, tiny_model_dir, tmp_path) -> None:
    plain = call(pipe, PROMPTS, per_prompt=2)
    expected = cli_images(tiny_model_dir, tmp_path / "cli", membranes, per_prompt=2)
    with spmctl.attach(pipe, membranes) as spm:
        images = call(pipe, PROMPTS, per_prompt=2)
        gates = spm.last_gates
    for p, prompt in enumerate(PROMPTS):
        for i in range(2):
            image, file_gates = expected[(prompt, i)]
            assert np.abs(images[2 * p + i] - image).max() <= 1, (prompt, i)
            assert gates[p].tolist() == pytest.approx(file_gates, abs=1e-5)
    # each prompt got its own gates: "a cat" opens the cat membrane, the dog one opens the other
    assert gates[0, 0] > gates[0, 1] and gates[1, 1] > gates[1, 0]
    # the membranes changed the images; detached, the pipeline is plain again
    assert np.abs(images - plain).max() > 10
    assert np.array_equal(call(pipe, PROMPTS, per_prompt=2), plain)


def test_fixed_multiplier_and_plain_images_match_cli(pipe, membranes, tiny_model_dir, tmp_path) -> None:
    expected = cli_images(tiny_model_dir, tmp_path / "base", [])
    plain = call(pipe, PROMPTS)
    for p, prompt in enumerate(PROMPTS):
        assert np.abs(plain[p] - expected[(prompt, 0)][0]).max() <= 1
    with spmctl.attach(pipe, membranes[0], multiplier=0.0):  # gate 0: the membrane is closed
        assert np.abs(call(pipe, PROMPTS) - plain).max() <= 1


def test_bad_use_is_one_clear_error(pipe, membranes, tmp_path) -> None:
    with pytest.raises(SpmctlError, match="one value or one per SPM"):
        spmctl.attach(pipe, membranes, multiplier=[1.0, 0.5, 0.2])
    with pytest.raises(SpmctlError, match="not found"):
        spmctl.attach(pipe, tmp_path / "missing.safetensors")
    with spmctl.attach(pipe, membranes), pytest.raises(SpmctlError, match="needs the prompt text"):
        pipe(prompt_embeds=torch.zeros(1, 77, pipe.text_encoder.config.hidden_size), num_inference_steps=1,
             width=SIZE, height=SIZE)
    assert "encode_prompt" not in pipe.__dict__  # detached even after the error
