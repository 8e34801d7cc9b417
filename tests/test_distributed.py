"""Scaling out: concept sweeps, several processes (our launcher and torchrun), DDP, sharded sampling.

Multi-process runs use 2 CPU processes with the gloo backend on the tiny model at 64 px: our own
launcher for `--devices cpu,cpu`, and `python -m torch.distributed.run` (torchrun) as a user would
on a GPU node.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import SPMCTL, TINY_TRAIN, run_spmctl, write_train_config
from helpers_shards import assert_shards_average_to_the_batch, trained_looking

from spmctl.config.train import load_train_config
from spmctl.distributed import dist
from spmctl.distributed.sweep import SweepSpec, sweep_concepts
from spmctl.distributed.sweep_state import SWEEP_FILE, SweepState, part_path, read_entries
from spmctl.errors import ConfigError
from spmctl.membrane import load_membrane

CONFIG = {**TINY_TRAIN, "train": {**TINY_TRAIN["train"], "iterations": 6, "max_denoising_steps": 4}}


def write_config(path: Path, **sections) -> Path:
    return write_train_config(path, CONFIG, **sections)


def torchrun(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """`torchrun --standalone --nproc-per-node 2 -m spmctl ...`, as a user on one node would run it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPMCTL_")}
    env["PYTHONFAULTHANDLER"] = "1"  # an abort in a rank shows where it happened (Python stacks)
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "spmctl", *args], capture_output=True, text=True, env=env, timeout=timeout)


# ----------------------------------------------------------------------------- in one process


@pytest.mark.parametrize(("batch", "anchors"), [(2, 4), (1, 2), (1, 3)])
def test_shards_average_to_the_full_batch_gradient(tiny_objective, batch: int, anchors: int):
    """What DDP relies on: the ranks' gradients, averaged, are the whole batch's (for parts that split
    evenly and for parts every rank computes whole)."""
    objective, embeds, params = tiny_objective
    settings = embeds.settings.model_copy(update={"batch_size": batch, "sampling_batch_size": anchors})
    probe = type(embeds)(settings, embeds.unconditional, embeds.target, embeds.positive, embeds.neutral)
    assert_shards_average_to_the_batch(objective, probe, params)


@pytest.fixture(scope="module")
def tiny_objective():
    from spmctl.families import load_model
    from spmctl.membrane import MembraneNetwork
    from spmctl.models.loading import make_scheduler
    from spmctl.training.objective import SPMObjective
    from spmctl.training.prompts import resolve_prompt_settings
    from spmctl.training.run import _embeds

    cfg = load_train_config(None, CONFIG)[0]
    model = load_model("tiny")
    torch.manual_seed(0)
    network = MembraneNetwork(model.unet)
    params = network.trainable_parameters()
    trained_looking(params)
    objective = SPMObjective(model, network, lambda: make_scheduler("ddim", model.scheduler_config), 4)
    return objective, _embeds(model, resolve_prompt_settings(cfg), 1)[0], params


