"""Stopping a real `spmctl` run part-way, as a user's Ctrl-\\ or a lost node would: SIGKILL to the
command and every process it started (torchrun's workers included), once a file shows how far it got."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from conftest import SPMCTL

TORCHRUN = (sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone", "--no-python")


def run_until(args: list[str], env: dict[str, str], ready: Callable[[], bool],
              launcher: tuple[str, ...] = ()) -> int | None:
    """Start the command, SIGKILL it (and every process it started) as soon as `ready()` is true;
    the exit code if it ended first."""
    full = {**os.environ, "PYTHONUNBUFFERED": "1", **env}
    proc = subprocess.Popen([*launcher, str(SPMCTL), *args], env=full, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        if ready():
            for pid in [proc.pid, *descendants(proc.pid)]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            proc.wait()
            return None
        time.sleep(0.02)
    return proc.wait()


def descendants(pid: int) -> list[int]:
    """Every process below `pid`, from /proc (torchrun puts its workers in sessions of their own, so
    killing its process group would leave them running)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        below = children.get(todo.pop(), [])
        found += below
        todo += below
    return found
