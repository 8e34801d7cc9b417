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
