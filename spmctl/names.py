"""Names shared by the configuration, the CLI help and the code: each list has one owner here.

No torch or diffusers import, so config validation and `--help` stay cheap.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Literal

DTYPES = ("float32", "float16", "bfloat16")
DTYPE_ALIASES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16", "half": "float16", "float": "float32"}
# sampling/training noise schedulers: config name -> diffusers class
NOISE_SCHEDULERS = {
    "ddim": "DDIMScheduler",
    "ddpm": "DDPMScheduler",
    "lms": "LMSDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler",
}
# sampling also takes "model": the model's own scheduler class, from its config (PNDM for SD 1.4)
MODEL_SCHEDULER = "model"
# facilitated-transport scores (sampling/ft.py computes them)
FT_METRICS = ("clipcos", "tokenuni", "clipcos_tokenuni")
DEFAULT_FT_METRIC = "clipcos_tokenuni"  # the original SPM's: the max of both scores

# the same lists as config value types (Literal of a tuple is the Literal of its items)
Precision = Literal[DTYPES]  # type: ignore[valid-type]
NoiseScheduler = Literal[tuple(NOISE_SCHEDULERS)]  # type: ignore[valid-type]
SampleNoiseScheduler = Literal[(*NOISE_SCHEDULERS, MODEL_SCHEDULER)]  # type: ignore[valid-type]
FTMetric = Literal[FT_METRICS]  # type: ignore[valid-type]


def dtype_name(name: str) -> str:
    """The canonical dtype name for a name or alias ("fp16" -> "float16"); unknown names pass through."""
    name = name.strip().lower()
    return DTYPE_ALIASES.get(name, name)


def either(names: Iterable[str]) -> str:
    """"a, b or c", for help texts and error messages."""
    items = list(names)
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} or {items[-1]}"


def slug(text: str, limit: int = 60, *, empty: str = "prompt", keep_cut_separator: bool = False) -> str:
    """`text` as a file-name stem: lower case, every run of other characters than a-z and 0-9 one "_",
    at most `limit` characters, `empty` when nothing is left (non-ASCII letters are such characters).

    Image file names (sample, attack, benchmark) drop a "_" the cut leaves at the end; run and sweep
    folder names were first made keeping it (`keep_cut_separator`, see `run_slug`), and a resumed
    sweep must find its folders by these names, so neither may change (tests/test_names.py pins them).
    """
    name = re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:limit]
    return (name if keep_cut_separator else name.rstrip("_")) or empty


def run_slug(text: str) -> str:
    """A training run's default name and a sweep concept's folder (`output_dir/<run_slug(concept)>/`)."""
    return slug(text, empty="spm", keep_cut_separator=True)
