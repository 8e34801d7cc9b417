"""What a run tells its user: the device actually used, -q, --verbose prompts, the sample grid,
and eval keeping an earlier report."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import run_spmctl
from PIL import Image

TRAIN = ["train", "-m", "tiny", "--template", "concept", "--template_name", "cat", "--iterations", "2",
         "--set", "save.per_steps=1000"]


def test_one_membrane_on_two_cpus_says_only_the_first_is_used_and_q_silences_it(tmp_path: Path) -> None:
    loud = run_spmctl(*TRAIN, "--devices", "cpu,cpu", "--output_dir", str(tmp_path / "a"), "--verbose")
    assert loud.returncode == 0, loud.stderr
    assert "warning: devices 'cpu,cpu': one membrane trains on one device; using the first (cpu)" in loud.stderr
    assert "prompt setting 1: target 'cat', positive 'cat', neutral '', unconditional ''" in loud.stderr
    quiet = run_spmctl(*TRAIN, "--devices", "cpu,cpu", "--output_dir", str(tmp_path / "b"), "-q")
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr.strip() == "", quiet.stderr  # no warnings, notes, library chatter or progress
    assert (tmp_path / "b" / "cat_last.safetensors").is_file()

    # eval without -o keeps an earlier report: the second one goes next to it
    first = run_spmctl("eval", "cost", str(tmp_path / "a"), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    report = tmp_path / "outputs" / "eval" / "results.json"
    before = report.read_bytes()
    second = run_spmctl("eval", "cost", str(tmp_path / "b"), cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert "outputs/eval holds an earlier report: writing to outputs/eval-2" in second.stderr
    assert report.read_bytes() == before
    assert json.loads((tmp_path / "outputs" / "eval-2" / "results.json").read_text())


def test_grid_enlarges_small_images_and_labels_them(tmp_path: Path) -> None:
    out = tmp_path / "s"
    result = run_spmctl("sample", "-m", "tiny", "-p", "a cat", "-p", "a dog", "--steps", "2", "-W", "64", "-H", "64",
                        "--grid", "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert "no --spm given: generating with the base model alone" in result.stderr
    grid = Image.open(out / "grid.png").convert("L")
    cell = 256
    assert grid.width == 2 * cell and grid.height > cell  # two 64 px images, each shown at 256 px
    image = Image.open(next(out.glob("a_cat*.png"))).convert("L").resize((cell, cell), Image.Resampling.NEAREST)
    assert grid.crop((0, 0, cell, cell)).tobytes() == image.tobytes()
    label = grid.crop((0, cell, cell, grid.height))
    assert min(label.tobytes()) < 100  # dark text under the image: its prompt and gates
