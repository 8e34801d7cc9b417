"""Configuration as a user meets it: the seed's YAML, the override order, the one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import TESTS, run_spmctl

SEED = TESTS / "data" / "seed_train_config.yaml"


def print_config(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> dict[str, tuple]:
    result = run_spmctl("train", *args, "--print-config", env=env, cwd=cwd)
    assert result.returncode == 0, result.stderr
    values = {}
    for line in result.stdout.splitlines():
        key, _, rest = line.partition(": ")
        value, _, source = rest.rpartition("  # ")
        values[key] = (yaml.safe_load(value), source)
    return values


def _seed_leaves(tree: dict, prefix: str = "") -> dict[str, object]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_seed_leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def test_every_seed_key_loads_and_keeps_its_meaning():
    seed = yaml.safe_load(SEED.read_text())
    shown = print_config("--config_path", str(SEED))
    expected = _seed_leaves(seed)
    # PyYAML reads "5e-05" and "1.0" (quoted) as strings; the config gives them their numeric meaning
    converted = {"train.optimizer_type": "adamw8bit", "prompt.guidance_scale": 1.0, "train.text_encoder_lr": 5e-05}
    for key, value in expected.items():
        shown_key = key.replace("prompt.", "prompt.0.") if key.startswith("prompt.") else key
        assert shown_key in shown, f"{key} missing from the merged config"
        got, source = shown[shown_key]
        assert got == converted.get(key, value), key
        assert source == str(SEED), key


def test_override_order_default_file_env_command_line(tmp_path: Path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  lr: 0.1\n  iterations: 7\nnetwork:\n  rank: 2\n")
    env = {"SPMCTL_TRAIN__LR": "0.2", "SPMCTL_NETWORK__RANK": "3"}
    shown = print_config("-c", str(cfg), "--set", "train.lr=0.3", env=env)
    assert shown["train.lr"] == (0.3, "command line (--set train.lr=0.3)")
    assert shown["network.rank"] == (3, "environment (SPMCTL_NETWORK__RANK, SPMCTL_TRAIN__LR)")
    assert shown["train.iterations"] == (7, str(cfg))
    assert shown["train.max_denoising_steps"] == (30, "default")
    shown = print_config("-c", str(cfg), env=env)
    assert shown["train.lr"][0] == 0.2


def test_seed_flags_underscored_and_kebab():
    for spelling in (["--dataset_type", "i2p", "--template_name", "self-harm", "--output_dir", "o1",
                      "--use_sample"],
                     ["--dataset-type", "i2p", "--template-name", "self-harm", "--output-dir", "o1",
                      "--use-sample"]):
        shown = print_config("--config-path", str(SEED), "--template", "i2p", "--devices", "0,1", *spelling)
        assert shown["dataset_type"] == ("i2p", "command line")
        assert shown["template"] == ("i2p", "command line")
        assert shown["template_name"] == ("self-harm", "command line")
        assert shown["devices"] == ("0,1", "command line")
        assert shown["output_dir"] == ("o1", "command line")
        assert shown["use_sample"] == (True, "command line")
    assert print_config("-c", str(SEED), "--no-use-sample")["use_sample"] == (False, "command line")


def test_original_spm_layout_with_prompts_file(tmp_path: Path):
    (tmp_path / "prompt.yaml").write_text(yaml.safe_dump([
        {"target": "Van Gogh", "positive": "Van Gogh", "unconditional": "", "neutral": "",
         "action": "erase_with_la", "guidance_scale": 1.0, "resolution": 512, "batch_size": 1,
         "dynamic_resolution": True, "la_strength": 1000, "sampling_batch_size": 4},
        {"target": "Picasso", "action": "erase"},
    ]))
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({
        "prompts_file": "prompt.yaml",
        "pretrained_model": {"name_or_path": "CompVis/stable-diffusion-v1-4", "v2": False, "v_pred": False,
                             "clip_skip": 2},
        "network": {"rank": 1, "alpha": 1.0},
        "train": {"precision": "float32", "noise_scheduler": "ddim", "iterations": 3000, "lr": 1e-4,
                  "optimizer_type": "AdamW", "lr_scheduler": "cosine_with_restarts",
                  "max_denoising_steps": 30},
        "save": {"name": "vangogh", "path": "output/vangogh", "per_steps": 500, "precision": "float32"},
        "logging": {"use_wandb": False, "verbose": False, "seed": 0},
        "other": {"use_xformers": True},
    }))
    shown = print_config("-c", str(tmp_path / "config.yaml"), cwd=tmp_path)
    assert shown["pretrained_model.ckpt_path"][0] == "CompVis/stable-diffusion-v1-4"
    assert shown["pretrained_model.clip_skip"][0] == 2
    assert shown["prompt.0.target"][0] == "Van Gogh"
    assert shown["prompt.1.target"][0] == "Picasso"
    assert shown["prompt.1.action"][0] == "erase"
    assert shown["output_dir"][0] == "output/vangogh"
    assert shown["save.name"][0] == "vangogh"


BAD_CASES = [
    (["-c", "missing.yaml"], "missing.yaml: file not found"),
    (["-c", "{bad}"], "invalid YAML at line 3"),
    (["-c", "{seed}", "--set", "train.iteratons=10"], "unknown key 'train.iteratons' (did you mean 'iterations'?)"),
    (["-c", "{seed}", "--set", "train.iterations=0"], "train.iterations = 0: input should be greater than 0"),
    (["-c", "{seed}", "--set", "train.iterations=-3"], "train.iterations = -3"),
    (["-c", "{seed}", "--set", "train.lr=fast"], "train.lr = 'fast': input should be a valid number"),
    (["-c", "{seed}", "--set", "prompt.sampling_batch_size=3", "--set", "prompt.batch_size=2"],
     "sampling_batch_size (3) must be a multiple of batch_size (2)"),
    (["-c", "{seed}", "--set", "prompt.action=forget"], "prompt.0.action = 'forget'"),
    (["-c", "{seed}", "--set", "train.precision=fp8"], "train.precision = 'fp8'"),
    (["-c", "{seed}", "--set", "train.noise_scheduler=heun"], "train.noise_scheduler = 'heun'"),
    (["-c", "{seed}", "--set", "train.optimizer_type=Adamax"], "train.optimizer_type = 'adamax'"),
    (["-c", "{seed}", "--set", "train.lr_scheduler=step"], "train.lr_scheduler = 'step'"),
    (["-c", "{seed}", "--devices", "gpu0"], "devices = 'gpu0'"),
]


@pytest.mark.parametrize(("args", "expected"), BAD_CASES, ids=[c[1][:40] for c in BAD_CASES])
def test_bad_configuration_is_one_line_and_exit_2(tmp_path: Path, args: list[str], expected: str):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  lr: [0.1\n")
    args = [a.format(seed=SEED, bad=bad) for a in args]
    result = run_spmctl("train", *args, "--print-config", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if not line.startswith("warning:")]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert expected in lines[0]
    source = "missing.yaml" if "missing" in args[1] else str(bad) if "bad" in args[1] else "command line"
    assert source in lines[0]


def test_bad_value_in_file_names_the_file(tmp_path: Path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  iterations: -1\n")
    result = run_spmctl("train", "-c", str(cfg), "--print-config")
    assert result.returncode == 2
    assert f"{cfg}: train.iterations = -1" in result.stderr


def test_bad_value_in_environment_names_the_variable():
    result = run_spmctl("train", "--print-config", env={"SPMCTL_TRAIN__MAX_DENOISING_STEPS": "1"})
    assert result.returncode == 2
    assert "environment (SPMCTL_TRAIN__MAX_DENOISING_STEPS): train.max_denoising_steps = '1'" in result.stderr
