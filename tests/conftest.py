"""Shared fixtures: the installed `spmctl` as a subprocess, and the tiny model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

# Tiny models run faster on one thread, and on a shared 2-core machine several threads per
# process thrash; subprocesses (the installed `spmctl`) inherit this too.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402

SPMCTL = Path(sys.executable).parent / "spmctl"
TESTS = Path(__file__).parent


def run_spmctl(*args: str, env: dict[str, str] | None = None, cwd: str | Path | None = None,
               timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run the installed console script, as a user would."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    for key in [k for k in full_env if k.startswith("SPMCTL_") and (env is None or k not in env)]:
        del full_env[key]  # the developer's own settings must not leak into tests
    return subprocess.run([str(SPMCTL), *args], capture_output=True, text=True, env=full_env, cwd=cwd,
                          timeout=timeout)


# A training config for the tiny model that runs in seconds; tests override what they exercise.
TINY_TRAIN = {
    "pretrained_model": {"ckpt_path": "tiny"},
    "train": {"iterations": 40, "lr": 3e-3, "optimizer_type": "AdamW", "lr_scheduler": "constant",
              "lr_warmup_steps": 0, "max_denoising_steps": 10},
    "save": {"per_steps": 1000},
    "template": "concept", "template_name": "cat",
    "prompt": {"action": "erase_with_la", "resolution": 64, "dynamic_resolution": False,
               # the paper's 1000 suits SD's structured text space; the tiny random model needs less
               "la_strength": 10, "sampling_batch_size": 2},
    "devices": "cpu", "seed": 0,
}


def write_train_config(path: Path, base: dict | None = None, **overrides) -> Path:
    """`base` (default TINY_TRAIN) with overrides: `section__key=value`, a dict merged into its
    section, or a plain top-level value."""
    import json

    import yaml

    cfg = json.loads(json.dumps(base or TINY_TRAIN))
    for key, value in overrides.items():
        *parents, leaf = key.split("__")
        node = cfg
        for part in parents:
            node = node.setdefault(part, {})
        if isinstance(value, dict) and isinstance(node.get(leaf), dict):
            node[leaf] = {**node[leaf], **value}
        else:
            node[leaf] = value
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """In-process torch too (it may have been imported before OMP_NUM_THREADS was read)."""
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built-in tiny model saved as a diffusers folder (what a downloaded model looks like)."""
    from spmctl.models.tiny import save_tiny_pipeline

    return save_tiny_pipeline(tmp_path_factory.mktemp("models") / "tiny-sd")
