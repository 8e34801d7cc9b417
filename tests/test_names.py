"""Names made from text (run and sweep folders, image files): users have them on disk.

A resumed sweep finds a concept's folder by its name, and a resumed `spmctl sample` or benchmark
finds its images by theirs, so these names must never change. The rows pin them for awkward text:
spaces, slashes, case, non-ASCII letters (dropped: only a-z and 0-9 survive), nothing left at all,
and a cut at 60 characters that falls right after a separator (folders keep that "_", images not).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import TINY_TRAIN

from spmctl.benchmark.run import sample_folder
from spmctl.config.train import load_train_config
from spmctl.distributed.sweep import SweepSpec, sweep_concepts
from spmctl.errors import ConfigError
from spmctl.names import run_slug, slug
from spmctl.sampling.generate import Job
from spmctl.sampling.output import file_names
from spmctl.training.run import TrainingRun

CUT = "a" * 59 + " b"  # 61 characters: the 60-character cut ends on the separator

# text, run/sweep folder, image stem (60), attack image stem (40)
NAMES = [
    ("Van Gogh", "van_gogh", "van_gogh", "van_gogh"),
    ("AC/DC", "ac_dc", "ac_dc", "ac_dc"),
    ("  Leading/trailing  ", "leading_trailing", "leading_trailing", "leading_trailing"),
    ("UPPER lower 123", "upper_lower_123", "upper_lower_123", "upper_lower_123"),
    ("Café Terrace", "caf_terrace", "caf_terrace", "caf_terrace"),
    ("Pokémon_Pikachu", "pok_mon_pikachu", "pok_mon_pikachu", "pok_mon_pikachu"),
    ("a dog, in the rain ... at night", "a_dog_in_the_rain_at_night", "a_dog_in_the_rain_at_night",
     "a_dog_in_the_rain_at_night"),
    ("日本画", "spm", "prompt", "prompt"),
    ("???", "spm", "prompt", "prompt"),
    ("", "spm", "prompt", "prompt"),
    (CUT, "a" * 59 + "_", "a" * 59, "a" * 40),
    ("x" * 80, "x" * 60, "x" * 60, "x" * 40),
]


@pytest.mark.parametrize(("text", "folder", "image", "short"), NAMES)
def test_names_made_from_text_never_change(text: str, folder: str, image: str, short: str):
    assert run_slug(text) == folder
    assert slug(text) == image
    assert slug(text, 40) == short


def test_the_commands_use_these_names(tmp_path: Path):
    cfg = load_train_config(None, TINY_TRAIN)[0]
    # a run's default name (its files' stem) and a sweep's concept folders
    run = TrainingRun(cfg.model_copy(update={"template_name": "Café / Terrace", "output_dir": str(tmp_path)}),
                      None, True, None, "")
    assert run.name == "caf_terrace"
    with pytest.raises(ConfigError, match="would share the folder 'spm'"):
        sweep_concepts(SweepSpec(names="???,spm"), cfg)
    # the two differ only in the kept "_": two folders, not one
    assert sweep_concepts(SweepSpec(names=f"{CUT},{'a' * 59}"), cfg)[1] == [CUT, "a" * 59]
    # sample image files and the benchmark's per-membrane sample folders
    job = Job(prompt=CUT, seed=3, index=1, guidance=7.5, width=64, height=64, row=0)
    assert file_names([job]) == [f"{'a' * 59}_3_1.png"]
    assert sample_folder(tmp_path, "日本画") == tmp_path / "samples" / "prompt"
