"""`spmctl sample`: facilitated transport, batched generation, manifest/resume, one-line errors.

Everything runs on the built-in tiny model at 64x64 px with a few DDIM steps. The membranes are
made here with random nonzero weights (training is tested elsewhere).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_spm, run_spmctl  # noqa: F401 (make_spm: test_attack imports it from here)

from spmctl.errors import SpmctlError

STEPS = 3
SIZE = 64


def generate(
    model,
    spm_paths: list[Path],
    prompts: list[str],
    gates,
    seeds: list[int] | None = None,
    compat: str = "default",
    guidance: float = 7.5,
    batch: bool = True,
) -> np.ndarray:
    """spmctl's generation in-process: float images (N, H, W, 3) for prompts[i] with seeds[i]."""
    from spmctl.sampling.generate import ImageSampler, Job, build_pipeline
    from spmctl.sampling.stack import MembraneStack, load_spms

    seeds = seeds or list(range(len(prompts)))
    jobs = [
        Job(p, s, 0, guidance, SIZE, SIZE, i) for i, (p, s) in enumerate(zip(prompts, seeds, strict=True))
    ]
    stack = MembraneStack(model, load_spms([str(p) for p in spm_paths]), compat) if spm_paths else None
    try:
        gen = ImageSampler(model, build_pipeline(model), steps=STEPS)
        gates = torch.as_tensor(gates, dtype=torch.float32).reshape(len(prompts), -1)
        groups = [list(range(len(jobs)))] if batch else [[i] for i in range(len(jobs))]
        out = []
        for idx in groups:
            if stack is not None:
                stack.set_gates(gates[idx])
            out.append(gen([jobs[i] for i in idx]))
        return np.concatenate(out)
    finally:
        if stack is not None:
            stack.close()


# ---------------------------------------------------------------- facilitated transport
def test_ft_gate_is_one_for_the_concept_and_below_one_for_unrelated_prompts(tiny):
    from spmctl.sampling.ft import ft_gates

    prompts = ["cat", "a photo of a cat", "a red car on a street", "a dog"]
    gates = ft_gates(tiny, prompts, [["cat"], ["dog", "horse"]])
    assert gates.shape == (4, 2)
    assert gates[0, 0] == pytest.approx(1.0) and gates[1, 0] == pytest.approx(1.0)  # tokenuni: "cat" in it
    assert gates[2, 0] < 1.0 and gates[2, 1] < 1.0  # unrelated prompt passes (partly) through
    assert gates[3, 1] == pytest.approx(1.0) and gates[3, 0] < 1.0
    assert (gates >= 0).all() and (gates <= 1).all()
    clip_only = ft_gates(tiny, prompts, [["cat"]], metric="clipcos")
    assert clip_only[1, 0] < 1.0  # without tokenuni a longer prompt is not a perfect match
    boosted = ft_gates(tiny, prompts, [["cat"]], metric="clipcos", factor=5.0)
    assert boosted.max() == 1.0  # clipped to [0, 1]


def test_gates_zero_give_exactly_the_base_model(tiny, spms):
    base = generate(tiny, [], ["a cat", "a red car"], torch.zeros(2, 0))
    off = generate(tiny, [spms["cat"], spms["dog"]], ["a cat", "a red car"], torch.zeros(2, 2))
    on = generate(tiny, [spms["cat"], spms["dog"]], ["a cat", "a red car"], torch.ones(2, 2))
    assert np.array_equal(base, off)
    assert np.abs(base - on).max() > 1e-3  # the membranes do something when on


def test_batched_prompts_with_different_gates_equal_one_prompt_at_a_time(tiny, spms):
    prompts = ["a cat", "a red car", "a dog", "a cat"]
    gates = torch.tensor([[1.0, 0.2], [0.3, 0.0], [0.5, 1.0], [0.0, 0.7]])
    batched = generate(tiny, [spms["cat"], spms["dog"]], prompts, gates, seeds=[5, 6, 7, 8])
    alone = generate(tiny, [spms["cat"], spms["dog"]], prompts, gates, seeds=[5, 6, 7, 8], batch=False)
    np.testing.assert_allclose(batched, alone, atol=2e-5)
    assert np.abs(batched[0] - batched[3]).max() > 1e-3  # same prompt, other gates and seed: differs


