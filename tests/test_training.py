"""`spmctl train` on the tiny model: erasure happens, anchors hold, runs resume exactly."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import TESTS, run_spmctl, write_train_config

from spmctl.config.train import load_train_config
from spmctl.errors import SpmctlError
from spmctl.families import load_model
from spmctl.membrane import MembraneNetwork, load_membrane
from spmctl.models.loading import make_scheduler
from spmctl.training.objective import SPMObjective
from spmctl.training.prompts import resolve_prompt_settings
from spmctl.training.run import _embeds, run_training

write_config = write_train_config


def objective_terms(cfg_path: Path, membrane: Path | None, model_name: str = "tiny") -> dict[str, float]:
    """The erase and anchoring terms on fixed draws, for the base model or with a trained membrane."""
    cfg, _ = load_train_config(cfg_path)
    model = load_model(model_name)
    net = MembraneNetwork.for_model(model)
    if membrane is not None:
        net.load_state_dict_for(0, load_membrane(membrane).tensors)
    objective = SPMObjective(model, net, lambda: model.family.make_scheduler(model, "ddim"),
                             cfg.train.max_denoising_steps)
    embeds = _embeds(model, resolve_prompt_settings(cfg), 1)[0]
    return objective.evaluate(embeds, seed=99, draws=6)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """One short run per action, in-process."""
    runs = {}
    for action in ("erase", "erase_with_la"):
        out = tmp_path_factory.mktemp(action)
        cfg_path = write_config(out / "cfg.yaml", prompt__action=action, output_dir=str(out / "run"))
        cfg, _ = load_train_config(cfg_path)
        runs[action] = (cfg_path, run_training(cfg, quiet=True))
    return runs


def test_erase_objective_falls_and_anchors_hold(trained):
    base_cfg = trained["erase"][0]
    before = objective_terms(base_cfg, None)
    assert before["anchor_loss"] < 1e-10  # a fresh membrane changes nothing
    after = {action: objective_terms(base_cfg, path) for action, (_, path) in trained.items()}
    for action, terms in after.items():  # measured: ~13x lower after 40 steps
        assert terms["erase_loss"] < 0.25 * before["erase_loss"], (action, before, terms)
    # anchoring keeps unrelated directions where they were: measured ~10x less drift than without it
    assert after["erase_with_la"]["anchor_loss"] < 0.3 * after["erase"]["anchor_loss"], after
    assert after["erase_with_la"]["anchor_loss"] < 0.05 * before["erase_loss"], (before, after)


def test_outputs_and_log(trained):
    cfg_path, last = trained["erase_with_la"]
    out = last.parent
    assert last.name == "cat_last.safetensors"
    assert load_membrane(last).concepts == ["cat"]
    assert {"cat_config.yaml", "cat_log.jsonl", "cat_summary.json", "cat_state.pt"} <= {p.name for p in out.iterdir()}
    records = [json.loads(line) for line in (out / "cat_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 41))
    assert all({"erase_loss", "anchor_loss", "lr", "loss"} <= set(r) for r in records)
    assert yaml.safe_load((out / "cat_config.yaml").read_text())["template_name"] == "cat"
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temp files


def test_seed_config_with_a_style_template_trains_on_that_style(tmp_path: Path):
    result = run_spmctl(
        "train", "--config_path", str(TESTS / "data" / "seed_train_config.yaml"),
        "--template", "style", "--template_name", "Van_Gogh", "--model", "tiny", "--devices", "cpu",
        "--output_dir", str(tmp_path / "out"), "--iterations", "3",
        "--set", "train.optimizer_type=AdamW", "--set", "prompt.resolution=64",
        "--set", "prompt.dynamic_resolution=false", "--set", "train.lr_warmup_steps=0",
    )
    assert result.returncode == 0, result.stderr
    files = list((tmp_path / "out").glob("*_last.safetensors"))
    assert len(files) == 1 and load_membrane(files[0]).concepts == ["Van Gogh"]
    log = tmp_path / "out" / "van_gogh_log.jsonl"
    targets = {json.loads(line)["target"] for line in log.read_text().splitlines()}
    assert targets == {"Van Gogh"}
    assert "prompt.target 'Abstractionism' differs from template_name" in result.stderr
    cfg, _ = load_train_config(tmp_path / "out" / "van_gogh_config.yaml")
    settings = resolve_prompt_settings(cfg)
    assert [(s.target, s.positive, s.neutral, s.action, s.la_strength, s.sampling_batch_size)
            for s in settings] == [("Van Gogh", "Van Gogh", "", "erase_with_la", 1000, 4)]


# The child stops itself right after logging step 6, with a real signal: where a test process
# watched the log and signalled from outside, a loaded machine let the 16 tiny steps finish (or the
# signal land during the final save) before the signal arrived.
STOP_AT_STEP_6 = """
import os, signal, sys
from spmctl.training import run
log = run._Logger.log
how = getattr(signal, sys.argv.pop(1))
def log_then_stop(self, record):
    log(self, record)
    if record["step"] == 6:
        os.kill(os.getpid(), how)
