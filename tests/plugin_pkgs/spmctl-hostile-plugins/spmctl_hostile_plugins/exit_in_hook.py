"""Calls sys.exit inside a hook."""

import sys

from spmctl.hookspecs import hookimpl


@hookimpl
def register_datasets(register):  # type: ignore[no-untyped-def]
    sys.exit("bye from a dataset hook")
