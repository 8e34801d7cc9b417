"""The `i2p` dataset: Inappropriate Image Prompts (Schramowski et al.), as a CSV.

Columns: prompt, categories (comma-separated, multi-label), hard,
inappropriate_percentage, nudity_percentage, lexica_url, sd_seed,
sd_guidance_scale, sd_image_width, sd_image_height, ... Copies shipped with
other benchmarks rename some (`evaluation_seed`, `evaluation_guidance`); both
spellings are read (see `spmctl_plugins.prompts.COLUMNS`).

Without a CSV, the seed's per-category folders (`<category>/prompts.txt`, with
`images.txt` beside it) are read instead, so a downloaded sample works either way.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from spmctl.errors import SpmctlError
from spmctl.hookspecs import hookimpl
from spmctl.providers import PromptRow, as_list, builtin_names, check_options, resolve_name

from .prompts import filter_categories, limited, read_csv

DEFAULT_ROOT = Path("data/i2p-dataset")
CSV_NAMES = ("i2p.csv", "i2p_benchmark.csv", "prompts.csv")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
# "nudity" is what SPM's paper erases; in I2P those prompts are labelled "sexual".
CATEGORY_ALIASES = {"nudity": "sexual"}


def categories() -> list[str]:
    return builtin_names("i2p_categories")


def resolve_category(name: str) -> str:
    if name.casefold() in CATEGORY_ALIASES:
        return CATEGORY_ALIASES[name.casefold()]
    return resolve_name("I2P category", name, categories())


def _find_csv(base: Path) -> Path | None:
    if base.is_file():
        return base
    for name in CSV_NAMES:
        if (base / name).is_file():
            return base / name
    found = sorted(base.glob("*.csv")) or sorted(base.glob("*/*.csv"))
    return found[0] if found else None


def _read_lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _category_folders(base: Path) -> Iterator[PromptRow]:
    """The seed's layout: `<category>/prompts.txt` and optionally `<category>/images.txt`."""
    for folder in sorted(p for p in base.iterdir() if p.is_dir()):
        prompts_txt = folder / "prompts.txt"
        if not prompts_txt.is_file():
            continue
        prompts = _read_lines(prompts_txt)
        images_txt = folder / "images.txt"
        images = _read_lines(images_txt) if images_txt.is_file() else []
        if images and len(images) != len(prompts):
            raise SpmctlError(f"{folder}: {len(prompts)} prompts but {len(images)} images listed")
        for index, prompt in enumerate(prompts):
            image = (folder / images[index]) if images else None
            yield PromptRow(prompt=prompt, categories=(folder.name,), concept=folder.name, image=image)


def _typed(row: PromptRow) -> PromptRow:
    """I2P's own columns as numbers/bools, so filters and reports need no parsing."""
    extra = dict(row.extra)
    for key in ("inappropriate_percentage", "nudity_percentage"):
        if extra.get(key) not in (None, ""):
            with contextlib.suppress(ValueError):  # else kept as written; a report can still show it
                extra[key] = float(extra[key])
    if "hard" in extra:
        extra["hard"] = str(extra["hard"]).strip() in ("1", "1.0", "True", "true")
    return dataclasses.replace(row, extra=extra)


class I2PDataset:
    name = "i2p"
    description = "I2P: prompts with categories (multi-label), seeds, guidance and sizes"
    options = ("categories", "category", "hard", "limit")

    def default_root(self, use_sample: bool) -> Path:
        return DEFAULT_ROOT / ("sample" if use_sample else "full")

    def rows(
        self, root: Path | None = None, *, use_sample: bool = True, **options: Any
    ) -> Iterator[PromptRow]:
        """Rows of the I2P CSV under `root`; options `categories=[...]`, `hard=True`, `limit=N`."""
        check_options(self.name, options, self.options)
        base = Path(root) if root is not None else self.default_root(use_sample)
        if not base.exists():
            raise SpmctlError(f"I2P data not found at {base}; try `spmctl download dataset i2p "
                              f"{'sample' if use_sample else 'full'}` or give its folder/CSV")
        wanted = as_list(options.get("categories")) or as_list(options.get("category"))
        if wanted:
            # An alias matches its I2P label and itself (some copies label rows "nudity" outright).
            aliases = [c for c in wanted if c.casefold() in CATEGORY_ALIASES]
            wanted = [resolve_category(c) for c in wanted] + aliases
        csv_path = _find_csv(base)
        if csv_path is not None:
            rows = (_typed(row) for row in read_csv(csv_path))
        elif base.is_dir() and any((p / "prompts.txt").is_file() for p in base.iterdir() if p.is_dir()):
            rows = _category_folders(base)
        else:
            raise SpmctlError(
                f"{base}: no I2P CSV ({', '.join(CSV_NAMES)} or *.csv) nor <category>/prompts.txt")
        rows = filter_categories(rows, wanted or None)
        if options.get("hard") is not None:
            hard = bool(options["hard"])
            rows = (row for row in rows if bool(row.extra.get("hard")) == hard)
        return limited(rows, options.get("limit"))

    def images(self, category: str, root: Path | None = None, *, use_sample: bool = True) -> list[Path]:
        """Images kept per category (`<root>/<category>/` or `<root>/images/<category>/`), if any."""
        base = Path(root) if root is not None else self.default_root(use_sample)
        name = resolve_category(category)
        for folder in (base / name, base / "images" / name):
            if folder.is_dir():
                return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        return []


@hookimpl
def register_datasets(register) -> None:  # type: ignore[no-untyped-def]
    register(I2PDataset())
