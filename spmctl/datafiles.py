"""The files of the repository's top-level `datasets/` folder (`names.json`, `sources.yaml`).

An install ships them as package data under the name `spmctl_datasets`. The folder is data only,
not a Python package (no `__init__.py`): a package there named `datasets`, on `sys.path` whenever
something runs from the repository root, hid Hugging Face's `datasets` package.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

PACKAGE = "spmctl_datasets"


def data_file(name: str) -> Path:
    """The path of one shipped dataset file."""
    try:
        # a namespace package's files() is a MultiplexedPath: join first, then it is a real path
        return Path(str(resources.files(PACKAGE).joinpath(name)))
    except ModuleNotFoundError:
        # An editable install made while the folder was a regular package looks for its
        # `__init__.py` and finds nothing now; the source checkout has the folder beside spmctl/.
        return Path(__file__).resolve().parent.parent / "datasets" / name
