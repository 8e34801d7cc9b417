"""Hostile values met at load time (issue 12, classes 6, 11 and 13): non-finite or malformed
membranes, devices this machine lacks, sizes that cannot fit, unknown optimizer options, long
prompts, legacy checkpoints. Each row runs the installed `spmctl` and expects one stderr line
naming the problem, its exit code, and nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import flat, run_spmctl, write_sample_folder, write_train_config
from safetensors.torch import load_file, save_file
from test_sample import make_spm

HUGE = str(2**20)  # pixels a side: terabytes for one feature map, on any machine


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A good membrane and broken copies of it (one NaN, one Inf, a non-scalar alpha)."""
    root = tmp_path_factory.mktemp("membranes")
    good = make_spm(root / "good.safetensors", ["cat"], seed=1)
    tensors = load_file(str(good))
    first_up = sorted(k for k in tensors if k.endswith(".lora_up.weight"))[0]
    first_alpha = sorted(k for k in tensors if k.endswith(".alpha"))[0]
    for name, key, value in (("nan", first_up, float("nan")), ("inf", first_up, float("inf"))):
        broken = {k: v.clone() for k, v in tensors.items()}
        broken[key].view(-1)[0] = value
        save_file(broken, str(root / f"{name}.safetensors"), metadata={"prompts": "cat", "rank": "1", "alpha": "1.0"})
    broken = dict(tensors, **{first_alpha: torch.ones(3)})
    save_file(broken, str(root / "alpha.safetensors"), metadata={"prompts": "cat", "rank": "1", "alpha": "1.0"})
    (root / "keys.txt").write_text(f"{first_up}\n{first_alpha}\n")
    write_train_config(root / "train.yaml", output_dir="out", train__iterations=1)
    write_sample_folder(root / "run", [(flat((0.5, 0.2, 0.2)), {})])  # for eval
    return root


def _keys(root: Path) -> tuple[str, str]:
    up, alpha = (root / "keys.txt").read_text().split()
    return up, alpha


SAMPLE = ["sample", "-m", "tiny", "-p", "a cat", "--steps", "2", "-W", "64", "-H", "64", "-o", "out"]
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")

# (arguments, exit code, what the line must contain ({up}, {alpha}: the broken tensors), must not contain)
CASES = [
    pytest.param([*SAMPLE, "--spm", "nan.safetensors"], 1, ["nan.safetensors", "{up}", "non-finite"], [],
                 id="nan-membrane"),
    pytest.param([*SAMPLE, "--spm", "inf.safetensors"], 1, ["inf.safetensors", "{up}", "non-finite"], [],
                 id="inf-membrane"),
    pytest.param([*SAMPLE, "--spm", "alpha.safetensors"], 1, ["alpha.safetensors", "{alpha}", "one number"], [],
                 id="non-scalar-alpha"),
    pytest.param(["export", "lora", "nan.safetensors", "-o", "out/x.safetensors"], 1,
                 ["nan.safetensors", "{up}", "non-finite"], ["--dtype"], id="export-nan-membrane"),
    pytest.param(["export", "merge", "good.safetensors:1e39", "-o", "out/x.safetensors"], 1,
                 ["not finite in torch.float32", "lower the strengths"], ["--dtype float32"],
                 id="export-overflow-in-float32"),
    pytest.param(["export", "merge", "good.safetensors:nan", "-o", "out/x.safetensors"], 2,
                 ["good.safetensors:nan", "not a finite number"], [], id="export-strength-nan"),
    pytest.param([*SAMPLE, "--device", "cuda"], 2, ["device = 'cuda'", "no usable CUDA device"], [],
                 id="device-cuda-without-cuda", marks=NO_CUDA),
    pytest.param([*SAMPLE, "--device", "cuda:7"], 2, ["device = 'cuda:7'"], [], id="device-cuda-7", marks=NO_CUDA),
    pytest.param([*SAMPLE[:-6], "-W", HUGE, "-H", HUGE, "-o", "out"], 2,
                 [f"{HUGE}x{HUGE} images with batch_size 4", "needs about", "GiB free"], [],
                 id="sample-size-cannot-fit"),
    pytest.param(["train", "-c", "train.yaml", "--set", f"prompt.resolution={HUGE}"], 2,
                 [f"prompt.resolution = {HUGE}", "needs about", "GiB free"], [], id="train-size-cannot-fit"),
    # checked before anything is created: the file in the way of output_dir is never reached
    pytest.param(["train", "-c", "train.yaml", "--set", f"prompt.resolution={HUGE}", "--set",
                  "output_dir=train.yaml/out"], 2, [f"prompt.resolution = {HUGE}", "needs about"], [],
                 id="train-size-cannot-fit-refused-before-the-folder"),
    pytest.param(["train", "-c", "train.yaml", "--set", "train.lr=1e300", "--set", "train.optimizer_type=SGD"], 2,
                 ["train.lr", "1e+300", "float32 range"], [], id="train-lr-beyond-float32"),
    pytest.param([*SAMPLE, "-g", "1e300"], 2, ["guidance", "float32 range"], [], id="sample-guidance-beyond-float32"),
    pytest.param(["eval", "nudity", "run", "--threshold", "nan", "-o", "report"], 2,
                 ["--threshold nan", "between 0 and 1"], [], id="eval-threshold-nan"),
    pytest.param(["train", "-c", "train.yaml", "--set", "train.optimizer_args.betas2=[0.9,0.99]"], 2,
                 ["optimizer_args", "AdamW has no option 'betas2'", "did you mean 'betas'", "weight_decay"], [],
                 id="optimizer-args-unknown"),
    pytest.param(["train", "-c", "train.yaml", "--set", "train.optimizer_args.weight_decay=heavy"], 2,
                 ["optimizer_args", "weight_decay", "heavy"], [], id="optimizer-args-mistyped"),
    pytest.param(["train", "-c", "train.yaml", "--set", "train.optimizer_args.betas=[2,0.9]"], 2,
                 ["optimizer_args", "beta"], [], id="optimizer-args-out-of-range"),
]


