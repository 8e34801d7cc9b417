"""Commands plugins add through `register_commands`, loaded only when they can be what was asked for.

`spmctl --help`, `--version` and the built-in commands never import a plugin (a slow or broken one
must not slow or break them); a command spmctl does not have loads the plugins first, then runs.
The trade-off: plugin commands are not in `spmctl --help`; `spmctl plugins list` lists them.
"""

from __future__ import annotations

from typing import Any

import typer

# Root options that take a value: the word after them is not a command.
_VALUED_ROOT_OPTIONS = {"--show-completion", "--install-completion"}


def requested_command(argv: list[str]) -> str | None:
    """The command word of a command line (None: only root options such as --help/--version)."""
    previous = None
    for arg in argv:
        if not arg.startswith("-") and previous not in _VALUED_ROOT_OPTIONS:
            return arg
        previous = arg
    return None


def builtin_commands(app: typer.Typer) -> set[str]:
    group: Any = typer.main.get_command(app)
    return set(group.commands)


def plugin_commands(taken: set[str]) -> dict[str, tuple[str, Any]]:
    """{command name: (plugin, command)} from every plugin; a name already taken is refused."""
    from ..plugins import call_each, describe, run_plugin_code, warn

    apps: dict[str, typer.Typer] = {}

    def args(owner: str) -> dict[str, Any]:
        return {"cli": apps.setdefault(owner, typer.Typer())}

    found: dict[str, tuple[str, Any]] = {}
    for owner, returned in call_each("register_commands", args):
        if returned is not None:
            warn(f"{describe(owner)}: register_commands returned {type(returned).__name__}; it must add commands "
                 "to `cli` and return nothing (ignored)")
        if not (apps[owner].registered_commands or apps[owner].registered_groups):
            continue
        ok, built = run_plugin_code(owner, "register_commands", lambda app=apps[owner]: typer.main.get_command(app))
        if not ok:
            continue
        commands = built.commands if hasattr(built, "commands") else {built.name: built}  # one command, or a group
        for name, command in commands.items():
            holder = "spmctl" if name in taken else found.get(name, (None,))[0]
            if holder is not None:
                warn(f"{describe(owner)}: command {name!r} ignored: "
                     f"{'a built-in command' if holder == 'spmctl' else describe(holder)} has that name")
                continue
            found[name] = (owner, command)
    return found


def with_plugin_commands(app: typer.Typer) -> Any:
    """The app as a click group (Typer's), with the plugins' commands added."""
    group: Any = typer.main.get_command(app)
    for name, (_, command) in plugin_commands(set(group.commands)).items():
        group.add_command(command, name)
    return group