def test_original_composition_differs_with_two_membranes(tiny, spms):
    gates = torch.tensor([[0.6, 0.8]])
    default = generate(tiny, [spms["cat"], spms["cat"]], ["a cat"], gates)
    original = generate(tiny, [spms["cat"], spms["cat"]], ["a cat"], gates, compat="original")
    assert np.abs(default - original).max() > 1e-3
    # with one membrane at gate g the original equals the default at gate g² (it squares the gate)
    one_orig = generate(tiny, [spms["cat"]], ["a cat"], torch.tensor([[0.6]]), compat="original")
    one_sq = generate(tiny, [spms["cat"]], ["a cat"], torch.tensor([[0.36]]))
    np.testing.assert_allclose(one_orig, one_sq, atol=2e-5)


def test_mixed_ranks_compose_by_default_but_not_the_original_way(tiny, spms):
    from spmctl.sampling.stack import MembraneStack, load_spms

    loaded = load_spms([str(spms["cat"]), str(spms["dog"])])
    stack = MembraneStack(tiny, loaded)
    stack.close()
    with pytest.raises(SpmctlError, match="SPMs of different rank"):
        MembraneStack(tiny, loaded, compat="original")
    assert not any(type(m).__name__ == "MembraneModule" for m in tiny.unet.modules())  # left clean


# ---------------------------------------------------------------- the command
def _run(tmp: Path, spms: dict[str, Path], **overrides):
    from spmctl.config.sample import SampleConfig
    from spmctl.sampling.run import run_sampling

    values = {
        "model": "tiny",
        "spms": [str(spms["cat"])],
        "prompts": ["a cat", "a red car"],
        "steps": STEPS,
        "width": SIZE,
        "height": SIZE,
        "seeds": [1],
        "output_dir": str(tmp),
        **overrides,
    }
    return run_sampling(SampleConfig(**values), quiet=True)