run._Logger.log = log_then_stop
sys.argv[0] = "spmctl"
from spmctl.cli import main
main()
"""
INTERRUPTED = {"save__per_steps": 4, "train__iterations": 16, "train__lr_scheduler": "cosine",
               "train__lr_warmup_steps": 2}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory):
    """The membrane of the run the interrupted ones must resume to, trained once per model."""
    done: dict[str, dict[str, torch.Tensor]] = {}

    def reference(model: str) -> dict[str, torch.Tensor]:
        if model not in done:
            tmp = tmp_path_factory.mktemp("whole")
            cfg_path = write_config(tmp / "whole.yaml", output_dir=str(tmp / "whole"),
                                    pretrained_model__ckpt_path=model, **INTERRUPTED)
            done[model] = load_membrane(run_training(load_train_config(cfg_path)[0], quiet=True)).tensors
        return done[model]

    return reference


@pytest.mark.parametrize(("stop", "model"), [("kill", "tiny"), ("ctrl-c", "tiny"), ("sigterm", "tiny"),
                                             ("sigterm", "tiny-sdxl")])
def test_interrupted_run_resumes_to_the_same_weights(tmp_path: Path, stop: str, model: str, uninterrupted):
    reference = uninterrupted(model)
    cut = write_config(tmp_path / "cut.yaml", output_dir=str(tmp_path / "cut"), pretrained_model__ckpt_path=model,
                       **INTERRUPTED)
    how = {"kill": "SIGKILL", "ctrl-c": "SIGINT", "sigterm": "SIGTERM"}[stop]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPMCTL_")}
    proc = subprocess.run([sys.executable, "-c", STOP_AT_STEP_6, how, "train", "-c", str(cut), "--quiet"],
                          capture_output=True, text=True, timeout=300, env=env)
    err = proc.stderr
    if stop == "kill":
        assert proc.returncode == -signal.SIGKILL, err
    else:  # what a job scheduler sends before it kills is handled like Ctrl-C
        assert proc.returncode == (130 if stop == "ctrl-c" else 143), err
        what = "interrupted" if stop == "ctrl-c" else "terminated (SIGTERM)"
        assert err.strip() == f"{what} at step 6: saved; continue with --resume", err
    assert not (tmp_path / "cut" / "cat_last.safetensors").exists()
    if stop == "kill":  # the same whatever stopped it: one row is enough
        again = run_spmctl("train", "-c", str(cut), "--quiet")
        assert again.returncode == 1 and "--resume" in again.stderr  # a second run never overwrites a run silently
    resumed = run_spmctl("train", "-c", str(cut), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    # a kill loses the steps after the last checkpoint (4); a signal saves the step it came in (6)
    assert f"resuming 'cat' from step {4 if stop == 'kill' else 6}" in resumed.stderr
    got = load_membrane(tmp_path / "cut" / "cat_last.safetensors").tensors
    for key, value in reference.items():
        torch.testing.assert_close(got[key], value, rtol=1e-5, atol=1e-7, msg=key)
    # records the killed run logged past its checkpoint were dropped: each step once, in order
    steps = [json.loads(line)["step"] for line in (tmp_path / "cut" / "cat_log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 17))
    summary = json.loads((tmp_path / "cut" / "cat_summary.json").read_text())  # the time of both parts
    parts = [(p["from_step"], p["to_step"]) for p in summary["parts"]]
    assert len(parts) == 2 and parts[0][0] == 0 and parts[0][1] == parts[1][0] and parts[1][1] == 16
    assert summary["seconds"] == pytest.approx(sum(p["seconds"] for p in summary["parts"]))


@pytest.mark.parametrize(("key", "value"), [
    ("train__optimizer_type", "SGD"), ("train__lr_scheduler", "linear"),
    ("train__lr_scheduler", "cosine_with_restarts"), ("train__lr_scheduler", "polynomial"),
    ("train__lr_scheduler", "constant_with_warmup"), ("train__lr_scheduler", "cosine"),
    ("train__noise_scheduler", "ddpm"), ("train__noise_scheduler", "lms"),
    ("train__noise_scheduler", "euler_a"), ("train__precision", "bfloat16"), ("train__precision", "float16"),
    ("train__max_grad_norm", 1.0), ("prompt__dynamic_resolution", True), ("pretrained_model__clip_skip", 2),
])
def test_every_option_runs(tmp_path: Path, key: str, value):
    cfg_path = write_config(tmp_path / "c.yaml", output_dir=str(tmp_path / "o"), train__iterations=2,
                            **{key: value})
    cfg, _ = load_train_config(cfg_path)
    try:
        last = run_training(cfg, quiet=True)
    except SpmctlError as exc:  # an optional dependency missing here: its one line names the package
        assert value == "lms" and "pip install scipy" in str(exc), exc
        return
    tensors = load_membrane(last).tensors
    assert all(torch.isfinite(t).all() for t in tensors.values())
    assert any(t.abs().sum() > 0 for k, t in tensors.items() if "lora_up" in k)  # it trained


@pytest.mark.parametrize(("optimizer", "package"), [("AdamW8bit", "bitsandbytes"), ("Lion", "lion_pytorch"),
                                                    ("Prodigy", "prodigyopt")])
def test_optional_optimizers_run_or_say_what_to_install(tmp_path: Path, optimizer: str, package: str):
    """Installed, the named optimizer is the one built (not AdamW in its place) and trains; missing, the
    run stops before it starts with one line naming what to install."""
    from spmctl.training.optim import build_optimizer

    cfg_path = write_config(tmp_path / "c.yaml", output_dir=str(tmp_path / "o"), train__iterations=1,
                            train__optimizer_type=optimizer)
    cfg, _ = load_train_config(cfg_path)
    if importlib.util.find_spec(package) is None:
        with pytest.raises(SpmctlError) as refused:
            run_training(cfg, quiet=True)
        message = str(refused.value)
        assert f"train.optimizer_type = {optimizer.lower()!r}" in message and package.replace("_", "-") in message
        assert "\n" not in message and not (tmp_path / "o").exists()
        return
    try:
        built = build_optimizer([torch.nn.Parameter(torch.zeros(1))], cfg.train)
    except SpmctlError as exc:  # installed but unusable here (bitsandbytes without its GPU backend)
        assert "cannot run here" in str(exc) and "\n" not in str(exc)
        return
    assert type(built).__module__.split(".")[0] == package
    last = run_training(cfg, quiet=True)
    assert any(t.abs().sum() > 0 for k, t in load_membrane(last).tensors.items() if "lora_up" in k)


def test_clip_skip_changes_the_embeddings():
    from spmctl.models.text import encode_prompts

    model = load_model("tiny")
    last = encode_prompts(model.tokenizer, model.text_encoder, ["a cat"], clip_skip=1)
    skipped = encode_prompts(model.tokenizer, model.text_encoder, ["a cat"], clip_skip=2)
    assert last.shape == skipped.shape and not torch.allclose(last, skipped)


@pytest.mark.parametrize(("model", "expected"), [
    ("/nonexistent/model", "model not found"),
    ("{tmp}", "not a diffusers model folder"),
    ("{tmp}/broken.ckpt", "unreadable checkpoint"),
    ("{tmp}/missing.safetensors", "model file not found"),
])
def test_bad_model_paths_are_one_line(tmp_path: Path, model: str, expected: str):
    (tmp_path / "broken.ckpt").write_bytes(b"not a checkpoint")
    cfg_path = write_config(tmp_path / "c.yaml", output_dir=str(tmp_path / "o"))
    result = run_spmctl("train", "-c", str(cfg_path), "--model", model.format(tmp=tmp_path), "--quiet",
                        env={"HF_HUB_OFFLINE": "1"})
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if not line.startswith("warning:")]
    assert len(lines) == 1 and expected in lines[0], result.stderr


def test_prompt_section_alone_is_what_trains(tmp_path: Path):
    """The seed silently ignored its own `prompt:` section; here it is the run's target."""
    cfg_path = write_config(tmp_path / "c.yaml", output_dir=str(tmp_path / "o"), train__iterations=2,
                            template=None, template_name=None,
                            prompt={"target": "dog", "action": "erase", "resolution": 64})
    cfg, _ = load_train_config(cfg_path)
    last = run_training(cfg, quiet=True)
    assert last.name == "dog_last.safetensors" and load_membrane(last).concepts == ["dog"]
    targets = {json.loads(line)["target"] for line in (tmp_path / "o" / "dog_log.jsonl").read_text().splitlines()}
    assert targets == {"dog"}


