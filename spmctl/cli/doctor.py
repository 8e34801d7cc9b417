"""`spmctl doctor`: the facts a GPU-path bug report needs, and `--build` to build the kernel now."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Any

import typer


def _first_line(cmd: list[str]) -> str | None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = [line.strip() for line in (out.stdout or out.stderr).splitlines() if line.strip()]
    if out.returncode != 0 or not lines:
        return None
    return next((line for line in lines if "release" in line), lines[0])  # nvcc's version is on that line


def _compilers() -> dict[str, Any]:
    from torch.utils import cpp_extension

    cxx = shutil.which(os.environ.get("CXX", "c++"))
    # torch's toolkit (used for the build) or, with a CPU torch, whichever nvcc is on PATH
    found = Path(cpp_extension.CUDA_HOME) / "bin" / "nvcc" if cpp_extension.CUDA_HOME else shutil.which("nvcc")
    nvcc = Path(found) if found else None
    nvcc_ok = nvcc is not None and nvcc.exists()
    return {
        "cxx": cxx, "cxx_version": _first_line([cxx, "--version"]) if cxx else None,
        "ninja": shutil.which("ninja") or (str(Path(sys.executable).parent / "ninja")
                                           if (Path(sys.executable).parent / "ninja").exists() else None),
        "cuda_home": cpp_extension.CUDA_HOME,
        "nvcc": str(nvcc) if nvcc_ok else None,
        "nvcc_version": _first_line([str(nvcc), "--version"]) if nvcc_ok else None,
    }


def _gpus() -> list[dict[str, Any]]:
    import torch

    if not (torch.version.cuda and torch.cuda.is_available()):
        return []
    gpus = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        gpus.append({"index": i, "name": props.name, "capability": f"{props.major}.{props.minor}",
                     "memory_gib": round(props.total_memory / 2**30, 1),
                     "bf16": bool(torch.cuda.is_bf16_supported()) if i == 0 else None})
    return gpus


def _kernel(build: bool) -> dict[str, Any]:
    """The backend, where its build lives, and the self-check on each device (loads, never builds,
    unless `build`)."""
    import importlib.util

    import torch

    from ..ops import build as ops_build
    from ..ops import fused, selfcheck

    name, folder, spec = ops_build.jit_spec()
    prebuilt = importlib.util.find_spec(ops_build.PREBUILT_NAME) is not None
    info: dict[str, Any] = {
        "mode": os.environ.get("SPMCTL_KERNEL", "auto"), "prebuilt": prebuilt, "build_dir": str(folder),
        "built": ops_build.is_built(), "with_cuda": spec["with_cuda"],
        "nvcc_arch_flags": spec["extra_compile_args"]["nvcc"],
    }
    if build:
        ops_build.build_and_load(progress=True)
        info["built"] = True
    if info["mode"] == "reference" or info["built"] or prebuilt:
        info["backend"] = fused.load_fused()
        info["reason"] = fused._reason or None
    else:
        info["backend"] = "not built yet"
        info["reason"] = "the first use builds it (about a minute); `spmctl doctor --build` builds it now"
    info["cuda_kernels"] = info["backend"] == "fused" and torch._C._dispatch_has_kernel_for_dispatch_key(
        "spmctl::membrane_fwd", "CUDA")
    if info["backend"] == "fused":
        devices = [(torch.device("cpu"), torch.float32)]
        for gpu in _gpus() if info["cuda_kernels"] else []:
            device = torch.device("cuda", gpu["index"])
            devices += [(device, torch.float32), (device, torch.float16)]
            devices += [(device, torch.bfloat16)] if gpu["bf16"] else []
        for device, dtype in devices:
            selfcheck.check(device, dtype)
    info["self_check"] = selfcheck.results()
    return info


def _free(path: Path) -> dict[str, Any]:
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return {"path": str(path), "free_gib": round(shutil.disk_usage(probe).free / 2**30, 1)}


def _plugins() -> list[dict[str, Any]]:
    from .. import plugins

    return [{"name": p.name, "package": p.package, "version": p.version, "builtin": p.builtin,
             "status": "failed: " + p.error if p.error else "loaded"} for p in plugins.plugin_infos()]


def report(build: bool = False, output_dir: Path = Path(".")) -> dict[str, Any]:
    import torch
    from huggingface_hub import constants

    from ..ops import build as ops_build
    from ..version import __version__

    kernel = _kernel(build)
    return {
        "spmctl": __version__, "python": platform.python_version(), "platform": platform.platform(),
        "torch": torch.__version__, "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.version.cuda else None,
        "gpus": _gpus(), "compiler": _compilers(), "kernel": kernel, "plugins": _plugins(),
        "hub_cache": str(constants.HF_HUB_CACHE),
        "disk": {"kernel_build": _free(ops_build.build_root()), "hub_cache": _free(Path(constants.HF_HUB_CACHE)),
                 "outputs": _free(output_dir.resolve())},
    }


def _print(rep: dict[str, Any]) -> None:
    k, c = rep["kernel"], rep["compiler"]
    gpus = "; ".join(f"{g['index']}: {g['name']} (sm_{g['capability'].replace('.', '')}, {g['memory_gib']} GiB)"
                     for g in rep["gpus"]) or "none visible"
    lines = [
        ("spmctl", f"{rep['spmctl']} (Python {rep['python']}, {rep['platform']})"),
        ("torch", f"{rep['torch']}, CUDA {rep['torch_cuda'] or 'none (CPU build)'}"),
        ("GPUs", gpus),
        ("C++ compiler", f"{c['cxx'] or 'not found'}" + (f" ({c['cxx_version']})" if c["cxx_version"] else "")),
        ("nvcc", f"{c['nvcc']} ({c['nvcc_version']})" if c["nvcc"] else "not found (no CUDA kernels)"),
        ("ninja", c["ninja"] or "not found (pip install ninja)"),
        ("kernel", f"{k['backend']}" + (f" ({k['reason']})" if k.get("reason") else "")
         + (", prebuilt" if k["prebuilt"] else "") + (", with CUDA kernels" if k["cuda_kernels"] else "")),
        ("kernel build", k["build_dir"] + ("" if k["built"] else " (not built)")),
        ("nvcc archs", " ".join(f.split("code=")[-1] for f in k["nvcc_arch_flags"] if "code=" in f) or "-"),
        ("self-check", ", ".join(f"{d}: {s}" for d, s in k["self_check"].items()) or "not run"),
        ("plugins", ", ".join(f"{p['name']} ({p['status']})" for p in rep["plugins"]) or "none"),
        ("hub cache", rep["hub_cache"]),
        ("free disk", ", ".join(f"{n.replace('_', ' ')} {d['free_gib']} GiB" for n, d in rep["disk"].items())),
    ]
    for label, value in lines:
        typer.echo(f"{label:<13} {value}")


def doctor(
    build: Annotated[bool, typer.Option("--build", help="Build the fused kernel now, with progress "
                                        "(install.sh runs this), then check it.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object (for bug reports).")] = False,
    output_dir: Annotated[Path, typer.Option("--output-dir", "-o", help="Where outputs will go, for the "
                                             "free-space line.")] = Path("."),
) -> None:
    """Show torch, CUDA, GPUs, compilers, the membrane kernel and its self-check, plugins and disk space."""
    from ..errors import SpmctlError, one_line

    try:
        rep = report(build, output_dir)
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        raise SpmctlError(f"the membrane kernel did not build: {one_line(exc, limit=300, last=True)}") from exc
    if as_json:
        typer.echo(json.dumps(rep, indent=2))
    else:
        _print(rep)