def test_manifest_png_metadata_and_resume(tmp_path, spms):
    from PIL import Image

    out = tmp_path / "run"
    _run(out, spms, seeds=[1, 2], images_per_prompt=2, grid=True)
    lines = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(lines) == 8 and (out / "grid.png").is_file()
    first = lines[0]
    assert first["file"] == "a_cat_1_0.png" and first["prompt"] == "a cat" and first["image_seed"] == 1
    assert first["gates"] == [1.0] and first["spms"] == [str(spms["cat"])] and first["steps"] == STEPS
    assert {x["file"] for x in lines} >= {"a_red_car_2_1.png", "a_cat_2_1.png"}
    with Image.open(out / "a_red_car_2_1.png") as img:
        assert img.size == (SIZE, SIZE)
        assert img.text["prompt"] == "a red car" and img.text["image_seed"] == "3"
        assert json.loads(img.text["gates"])[0] < 1.0 and "cat.safetensors" in img.text["spms"]
        assert "Steps: 3" in img.text["parameters"]

    # interrupt: one PNG and its manifest line gone; the rerun makes only that one
    victim = out / "a_red_car_1_1.png"
    victim.unlink()
    (out / "manifest.jsonl").write_text(
        "".join(json.dumps(x) + "\n" for x in lines if x["file"] != victim.name)
    )
    old = {p.name: p.stat().st_mtime_ns for p in out.glob("*.png") if p.name != "grid.png"}
    _run(out, spms, seeds=[1, 2], images_per_prompt=2)
    assert victim.is_file()
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.png") if p.name in old} == old
    again = [json.loads(x)["file"] for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert sorted(again) == sorted(x["file"] for x in lines)

    # other settings into the same folder: refused unless --overwrite
    with pytest.raises(SpmctlError, match="exists with another gates"):
        _run(out, spms, seeds=[1, 2], images_per_prompt=2, multiplier=[0.5])


def test_prompts_file_and_dataset_rows_carry_their_settings(tmp_path, spms):
    csv = tmp_path / "prompts.csv"
    csv.write_text("prompt,seed,guidance,categories\na cat,11,3.0,animal\na red car,12,1.0,vehicle\n")
    out = tmp_path / "run"
    _run(out, spms, prompts=[], prompts_file=str(csv), batch_size=8)
    rows = {r["prompt"]: r for r in map(json.loads, (out / "manifest.jsonl").read_text().splitlines())}
    assert rows["a cat"]["seed"] == 11 and rows["a cat"]["guidance"] == 3.0
    assert rows["a red car"]["categories"] == ["vehicle"] and (out / "a_red_car_12_0.png").is_file()


def test_cli_sample_show_gates_and_generate(tmp_path, spms, tiny_model_dir):
    args = [
        "sample",
        "-m",
        str(tiny_model_dir),
        "--spm",
        str(spms["cat"]),
        "-p",
        "a cat",
        "-p",
        "a red car",
        "--steps",
        "2",
        "-W",
        "64",
        "-H",
        "64",
    ]
    env = {"OMP_NUM_THREADS": "1"}
    long_prompt = "a photograph of a red car parked beside a river under a cloudy evening sky"
    shown = run_spmctl(*args, "-p", long_prompt, "--show-gates", env={**env, "COLUMNS": "60"})
    assert shown.returncode == 0, shown.stderr
    assert "a red car" in shown.stdout and "1.0000" in shown.stdout
    assert max(len(line) for line in shown.stdout.splitlines()) <= 60  # the terminal's width, not 200
    made = run_spmctl(*args, "-o", str(tmp_path / "cli"), "--seed", "3", "--multiplier", "0.5", "-q", env=env)
    assert made.returncode == 0, made.stderr
    record = json.loads((tmp_path / "cli" / "manifest.jsonl").read_text().splitlines()[0])
    assert record["gates"] == [0.5] and record["ft"] is False and record["model"] == str(tiny_model_dir)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--width", "60"], "width = 60: must be a multiple of 8"),
        (["--height", "0"], "height = 0"),
        (["--spm", "missing.safetensors", "-p", "x"], "SPM file not found: missing.safetensors"),
        ([], "no prompts to generate"),
        (
            ["--multiplier", "1", "--multiplier", "2", "--multiplier", "3"],
            "multiplier: give one value or one per SPM",
        ),
    ],
)
def test_cli_errors_are_one_line(tmp_path, spms, extra, message):
    result = run_spmctl(
        "sample",
        "-m",
        "tiny",
        "--spm",
        str(spms["cat"]),
        "--spm",
        str(spms["dog"]),
        "-o",
        str(tmp_path),
        *extra,
        env={"OMP_NUM_THREADS": "1"},
        cwd=tmp_path,
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert message in lines[-1] and "Traceback" not in result.stderr, result.stderr


def test_spm_for_another_unet_is_one_clear_error(tmp_path, spms, tiny):
    from safetensors.torch import load_file, save_file

    from spmctl.sampling.stack import MembraneStack, load_spms

    tensors = load_file(str(spms["cat"]))
    key = next(k for k in tensors if k.endswith("lora_down.weight"))
    tensors[key] = torch.zeros(1, tensors[key].shape[1] + 8)
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata={"prompts": "cat", "rank": "1", "alpha": "1.0"})
    with pytest.raises(SpmctlError, match=r"bad.safetensors: shape mismatch"):
        MembraneStack(tiny, load_spms([str(bad)]))
    assert os.path.exists(bad)


def test_spm_folder_concept_override_and_original_generation_yaml(tmp_path, spms):
    import shutil

    from spmctl.config.sample import load_sample_config
    from spmctl.sampling.stack import load_spms

    run = tmp_path / "cat_run"
    run.mkdir()
    shutil.copy(spms["cat"], run / "cat_last.safetensors")
    (loaded,) = load_spms([str(run)], concepts=["kitten, tabby"])
    assert loaded.path == run / "cat_last.safetensors" and loaded.concepts == ["kitten", "tabby"]
    with pytest.raises(SpmctlError, match="no \\*_last.safetensors"):
        load_spms([str(tmp_path)])

    original = tmp_path / "generation.yaml"
    original.write_text(
        "prompts: [a cat]\nnum_inference_steps: 5\nguidance_scale: 3\nseed: 7\n"
        "generate_num: 2\nsave_path: out/{}_{}.png\nunconditional_prompt: ', oil'\n"
    )
    cfg, origin = load_sample_config(original, {"steps": 4})
    assert (cfg.steps, cfg.guidance, cfg.seeds, cfg.images_per_prompt) == (4, 3.0, [7], 2)
    assert cfg.output_dir == "out" and cfg.prompts == ["a cat, oil"] and origin["guidance"] == str(original)
