"""install.sh's torch choice (tools/choose_torch.py), judged by pip's own dry-run report.

The first tests run real pip against package indexes made of small generated wheels (a PyPI-like
index whose newest torch pulls `nvidia-*` packages, and a CPU index), so they need no network.
The last one asks the machine's configured indexes (CI reaches PyPI) and skips only when pip
says an index could not be reached and nothing CPU-only resolved.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHOOSE = ROOT / "tools" / "choose_torch.py"


def make_wheel(index: Path, name: str, version: str, requires: tuple[str, ...] = ()) -> None:
    """A minimal valid wheel in a PEP 503 simple index (`index/<name>/index.html` lists it)."""
    dist = name.replace("-", "_")
    folder = index / name
    folder.mkdir(parents=True, exist_ok=True)
    info = f"{dist}-{version}.dist-info"
    files = {
        f"{info}/METADATA": "Metadata-Version: 2.1\nName: {}\nVersion: {}\n{}".format(
            name, version, "".join(f"Requires-Dist: {r}\n" for r in requires)),
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    files[f"{info}/RECORD"] = "\n".join([*record, f"{info}/RECORD,,"]) + "\n"
    with zipfile.ZipFile(folder / f"{dist}-{version}-py3-none-any.whl", "w") as wheel:
        for path, text in files.items():
            wheel.writestr(path, text)
    links = "".join(f'<a href="{w.name}">{w.name}</a>\n' for w in sorted(folder.glob("*.whl")))
    (folder / "index.html").write_text(f"<!DOCTYPE html><html><body>\n{links}</body></html>\n")


def isolated_env() -> dict[str, str]:
    """pip with no user/site configuration: only the indexes a test names."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    return {**env, "PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


def choose(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(CHOOSE), *args], capture_output=True, text=True,
                          env=env or isolated_env(), timeout=600)


def report_for(pip_args: list[str], env: dict[str, str], tmp_path: Path) -> dict:
    report = tmp_path / "report.json"
    subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "-q",
                    "--report", str(report), *pip_args], check=True, env=env, capture_output=True,
                   timeout=600)
    return json.loads(report.read_text())


def installed(report: dict) -> dict[str, str]:
    return {item["metadata"]["name"]: item["metadata"]["version"] for item in report["install"]}


@pytest.fixture
def pypi_like(tmp_path: Path) -> Path:
    """Like PyPI on Linux: the newest torch is a CUDA build; an older +cpu build lies there too."""
    index = tmp_path / "pypi"
    make_wheel(index, "torch", "2.6.0", ("nvidia-cublas-cu12",))
    make_wheel(index, "nvidia-cublas-cu12", "12.4.5")
    make_wheel(index, "torch", "2.5.0+cpu")
    make_wheel(index, "torch", "2.3.0+cpu")  # below torch>=2.4: never chosen
    return index


def test_cpu_only_takes_newest_cpu_build_without_cuda_packages(pypi_like: Path, tmp_path: Path) -> None:
    index = ["--index-url", pypi_like.as_uri()]
    # what a plain `pip install torch` would do here: the CUDA build
    assert "nvidia-cublas-cu12" in installed(report_for(["torch>=2.4", *index], isolated_env(), tmp_path))

    proc = choose("--cpu", "--cpu-index", "", "--", *index)
    assert proc.returncode == 0, proc.stderr
    chosen = proc.stdout.split()
    assert chosen[0] == "torch==2.5.0+cpu"
    picked = installed(report_for(chosen, isolated_env(), tmp_path))
    assert picked == {"torch": "2.5.0+cpu"}
    assert "CPU build 2.5.0+cpu" in proc.stderr


def test_cpu_index_wins_with_a_newer_cpu_build(pypi_like: Path, tmp_path: Path) -> None:
    cpu_index = tmp_path / "cpu"
    make_wheel(cpu_index, "torch", "2.6.0+cpu")
    proc = choose("--cpu", "--cpu-index", cpu_index.as_uri(), "--", "--index-url", pypi_like.as_uri())
    assert proc.returncode == 0, proc.stderr
    chosen = proc.stdout.split()
    assert chosen[0] == "torch==2.6.0+cpu" and cpu_index.as_uri() in chosen
    assert installed(report_for(chosen, isolated_env(), tmp_path)) == {"torch": "2.6.0+cpu"}


def test_gpu_and_cpu_only_indexes_take_the_newest_torch_unpinned(tmp_path: Path) -> None:
    index = tmp_path / "mac"  # an index whose newest torch needs no CUDA (macOS, a CPU mirror)
    make_wheel(index, "torch", "2.6.0")
    proc = choose("--cpu", "--cpu-index", "", "--", "--index-url", index.as_uri())
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[0] == "torch>=2.4"
    assert choose("--gpu", "--", "--index-url", index.as_uri()).stdout.split()[0] == "torch>=2.4"


def test_no_cpu_build_is_one_line_and_exit_1(tmp_path: Path) -> None:
    index = tmp_path / "cuda-only"
    make_wheel(index, "torch", "2.6.0", ("nvidia-cublas-cu12",))
    make_wheel(index, "nvidia-cublas-cu12", "12.4.5")
    proc = choose("--cpu", "--cpu-index", "", "--", "--index-url", index.as_uri())
    assert proc.returncode == 1 and proc.stdout == ""
    assert "no CPU build of torch found" in proc.stderr and "--index-url" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_configured_indexes_give_a_cpu_build(tmp_path: Path) -> None:
    """What install.sh would install on this CPU-only machine, from its real package indexes."""
    env = {**os.environ}
    proc = choose("--cpu", env=env)
    if proc.returncode == 3:
        pytest.skip("no CPU torch offered and a package index could not be reached: "
                    + proc.stderr.strip().splitlines()[-1])
    assert proc.returncode == 0, proc.stderr
    chosen = proc.stdout.split()
    picked = installed(report_for(chosen, env, tmp_path))
    assert "torch" in picked
    assert not [name for name in picked if name.startswith(("nvidia-", "nvidia_", "cuda-"))], picked


def test_ci_runs_exactly_the_readme_tests_commands() -> None:
    """The README's "Tests" section gives one set-up command and one test command; CI runs both,
    and every README section CI's comments name exists."""
    import re

    readme = (ROOT / "README.md").read_text()
    headings = {h.strip() for h in re.findall(r"^#+ (.+)$", readme, re.MULTILINE)}
    section = readme.split("\n## Tests\n", 1)[1].split("\n## ", 1)[0]
    commands = [line for line in re.search(r"```bash\n(.*?)```", section, re.DOTALL).group(1).splitlines()
                if line.strip()]
    assert commands == ["bash install.sh test", "python -m pytest -q -n auto"]
    ci = (ROOT / ".ci" / "run").read_text()
    ci_commands = [line.strip() for line in ci.splitlines() if line.strip() and not line.startswith("#")]
    for command in commands:
        assert command in ci_commands
    named = re.findall(r'README(?:\'s)? "([^"]+)"', ci)
    assert named and set(named) <= headings, (named, headings)
