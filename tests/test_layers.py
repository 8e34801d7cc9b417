"""Imports flow one way (issue 13): the import-linter contract in pyproject.toml holds, catches an
upward import, and the light modules stay light (reading a sweep's state loads no torch)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT = [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; "
        "sys.exit(lint_imports_command())", "--no-cache"]


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    # run where pyproject.toml is: import-linter reads the contract there and puts that folder first
    # on sys.path, so it analyses that folder's spmctl (not the installed one)
    return subprocess.run(LINT, cwd=root, capture_output=True, text=True, timeout=120)


def test_the_import_layers_hold() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def test_the_contract_catches_an_upward_import(tmp_path: Path) -> None:
    """The same tree with training importing the distributed layer (what training/run.py once did)
    breaks the contract, and the report names both ends."""
    shutil.copytree(ROOT / "spmctl", tmp_path / "spmctl", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    target = tmp_path / "spmctl" / "training" / "parallel.py"
    target.write_text(target.read_text() + "\nfrom ..distributed import dist  # noqa: E402,F401\n")
    result = lint_imports(tmp_path)
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-2000:]
    assert "spmctl.training is not allowed to import spmctl.distributed" in result.stdout


def test_reading_a_sweeps_state_loads_no_torch(tmp_path: Path) -> None:
    """`sweep.json` is read before anything is trained (what is left to do, the summary): that must
    not pay for importing torch."""
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "cat_last.safetensors").write_bytes(b"x")
    concepts = {"cat": {"status": "done", "output": "cat/cat_last.safetensors"}, "dog": {"status": "failed"}}
    (tmp_path / "sweep.json").write_text(json.dumps({"concepts": concepts}))
    code = ("import sys; from pathlib import Path; "
            "from spmctl.distributed.sweep_state import read_entries, still_to_do; "
            f"root = Path({str(tmp_path)!r}); "
            "print(sorted(read_entries(root)), still_to_do(root, ['cat', 'dog']), 'torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[0] == "['cat', 'dog'] ['dog'] False"
