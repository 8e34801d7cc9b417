"""The hooks a plugin can implement (`@hookimpl`). Each `register_*` hook receives a `register(obj)`
callback, to be called once per object, and returns nothing.

Every registered object is checked against its interface in `spmctl.providers`; one that does not
fit, or whose name a built-in already has, is refused with a warning naming the plugin.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("spmctl")
hookimpl = pluggy.HookimplMarker("spmctl")


@hookspec
def register_datasets(register: Callable[[Any], None]) -> None:
    """Register dataset providers (`spmctl.providers.DatasetProvider`: `name`, `description`, `rows(...)`)."""


@hookspec
def register_templates(register: Callable[[Any], None]) -> None:
    """Register template providers, turning a concept name into prompt settings (`providers.TemplateProvider`)."""


@hookspec
def register_metrics(register: Callable[[Any], None]) -> None:
    """Register evaluation metrics for `spmctl eval` (`spmctl.providers.Metric`)."""


@hookspec
def register_classifiers(register: Callable[[Any], None]) -> None:
    """Register UnlearnCanvas style/object classifiers for `spmctl eval unlearncanvas`
    (`spmctl.providers.ImageClassifier`)."""


@hookspec
def register_families(register: Callable[[Any], None]) -> None:
    """Register model families (`spmctl.providers.ModelFamilyProvider`; subclass
    `spmctl.families.ModelFamily`): how a kind of model is detected, loaded, conditioned, trained,
    sampled and exported. `pretrained_model.family` (or detection) picks one."""


@hookspec
def register_commands(cli: Any) -> None:
    """Add commands to the Typer app `cli` (e.g. `@cli.command()`).

    Plugin commands are loaded only when a command spmctl does not have is invoked (so `--help`
    and the built-in commands never wait for plugins); `spmctl plugins list` shows them.
    A command named like a built-in one is refused.
    """
