"""The files of the repository's top-level `datasets/` folder (`names.json`, `sources.yaml`).

An install ships them as package data under the name `spmctl_datasets`. The folder is data only,
not a Python package (no `__init__.py`): a package there named `datasets`, on `sys.path` whenever
something runs from the repository root, hid Hugging Face's `datasets` package.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

PACKAGE = "spmctl_datasets"
CHECKOUT = Path(__file__).resolve().parent.parent / "datasets"


def data_file(name: str) -> Path:
    """The path of one shipped dataset file."""
    # Look through the package's search locations instead of importlib.resources: as a namespace
    # package under a fresh editable install, its locations include setuptools' path-hook entry,
    # which is no directory, and resources.files() then raises NotADirectoryError.
    try:
        spec = importlib.util.find_spec(PACKAGE)
    except (ImportError, ValueError):
        spec = None
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / name
        if candidate.is_file():
            return candidate
    # An editable install made while the folder was a regular package finds nothing there now;
    # the source checkout has the folder beside spmctl/.
    return CHECKOUT / name
