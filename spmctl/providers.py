"""The interfaces dataset and template providers implement, and the rows they yield."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class PromptRow:
    """One prompt to generate or train on, with what the dataset says about it."""

    prompt: str
    seed: int | None = None
    guidance_scale: float | None = None
    width: int | None = None
    height: int | None = None
    categories: tuple[str, ...] = ()
    concept: str | None = None  # e.g. the UnlearnCanvas style or object the row shows
    image: Path | None = None  # an image of the row, where the dataset has one
    extra: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class DatasetProvider(Protocol):
    """Where prompts (and images) come from: UnlearnCanvas, I2P, a user's file..."""

    name: str
    description: str

    def rows(self, root: Path | None, *, use_sample: bool = True, **options: Any) -> Iterable[PromptRow]:
        """Yield the dataset's rows. `root` is the dataset folder (None: the default place)."""
        ...


@runtime_checkable
class TemplateProvider(Protocol):
    """How a concept name becomes the prompt settings that erase it."""

    name: str
    description: str

    def names(self) -> list[str] | None:
        """The names this template knows (for "did you mean"), or None for any text."""
        ...

    def prompt_settings(self, name: str) -> list[dict[str, Any]]:
        """The prompt settings (keys of the config's `prompt` section) erasing `name`."""
        ...