@pytest.mark.parametrize(("variables", "devices", "expected"), [
    ({}, "0,1", "0"),
    ({"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}, "2,3", "3"),
    ({"WORLD_SIZE": "8", "RANK": "5", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4"}, "0", "1"),
    ({"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}, "cpu,cpu", "cpu"),
])
def test_each_process_gets_its_device(monkeypatch, variables, devices, expected):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    env = dist.dist_env()
    assert dist.local_device(devices, env) == expected
    assert env.distributed == bool(variables)
    with pytest.raises(ConfigError, match="not both"):
        dist.local_device("0,cpu", env)


def test_sweep_lists(tmp_path: Path):
    cfg = load_train_config(None, CONFIG)[0].model_copy(update={"template": None})
    listing = tmp_path / "concepts.txt"
    listing.write_text("# artists\nVan Gogh\n\n  Monet  \nVan Gogh\n")
    assert sweep_concepts(SweepSpec(file=listing), cfg) == ("concept", ["Van Gogh", "Monet"])
    template, styles = sweep_concepts(SweepSpec(template="style", names="all"), cfg)
    assert template == "style" and len(styles) == 50 and "Van_Gogh" in styles
    assert sweep_concepts(SweepSpec(template="object", names="Cats, Dogs"), cfg) == ("object", ["Cats", "Dogs"])
    for spec, message in [(SweepSpec(names="all"), "has no list of names"),
                          (SweepSpec(template="style"), "needs --sweep-names"),
                          (SweepSpec(names="Van Gogh,van_gogh"), "would share the folder"),
                          (SweepSpec(file=tmp_path / "missing.txt"), "missing.txt"),
                          (SweepSpec(template="no_such_template", names="x"), "no_such_template")]:
        with pytest.raises(Exception, match=message):
            sweep_concepts(spec, cfg)


def test_sweep_state_parts_merge_newest_first(tmp_path: Path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "a_last.safetensors").write_bytes(b"x")
    meta = {"template": "concept", "order": ["a", "b", "c", "d"]}
    old = {"a": {"status": "running", "updated": 1}, "b": {"status": "done", "output": "b/gone", "updated": 1},
           "c": {"status": "running", "updated": 1}}
    (tmp_path / SWEEP_FILE).write_text(json.dumps({**meta, "concepts": old}))
    part_path(tmp_path, 1).write_text(json.dumps({"concepts": {
        "a": {"status": "done", "output": "a/a_last.safetensors", "updated": 2},
        "c": {"status": "failed", "updated": 0}}}))  # older than sweep.json's entry: loses
    assert read_entries(tmp_path)["a"]["status"] == "done" and read_entries(tmp_path)["c"]["status"] == "running"
    todo, entries = SweepState(tmp_path, 0, meta).plan(["a", "b", "c", "d"], {n: n for n in "abcd"})
    assert todo == ["b", "c", "d"]  # a is done; b's membrane is gone; c was killed; d is new
    assert [entries[n]["status"] for n in "bcd"] == ["pending", "interrupted", "pending"]
    assert not list(tmp_path.glob("sweep.rank*.json"))  # merged into sweep.json, then removed
    assert list(json.loads((tmp_path / SWEEP_FILE).read_text())["concepts"]) == ["a", "b", "c", "d"]


@pytest.mark.parametrize("model", ["tiny", "tiny-sdxl"])
def test_sweep_in_one_process(tmp_path: Path, model: str):
    from spmctl.distributed.launch import train_scaled

    cfg_path = write_config(tmp_path / "c.yaml", output_dir=str(tmp_path / "out"), train={"iterations": 2},
                            pretrained_model={"ckpt_path": model})
    cfg = load_train_config(cfg_path)[0]
    assert train_scaled(cfg, SweepSpec(names="cat,a red dog"), quiet=True) == 0
    entries = json.loads((tmp_path / "out" / SWEEP_FILE).read_text())["concepts"]
    assert {n: e["status"] for n, e in entries.items()} == {"cat": "done", "a red dog": "done"}
    assert load_membrane(tmp_path / "out" / "a_red_dog" / "a_red_dog_last.safetensors").concepts == ["a red dog"]
    # the prompt section still says how: 64 px, as configured
    log = (tmp_path / "out" / "a_red_dog" / "a_red_dog_log.jsonl").read_text().splitlines()
    assert json.loads(log[0])["height"] == 64 and json.loads(log[0])["target"] == "a red dog"
    assert train_scaled(cfg, SweepSpec(names="cat,a red dog"), quiet=True) == 0  # all done: nothing to do
    assert len((tmp_path / "out" / "cat" / "cat_log.jsonl").read_text().splitlines()) == 2


# ------------------------------------------------------------------------ several processes


def _wait_until(condition, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        if proc.poll() is not None:
            raise AssertionError(f"the sweep ended early: {proc.stderr.read() if proc.stderr else ''}")
        time.sleep(0.05)
    raise AssertionError("the sweep did not get there in time")


def test_sweep_over_two_processes_survives_a_kill_and_a_failing_concept(tmp_path: Path):
    listing = tmp_path / "styles.txt"
    listing.write_text("Van_Gogh\nMonet\nNot_A_Style\nPicasso\n")
    out = tmp_path / "out"
    cfg_path = write_config(tmp_path / "c.yaml", output_dir=str(out), template="style",
                            train={"iterations": 40}, save={"per_steps": 5})
    args = [str(SPMCTL), "train", "-c", str(cfg_path), "--sweep", str(listing), "--devices", "cpu,cpu", "--quiet"]
    # rank 0 takes Van_Gogh and Not_A_Style, rank 1 Monet and Picasso: kill while Picasso trains
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    picasso = out / "picasso"

    def picasso_half_way() -> bool:
        # every other concept settled first (rank 0's Not_A_Style fails at once after Van_Gogh, while
        # rank 1 still has Picasso's ~35 steps to go): under load rank 0 may lag, so wait for it too
        entries = read_entries(out)
        settled = {n: entries.get(n, {}).get("status") for n in ("Van_Gogh", "Monet", "Not_A_Style")}
        return (settled == {"Van_Gogh": "done", "Monet": "done", "Not_A_Style": "failed"}
                and (picasso / "picasso_state.pt").exists()
                and len((picasso / "picasso_log.jsonl").read_text().splitlines()) >= 6)

    try:
        _wait_until(picasso_half_way, proc)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and its workers: one process group
        proc.wait(timeout=60)
    entries = read_entries(out)
    assert not (picasso / "picasso_last.safetensors").exists(), entries
    assert entries["Picasso"]["status"] == "running" and entries["Not_A_Style"]["status"] == "failed", entries
    done_before = {n: (out / n.lower() / f"{n.lower()}_last.safetensors").stat().st_mtime_ns
                   for n in ("Van_Gogh", "Monet")}

    again = subprocess.run(args[:-1], capture_output=True, text=True, timeout=300)  # not --quiet: read its lines
    assert again.returncode == 1, again.stderr  # one concept failed
    for line in ("2 of 4 concepts already done", "'Picasso' (1/1 on rank 1), resuming",
                 "unknown style name 'Not_A_Style'", "3 of 4 concepts done, 1 failed"):
        assert line in again.stderr, again.stderr
    final = json.loads((out / SWEEP_FILE).read_text())
    assert final["order"] == ["Van_Gogh", "Monet", "Not_A_Style", "Picasso"]
    status = {n: (e["status"], e["attempts"]) for n, e in final["concepts"].items()}
    assert status == {"Van_Gogh": ("done", 1), "Monet": ("done", 1), "Not_A_Style": ("failed", 2),
                      "Picasso": ("done", 2)}
    assert "unknown style name" in final["concepts"]["Not_A_Style"]["error"]
    assert all(isinstance(final["concepts"][n]["seconds"], float) for n in status)
    for name, mtime in done_before.items():  # done ones were not trained again
        assert (out / name.lower() / f"{name.lower()}_last.safetensors").stat().st_mtime_ns == mtime
    steps = [json.loads(line)["step"] for line in (picasso / "picasso_log.jsonl").read_text().splitlines()]
    assert steps[-1] == 40 and steps.count(1) == 1  # continued from its checkpoint, not from the start
    for name in ("Van_Gogh", "Monet", "Picasso"):
        assert load_membrane(out / name.lower() / f"{name.lower()}_last.safetensors").concepts == [
            name.replace("_", " ")]
    assert not list(out.glob("sweep.rank*.json")) and not (out / "not_a_style").exists()


@pytest.mark.parametrize("model", ["tiny", pytest.param("tiny-sdxl", marks=pytest.mark.slow)])
def test_ddp_over_two_processes_matches_one_process(tmp_path: Path, model: str):
    from spmctl.training.run import run_training

    # batch 2 and 4 anchors split over 2 ranks; SGD so the weights reflect the gradients linearly (the tiny
    # SDXL's are ~10x smaller: a larger step makes the same visible change)
    sections = {"train": {"optimizer_type": "SGD", "lr": 100.0 if model == "tiny-sdxl" else 10.0},
                "prompt": {"batch_size": 2, "sampling_batch_size": 4},
                "pretrained_model": {"ckpt_path": model}}
    single_cfg = write_config(tmp_path / "one.yaml", output_dir=str(tmp_path / "one"), **sections)
    reference = load_membrane(run_training(load_train_config(single_cfg)[0], quiet=True)).tensors

    # with previews (rank 0 alone draws them): the weights stay those of the run without
    ddp_cfg = write_config(tmp_path / "ddp.yaml", output_dir=str(tmp_path / "ddp"),
                           save={"sample_every_n_steps": 3, "sample_steps": 2}, **sections)
    result = torchrun("train", "-c", str(ddp_cfg), "--ddp", "--quiet")
    assert result.returncode == 0, result.stderr[-3000:]
    got = load_membrane(tmp_path / "ddp" / "cat_last.safetensors").tensors
    assert max(float(v.abs().max()) for k, v in reference.items() if "lora_up" in k) > 1e-3  # it trained
    for key, value in reference.items():
        torch.testing.assert_close(got[key], value, rtol=0, atol=1e-5, msg=key)
    # rank 0 alone wrote the log, with the ranks' averaged losses: those of the one-process run
    one = [json.loads(line) for line in (tmp_path / "one" / "cat_log.jsonl").read_text().splitlines()]
    two = [json.loads(line) for line in (tmp_path / "ddp" / "cat_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in two] == list(range(1, 7))
    assert [r["loss"] for r in two] == pytest.approx([r["loss"] for r in one], rel=1e-4)
    assert json.loads((tmp_path / "ddp" / "cat_summary.json").read_text())["processes"] == 2
    assert sorted(p.name for p in (tmp_path / "ddp" / "samples").iterdir()) == [
        f"cat_step00000{step}_{i}.png" for step in (3, 6) for i in (0, 1)]


def test_sharded_sampling_writes_each_image_once(tmp_path: Path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\na dog\na red car\na tree\nthe sea\n")
    out = tmp_path / "samples"
    common = ["--model", "tiny", "--prompts-file", str(prompts), "--steps", "2", "-W", "64", "-H", "64",
              "--seed", "0", "--seed", "1", "-o", str(out), "--quiet"]
    result = torchrun("sample", *common[:-1])
    assert result.returncode == 0, result.stderr[-3000:]
    said = " ".join(result.stderr.split())  # rich wraps lines at the terminal width
    assert "10 of 10 images of this run in" in said and "(all 2 processes)" in said
    files = [json.loads(line)["file"] for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(files) == len(set(files)) == 10
    assert sorted(p.name for p in out.glob("*.png")) == sorted(files)
    assert not list(out.glob("manifest.rank*.jsonl"))
    again = run_spmctl("sample", *common[:-1])  # one process now: everything is there already
    assert again.returncode == 0, again.stderr
    assert "10 of 10 images already" in again.stderr
    assert len((out / "manifest.jsonl").read_text().splitlines()) == 10


def test_a_busy_run_folder_stops_every_ddp_rank_with_one_line(tmp_path: Path):
    """Rank 0 takes the run folder's lock; when another run holds it, every rank stops with its one
    line (the other ranks failed with a traceback before)."""
    from spmctl.training.folder import RunFolder

    cfg = write_config(tmp_path / "c.yaml", output_dir=str(tmp_path / "out"))
    # and -q holds in the workers from their first moment: a library warning while a spawned worker
    # starts (here: every worker warns as it starts up) is not shown
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text('import sys, warnings\nif "--multiprocessing-fork" in sys.argv:\n'
                                           '    warnings.warn("a worker warns while it starts")\n')
    holder = RunFolder(tmp_path / "out", "cat")  # this test process plays the run already writing there
    holder.open()
    try:
        result = run_spmctl("train", "-c", str(cfg), "--ddp", "--devices", "cpu,cpu", "--quiet", timeout=600,
                            env={"PYTHONPATH": str(site)})
    finally:
        holder.close(failed=False)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "a worker warns" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert f"another spmctl train is writing here (pid {os.getpid()} on " in errors[0]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == []  # nothing of the refused run
