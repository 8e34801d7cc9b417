"""Packaging lives in pyproject.toml; this file only adds the optional ahead-of-time build
of the fused membrane op (for clusters whose compute nodes have no compiler):

    SPMCTL_BUILD_EXT=1 pip install .

Without SPMCTL_BUILD_EXT the op is JIT-built with ninja on first use.
"""

import os

from setuptools import setup


def _extensions():
    if os.environ.get("SPMCTL_BUILD_EXT", "") not in {"1", "true", "yes"}:
        return {}
    import sys

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from spmctl.ops.build import setup_extension_kwargs

    return setup_extension_kwargs()


setup(**_extensions())