def test_use_sample_false_is_never_read_as_true():
    """The seed parsed `--use_sample False` as true; here the value is honoured, and the flag alone
    or `--no-use-sample` work as usual."""
    for args, expected in ((["--use_sample", "False"], "false"), (["--use_sample", "true"], "true"),
                           (["--no-use-sample"], "false"), (["--use_sample"], "true")):
        shown = run_spmctl("train", *args, "--print-config")
        assert shown.returncode == 0, shown.stderr
        assert f"use_sample: {expected}  # command line" in shown.stdout, args
    result = run_spmctl("train", "--use_sample", "maybe", "--print-config")
    assert result.returncode == 2 and "maybe" in result.stderr


def test_every_anchor_counts_and_no_unconditional_half_is_wasted(tmp_path: Path):
    """UNet batches per step: CFG denoising [uncond, target] x B, then one OFF call with positive,
    neutral and all A anchors (2B + A) and one ON call with target and all A anchors (B + A)."""
    cfg_path = write_config(tmp_path / "c.yaml", prompt__sampling_batch_size=4, prompt__batch_size=2)
    cfg, _ = load_train_config(cfg_path)
    model = load_model("tiny")
    net = MembraneNetwork(model.unet)
    objective = SPMObjective(model, net, lambda: make_scheduler("ddim", model.scheduler_config),
                             cfg.train.max_denoising_steps)
    embeds = _embeds(model, resolve_prompt_settings(cfg), 1)[0]
    batches: list[int] = []
    hook = model.unet.register_forward_pre_hook(lambda m, args: batches.append(args[0].shape[0]))
    try:
        _, terms = objective.loss(embeds, torch.Generator().manual_seed(0))
    finally:
        hook.remove()
    assert batches == [2 * 2] * terms["k"] + [2 * 2 + 4, 2 + 4]


