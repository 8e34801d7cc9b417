"""`spmctl names`: what each template can erase (UnlearnCanvas styles and objects, I2P categories)."""

from __future__ import annotations

from typing import Annotated

import typer


def names(
    template: Annotated[str | None, typer.Argument(
        help="A template (style, object, i2p, or a plugin's): print its names one per line.")] = None,
) -> None:
    """List what each template erases: the names --template_name and --sweep-names take."""
    from rich.console import Console

    from .. import plugins
    from ..providers import template_names

    if template is not None:
        names_ = template_names(plugins.get_template(template))
        if names_ is None:
            typer.echo(f"{template}: any text is a concept name", err=True)
            return
        typer.echo("\n".join(names_))
        return
    import textwrap

    console = Console(highlight=False)
    width = max(console.width, 40)
    for key, provider in sorted(plugins.get_templates().items()):
        names_ = template_names(provider)
        description = getattr(provider, "description", "")
        count = "any text" if names_ is None else f"{len(names_)} names"
        console.print(textwrap.fill(f"{key} ({count}): {description}", width, subsequent_indent="    "),
                      markup=False)
        if names_:
            console.print(textwrap.fill(", ".join(names_), width, initial_indent="  ", subsequent_indent="  ",
                                        break_on_hyphens=False), markup=False)
    console.print("One template's names, one per line: spmctl names TEMPLATE")
