"""Hostile configurations (issue 12, classes 5, 6 and 13): bombs, duplicates, non-finite and
out-of-range values, malformed environment JSON. Each row runs the installed `spmctl` and expects
one stderr line naming the problem, exit 2, and nothing written."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from conftest import run_spmctl


def _bomb(levels: int = 9, width: int = 9) -> str:
    """The billion-laughs pattern: ~400 bytes whose aliases expand to 9**9 values, in the section
    that accepts any keys (so validation and --print-config would walk all of them)."""
    text = "logging:\n  a: &a [" + ",".join(['"lol"'] * width) + "]\n"
    prev = "a"
    for name in "bcdefghijk"[: levels - 1]:
        text += f"  {name}: &{name} [" + ",".join([f"*{prev}"] * width) + "]\n"
        prev = name
    return text


FILES = {
    "bomb.yaml": _bomb(),
    "deep.yaml": "train: " + "[" * 3000 + "]" * 3000 + "\n",
    "loop.yaml": "train: &t\n  again: *t\n",
    "dup.yaml": "train:\n  lr: 0.1\n  iterations: 3\n  lr: 0.2\n",
    "dup_nested.yaml": "prompt:\n  - target: cat\n    resolution: 64\n    target: dog\n",
    "nan.yaml": "prompt:\n  target: cat\n  guidance_scale: .nan\n",
    "inf.yaml": "train:\n  lr: .inf\n",
}

# (command and arguments, environment, what the one line must contain)
CASES = [
    pytest.param(["train", "-c", "bomb.yaml"], {}, ["bomb.yaml", "aliases expand to more than"], id="alias-bomb"),
    pytest.param(["train", "-c", "deep.yaml"], {}, ["deep.yaml", "nested more than 64 levels"], id="deep-nesting"),
    pytest.param(["train", "-c", "loop.yaml"], {}, ["loop.yaml", "alias refers to itself"], id="alias-loop"),
    pytest.param(["train", "--set", "train=[&a [1,1,1,1,1,1,1,1,1,1], [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a], "
                  "&b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a], &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b], "
                  "&d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c], [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]]"], {},
                 ["--set train", "aliases expand"], id="alias-bomb-in-set"),
    pytest.param(["train", "-c", "dup.yaml"], {}, ["dup.yaml", "duplicate key 'lr' at line 4"], id="duplicate-key"),
    pytest.param(["train", "-c", "dup_nested.yaml"], {}, ["dup_nested.yaml", "duplicate key 'target' at line 4"],
                 id="duplicate-key-in-list"),
    pytest.param(["train", "-c", "nan.yaml"], {}, ["nan.yaml", "prompt.0.guidance_scale = nan", "finite"],
                 id="nan-in-file"),
    pytest.param(["train", "-c", "inf.yaml"], {}, ["inf.yaml", "train.lr = inf", "finite"], id="inf-in-file"),
    pytest.param(["train", "--set", "prompt.resolution=60"], {},
                 ["--set prompt.resolution=60", "prompt.0.resolution = 60", "multiple of 8"], id="set-names-itself"),
    pytest.param(["train", "--set", "train.lr=.nan"], {}, ["--set train.lr=.nan", "finite"], id="set-nan"),
    pytest.param(["train", "--seed", str(2**64)], {}, ["seed = 18446744073709551616", "less than or equal"],
                 id="train-seed-2**64"),
    pytest.param(["train"], {"SPMCTL_TRAIN": '{"lr": 0.1'}, ["SPMCTL_TRAIN", "not valid JSON"], id="env-json-section"),
    pytest.param(["sample"], {"SPMCTL_SPMS": "[a.safetensors"}, ["SPMCTL_SPMS", "not valid JSON"], id="env-json-list"),
    pytest.param(["train"], {"SPMCTL_TRAIN__LR": "nan"}, ["SPMCTL_TRAIN__LR", "train.lr", "finite"], id="env-nan"),
    pytest.param(["sample", "--multiplier", "nan"], {}, ["multiplier.0 = nan", "finite"], id="multiplier-nan"),
    pytest.param(["sample", "--multiplier", "inf"], {}, ["multiplier.0 = inf", "finite"], id="multiplier-inf"),
    pytest.param(["sample", "-g", "inf"], {}, ["guidance = inf", "finite"], id="guidance-inf"),
    pytest.param(["sample", "--facilitate-factor", "inf"], {}, ["facilitate_factor = inf"], id="factor-inf"),
    pytest.param(["sample", "--seed", str(2**64)], {}, ["seeds.0 = 18446744073709551616"], id="sample-seed-2**64"),
    pytest.param(["sample", "--seed", str(2**64 - 1), "--images-per-prompt", "2"], {},
                 ["seeds:", "s+i", "18446744073709551615"], id="sample-seed-plus-index"),
    pytest.param(["sample", "--seed", "-1"], {}, ["seeds.0 = -1"], id="sample-seed-negative"),
    pytest.param(["sample", "--limit", "-1"], {}, ["dataset_options", "limit", "-1"], id="limit-negative"),
    pytest.param(["sample", "--device", "banana"], {}, ["device = 'banana'", "cuda:N"], id="device-banana"),
]


def _tree(root: Path) -> set[Path]:
    return {p.relative_to(root) for p in root.rglob("*")}


@pytest.mark.parametrize(("args", "env", "expected"), CASES)
def test_hostile_config_is_one_line_exit_2(tmp_path: Path, args: list[str], env: dict[str, str],
                                           expected: list[str]):
    for name, text in FILES.items():
        (tmp_path / name).write_text(text)
    before = _tree(tmp_path)
    started = time.monotonic()
    result = run_spmctl(*args, "--print-config", env=env, cwd=tmp_path, timeout=120)
    assert time.monotonic() - started < 60, "a bounded check must not take minutes"
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for part in expected:
        assert part in lines[0], (part, lines[0])
    assert result.stdout == ""
    assert _tree(tmp_path) == before


def test_aliases_and_merge_keys_still_load(tmp_path: Path):
    """Aliases are bounded, not refused: the seed's style of anchors and merge keys works."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("prompt:\n  - &p {target: cat, resolution: 64, batch_size: 1}\n"
                   "  - <<: *p\n    target: dog\n"
                   "train: {lr: &lr 0.001, unet_lr: *lr}\n")
    result = run_spmctl("train", "-c", str(cfg), "--print-config")
    assert result.returncode == 0, result.stderr
    assert "prompt.1.target: dog" in result.stdout
    assert "prompt.1.resolution: 64" in result.stdout
    assert "train.unet_lr: 0.001" in result.stdout


def test_provenance_is_linear_in_the_number_of_leaves():
    """100,000 keys: linear tracking takes well under a second; the quadratic one took hours."""
    from spmctl.config.loader import provenance, source_of

    n = 100_000
    low = {"logging": {f"k{i}": i for i in range(n)}}
    high = {"logging": {f"k{i}": -i for i in range(0, n, 2)}}
    started = time.monotonic()
    origin = provenance([("file", low), ("command line", high)])
    assert [source_of(origin, f"logging.k{i}") for i in range(4)] == ["command line", "file"] * 2
    assert source_of(origin, "logging") == "command line"
    assert time.monotonic() - started < 10