def test_single_file_checkpoints_train_offline(tmp_path: Path, tiny_model_dir: Path):
    """A CompVis-layout .safetensors and a .ckpt (read with weights_only) of the tiny model, with
    pretrained_model.config naming a folder of its configs (no hub access)."""
    from safetensors.torch import load_file

    from spmctl.export.model import export_model

    single = export_model("tiny", [], tmp_path / "tiny.safetensors", fmt="safetensors")
    ckpt = tmp_path / "tiny.ckpt"
    torch.save({"state_dict": load_file(str(single))}, ckpt)
    reference = load_model("tiny").unet.state_dict()
    for path in (single, ckpt):
        model = load_model(str(path), config=str(tiny_model_dir))
        for key, value in model.unet.state_dict().items():
            assert torch.equal(value, reference[key]), (path.suffix, key)
    cfg_path = write_config(tmp_path / "c.yaml", output_dir=str(tmp_path / "o"), train__iterations=1,
                            pretrained_model={"ckpt_path": str(ckpt), "config": str(tiny_model_dir)})
    result = run_spmctl("train", "-c", str(cfg_path), "--quiet", env={"HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr


def test_previews_during_training_are_spmctl_samples_of_each_step(tmp_path: Path):
    """`save.sample_every_n_steps`: at each such step, the target and one unrelated prompt (default)
    as `spmctl sample` would draw them with that step's membrane, named by step; a resumed run
    continues the series; previews change nothing in training (its random state is left alone)."""
    import numpy as np
    from PIL import Image

    from spmctl.config.sample import SampleConfig
    from spmctl.sampling.preview import UNRELATED_PROMPT, write_previews
    from spmctl.sampling.run import run_sampling

    common = {"output_dir": str(tmp_path / "run"), "save__per_steps": 2, "train__lr_scheduler": "constant"}
    previews = {"save__sample_every_n_steps": 1, "save__sample_steps": 3}  # between steps too, not only at the end
    first, _ = load_train_config(write_config(tmp_path / "a.yaml", train__iterations=2, **common, **previews))
    with pytest.raises(SpmctlError, match="draws no previews"):  # training alone has no sampler
        run_training(first, quiet=True)
    run_training(first, quiet=True, previewer=write_previews)
    samples = tmp_path / "run" / "samples"
    made_at_2 = {p.name: p.stat().st_mtime_ns for p in samples.iterdir()}
    assert sorted(made_at_2) == [f"cat_step00000{s}_{i}.png" for s in (1, 2) for i in (0, 1)]
    resumed, _ = load_train_config(write_config(tmp_path / "a.yaml", train__iterations=4, **common, **previews),
                                   {"resume": True})
    run_training(resumed, quiet=True, previewer=write_previews)
    expected = [f"cat_step00000{step}_{i}.png" for step in range(1, 5) for i in (0, 1)]
    assert sorted(p.name for p in samples.iterdir()) == expected
    assert {name: (samples / name).stat().st_mtime_ns for name in made_at_2} == made_at_2  # continued, not redone

    # the same membrane as a run without previews
    plain, _ = load_train_config(write_config(tmp_path / "b.yaml", train__iterations=4,
                                              **{**common, "output_dir": str(tmp_path / "plain")}))
    reference = load_membrane(run_training(plain, quiet=True)).tensors
    got = load_membrane(tmp_path / "run" / "cat_last.safetensors").tensors
    for key, value in reference.items():
        torch.testing.assert_close(got[key], value, rtol=0, atol=0, msg=key)
    records = [json.loads(line) for line in (tmp_path / "run" / "cat_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert [r["step"] for r in records if "preview_seconds" in r] == [1, 2, 3, 4]  # its cost, in the log

    # each preview is what `spmctl sample` makes with that step's membrane file, at its FT gate
    shown = run_sampling(SampleConfig(model="tiny", spms=[str(tmp_path / "run" / "cat_last.safetensors")],
                                      prompts=["cat", UNRELATED_PROMPT], steps=3, width=64, height=64, seeds=[0],
                                      output_dir=str(tmp_path / "sampled")), quiet=True)
    manifest = [json.loads(line) for line in (shown / "manifest.jsonl").read_text().splitlines()]
    for i, record in enumerate(manifest):
        preview = samples / f"cat_step000004_{i}.png"  # the last step's: cat_last.safetensors
        assert np.array_equal(np.asarray(Image.open(preview)), np.asarray(Image.open(shown / record["file"])))
        meta = json.loads(Image.open(preview).text["spmctl"])
        assert meta["prompt"] == record["prompt"] and meta["gates"] == pytest.approx(record["gates"])
    gates = [r["gates"][0] for r in manifest]
    assert gates[0] > 0.9 and gates[1] < gates[0]  # the target opens the membrane; the other prompt less
