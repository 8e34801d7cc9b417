"""Which base model `spmctl sample` uses, and how a model that is not here is reported."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_spmctl
from test_sample import make_spm

# no network and an empty hub cache: the hub client can only fail, and fast
OFFLINE = {"HF_HUB_OFFLINE": "1"}


def recorded_spm(path: Path, concept: str, seed: int, base: str) -> Path:
    """A membrane carrying the base-model record `spmctl train` writes into every file."""
    from safetensors.torch import load_file, save_file

    make_spm(path, [concept], seed=seed)
    tensors = load_file(path)
    from safetensors import safe_open

    with safe_open(str(path), "pt") as fh:
        metadata = dict(fh.metadata())
    save_file(tensors, path, metadata={**metadata, "spmctl_base_model": base})
    return path


def sample_args(out: Path, *spms: Path) -> list[str]:
    args = ["sample", "-p", "a cat", "--steps", "1", "-W", "64", "-H", "64", "-o", str(out)]
    for spm in spms:
        args += ["--spm", str(spm)]
    return args


def test_sample_without_model_uses_the_membranes_base_model(tmp_path: Path) -> None:
    spm = recorded_spm(tmp_path / "cat.safetensors", "cat", 1, "builtin:tiny-sd")
    proc = run_spmctl(*sample_args(tmp_path / "out", spm), env={**OFFLINE, "HF_HOME": str(tmp_path / "hf")})
    assert proc.returncode == 0, proc.stderr
    assert "base model builtin:tiny-sd, recorded in cat.safetensors" in proc.stderr
    record = json.loads((tmp_path / "out" / "manifest.jsonl").read_text().splitlines()[0])
    assert record["model"] == "builtin:tiny-sd"


def test_membranes_of_different_base_models_ask_for_one(tmp_path: Path) -> None:
    a = recorded_spm(tmp_path / "a.safetensors", "cat", 1, "builtin:tiny-sd")
    b = recorded_spm(tmp_path / "b.safetensors", "dog", 2, "models/compvis")
    proc = run_spmctl(*sample_args(tmp_path / "out", a, b))
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: the SPMs were trained on different base models (a.safetensors: builtin:tiny-sd, "
        "b.safetensors: models/compvis); choose one with -m")
    assert not (tmp_path / "out").exists()


def test_missing_local_model_folder_is_not_a_hub_id(tmp_path: Path) -> None:
    proc = run_spmctl(*sample_args(tmp_path / "out"), "-m", "models/compvis", cwd=tmp_path, env=OFFLINE)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: models/compvis: model not found")
    assert "`spmctl download model compvis`" in last  # the seed's download that lands there
    assert "hub" not in last.split("(")[0] and "Traceback" not in proc.stderr


@pytest.mark.parametrize("hub_id", ["CompVis/stable-diffusion-v1-4"])
def test_hub_model_not_here_says_how_to_fetch_it(tmp_path: Path, hub_id: str) -> None:
    proc = run_spmctl(*sample_args(tmp_path / "out"), "-m", hub_id, cwd=tmp_path,
                      env={**OFFLINE, "HF_HOME": str(tmp_path / "hf")})
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.strip().splitlines() if line.startswith("error:")]
    assert lines == [f"error: {hub_id}: not downloaded yet and the hub cannot be reached (offline, or "
                     f"HF_HUB_OFFLINE set); fetch it with `spmctl download model {hub_id}` and pass "
                     f"-m models/{hub_id} (--endpoint for a mirror)"]
    assert "local_files_only" not in proc.stderr and "Traceback" not in proc.stderr
