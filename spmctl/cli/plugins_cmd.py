"""`spmctl plugins`: which plugins are installed and what they provide."""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=False, rich_markup_mode=None)


@app.callback(invoke_without_command=True)
def plugins_default(ctx: typer.Context) -> None:
    """List plugins, providers and hooks (same as `spmctl plugins list`)."""
    if ctx.invoked_subcommand is None:
        list_plugins()


@app.command("list")
def list_plugins() -> None:
    """Show each plugin and provider with its source package and version."""
    from rich.table import Table

    from .. import plugins
    from ..console import table_console

    infos = plugins.plugin_infos()
    by_name = {info.name: info for info in infos}
    # fits the terminal: names stay whole, descriptions wrap
    table = Table(title="spmctl plugins", title_justify="left", box=None, padding=(0, 1))
    for column in ("kind", "name", "plugin", "package", "version"):
        table.add_column(column, no_wrap=True)
    table.add_column("description", ratio=1, overflow="fold")
    for hook, kind in (("register_datasets", "dataset"), ("register_templates", "template"),
                       ("register_metrics", "metric"), ("register_classifiers", "classifier"),
                       ("register_families", "family")):
        for name, provider in sorted(plugins.collect(hook).items()):
            owner = plugins.provider_owner(hook, name)
            info = by_name.get(owner)
            table.add_row(kind, name, owner, info.package if info else "?", info.version if info else "?",
                          getattr(provider, "description", ""))
    from .plugin_commands import builtin_commands, plugin_commands

    for name, (owner, command) in sorted(plugin_commands(builtin_commands(_root_app())).items()):
        info = by_name.get(owner)
        table.add_row("command", name, owner, info.package if info else "?", info.version if info else "?",
                      (command.help or "").strip().split("\n")[0])
    for info in infos:
        if info.error:
            table.add_row("[red]failed[/red]", info.name, info.name, info.package, info.version, info.error)
    console = table_console()
    console.print(table)
    hooks = ", ".join(sorted(h for h in dir(plugins.pm.hook) if h.startswith("register_")))
    console.print(f"hooks: {hooks}", highlight=False, markup=False)


def _root_app() -> typer.Typer:
    from . import app  # the root app imports this module: look it up when listing, not at import

    return app
