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
NVCC_BASE_FLAGS = ["-O3", "--use_fast_math"]
# The ahead-of-time build (setup.py), and a JIT build where no GPU is visible, target every GPU
# generation SD is trained on: Volta (V100, sm_70), Turing (T4, sm_75), Ampere (A100 sm_80, RTX 30xx
# sm_86), Ada (L4/RTX 40xx, sm_89) and Hopper (H100, sm_90), plus PTX of the newest, which the driver
# compiles for later GPUs (Blackwell: sm_100, sm_120). Architectures the installed nvcc cannot target
# are left out (CUDA 13 dropped sm_70); TORCH_CUDA_ARCH_LIST replaces the list.
AOT_ARCHS = "7.0;7.5;8.0;8.6;8.9;9.0+PTX"
# TORCH_CUDA_ARCH_LIST's names, as torch.utils.cpp_extension reads them
NAMED_ARCHS = {"Volta": "7.0", "Turing": "7.5", "Ampere": "8.0;8.6", "Ada": "8.9", "Hopper": "9.0",
               "Blackwell": "10.0;12.0"}


def parse_arch_list(text: str) -> list[tuple[int, bool]]:
    """TORCH_CUDA_ARCH_LIST syntax ("7.5;8.6+PTX", spaces or commas also separate, names allowed) as
    [(75, False), (86, True)]."""
    entries: list[tuple[int, bool]] = []
    for item in text.replace(",", ";").replace(" ", ";").split(";"):
        item = item.strip()
        if not item:
            continue
        ptx = item.endswith("+PTX")
        name = item.removesuffix("+PTX")
        if name in NAMED_ARCHS:
            entries += [(num, ptx) for num, _ in parse_arch_list(NAMED_ARCHS[name])]
            continue
        major, _, minor = name.partition(".")
        if not (major.isdigit() and (minor.isdigit() or not minor)):
            raise ValueError(f"TORCH_CUDA_ARCH_LIST: cannot read {item!r} (expected e.g. 7.5, 8.6+PTX)")
        entries.append((int(major) * 10 + int(minor or 0), ptx))
    return entries


def cuda_arch_flags(
    capabilities: list[tuple[int, int]] | None = None,
    arch_list: str | None = None,
    supported: list[int] | None = None,
) -> list[str]:
    """nvcc -gencode flags for the given GPUs.

    `arch_list` (TORCH_CUDA_ARCH_LIST's syntax) wins; else `capabilities` (the visible devices'
    (major, minor)); else AOT_ARCHS. `supported`: the archs the compiler can target (e.g. [75, 80, ...]):
    a device newer than the compiler's newest gets that newest one's code and PTX (as torch does), and a
    listed arch the compiler lacks is left out. The newest arch always also gets PTX, so a later GPU
    still runs the kernel (the driver compiles the PTX on first launch).
    """
    if arch_list:
        entries = parse_arch_list(arch_list)
    elif capabilities:
        newest = max(supported) if supported else None
        entries = []
        for major, minor in capabilities:
            num = major * 10 + minor
            entries.append((min(num, newest), False) if newest else (num, False))
    else:
        entries = parse_arch_list(AOT_ARCHS)
    ptx = {num for num, p in entries if p}
    nums = sorted({num for num, _ in entries if supported is None or num in supported})
    if not nums:
        raise RuntimeError(f"no CUDA architecture to build for: asked {sorted({n for n, _ in entries})}, "
                           f"the compiler supports {supported}")
    ptx.add(nums[-1])
    flags = [f"-gencode=arch=compute_{n},code=sm_{n}" for n in nums]
    return flags + [f"-gencode=arch=compute_{n},code=compute_{n}" for n in nums if n in ptx]


def compiler_archs() -> list[int] | None:
    """The archs the CUDA toolkit's nvcc can target (`nvcc --list-gpu-arch`), None if unknown."""
    import subprocess

    from torch.utils import cpp_extension

    nvcc = Path(cpp_extension.CUDA_HOME or "/usr/local/cuda") / "bin" / "nvcc"
    try:
        out = subprocess.run([str(nvcc), "--list-gpu-arch"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    archs = [int(w.removeprefix("compute_")) for w in out.split() if w.removeprefix("compute_").isdigit()]
    return archs or None


def visible_capabilities() -> list[tuple[int, int]]:
    import torch

    if not (torch.version.cuda and torch.cuda.is_available()):
        return []
    return [torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())]


def nvcc_flags(prebuilt: bool) -> list[str]:
    """The JIT build targets the visible GPUs; the prebuilt one (and a JIT build with no GPU visible)
    AOT_ARCHS; TORCH_CUDA_ARCH_LIST overrides both."""
    caps = [] if prebuilt else visible_capabilities()
    arch_list = os.environ.get("TORCH_CUDA_ARCH_LIST", "").strip() or None
    return NVCC_BASE_FLAGS + cuda_arch_flags(caps, arch_list, compiler_archs())


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
        "extra_compile_args": {"cxx": cxx, "nvcc": nvcc_flags(prebuilt) if with_cuda else []},
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
    """$SPMCTL_BUILD_DIR, else $TORCH_EXTENSIONS_DIR/spmctl, else torch's default extensions root."""
    env = os.environ.get("SPMCTL_BUILD_DIR")
    if env:
        return Path(env).expanduser()
    torch_dir = os.environ.get("TORCH_EXTENSIONS_DIR")
    if torch_dir:
        return Path(torch_dir).expanduser() / "spmctl"
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


def is_built() -> bool:
    """Whether this machine's JIT build is finished (the next load needs no compiler run)."""
    name, folder, _ = jit_spec()
    return (folder / "built.ok").exists() and (folder / f"{name}.so").exists()


def _say(message: str, end: str = "\n") -> None:
    sys.stderr.write(message + end)
    sys.stderr.flush()


@contextmanager
def _progress(folder: Path, total: int, started: float):
    """A running count of the object files ninja has written and the time so far (doctor --build): one
    rewritten line on a terminal, a line every 15 s in a log."""
    import threading
    import time

    done = threading.Event()
    tty = sys.stderr.isatty()

    def tick() -> None:
        while not done.wait(1.0 if tty else 15.0):
            objects = sum(1 for p in folder.glob("*.o") if p.stat().st_mtime >= started)
            line = f"  compiling {total} files in parallel: {objects} done, {time.time() - started:.0f} s"
            _say("\r" + line if tty else line, end="" if tty else "\n")

    thread = threading.Thread(target=tick, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        if tty:
            _say("\r" + " " * 70 + "\r", end="")


def build_and_load(verbose: bool = False, progress: bool = False) -> Path:
    """Build (if needed) and load the JIT library into this process; returns the .so path.

    A build says so on stderr, with where it goes and how long it took: it takes about a minute for
    the CPU kernels and a few minutes with CUDA, once per machine, torch and spmctl version.
    `progress` also shows a running count of compiled files (for `spmctl doctor --build`).
    """
    import time

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
        what = "CPU and CUDA kernels, a few minutes" if spec["with_cuda"] else "CPU kernels, about a minute"
        _say(f"spmctl: building the fused membrane kernel once for this machine ({what}) in {folder}")
        started = time.time()
        with _progress(folder, len(spec["sources"]), started) if progress else _no_context():
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
        _say(f"spmctl: membrane kernel built in {time.time() - started:.0f} s")
    return library


@contextmanager
def _no_context():
    yield
