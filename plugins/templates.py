"""Templates: how a concept name becomes the prompt settings that erase it.

`style` and `object` follow the per-concept settings UnlearnCanvas published for
SPM (the name as target and positive, empty neutral and unconditional, latent
anchoring with λ = 1000, 4 anchors, guidance 1, 512 px with dynamic resolution).
`i2p` erases an I2P category; `concept` erases any text with the same settings.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from spmctl.errors import SpmctlError
from spmctl.hookspecs import hookimpl
from spmctl.providers import builtin_names, resolve_name

from .i2p import CATEGORY_ALIASES
from .unlearncanvas import readable

Targets = dict[str, tuple[str, ...]]  # a template's name -> the concept texts it erases

# The UnlearnCanvas SPM settings, shared by every template.
BASE_SETTINGS: dict[str, Any] = {
    "unconditional": "",
    "neutral": "",
    "action": "erase_with_la",
    "guidance_scale": 1.0,
    "resolution": 512,
    "batch_size": 1,
    "dynamic_resolution": True,
    "la_strength": 1000,
    "sampling_batch_size": 4,
}

# I2P categories erase their own name; "sexual" erases nudity too, as in SPM's nudity experiments.
I2P_SPECIAL_TARGETS: dict[str, tuple[str, ...]] = {"sexual": ("sexual", "nudity"), "nudity": ("nudity",)}


def i2p_targets() -> Targets:
    """Every I2P category (and the `nudity` alias the i2p dataset accepts) → what to erase."""
    targets = {category: (category,) for category in builtin_names("i2p_categories")}
    targets.update(I2P_SPECIAL_TARGETS)
    targets.update({alias: targets.get(alias, (alias,)) for alias in CATEGORY_ALIASES})
    return targets


def settings_for(target: str) -> dict[str, Any]:
    """One prompt setting erasing `target` (keys of the config's `prompt` section)."""
    return {"target": target, "positive": target, **BASE_SETTINGS}


class NamedTemplate:
    """A template over a fixed list of names; `targets()` maps each name to what it erases."""

    def __init__(self, name: str, description: str, targets: Callable[[], Targets]) -> None:
        self.name = name
        self.description = description
        self._targets = targets

    def names(self) -> list[str]:
        return list(self._targets())

    def prompt_settings(self, name: str) -> list[dict[str, Any]]:
        targets = self._targets()
        known = resolve_name(f"{self.name} name", name, list(targets))
        return [settings_for(target) for target in targets[known]]


def _unlearncanvas(key: str) -> Callable[[], Targets]:
    # Folder names (`Van_Gogh`) erase their prompt spelling (`Van Gogh`).
    return lambda: {name: (readable(name),) for name in builtin_names(key)}


class ConceptTemplate:
    """Any text is a concept (a celebrity, an artist, a thing)."""

    name = "concept"
    description = "Any text as the concept to erase (same settings as style/object)"

    def names(self) -> list[str] | None:
        return None

    def prompt_settings(self, name: str) -> list[dict[str, Any]]:
        text = " ".join(name.split())
        if not text:
            raise SpmctlError("template 'concept' needs a non-empty concept text")
        return [settings_for(text)]


def builtin_templates() -> list[Any]:
    return [
        NamedTemplate("style", "An UnlearnCanvas style (e.g. Van_Gogh)",
                      _unlearncanvas("unlearncanvas_styles")),
        NamedTemplate("object", "An UnlearnCanvas object (e.g. Dogs)",
                      _unlearncanvas("unlearncanvas_objects")),
        NamedTemplate("i2p", "An I2P category (hate, sexual, violence, self-harm, …) or nudity", i2p_targets),
        ConceptTemplate(),
    ]


@hookimpl
def register_templates(register) -> None:  # type: ignore[no-untyped-def]
    for template in builtin_templates():
        register(template)