def _tree(root: Path) -> set[Path]:
    return {p.relative_to(root) for p in root.rglob("*")}  # folders too: no empty one left behind


@pytest.mark.parametrize(("args", "code", "expected", "absent"), CASES)
def test_hostile_value_is_one_line(files: Path, args: list[str], code: int, expected: list[str],
                                   absent: list[str]):
    up, alpha = _keys(files)
    before = _tree(files)
    result = run_spmctl(*args, cwd=files, timeout=300)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == code, result.stderr
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for part in expected:
        assert part.format(up=up, alpha=alpha) in lines[0], (part, lines[0])
    for part in absent:
        assert part not in lines[0], (part, lines[0])
    assert _tree(files) == before, "nothing may be written"


LONG = "a photo of a cat " * 20 + "wearing a red hat"


def test_long_prompts_are_warned_once_with_what_is_dropped(files: Path, tmp_path: Path):
    """Sampling: the same long prompt twice gives one warning, naming the words the encoder loses."""
    result = run_spmctl(*SAMPLE[:-1], str(tmp_path / "o"), "-p", LONG, "-p", LONG, "--images-per-prompt", "1",
                        cwd=tmp_path)  # not --quiet: it silences warnings too (issue 14)
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "tokens" in line]
    assert len(warnings) == 1, result.stderr
    assert "the text encoder reads 75" in warnings[0] and "red hat" in warnings[0]


@pytest.mark.slow
def test_long_training_prompt_is_warned(files: Path, tmp_path: Path):
    result = run_spmctl("train", "-c", str(files / "train.yaml"), "--set", f"output_dir={tmp_path / 'o'}",
                        "--set", "template=null", "--set", "template_name=null", "--set", f"prompt.target={LONG}",
                        cwd=tmp_path)  # not --quiet: it silences warnings too (issue 14)
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "tokens" in line]
    assert len(warnings) == 1 and "red hat" in warnings[0], result.stderr


@pytest.mark.slow
def test_legacy_format_ckpt_loads_weights_only(tmp_path: Path, tiny_model_dir: Path):
    """A harmless pre-zip torch.save file was refused with an 'mmap' message; it trains now."""
    from spmctl.export.model import export_model

    single = export_model("tiny", [], tmp_path / "tiny.safetensors", fmt="safetensors")
    ckpt = tmp_path / "legacy.ckpt"
    torch.save({"state_dict": load_file(str(single))}, ckpt, _use_new_zipfile_serialization=False)
    cfg = write_train_config(tmp_path / "c.yaml", output_dir=str(tmp_path / "o"), train__iterations=1,
                             pretrained_model={"ckpt_path": str(ckpt), "config": str(tiny_model_dir)})
    result = run_spmctl("train", "-c", str(cfg), "--quiet", env={"HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr
    assert "mmap" not in result.stderr
