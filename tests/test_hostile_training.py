"""Training under hostile conditions (issue 12 classes 6, 8, 9, 10; issue 14 item 2; issue 19's summary).

A second run on a busy folder, a kill's leftovers, an update that poisons the state, a resume with
other settings, impatient Ctrl-C, runs of several concepts in one folder, and the time a run took
over several parts. Real runs of the tiny model, in-process where the CLI adds nothing, otherwise
the installed `spmctl` with real signals.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import torch
from conftest import SPMCTL, copy_run, run_spmctl, write_train_config

from spmctl.config.train import load_train_config
from spmctl.errors import SpmctlError
from spmctl.membrane import load_membrane
from spmctl.membrane.io import resolve_spm_path
from spmctl.training.checkpoint import load_state
from spmctl.training.run import run_training


def _config(path: Path, out: Path, resume: bool = False, **overrides):
    write_train_config(path, output_dir=str(out), **{"train__iterations": 2, **overrides})
    cfg, _ = load_train_config(path, {"resume": True} if resume else None)
    return cfg


@pytest.fixture(scope="module")
def finished(trained_cat: Path) -> Path:
    """A finished two-step run of 'cat' (its folder; the session's, shared: copy before changing)."""
    return trained_cat


def _copy(finished: Path, tmp_path: Path) -> Path:
    return copy_run(finished, tmp_path / "out")


def _wait_for_log(log: Path, proc: subprocess.Popen, lines: int = 1, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if log.exists() and len(log.read_text().splitlines()) >= lines:
            return
        assert proc.poll() is None, f"training ended early: {proc.communicate()[1]}"
        time.sleep(0.05)
    raise AssertionError("training did not start in time")


# --- class 8: one run per folder; leftovers of a kill go -------------------------------------------------

@pytest.mark.slow
def test_a_second_run_is_refused_naming_the_first_and_a_kill_leaves_nothing_in_the_way(tmp_path: Path):
    cfg = write_train_config(tmp_path / "c.yaml", output_dir=str(tmp_path / "out"), train__iterations=5000)
    first = subprocess.Popen([str(SPMCTL), "train", "-c", str(cfg), "--quiet"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_log(tmp_path / "out" / "cat_log.jsonl", first)
        second = run_spmctl("train", "-c", str(cfg), "--quiet")
        assert second.returncode == 1
        assert second.stderr.count("\n") == 1, second.stderr
        assert f"pid {first.pid} on {socket.gethostname()}, started " in second.stderr
        assert "another spmctl train is writing here" in second.stderr
    finally:
        first.kill()
        first.communicate()
    # what a kill in the middle of a write leaves: temp files beside the outputs
    leftovers = [tmp_path / "out" / ".cat_state.pt.k1ll3d.tmp", tmp_path / "out" / ".cat_last.safetensors.x.tmp"]
    for path in leftovers:
        path.write_bytes(b"half a file")
    again = run_spmctl("train", "-c", str(cfg), "--iterations", "2", "--quiet")
    assert again.returncode == 0, again.stderr  # the dead run's lock does not hold
    assert not any(p.exists() for p in leftovers)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "cat_config.yaml", "cat_last.safetensors", "cat_log.jsonl", "cat_state.pt", "cat_summary.json"]


# --- class 6: a non-finite state is never saved --------------------------------------------------------------

# SGD with a huge weight decay: step 1 runs at lr 0 (warm-up), so its state is good; step 2's update
# overflows. Without the warm-up the very first update overflows.
@pytest.mark.parametrize(("warmup", "kept"), [(2, "the last good state (step 1) is kept"),
                                              (0, "nothing was saved to resume from")])
def test_an_update_that_makes_the_state_non_finite_is_never_saved(tmp_path: Path, warmup: int, kept: str):
    cfg = _config(tmp_path / "c.yaml", tmp_path / "out", train__iterations=4, save__per_steps=1,
                  train__optimizer_type="SGD", train__lr=1e4, train__lr_scheduler="constant_with_warmup",
                  train__lr_warmup_steps=warmup, train__optimizer_args={"weight_decay": 1e37})
    with pytest.raises(SpmctlError) as err:
        run_training(cfg, quiet=True)
    message = str(err.value)
    assert "non-finite" in message and kept in message and "\n" not in message
    out = tmp_path / "out"
    if warmup:
        state = load_state(out / "cat_state.pt")
        assert state["step"] == 1 and all(torch.isfinite(v).all() for v in state["membrane"].values())
        assert not (out / "cat_2steps.safetensors").exists()
    else:
        assert not out.exists()  # a failed run that saved nothing leaves no folder behind


# --- class 9: resume with other settings -------------------------------------------------------------------

@pytest.mark.parametrize(("change", "listed"), [
    ({"network__rank": 2}, ["network.rank 1 -> 2"]),
    ({"network__alpha": 4.0}, ["network.alpha 1.0 -> 4.0"]),
    ({"train__optimizer_type": "SGD"}, ["train.optimizer_type 'adamw' -> 'sgd'"]),
    ({"train__optimizer_args": {"weight_decay": 0.5}}, ["train.optimizer_args {} -> {'weight_decay': 0.5}"]),
    ({"prompt__la_strength": 5}, ["prompt (what is erased and how)"]),
    ({"network__rank": 4, "pretrained_model__clip_skip": 2}, ["network.rank 1 -> 4", "pretrained_model.clip_skip"]),
])
def test_resume_with_incompatible_settings_is_refused_listing_them(finished: Path, tmp_path: Path,
                                                                     change: dict, listed: list[str]):
    out = _copy(finished, tmp_path)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    cfg = _config(tmp_path / "c.yaml", out, resume=True, train__iterations=3, **change)
    with pytest.raises(SpmctlError) as err:
        run_training(cfg, quiet=True)
    message = str(err.value)
    assert err.value.exit_code == 2 and "\n" not in message and "--resume" in message
    assert all(item in message for item in listed), message
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing touched


def test_resume_continues_the_time_and_the_log_of_every_part(finished: Path, tmp_path: Path):
    out = _copy(finished, tmp_path)
    first = json.loads((out / "cat_summary.json").read_text())
    # records past the checkpoint (as a kill after the last save leaves them) are dropped on resume
    with (out / "cat_log.jsonl").open("a") as log:
        log.write(json.dumps({"step": 3, "loss": 1.0}) + "\n" + '{"step": 4, "lo')
    run_training(_config(tmp_path / "c.yaml", out, resume=True, train__iterations=4), quiet=True)
    summary = json.loads((out / "cat_summary.json").read_text())
    assert [(p["from_step"], p["to_step"]) for p in summary["parts"]] == [(0, 2), (2, 4)]
    assert summary["parts"][0]["seconds"] == first["seconds"]
    assert summary["seconds"] == pytest.approx(sum(p["seconds"] for p in summary["parts"]))
    assert summary["iterations"] == 4
    steps = [json.loads(line)["step"] for line in (out / "cat_log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    # resuming a finished run keeps its time: it is not replaced by this (empty) part's
    run_training(_config(tmp_path / "c.yaml", out, resume=True, train__iterations=4), quiet=True)
    assert json.loads((out / "cat_summary.json").read_text())["seconds"] == summary["seconds"]


# --- issue 14 item 2: runs of several concepts share a folder ----------------------------------------------

def test_runs_of_two_concepts_coexist_in_one_folder(finished: Path, tmp_path: Path):
    out = _copy(finished, tmp_path)
    cat = {p.name: p.read_bytes() for p in out.iterdir()}
    run_training(_config(tmp_path / "d.yaml", out, template_name="dog"), quiet=True)
    names = {p.name for p in out.iterdir()}
    assert {f"dog_{suffix}" for suffix in ("config.yaml", "log.jsonl", "summary.json", "state.pt",
                                           "last.safetensors")} <= names
    assert all((out / name).read_bytes() == data for name, data in cat.items())  # cat's run untouched
    assert json.loads((out / "dog_summary.json").read_text())["concepts"] == ["dog"]
    with pytest.raises(SpmctlError) as err:
        resolve_spm_path(out)
    assert f"--spm {out / 'cat_last.safetensors'} --spm {out / 'dog_last.safetensors'}" in str(err.value)


def test_a_folder_of_the_earlier_layout_resumes_into_the_new_names(finished: Path, tmp_path: Path):
    out = _copy(finished, tmp_path)
    for name in ("config.yaml", "log.jsonl", "summary.json"):
        (out / f"cat_{name}").rename(out / name)
    run_training(_config(tmp_path / "c.yaml", out, resume=True, train__iterations=3), quiet=True)
    assert not any((out / name).exists() for name in ("config.yaml", "log.jsonl", "summary.json"))
    steps = [json.loads(line)["step"] for line in (out / "cat_log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]
    assert load_membrane(out / "cat_last.safetensors").concepts == ["cat"]


# --- class 10: impatient Ctrl-C -----------------------------------------------------------------------------

@pytest.mark.slow
def test_a_second_ctrl_c_says_what_is_happening_and_the_step_is_still_saved(tmp_path: Path):
    # 128 px steps take long enough here that both signals land in one step
    cfg = write_train_config(tmp_path / "c.yaml", output_dir=str(tmp_path / "out"), train__iterations=5000,
                             prompt={"resolution": 128})
    proc = subprocess.Popen([str(SPMCTL), "train", "-c", str(cfg), "--quiet"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    _wait_for_log(tmp_path / "out" / "cat_log.jsonl", proc)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.1)
    assert proc.poll() is None
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    lines = err.strip().splitlines()
    assert len(lines) == 2 and "Traceback" not in err, err
    assert any(line.startswith("interrupted at step ") for line in lines), err
    assert any(line.startswith(("stopping: saving at the end of this step", "already saved at step"))
               for line in lines), err
    step = load_state(tmp_path / "out" / "cat_state.pt")["step"]
    assert step >= 1 and (tmp_path / "out" / f"cat_{step}steps.safetensors").is_file()
