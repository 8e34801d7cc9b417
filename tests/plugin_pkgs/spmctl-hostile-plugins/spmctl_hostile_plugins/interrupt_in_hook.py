"""Raises KeyboardInterrupt inside a hook."""

from spmctl.hookspecs import hookimpl


@hookimpl
def register_templates(register):  # type: ignore[no-untyped-def]
    raise KeyboardInterrupt
