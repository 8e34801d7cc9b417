"""Options and helpers shared by the command modules."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from pydantic import BaseModel

SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", metavar="KEY=VALUE",
                 help="Override any config key (dotted, as --print-config shows it; repeatable)."),
]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar; errors only.")]


def collect_overrides(flags: dict[str, Any], assignments: list[str] | None) -> dict[str, Any]:
    """Named flags (dotted keys, None = not given) and `--set` items as one nested dict (see
    `config.loader.collect_overrides`: each `--set` item stays a source of its own)."""
    from ..config.loader import collect_overrides as collect

    return collect(flags, assignments)


def print_config_table(cfg: BaseModel, origin: dict[str, str]) -> None:
    """The merged configuration on stdout as YAML, each value commented with its source. Its
    dotted keys (as `--set` takes them) load back: the output is a config file for `-c`."""
    import yaml

    from ..config.loader import leaves, source_of

    values = cfg.model_dump(mode="json")
    if isinstance(getattr(cfg, "prompt", None), list):
        # only what was set: an unset prompt key means "the template's value", not the class default
        values["prompt"] = [p.model_dump(mode="json", exclude_unset=True) for p in cfg.prompt]
    for key, value in leaves(values, lists=True).items():
        source = source_of(origin, key)
        shown = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
        shown = shown.removesuffix("\n...").removesuffix("...").strip()
        typer.echo(f"{key}: {shown}  # {source}")
