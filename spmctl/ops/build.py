"""Builds (ahead of time or on first use) the fused membrane op from `csrc/`.

This module imports nothing from `spmctl` at top level so that setup.py can load it by file path
(before the package is installed) to get the exact sources and flags of the prebuilt extension.

JIT builds go to `$SPMCTL_BUILD_DIR` (or torch's extensions root) under a folder named by a hash of
the sources, flags, torch/python versions and (for -march=native) the CPU's flags: a second process
finds the finished library and loads it without rebuilding, and an fcntl lock on a file beside the
folder serialises two processes that start building at once.
"""

from __future__ import annotations

import hashlib
import os
import platform
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CPU_SOURCES = ("membrane_op.cpp", "membrane_autograd.cpp", "linear_membrane.cpp")
CUDA_SOURCES = ("membrane_cuda.cpp", "membrane_kernels.cu")
HEADERS = ("membrane_common.h", "membrane_kernels.h", "membrane_f32.h")
PYMODULE_SOURCE = "pymodule.cpp"  # PyInit stub, only for the setup.py-built `spmctl._membrane_ext`
PREBUILT_NAME = "spmctl._membrane_ext"

BASE_CFLAGS = ["-O3", "-fno-math-errno", "-DSPMCTL_EXT"]
# Compile for the GPUs people train SD on; PTX of the newest one keeps later GPUs working.
NVCC_FLAGS = [
    "-O3",
    "--use_fast_math",
    "-gencode=arch=compute_80,code=sm_80",
    "-gencode=arch=compute_86,code=sm_86",
    "-gencode=arch=compute_89,code=sm_89",
    "-gencode=arch=compute_90,code=[sm_90,compute_90]",
]


def csrc_dir() -> Path:
    """The folder with the C++/CUDA sources: the installed `spmctl_csrc` package or the repo's csrc/."""
    try:
        import spmctl_csrc

        return Path(spmctl_csrc.__file__).resolve().parent
    except ImportError:
        return Path(__file__).resolve().parents[2] / "csrc"


def _cuda_wanted() -> bool:
    import torch
    from torch.utils import cpp_extension

    return torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None


def extension_sources(
    with_cuda: bool | None = None, *, prebuilt: bool = False, root: str | os.PathLike | None = None
) -> dict[str, Any]:
    """Sources and flags of the extension.

    `with_cuda` None means "if torch has CUDA and a toolkit is found". `prebuilt` adds the Python
    module stub (setup.py). `root` makes the source paths relative to it (setuptools wants that).
    Returns {"sources", "include_dirs", "extra_compile_args": {"cxx", "nvcc"}, "with_cuda"}.
    """
    if with_cuda is None:
        with_cuda = _cuda_wanted()
    folder = csrc_dir()
    names = list(CPU_SOURCES) + (list(CUDA_SOURCES) if with_cuda else [])
    if prebuilt:
        names.append(PYMODULE_SOURCE)
    paths = [folder / n for n in names]
    include = [folder]
    if root is not None:
        paths = [Path(os.path.relpath(p, root)) for p in paths]
        include = [Path(os.path.relpath(folder, root))]
    cxx = list(BASE_CFLAGS) + (["-DSPMCTL_WITH_CUDA"] if with_cuda else [])
    return {
        "sources": [str(p) for p in paths],
        "include_dirs": [str(p) for p in include],
        "extra_compile_args": {"cxx": cxx, "nvcc": list(NVCC_FLAGS)},
        "with_cuda": with_cuda,
    }


def _native_flags() -> tuple[list[str], str]:
    """-march=native for JIT builds on x86-64 (the library is built for this machine); the CPU's
    flags go into the build hash so a shared cache never hands a binary to a CPU it would crash on."""
    if os.environ.get("SPMCTL_NATIVE", "1") == "0" or platform.machine() not in ("x86_64", "AMD64"):
        return [], ""
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                cpu = line
                break
    except OSError:
        return [], ""
    return ["-march=native"], cpu


def build_root() -> Path:
    env = os.environ.get("SPMCTL_BUILD_DIR")
    if env:
        return Path(env).expanduser()
    from torch.utils.cpp_extension import get_default_build_root

    return Path(get_default_build_root()) / "spmctl"


def jit_spec(with_cuda: bool | None = None) -> tuple[str, Path, dict[str, Any]]:
    """(name, build folder, extension_sources + native flags) of this machine's JIT build."""
    import torch

    spec = extension_sources(with_cuda)
    native, cpu = _native_flags()
    spec["extra_compile_args"]["cxx"] = spec["extra_compile_args"]["cxx"] + native
    digest = hashlib.sha256()
    for source in sorted(spec["sources"]) + [str(csrc_dir() / h) for h in HEADERS]:
        path = Path(source)
        digest.update(path.name.encode() + b"\0" + (path.read_bytes() if path.exists() else b"") + b"\0")
    for part in (
        torch.__version__,
        str(torch.version.cuda),
        sys.version,
        repr(spec["extra_compile_args"]),
        str(spec["with_cuda"]),
        cpu,
    ):
        digest.update(part.encode() + b"\0")
    name = f"spmctl_membrane_{digest.hexdigest()[:16]}"
    return name, build_root() / name, spec


@contextmanager
def _file_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        try:
            import fcntl
        except ImportError:  # Windows: no fcntl; torch's own FileBaton still guards the build
            yield
            return
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def build_and_load(verbose: bool = False) -> Path:
    """Build (if needed) and load the JIT library into this process; returns the .so path."""
    import torch
    from torch.utils import cpp_extension

    name, folder, spec = jit_spec()
    library = folder / f"{name}.so"
    marker = folder / "built.ok"  # written only after a complete build: a killed link leaves none
    with _file_lock(folder.parent / f"{name}.lock"):
        if marker.exists() and library.exists():  # built by an earlier process: load, no ninja run
            torch.ops.load_library(str(library))
            return library
        folder.mkdir(parents=True, exist_ok=True)
        cpp_extension.load(
            name=name,
            sources=spec["sources"],
            extra_cflags=spec["extra_compile_args"]["cxx"],
            extra_cuda_cflags=spec["extra_compile_args"]["nvcc"],
            extra_include_paths=spec["include_dirs"],
            build_directory=str(folder),
            with_cuda=spec["with_cuda"],
            is_python_module=False,
            verbose=verbose,
        )
        marker.write_text(name)
    return library
