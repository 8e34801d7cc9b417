"""A third-party spmctl plugin: the `example-colors` dataset and the `example-color` template.

It uses only the public plugin API (`spmctl.hookspecs.hookimpl`, `spmctl.providers`),
exactly as a package published by someone else would.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from spmctl.hookspecs import hookimpl
from spmctl.providers import PromptRow

COLORS = ("red", "green", "blue")


class ColorsDataset:
    name = "example-colors"
    description = "One prompt per color (a third-party example)"

    def rows(
        self, root: Path | None = None, *, use_sample: bool = True, **options: Any
    ) -> Iterator[PromptRow]:
        colors = COLORS[:1] if use_sample else COLORS
        for seed, color in enumerate(colors):
            yield PromptRow(prompt=f"a {color} square", seed=seed, concept=color, categories=(color,))


class ColorTemplate:
    name = "example-color"
    description = "Erase a color"

    def names(self) -> list[str] | None:
        return list(COLORS)

    def prompt_settings(self, name: str) -> list[dict[str, Any]]:
        return [{"target": name, "positive": name, "unconditional": "", "neutral": ""}]


@hookimpl
def register_datasets(register) -> None:  # type: ignore[no-untyped-def]
    register(ColorsDataset())


@hookimpl
def register_templates(register) -> None:  # type: ignore[no-untyped-def]
    register(ColorTemplate())
