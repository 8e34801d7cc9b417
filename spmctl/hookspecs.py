"""The hooks a plugin can implement. Each receives a `register(...)` callback."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("spmctl")
hookimpl = pluggy.HookimplMarker("spmctl")


@hookspec
def register_datasets(register: Callable[[Any], None]) -> None:
    """Register dataset providers: objects with `name`, `description` and `rows(...)`.

    See `spmctl.providers.DatasetProvider` for the full interface.
    """


@hookspec
def register_templates(register: Callable[[Any], None]) -> None:
    """Register template providers: objects turning a concept name into prompt settings.

    See `spmctl.providers.TemplateProvider`.
    """


@hookspec
def register_metrics(register: Callable[[Any], None]) -> None:
    """Register evaluation metrics for `spmctl eval` (see `spmctl.providers.Metric`)."""


@hookspec
def register_commands(cli: Any) -> None:
    """Add commands to the Typer app `cli` (e.g. `@cli.command()`)."""
