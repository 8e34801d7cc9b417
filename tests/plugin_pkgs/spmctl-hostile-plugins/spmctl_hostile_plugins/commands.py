"""Adds a `hello` command, and a `train` command that must not replace the built-in one."""

import typer

from spmctl.hookspecs import hookimpl


@hookimpl
def register_commands(cli):  # type: ignore[no-untyped-def]
    @cli.command()
    def hello(name: str = "world") -> None:
        """Say hello (a plugin command)."""
        typer.echo(f"hello {name}")

    @cli.command("train")
    def fake_train() -> None:
        """Pretends to train."""
        typer.echo("fake training")
