"""Fails while adding its commands."""

from spmctl.hookspecs import hookimpl


@hookimpl
def register_commands(cli):  # type: ignore[no-untyped-def]
    raise RuntimeError("cannot add my commands")
