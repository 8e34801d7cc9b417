"""Help that reads at 80 columns: options grouped by panel, whole names, defaults from the config.

Typer's rich tables give every option six columns (names, short names, `--no-` names, their
short forms, type, help), so at 80 columns names are cut and help is squeezed into ~20 columns.
Here each option is one definition-list row as click writes them (names with their value type on
the left, the help wrapped beside or below), in sections named by `rich_help_panel`. Options
default to None so that "not given" can be told from "given the default": the default shown is
the configuration's (the value used when neither the config file nor a flag sets it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from typer.core import TyperArgument, TyperCommand, TyperOption


def config_defaults(model: type, keys: dict[str, str]) -> dict[str, str]:
    """param name -> the default of its config key, shown as help text."""
    import json

    from pydantic import BaseModel

    out: dict[str, str] = {}
    for param, dotted in keys.items():
        node: Any = model
        value: Any = None
        for part in dotted.split("."):
            field = node.model_fields.get(part) if isinstance(node, type) and issubclass(node, BaseModel) else None
            if field is None:
                break
            value = field.get_default(call_default_factory=True)
            node = field.annotation if isinstance(field.annotation, type) else value.__class__
        else:
            if value is None or value == [] or value == {}:
                continue
            if isinstance(value, list):
                out[param] = ", ".join(str(v) for v in value)
            else:
                out[param] = value if isinstance(value, str) else json.dumps(value)
    return out


def grouped_help(panels: dict[str, list[str]] | None = None, defaults: Callable[[], dict[str, str]] | None = None,
                 epilog: str | None = None) -> type:
    """A command class whose --help is plain and grouped: `panels` maps a section title to its
    param names (an option's own `rich_help_panel` wins; the rest go under "Options");
    `defaults()` gives param name -> the default to show."""
    panel_of = {name: title for title, names in (panels or {}).items() for name in names}

    class GroupedHelpCommand(TyperCommand):
        def format_help(self, ctx: Any, formatter: Any) -> None:
            self.format_usage(ctx, formatter)
            self.format_help_text(ctx, formatter)
            self.format_options(ctx, formatter)
            if epilog:
                with formatter.section("Notes"):
                    formatter.write_text(epilog)

        def format_options(self, ctx: Any, formatter: Any) -> None:
            shown = defaults() if defaults else {}
            sections: dict[str, list[tuple[str, str]]] = {}
            for param in self.get_params(ctx):
                if getattr(param, "hidden", False) or not isinstance(param, TyperOption | TyperArgument):
                    continue
                row = help_row(param, ctx, shown.get(param.name or ""))
                panel = getattr(param, "rich_help_panel", None) or panel_of.get(param.name or "", "Options")
                sections.setdefault(panel, []).append(row)
            order = list(panels or {})
            for title, rows in sorted(sections.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order
                                      else len(order)):
                with formatter.section(title):
                    formatter.write_dl(rows, col_max=26)

    return GroupedHelpCommand


_TYPE_NAMES = {"str": "TEXT", "int": "INT", "float": "FLOAT", "path": "PATH", "Path": "PATH", "bool": "BOOL"}


def _kebab_first(names: list[str]) -> list[str]:
    """The kebab-case spellings first, then the seed's underscore ones."""
    return [n for n in names if "_" not in n] + [n for n in names if "_" in n]


def help_row(param: Any, ctx: Any, default: str | None) -> tuple[str, str]:
    """(names with the value type, help): one short and one long name, other spellings in the help."""
    if isinstance(param, TyperArgument):
        return param.human_readable_name.upper(), getattr(param, "help", "") or ""
    shorts = [o for o in param.opts if not o.startswith("--")]
    longs = _kebab_first([o for o in param.opts if o.startswith("--")])
    names = ", ".join([*shorts, *longs[:1]])
    if param.secondary_opts:
        names += " / " + _kebab_first(list(param.secondary_opts))[0]
    if not getattr(param, "is_flag", False) and not getattr(param, "count", False):
        kind = param.metavar or (param.display_type_rich(ctx=ctx) or "").strip("<>")
        kind = kind.removeprefix("list[").removesuffix("]")
        names += f" {_TYPE_NAMES.get(kind, kind.upper())}"
    text = " ".join((param.help or "").split())
    if len(longs) > 1:
        text += f" (also {', '.join(longs[1:])})"
    if default is None and getattr(param, "show_default", False) and param.default not in (None, False, (), []):
        default = str(param.default)
    if default is not None:
        text += f"  [default: {default}]"
    return names, text.strip()
