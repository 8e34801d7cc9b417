"""The `unlearncanvas` dataset: UnlearnCanvas (quick canvas), 50 styles × 20 objects.

Layout: `<root>/<Style>/<Object>/<n>.jpg`, plus `<root>/Seed_Images/<Object>/…`
(the photographs the styles were rendered from). The benchmark's prompt is
"An {object} image in {style} style." with `_` in style names read as spaces.

Each row carries `categories=(style, object)` and `extra={"style", "object"}`, so
one list can be filtered by either. Given `seeds=[...]`, the provider yields the
benchmark's generation grid (style × object × seed) without needing any image.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from spmctl.errors import SpmctlError
from spmctl.hookspecs import hookimpl
from spmctl.providers import PromptRow, as_list, builtin_names, check_options, resolve_name

from .prompts import limited

DEFAULT_ROOT = Path("data/quick-canvas-dataset")
SEED_IMAGES = "Seed_Images"
PROMPT = "An {object} image in {style} style."
SEED_PROMPT = "An {object} image."
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


def styles() -> list[str]:
    return builtin_names("unlearncanvas_styles")


def objects() -> list[str]:
    return builtin_names("unlearncanvas_objects")


def readable(name: str) -> str:
    """Folder name → prompt text: `Van_Gogh` → `Van Gogh`."""
    return name.replace("_", " ")


def prompt_for(style: str, obj: str) -> str:
    if style == SEED_IMAGES:
        return SEED_PROMPT.format(object=readable(obj))
    return PROMPT.format(object=readable(obj), style=readable(style))


def _row(style: str, obj: str, *, seed: int | None = None, image: Path | None = None) -> PromptRow:
    return PromptRow(prompt=prompt_for(style, obj), seed=seed, categories=(style, obj), concept=style,
                     image=image, extra={"style": style, "object": obj})


def _natural(path: Path) -> tuple[int, str]:
    """`2.jpg` before `10.jpg`."""
    match = re.match(r"\d+", path.stem)
    return (int(match.group()) if match else 1 << 30, path.name)


class UnlearnCanvasDataset:
    name = "unlearncanvas"
    description = "UnlearnCanvas (quick canvas): 50 styles × 20 objects, '<Style>/<Object>/<n>.jpg'"
    options = ("styles", "objects", "seeds", "include_seed_images", "limit")

    def default_root(self, use_sample: bool) -> Path:
        return DEFAULT_ROOT / ("sample" if use_sample else "full")

    def rows(
        self, root: Path | None = None, *, use_sample: bool = True, **options: Any
    ) -> Iterator[PromptRow]:
        """Image rows from the tree at `root`, or the prompt grid when `seeds` is given.

        Options: `styles=[...]`, `objects=[...]` (names as in the dataset, any case,
        spaces or underscores), `seeds=[...]`, `include_seed_images=True`, `limit=N`.
        """
        check_options(self.name, options, self.options)
        chosen_styles = [resolve_name("UnlearnCanvas style", s, styles())
                         for s in as_list(options.get("styles")) or []] or None
        chosen_objects = [resolve_name("UnlearnCanvas object", o, objects())
                          for o in as_list(options.get("objects")) or []] or None
        seeds = as_list(options.get("seeds"))
        if seeds is not None:
            rows = self._grid(chosen_styles or styles(), chosen_objects or objects(), [int(s) for s in seeds])
        else:
            base = Path(root) if root is not None else self.default_root(use_sample)
            if not base.is_dir():
                raise SpmctlError(f"UnlearnCanvas data not found at {base}; try `spmctl download dataset "
                                  f"quick-canvas {'sample' if use_sample else 'full'}` or give its folder")
            rows = self._images(base, chosen_styles, chosen_objects, bool(options.get("include_seed_images")))
        return limited(rows, options.get("limit"))

    @staticmethod
    def _grid(style_names: list[str], object_names: list[str], seeds: list[int]) -> Iterator[PromptRow]:
        for style in style_names:
            for obj in object_names:
                for seed in seeds:
                    yield _row(style, obj, seed=seed)

    @staticmethod
    def _images(base: Path, style_names: list[str] | None, object_names: list[str] | None,
                with_seed_images: bool) -> Iterator[PromptRow]:
        for style_dir in sorted(p for p in base.iterdir() if p.is_dir()):
            style = style_dir.name
            if style == SEED_IMAGES and not with_seed_images:
                continue
            if style_names is not None and style not in style_names and style != SEED_IMAGES:
                continue
            for object_dir in sorted(p for p in style_dir.iterdir() if p.is_dir()):
                if object_names is not None and object_dir.name not in object_names:
                    continue
                images = sorted((p for p in object_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES),
                                key=_natural)
                for image in images:
                    yield _row(style, object_dir.name, image=image)


@hookimpl
def register_datasets(register) -> None:  # type: ignore[no-untyped-def]
    register(UnlearnCanvasDataset())
