"""`spmctl plugins`: which plugins are installed and what they provide."""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=False)


@app.callback(invoke_without_command=True)
def plugins_default(ctx: typer.Context) -> None:
    """List plugins, providers and hooks (same as `spmctl plugins list`)."""
    if ctx.invoked_subcommand is None:
        list_plugins()


@app.command("list")
def list_plugins() -> None:
    """Show each plugin and provider with its source package and version."""
    from rich.console import Console
    from rich.table import Table

    from .. import plugins

    infos = plugins.plugin_infos()
    by_name = {info.name: info for info in infos}
    table = Table(title="spmctl plugins")
    for column in ("kind", "name", "plugin", "package", "version", "description"):
        table.add_column(column)
    for hook, kind, providers in (
        ("register_datasets", "dataset", plugins.get_datasets()),
        ("register_templates", "template", plugins.get_templates()),
        ("register_metrics", "metric", plugins.get_metrics()),
    ):
        for name, provider in sorted(providers.items()):
            owner = plugins.provider_owner(hook, name)
            info = by_name.get(owner)
            # an image classifier (UnlearnCanvas) comes through register_metrics too; say which it is
            shown = "classifier" if kind == "metric" and callable(getattr(provider, "predict", None)) else kind
            table.add_row(shown, name, owner, info.package if info else "?", info.version if info else "?",
                          getattr(provider, "description", ""))
    for info in infos:
        if info.error:
            table.add_row("[red]failed[/red]", info.name, info.name, info.package, info.version, info.error)
    Console(width=200).print(table)
    hooks = ", ".join(sorted(h for h in dir(plugins.pm.hook) if h.startswith("register_")))
    typer.echo(f"hooks: {hooks}")
