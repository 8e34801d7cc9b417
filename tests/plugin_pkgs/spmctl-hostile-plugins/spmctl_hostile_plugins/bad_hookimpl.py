"""A hook implementation asking for an argument the hook does not have (pluggy refuses it)."""

from spmctl.hookspecs import hookimpl


@hookimpl
def register_datasets(register, model):  # type: ignore[no-untyped-def]
    raise AssertionError("never called")
