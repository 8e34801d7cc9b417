"""The Python API: membranes attached to a plain diffusers pipeline give `spmctl sample`'s images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_spm, run_spmctl
from PIL import Image

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


def call(pipe, prompts: list[str], per_prompt: int = 1, **options) -> np.ndarray:
    gens = [torch.Generator().manual_seed(SEED + i) for _ in prompts for i in range(per_prompt)]
    out = pipe(prompts, generator=gens, num_inference_steps=STEPS, width=SIZE, height=SIZE,
               num_images_per_prompt=per_prompt, output_type="np", **options)
    return (out.images * 255).round().astype(np.int16)


def cli_images(tiny_model_dir: Path, out: Path, spms: list[Path], per_prompt: int = 1,
               guidance: float = 7.5, prompts: list[str] = PROMPTS, options: list[str] | None = None) -> dict:
    args = ["sample", "-m", str(tiny_model_dir), "--seed", str(SEED), "--steps", str(STEPS), "-g", str(guidance),
            "-W", str(SIZE), "-H", str(SIZE), "--images-per-prompt", str(per_prompt), "-o", str(out), "-q"]
    for p in prompts:
        args += ["-p", p]
    for s in spms:
        args += ["--spm", str(s)]
    args += options or []
    proc = run_spmctl(*args)
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    return {(r["prompt"], r["index"]): (np.asarray(Image.open(out / r["file"]), dtype=np.int16), r["gates"])
            for r in records}


def assert_attached_like_cli(pipe, membranes: list[Path], prompts: list[str], expected: dict, plain: np.ndarray,
                             **options) -> None:
    """Two images per prompt with the membranes attached: `spmctl sample`'s images (to 1/255) and
    gates; "a cat" opens the cat membrane, the dog prompt the other; detached, the plain images."""
    with spmctl.attach(pipe, membranes) as spm:
        images = call(pipe, prompts, per_prompt=2, **options)
        gates = spm.last_gates
    for p, prompt in enumerate(prompts):
        for i in range(2):
            image, file_gates = expected[(prompt, i)]
            assert np.abs(images[2 * p + i] - image).max() <= 1, (prompt, i)
            assert gates[p].tolist() == pytest.approx(file_gates, abs=1e-5)
    assert gates[0, 0] > gates[0, 1] and gates[1, 1] > gates[1, 0]
    assert np.abs(images - plain).max() > 10  # the membranes changed the images
    assert np.array_equal(call(pipe, prompts, per_prompt=2, **options), plain)


def test_attached_pipeline_gives_spmctl_sample_images(pipe, membranes, tiny_model_dir, tmp_path) -> None:
    plain = call(pipe, PROMPTS, per_prompt=2)
    expected = cli_images(tiny_model_dir, tmp_path / "cli", membranes, per_prompt=2)
    assert_attached_like_cli(pipe, membranes, PROMPTS, expected, plain)


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



# ---------------------------------------------------------------------------- SDXL, SD3, FLUX
NEWER = {"sdxl": "tiny-sdxl", "sd3": "tiny-sd3", "flux": "tiny-flux"}  # family -> its built-in tiny model
GUIDANCE = 5.0  # SDXL/SD3: classifier-free guidance; FLUX: its guidance embedding
TWO = PROMPTS[:2]  # "a cat" opens the cat membrane, "a dog on a hill" the other one


def build_tiny(name: str):
    from spmctl.families.flux.tiny import build_tiny_flux_pipeline
    from spmctl.families.sd3.tiny import build_tiny_sd3_pipeline
    from spmctl.families.sdxl.tiny import build_tiny_sdxl_pipeline

    return {"sdxl": build_tiny_sdxl_pipeline, "sd3": build_tiny_sd3_pipeline, "flux": build_tiny_flux_pipeline}[name]()


@pytest.fixture(scope="module", params=list(NEWER))
def newer(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """(family, model folder, the family's diffusers pipeline loaded from it as a user does, two membranes)."""
    import diffusers

    from spmctl.models.tiny import save_tiny

    name = request.param
    root = tmp_path_factory.mktemp(f"api-{name}")
    built = build_tiny(name)
    folder = save_tiny(built, root / "model")
    pipe = getattr(diffusers, type(built).__name__).from_pretrained(folder)  # with its own scheduler
    pipe.set_progress_bar_config(disable=True)
    spms = [make_spm(root / "cat.safetensors", ["cat"], seed=1, model=NEWER[name]),
            make_spm(root / "dog.safetensors", ["dog", "horse"], seed=2, rank=2, model=NEWER[name])]
    return name, folder, pipe, spms


@pytest.mark.slow
def test_sdxl_sd3_flux_pipelines_attached_give_spmctl_sample_images(newer, tmp_path) -> None:
    """The same as SD 1.x's test on the newer families' own pipelines: images and gates of `spmctl
    sample`, each prompt's own membrane opened, plain images at gate 0 and after detaching. Each
    pipeline keeps its own scheduler: SD3's and FLUX's flow-matching Euler is what spmctl samples them
    with anyway; SDXL's (Euler) is `--noise-scheduler model` (its DDIM default: test_sdxl.py)."""
    name, folder, pipe, membranes = newer
    plain = call(pipe, TWO, per_prompt=2, guidance_scale=GUIDANCE)
    own = ["--noise-scheduler", "model"] if name == "sdxl" else []
    expected = cli_images(folder, tmp_path / "cli", membranes, per_prompt=2, guidance=GUIDANCE, prompts=TWO,
                          options=own)
    assert_attached_like_cli(pipe, membranes, TWO, expected, plain, guidance_scale=GUIDANCE)
    with spmctl.attach(pipe, membranes, multiplier=0.0):  # both membranes closed
        assert np.abs(call(pipe, TWO, per_prompt=2, guidance_scale=GUIDANCE) - plain).max() <= 1


def test_a_negative_prompt_does_not_take_the_prompts_gates(newer) -> None:
    """A negative prompt is encoded too (FluxPipeline's true CFG: in a second encode_prompt call);
    the membranes keep the prompts' gates. The negatives here are the prompts swapped, so gates
    taken from them would open the other membrane."""
    _, _, pipe, membranes = newer
    true_cfg = {"true_cfg_scale": 2.0} if type(pipe).__name__ == "FluxPipeline" else {}
    with spmctl.attach(pipe, membranes) as spm:
        call(pipe, TWO, negative_prompt=TWO[::-1], guidance_scale=GUIDANCE, **true_cfg)
        assert spm.last_gates.tolist() == spm.gates(TWO).tolist()
        # the user's own encode_prompt after a call is a new encoding: its prompts' gates
        others = {"prompt_2": None, "prompt_3": None} if type(pipe).__name__ == "StableDiffusion3Pipeline" else {}
        pipe.encode_prompt(TWO[::-1], **others)
        assert spm.last_gates.tolist() == spm.gates(TWO[::-1]).tolist()
    assert "check_inputs" not in pipe.__dict__ and "encode_prompt" not in pipe.__dict__  # detached
