"""Decide which torch build install.sh installs, by asking pip what it would pick.

Prints the `pip install` arguments for torch on stdout, one per line; diagnostics go to stderr.
Standard library only: it runs before anything else is installed.

With an NVIDIA GPU: `torch>=2.4` from the configured indexes (PyPI's newest CUDA build).
CPU only: PyPI's Linux wheels pull several GB of CUDA libraries (`nvidia-*`), so each candidate
below is resolved with `pip install --dry-run --report` and the first whose report installs no
CUDA package wins:
  1. `torch>=2.4` from the configured indexes (a CPU build already on macOS/Windows, or where
     pip is set up with a CPU index or a local CPU wheel);
  2. the newest `+cpu` release the configured indexes plus the CPU index (`--cpu-index`,
     default https://download.pytorch.org/whl/cpu; "" for none) offer.
Nothing is pinned: the newest CPU build found wins. Exit 1 when no CPU build resolves, 3 when
moreover an index could not be reached (offline, or the CPU index is blocked).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CPU_INDEX = "https://download.pytorch.org/whl/cpu"
MIN_TORCH = (2, 4)
# what a CUDA build of torch drags in; a CPU build needs none of them
CUDA_PACKAGE = re.compile(r"^(nvidia[-_]|cuda[-_]|triton$)", re.IGNORECASE)
# pip's words when an index cannot be reached (the caller may want to tell "offline" apart)
NETWORK_ERROR = re.compile(r"NewConnectionError|Name or service not known|Network is unreachable|"
                           r"Temporary failure in name resolution|ConnectTimeout|ProxyError")


def has_nvidia_gpu() -> bool:
    smi = shutil.which("nvidia-smi")
    if not smi:
        return False
    try:
        return subprocess.run([smi, "-L"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def cuda_packages(report: dict) -> list[str]:
    """Names of CUDA packages a `pip install --report` would install."""
    names = [item["metadata"]["name"] for item in report.get("install", [])]
    return sorted(n for n in names if CUDA_PACKAGE.match(n))


def dry_run(python: str, pip_args: list[str]) -> tuple[dict | None, str]:
    """pip's report for installing `pip_args` into an empty environment, or None and pip's stderr."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        proc = subprocess.run([python, "-m", "pip", "install", "--dry-run", "--ignore-installed", "-q",
                               "--report", str(report), *pip_args], capture_output=True, text=True)
        if proc.returncode != 0 or not report.exists():
            return None, proc.stderr
        return json.loads(report.read_text()), proc.stderr


def release(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("+")[0].split("."))


def cpu_versions(python: str, index_args: list[str], errors: list[str]) -> list[str]:
    """`+cpu` torch releases >= MIN_TORCH the indexes offer (pip's stderr appended to `errors`)."""
    proc = subprocess.run([python, "-m", "pip", "index", "versions", "torch", *index_args],
                          capture_output=True, text=True)
    errors.append(proc.stderr)
    match = re.search(r"^Available versions: (.*)$", proc.stdout, re.MULTILINE)
    if not match:
        return []
    found = []
    for version in (v.strip() for v in match.group(1).split(",")):
        release = re.match(r"^(\d+)\.(\d+)(?:\.\d+)*\+cpu$", version)
        if release and (int(release.group(1)), int(release.group(2))) >= MIN_TORCH:
            found.append(version)
    return found


def choose(python: str, gpu: bool, cpu_index: str, extra: list[str]) -> tuple[list[str], str]:
    """(pip arguments for torch, why); ([], why) when no CPU build resolves."""
    default = [f"torch>={MIN_TORCH[0]}.{MIN_TORCH[1]}", *extra]
    if gpu:
        return default, "NVIDIA GPU found: the newest CUDA build"
    errors = []
    report, err = dry_run(python, default)
    if report is not None and not cuda_packages(report):
        return default, "the configured package indexes give a CPU build"
    errors.append(err)
    # a release the configured indexes offer installs without the CPU index (which may be
    # unreachable from here: pip would retry it for every dependency)
    local = cpu_versions(python, extra, errors)
    remote = cpu_versions(python, [*extra, "--extra-index-url", cpu_index], errors) if cpu_index else []
    for version in sorted(set(local) | set(remote), key=release, reverse=True)[:3]:
        index_args = extra if version in local else [*extra, "--extra-index-url", cpu_index]
        candidate = [f"torch=={version}", *index_args]
        report, err = dry_run(python, candidate)
        if report is not None and not cuda_packages(report):
            return candidate, f"CPU build {version}"
        errors.append(err)
    offline = any(NETWORK_ERROR.search(e) for e in errors)
    return [], ("no CPU build of torch found" + (" (a package index could not be reached)" if offline else ""))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--cpu", action="store_true", help="decide as on a CPU-only machine")
    which.add_argument("--gpu", action="store_true", help="decide as on a machine with an NVIDIA GPU")
    parser.add_argument("--cpu-index", default=os.environ.get("SPMCTL_TORCH_INDEX", CPU_INDEX),
                        help="index of CPU builds to try when the configured ones give CUDA ('' for none)")
    parser.add_argument("--python", default=sys.executable, help="the interpreter whose pip decides")
    parser.add_argument("pip_args", nargs="*", help="extra pip options, after --")
    args = parser.parse_args(argv)
    gpu = args.gpu or (not args.cpu and has_nvidia_gpu())
    chosen, why = choose(args.python, gpu, args.cpu_index, args.pip_args)
    if not chosen:
        print(f"install.sh: {why} for this CPU-only machine; install one first, e.g. "
              f"`pip install torch --index-url {CPU_INDEX}`, then run install.sh again", file=sys.stderr)
        return 3 if "could not be reached" in why else 1
    print(f"install.sh: torch: {why}", file=sys.stderr)
    print("\n".join(chosen))
    return 0


if __name__ == "__main__":
    sys.exit(main())
