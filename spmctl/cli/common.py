"""Options and helpers shared by the command modules."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from pydantic import BaseModel
    from rich.console import Console

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


def table_console() -> Console:
    """A console for tables on stdout: the terminal's width (or COLUMNS) so they fit it; piped
    into a file or a script without COLUMNS, unbounded, so each row stays one line."""
    import os
    import sys

    from rich.console import Console

    if sys.stdout.isatty() or os.environ.get("COLUMNS"):
        return Console()
    return Console(width=100_000)


def stderr_console(quiet: bool = False) -> Console:
    from rich.console import Console

    if quiet:
        quiet_mode()
    return Console(stderr=True, quiet=quiet)


def quiet_mode() -> None:
    """`-q`: errors only. Progress bars (ours, the hub's, tqdm's), library logging, Python
    warnings and spmctl's own `warning:`/`note:` lines are dropped; `error` lines still show."""
    import logging
    import os
    import sys
    import warnings

    for var in ("HF_HUB_DISABLE_PROGRESS_BARS", "TQDM_DISABLE", "DIFFUSERS_NO_ADVISORY_WARNINGS"):
        os.environ[var] = "1"
    for var in ("TRANSFORMERS_VERBOSITY", "DIFFUSERS_VERBOSITY"):
        os.environ[var] = "error"
    warnings.simplefilter("ignore")
    logging.disable(logging.WARNING)
    if not isinstance(sys.stderr, _DropNotices):
        sys.stderr = _DropNotices(sys.stderr)


class _DropNotices:
    """stderr without the lines that start with `warning:` or `note:` (the rest passes through)."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self._partial = ""

    def write(self, text: str) -> int:
        self._partial += text
        *lines, self._partial = self._partial.split("\n")
        for line in lines:
            if not line.lstrip().startswith(("warning:", "note:")):
                self._stream.write(line + "\n")
        return len(text)

    def flush(self) -> None:
        if self._partial and not self._partial.lstrip().startswith(("warning:", "note:")):
            self._stream.write(self._partial)
        self._partial = ""
        self._stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _flatten(values: Any, prefix: str = "") -> list[tuple[str, Any]]:
    items = values.items() if isinstance(values, dict) else enumerate(values) if isinstance(values, list) else ()
    if values and items:
        out: list[tuple[str, Any]] = []
        for key, value in items:
            out.extend(_flatten(value, f"{prefix}{key}."))
        return out
    return [(prefix.rstrip("."), values)]


def print_config_table(cfg: BaseModel, origin: dict[str, str]) -> None:
    """The merged configuration on stdout as YAML, each value commented with its source. Its
    dotted keys (as `--set` takes them) load back: the output is a config file for `-c`."""
    import yaml

    from ..config.loader import source_of

    values = cfg.model_dump(mode="json")
    if isinstance(getattr(cfg, "prompt", None), list):
        # only what was set: an unset prompt key means "the template's value", not the class default
        values["prompt"] = [p.model_dump(mode="json", exclude_unset=True) for p in cfg.prompt]
    for key, value in _flatten(values):
        source = source_of(origin, key)
        shown = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
        shown = shown.removesuffix("\n...").removesuffix("...").strip()
        typer.echo(f"{key}: {shown}  # {source}")
