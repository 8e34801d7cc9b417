"""`spmctl export`: LoRA files diffusers loads, exact merges, merged models, refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_spm, run_spmctl
from safetensors import safe_open
from test_sample import SIZE, STEPS, generate

from spmctl.errors import SpmctlError
from spmctl.export.lora import Weighted, export_lora, export_merged
from spmctl.export.model import export_model

TOL = 1e-4


def _diffusers_images(pipe, prompts: list[str], seeds: list[int]) -> np.ndarray:
    out = [
        pipe(
            p,
            num_inference_steps=STEPS,
            guidance_scale=7.5,
            height=SIZE,
            width=SIZE,
            output_type="np",
            generator=torch.Generator().manual_seed(s),
        ).images
        for p, s in zip(prompts, seeds, strict=True)
    ]
    return np.concatenate(out)


@pytest.mark.parametrize("scale", [0.6])
def test_exported_lora_in_diffusers_matches_spmctl_multiplier(tmp_path, spms, tiny, scale):  # noqa: F811
    pytest.importorskip("peft", reason="diffusers' load_lora_weights needs peft")
    from spmctl.families.sd1.tiny import build_tiny_pipeline

    lora = export_lora(spms["cat"], tmp_path / "cat_lora.safetensors", model=tiny)
    pipe = build_tiny_pipeline()
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(str(lora), adapter_name="cat")
    pipe.set_adapters(["cat"], adapter_weights=[scale])
    wrapped = [n for n, m in pipe.unet.named_modules() if hasattr(m, "lora_A") and "cat" in m.lora_A]
    assert len(wrapped) == 48 and any(n.endswith("proj_in") for n in wrapped)  # 1x1 convs included
    theirs = _diffusers_images(pipe, ["a cat", "a red car"], [3, 4])
    ours = generate(tiny, [spms["cat"]], ["a cat", "a red car"], torch.full((2, 1), scale), seeds=[3, 4])
    np.testing.assert_allclose(ours, theirs, atol=TOL)
    base = generate(tiny, [], ["a cat"], torch.zeros(1, 0), seeds=[3])
    assert np.abs(base - ours[:1]).max() > 1e-3


def test_lora_dtype_metadata_and_cli(tmp_path, spms):  # noqa: F811
    out = tmp_path / "cat_fp16.safetensors"
    result = run_spmctl(
        "export",
        "lora",
        str(spms["cat"]),
        "-o",
        str(out),
        "--dtype",
        "fp16",
        "--model",
        "tiny",
        env={"OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr
    assert "no facilitated transport" in result.stderr and result.stdout.strip() == str(out)
    with safe_open(str(out), "pt") as fh:
        meta = fh.metadata()
        keys = list(fh.keys())
        assert fh.get_tensor(next(k for k in keys if k.endswith("lora_up.weight"))).dtype == torch.float16
        assert fh.get_tensor(next(k for k in keys if k.endswith(".alpha"))).dtype == torch.float32
    assert meta["prompts"] == "cat" and meta["rank"] == "1" and meta["ss_network_dim"] == "1"
    assert len(keys) == 48 * 3


def test_merge_is_exact_and_matches_fixed_multipliers(tmp_path, spms, tiny):  # noqa: F811
    merged = export_merged(
        [Weighted(spms["cat"], 1.0), Weighted(spms["dog"], 0.5)], tmp_path / "m.safetensors", model=tiny
    )
    with safe_open(str(merged), "pt") as fh:
        assert fh.metadata()["rank"] == "3" and fh.metadata()["prompts"] == "cat,dog,horse"
    prompts, seeds = ["a cat", "a dog"], [1, 2]
    ours = generate(tiny, [merged], prompts, torch.ones(2, 1), seeds=seeds)
    fixed = generate(tiny, [spms["cat"], spms["dog"]], prompts, torch.tensor([[1.0, 0.5]] * 2), seeds=seeds)
    np.testing.assert_allclose(ours, fixed, atol=TOL)


def test_merged_model_matches_sampling_at_the_fixed_multiplier(tmp_path, spms, tiny):  # noqa: F811
    from spmctl.families import load_model

    items = [Weighted(spms["cat"], 0.7), Weighted(spms["dog"], 0.4)]
    folder = export_model("tiny", items, tmp_path / "merged")
    merged = load_model(str(folder))
    prompts, seeds = ["a cat", "a red car"], [7, 8]
    ours = generate(merged, [], prompts, torch.zeros(2, 0), seeds=seeds)
    fixed = generate(tiny, [spms["cat"], spms["dog"]], prompts, torch.tensor([[0.7, 0.4]] * 2), seeds=seeds)
    np.testing.assert_allclose(ours, fixed, atol=TOL)
    with pytest.raises(SpmctlError, match="exists"):
        export_model("tiny", items, folder)

    # one file in the original SD layout: diffusers' single-file loader reads back the same UNet
    from diffusers import StableDiffusionPipeline

    single = export_model("tiny", items, tmp_path / "merged.safetensors", fmt="safetensors")
    with safe_open(str(single), "pt") as fh:
        assert any(k.startswith("model.diffusion_model.input_blocks.1.1.proj_in") for k in fh.keys())  # noqa: SIM118
    pipe = StableDiffusionPipeline.from_single_file(
        str(single),
        config=str(folder),
        safety_checker=None,
        requires_safety_checker=False,
        local_files_only=True,
    )
    for (name, a), b in zip(pipe.unet.state_dict().items(), merged.unet.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_refusals(tmp_path, spms, tiny):  # noqa: F811
    from spmctl.families.sd1.tiny import build_tiny_unet
    from spmctl.membrane import MembraneNetwork, save_membrane

    with pytest.raises(SpmctlError, match="non-finite"):
        export_model("tiny", [Weighted(spms["cat"], 1e39)], tmp_path / "inf")
    assert not (tmp_path / "inf").exists()

    # a membrane for another UNet (one transformer block fewer)
    net = MembraneNetwork(build_tiny_unet(), rank=1)
    tensors = {k: v for k, v in net.state_dict_for(0).items() if not k.startswith("lora_unet_up_blocks")}
    net.detach()
    other = save_membrane(tmp_path / "other.safetensors", tensors, prompts=["x"], rank=1, alpha=1.0)
    with pytest.raises(SpmctlError, match="not a membrane for the same UNet"):
        export_merged([Weighted(spms["cat"]), Weighted(other)], tmp_path / "x.safetensors")
    with pytest.raises(SpmctlError, match="not a membrane for this model"):
        export_lora(other, tmp_path / "y.safetensors", model=tiny)
    missing = run_spmctl("export", "merge", f"{tmp_path / 'nope.safetensors'}:0.5", "-o", str(tmp_path / "z"))
    assert missing.returncode == 1 and missing.stderr.strip().endswith("nope.safetensors")
    assert "SPM file not found" in missing.stderr and "Traceback" not in missing.stderr


def test_weighted_parsing():
    from spmctl.export.lora import parse_weighted

    assert parse_weighted("a.safetensors:0.5") == Weighted(Path("a.safetensors"), 0.5)
    assert parse_weighted("a.safetensors") == Weighted(Path("a.safetensors"), 1.0)
    assert parse_weighted("C:/x/a.safetensors") == Weighted(Path("C:/x/a.safetensors"), 1.0)
    assert parse_weighted("b:-1") == Weighted(Path("b"), -1.0)


@pytest.mark.slow
def test_cli_sample_and_exported_lora_in_diffusers_agree(tmp_path):
    """SD 1.x through the commands a user runs: `spmctl sample --multiplier s`, `spmctl export lora`,
    then diffusers' own `load_lora_weights` at adapter weight s: the same images (up to PNG
    rounding). The membrane has strong random weights (a short training run barely moves the tiny
    model's images, and then a LoRA that is not applied at all would pass too)."""
    import json

    from diffusers import DDIMScheduler
    from PIL import Image

    from spmctl.families.sd1.tiny import build_tiny_pipeline

    pytest.importorskip("peft", reason="diffusers' load_lora_weights needs peft")
    membrane = make_spm(tmp_path / "cat.safetensors", ["cat"], seed=1, std=1.0)
    strength, prompts, seed, out = 0.6, ["a cat", "a red car"], 3, tmp_path / "samples"
    done = run_spmctl("sample", "-m", "tiny", "--spm", str(membrane), "--multiplier", str(strength), "-p", prompts[0],
                      "-p", prompts[1], "--seed", str(seed), "--steps", "3", "-W", "64", "-H", "64", "--device", "cpu",
                      "-o", str(out), "--quiet")
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    ours = {r["prompt"]: np.asarray(Image.open(out / r["file"]).convert("RGB"), dtype=np.int16) for r in records}
    lora = tmp_path / "cat_lora.safetensors"
    done = run_spmctl("export", "lora", str(membrane), "-o", str(lora), "--model", "tiny", "--quiet")
    assert done.returncode == 0, done.stderr

    pipe = build_tiny_pipeline()
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)  # spmctl sample's default sampler
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(str(lora), adapter_name="cat")
    pipe.set_adapters(["cat"], adapter_weights=[strength])
    for prompt in prompts:
        image = pipe(prompt, num_inference_steps=3, guidance_scale=7.5, height=64, width=64, output_type="pil",
                     generator=torch.Generator().manual_seed(seed)).images[0]
        assert np.abs(ours[prompt] - np.asarray(image, dtype=np.int16)).max() <= 1, prompt
    pipe.delete_adapters("cat")
    base = np.asarray(pipe(prompts[0], num_inference_steps=3, guidance_scale=7.5, height=64, width=64,
                           generator=torch.Generator().manual_seed(seed)).images[0], dtype=np.int16)
    assert np.abs(base - ours[prompts[0]]).max() > 2  # the membrane changed the image
