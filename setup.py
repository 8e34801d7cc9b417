"""Packaging lives in pyproject.toml; this file only adds the optional ahead-of-time build of the
fused membrane op, for clusters whose compute nodes have no compiler:

    SPMCTL_BUILD_EXT=1 pip install --no-build-isolation .

(torch must be importable at build time, hence --no-build-isolation). Without SPMCTL_BUILD_EXT the
op is JIT-built with ninja on first use; when the prebuilt `spmctl._membrane_ext` is importable the
loader uses it instead.
"""

import importlib.util
import os

from setuptools import setup


def _prebuilt_extension() -> dict:
    if os.environ.get("SPMCTL_BUILD_EXT", "") not in {"1", "true", "yes"}:
        return {}
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    here = os.path.dirname(os.path.abspath(__file__))
    # spmctl/ops/build.py is standalone on purpose: load it by path, the package is not installed yet
    spec = importlib.util.spec_from_file_location("_spmctl_build", os.path.join(here, "spmctl", "ops", "build.py"))
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    src = build.extension_sources(prebuilt=True, root=here)
    extension = CUDAExtension if src["with_cuda"] else CppExtension
    ext = extension(build.PREBUILT_NAME, src["sources"], include_dirs=src["include_dirs"],
                    extra_compile_args=src["extra_compile_args"])
    return {"ext_modules": [ext], "cmdclass": {"build_ext": BuildExtension}}


setup(**_prebuilt_extension())
