"""The interfaces plugins implement (datasets, templates, metrics, classifiers, model families), and the
rows datasets yield.

Each is `runtime_checkable`: the plugin manager checks every registered object against its kind's
interface and refuses (one line naming the plugin) what does not fit.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
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


def _normalise(name: str) -> str:
    return " ".join(name.replace("_", " ").replace("-", " ").split()).casefold()


def resolve_name(kind: str, name: str, choices: Iterable[str]) -> str:
    """The entry of `choices` that `name` means, else a "did you mean" SpmctlError.

    Case, spaces, `_` and `-` don't matter ("van gogh" is `Van_Gogh`), since users type
    the prompt's spelling and the dataset uses folder names.
    """
    import difflib

    from .errors import SpmctlError

    options = list(choices)
    if name in options:
        return name
    by_key = {_normalise(option): option for option in options}
    if _normalise(name) in by_key:
        return by_key[_normalise(name)]
    close = difflib.get_close_matches(name, options, n=3, cutoff=0.5) or difflib.get_close_matches(
        _normalise(name), list(by_key), n=3, cutoff=0.5)
    shown = " or ".join(repr(by_key.get(c, c)) for c in close)
    hint = f" (did you mean {shown}?)" if close else ""
    raise SpmctlError(f"unknown {kind} {name!r}{hint}")


def builtin_names(key: str) -> list[str]:
    """A list from the shipped `datasets/names.json` (UnlearnCanvas styles/objects, I2P categories)."""
    import json

    from .datafiles import data_file

    data = json.loads(data_file("names.json").read_text(encoding="utf-8"))
    return list(data[key])


def as_list(value: str | Iterable[Any] | None) -> list[Any] | None:
    """An option given as a list, or as one comma-separated string (from --set or YAML)."""
    if value is None:
        return None
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return list(value)


def check_options(provider: str, options: dict[str, Any], known: Iterable[str]) -> None:
    """Reject options a provider doesn't understand (a typo must not silently change the data)."""
    from .errors import SpmctlError

    unknown = sorted(set(options) - set(known))
    if unknown:
        raise SpmctlError(
            f"dataset {provider!r}: unknown option {unknown[0]!r}; known: {', '.join(sorted(known))}")


@runtime_checkable
class Metric(Protocol):
    """An evaluation metric `spmctl eval run -m NAME` runs over sample folders (see `spmctl.eval`)."""

    name: str
    description: str

    def evaluate(self, runs: Any, **options: Any) -> Any:
        """Score every run side by side.

        `runs`: a list of `spmctl.eval.EvalRun` (label, folder, manifest records); `options`: the
        metric's `--set METRIC.KEY=VALUE` items. Returns a `spmctl.eval.MetricResult`, or simply
        {run label: {column: value}}. Raise `spmctl.eval.MetricUnavailable` (one line) when it
        cannot run here, e.g. weights missing offline.
        """
        ...


@runtime_checkable
class ImageClassifier(Protocol):
    """Maps images to one of `labels`; `kind` says which UnlearnCanvas labels these are.

    Plugins register classifiers through the `register_classifiers` hook; users pass the name to
    `spmctl eval unlearncanvas --style-classifier/--object-classifier`.
    """

    name: str
    kind: str  # "style" or "object"
    labels: list[str]

    def predict(self, images: Sequence[Any]) -> list[str]:
        """One label (an entry of `labels`) per image (PIL images)."""
        ...


def template_names(template: Any) -> list[str] | None:
    """A template's names, or None when it takes any text (`concept`)."""
    names = getattr(template, "names", None)
    return list(names()) if callable(names) and names() is not None else None


@runtime_checkable
class ModelFamilyProvider(Protocol):
    """A model family (SD 1.x, SDXL, ...): what the plugin manager checks a registered family against.

    The whole interface, with its defaults, is `spmctl.families.ModelFamily` (subclass it); these are
    the members every family must have for spmctl to find and load its models.
    """

    name: str
    description: str
    tiny_names: tuple[str, ...]

    def detect(self, probe: Any) -> bool:
        """Whether a model (`spmctl.families.ModelProbe`) is of this family."""
        ...

    def load(self, source: str, options: Any) -> Any:
        """Load a model (`spmctl.families.LoadOptions`) into a `spmctl.families.ModelBundle`."""
        ...

    def membrane_targets(self, denoiser: Any) -> list[Any]:
        """The denoiser's layers that carry membranes."""
        ...

    def encode(self, model: Any, prompts: list[str], *, clip_skip: int = 1) -> Any:
        """Prompts -> a `spmctl.families.Conditioning`."""
        ...

    def predict(self, model: Any, latents: Any, t: Any, cond: Any) -> Any:
        """The denoiser's prediction."""
        ...
