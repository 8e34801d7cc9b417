"""A new user's first runs: example configs, `--print-config` loading back, defaults that work on
a standard install and fit the tiny model, template names, `--use_sample=false`."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import yaml
from conftest import run_spmctl

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("sd1*.yaml"))


def printed(result) -> dict[str, object]:
    """`--print-config` output as values, comments (sources) dropped."""
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


@pytest.mark.parametrize("args", [["train", "-c", str(ROOT / "examples" / "quickstart.yaml"),
                                   "--set", "prompt.la_strength=7", "--iterations", "9"],
                                  ["train", "-c", str(ROOT / "examples" / "sd15_style_van_gogh.yaml")],
                                  ["sample", "-m", "tiny", "--spm", "a.safetensors", "--spm", "b",
                                   "-p", "a cat", "-p", "a dog", "--multiplier", "0.5", "--steps", "4"]],
                         ids=["train-quickstart", "train-sd15", "sample"])
def test_print_config_loads_back_as_the_same_config(tmp_path: Path, args: list[str]) -> None:
    first = run_spmctl(*args, "--print-config")
    (tmp_path / "printed.yaml").write_text(first.stdout)
    again = run_spmctl(args[0], "-c", str(tmp_path / "printed.yaml"), "--print-config")
    assert printed(again) == printed(first)
    assert f"  # {tmp_path / 'printed.yaml'}" in again.stdout  # every value now comes from that file


def test_print_config_keeps_template_values_it_did_not_set(tmp_path: Path) -> None:
    """A prompt section that sets only resolution leaves the rest to the template: the printed
    config must not pin the other prompt keys to the class defaults (dynamic_resolution false,
    la_strength 1000...) on reload."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"template": "style", "template_name": "Van_Gogh",
                                   "prompt": {"resolution": 256}}))
    shown = printed(run_spmctl("train", "-c", str(cfg), "--print-config"))
    assert {k: v for k, v in shown.items() if k.startswith("prompt.")} == {"prompt.0.resolution": 256}


def test_a_key_given_twice_in_a_printed_config_is_one_line(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train.lr: 0.1\ntrain:\n  lr: 0.2\n")
    result = run_spmctl("train", "-c", str(cfg), "--print-config")
    assert result.returncode == 2
    assert result.stderr.strip() == f"config error: {cfg}: train.lr is given twice"


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.stem for e in EXAMPLES])
def test_example_configs_for_sd1x_load_and_state_their_cost(example: Path) -> None:
    from spmctl.config.train import load_train_config
    from spmctl.training.prompts import resolve_prompt_settings

    cfg, _ = load_train_config(example)
    assert cfg.pretrained_model.ckpt_path in ("CompVis/stable-diffusion-v1-4",
                                              "stable-diffusion-v1-5/stable-diffusion-v1-5")
    settings = resolve_prompt_settings(cfg)  # the template and its name exist
    assert settings[0].resolution == 512 and settings[0].la_strength == 1000
    text = example.read_text()
    assert "ESTIMATE" in text and "GB" in text and "s/iteration" in text
    assert f"spmctl train -c examples/{example.name}" in text
    kinds = {e.stem.split("_")[1] for e in EXAMPLES}
    assert {"nudity", "style", "object"} <= kinds


def test_default_optimizer_works_on_a_standard_install() -> None:
    shown = run_spmctl("train", "-m", "tiny", "--print-config")
    line = next(x for x in shown.stdout.splitlines() if x.startswith("train.optimizer_type:"))
    if importlib.util.find_spec("bitsandbytes") is None:
        assert line.startswith("train.optimizer_type: adamw  # default AdamW8bit needs bitsandbytes")
    else:
        assert line == "train.optimizer_type: adamw8bit  # default"
    # a chosen AdamW8bit is honoured (and fails without bitsandbytes, saying how to install it)
    chosen = run_spmctl("train", "-m", "tiny", "--set", "train.optimizer_type=AdamW8bit", "--print-config")
    assert "train.optimizer_type: adamw8bit  # command line" in chosen.stdout


def test_tiny_model_with_bare_defaults_trains_at_its_size(tmp_path: Path) -> None:
    """No config at all: the standard install's optimizer, and the tiny model's 64 px, not 512."""
    out = tmp_path / "run"
    result = run_spmctl("train", "-m", "tiny", "--template", "concept", "--template_name", "cat",
                        "--iterations", "3", "--devices", "cpu", "--output_dir", str(out))
    assert result.returncode == 0, result.stderr
    if importlib.util.find_spec("bitsandbytes") is None:
        assert "note: train.optimizer_type: default AdamW8bit needs bitsandbytes" in result.stderr
    steps = [json.loads(line) for line in (out / "cat_log.jsonl").read_text().splitlines()]
    assert len(steps) == 3 and max(max(s["height"], s["width"]) for s in steps) <= 64
    # a resolution the user sets wins
    from spmctl.config.train import load_train_config
    from spmctl.training.prompts import resolve_prompt_settings

    cfg, _ = load_train_config(None, {"pretrained_model": {"ckpt_path": "tiny"}, "template": "concept",
                                      "template_name": "cat", "prompt": {"resolution": 128}})
    assert resolve_prompt_settings(cfg)[0].resolution == 128


def test_unknown_template_name_lists_close_names_and_the_template_that_has_it(tmp_path: Path) -> None:
    result = run_spmctl("train", "-m", "tiny", "--template", "object", "--template_name", "self-harm",
                        "--devices", "cpu", "--output_dir", str(tmp_path / "o"))
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("config error: template_name: unknown object name 'self-harm'")
    assert "'self-harm' is a name of --template i2p" in last and "`spmctl names object`" in last
    close = run_spmctl("train", "-m", "tiny", "--template", "style", "--template_name", "Van Gohg",
                       "--devices", "cpu", "--output_dir", str(tmp_path / "o"))
    assert close.returncode == 2 and "did you mean 'Van_Gogh'" in close.stderr
    assert not (tmp_path / "o").exists()


def test_names_lists_every_template_and_its_names() -> None:
    listing = run_spmctl("names", env={"COLUMNS": "80"})
    assert listing.returncode == 0, listing.stderr
    assert "style (50 names)" in listing.stdout and "object (20 names)" in listing.stdout
    assert "i2p (8 names)" in listing.stdout and "concept (any text)" in listing.stdout
    assert max(len(line) for line in listing.stdout.splitlines()) <= 80
    styles = run_spmctl("names", "style").stdout.split("\n")
    assert len([s for s in styles if s]) == 50 and "Van_Gogh" in styles
    assert "self-harm" in run_spmctl("names", "i2p").stdout.splitlines()


@pytest.mark.parametrize(("flag", "expected"), [("--use_sample=false", "false"), ("--use_sample=True", "true"),
                                                ("--use-sample=no", "false")])
def test_use_sample_with_equals_value(flag: str, expected: str) -> None:
    shown = run_spmctl("train", flag, "--print-config")
    assert shown.returncode == 0, shown.stderr
    assert f"use_sample: {expected}  # command line" in shown.stdout
