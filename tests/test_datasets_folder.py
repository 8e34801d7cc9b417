"""The top-level `datasets/` folder holds data, not a package: it never hides Hugging Face's `datasets`,
and an installed spmctl still finds the files (issue 13, item 7).

Mutations caught: putting `datasets/__init__.py` back (the first test); dropping the
`spmctl_datasets` package data from pyproject.toml (the second); pyproject's `license` back to
the deprecated TOML table (the second: setuptools warns while building).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from conftest import TESTS

REPO = TESTS.parent


def _python(code: str, cwd: Path, pythonpath: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def test_python_from_the_repository_root_gets_the_real_datasets_package(tmp_path: Path):
    # an installed `datasets` distribution: a regular package with its metadata
    site = tmp_path / "site"
    (site / "datasets").mkdir(parents=True)
    (site / "datasets" / "__init__.py").write_text("REAL = True\n")
    (site / "datasets-9.9.dist-info").mkdir()
    (site / "datasets-9.9.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: datasets\nVersion: 9.9\n")
    # `python -c` puts the current folder (the repository root) first on sys.path
    found = _python("import datasets; print(datasets.__file__)", cwd=REPO, pythonpath=site)
    assert found.returncode == 0, found.stderr
    assert found.stdout.strip() == str(site / "datasets" / "__init__.py")
    # without one, nothing of spmctl's runs as `datasets` (at most PEP 420's empty namespace, no code)
    alone = _python("import datasets; print(getattr(datasets, '__file__', None), sorted(vars(datasets))[-1])",
                    cwd=REPO)
    assert alone.returncode != 0 or alone.stdout.split()[0] == "None", alone.stdout
    assert not (REPO / "datasets" / "__init__.py").exists()


def test_an_installed_spmctl_finds_its_dataset_files(tmp_path: Path):
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(REPO / name, source / name)
    for folder in ("spmctl", "plugins", "csrc", "datasets"):  # build outside the repo: no build/ left there
        shutil.copytree(REPO / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    target = tmp_path / "target"
    # without isolation the build uses this venv's setuptools: pyproject's SPDX `license` needs 77
    found = metadata.version("setuptools")
    assert int(found.split(".")[0]) >= 77, f"setuptools {found} here: pip install 'setuptools>=77' (install.sh does)"
    built = subprocess.run([sys.executable, "-m", "pip", "install", "-v", "--no-deps", "--no-build-isolation",
                            "--target", str(target), str(source)], capture_output=True, text=True)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr
    assert "SetuptoolsDeprecationWarning" not in built.stdout + built.stderr  # a user's install shows them
    assert not (target / "datasets").exists()  # nothing installed under the name `datasets`
    # every package of the checkout is installed (pyproject lists them one by one)
    missing = [str(init.parent.relative_to(REPO)) for init in sorted((REPO / "spmctl").rglob("__init__.py"))
               if not (target / init.relative_to(REPO)).exists()]
    assert not missing, f"packages missing from the installed spmctl (pyproject [tool.setuptools] packages): {missing}"
    code = ("import spmctl, spmctl.providers as p, spmctl.download.manifest as m, spmctl.datafiles as d\n"
            "print(spmctl.__file__)\n"
            "print(len(p.builtin_names('unlearncanvas_styles')), len(p.builtin_names('i2p_categories')))\n"
            "print(d.data_file('sources.yaml'))\n"
            "print(sorted(m.load_manifest().datasets))")
    shown = _python(code, cwd=tmp_path, pythonpath=target)
    assert shown.returncode == 0, shown.stderr
    origin, counts, sources, datasets = shown.stdout.splitlines()
    assert origin.startswith(str(target))  # the installed copy, not the checkout
    assert counts == "50 7"
    assert sources == str(target / "spmctl_datasets" / "sources.yaml")
    assert datasets == "['i2p', 'quick-canvas']"
