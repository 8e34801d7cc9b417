"""Who this process is in a multi-process run, and the few collectives spmctl needs.

Process management and rendezvous are torch's: torchrun, accelerate or our own
launcher (torch's elastic agent, see `launch.py`) set RANK, WORLD_SIZE,
LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT; here we only read
them and call `init_process_group` from the environment.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

from ..errors import ConfigError, SpmctlError, one_line

T = TypeVar("T")

# Coordination-only groups (concept sweeps, sharded sampling) wait at their final barrier for the
# slowest rank, which may still be training hours later; torch's default (10-30 min) would fire.
COORDINATION_TIMEOUT = timedelta(days=7)

# Set while a command of several stages holds one group for all of them (see `held`).
_held = False


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    # the coordination `spmctl.sampling.shard.Ranks` asks for (sampling cannot import this package)
    def join(self) -> None:
        """Join the process group for coordination only: barriers, gloo on the CPU, a long timeout."""
        init("cpu", collectives_on_device=False)

    def barrier(self) -> None:
        barrier()

    def leave(self) -> None:
        shutdown()


def dist_env() -> DistEnv:
    """This process's place in the run, from the launcher's environment variables (one process if unset)."""

    def read(name: str, default: int) -> int:
        value = os.environ.get(name, "").strip()
        if not value:
            return default
        try:
            return int(value)
        except ValueError:
            raise ConfigError(f"environment variable {name}={value!r} is not an integer") from None

    world = read("WORLD_SIZE", 1)
    # LOCAL_WORLD_SIZE only steers the device mapping; launchers that omit it get one GPU per local rank
    env = DistEnv(read("RANK", 0), world, read("LOCAL_RANK", 0), read("LOCAL_WORLD_SIZE", world))
    if not (0 <= env.rank < env.world_size):
        raise ConfigError(f"RANK={env.rank} is outside WORLD_SIZE={env.world_size}")
    return env


def launched_by_torchrun() -> bool:
    return dist_env().distributed


def listed_devices(devices: str) -> list[str]:
    listed = [d.strip() for d in devices.split(",") if d.strip()]
    if "cpu" in listed and any(d != "cpu" for d in listed):
        raise ConfigError(f"devices {devices!r}: list CUDA indices or 'cpu' entries, not both")
    return listed


def local_device(devices: str, env: DistEnv) -> str:
    """This process's device, as a one-device `devices` value ("cpu" or a CUDA index).

    Our launcher starts one process per listed device, so local rank i takes the i-th entry.
    Under torchrun with fewer entries than processes per node (e.g. the default "0"), local rank i
    takes cuda:i, the usual one-GPU-per-process layout.
    """
    listed = listed_devices(devices)
    if listed and listed[0] == "cpu":
        return "cpu"
    if len(listed) >= env.local_world_size:
        return listed[env.local_rank]
    return str(env.local_rank)


def is_cuda(device: str) -> bool:
    import torch

    return device != "cpu" and torch.cuda.is_available()


def init(device: str, *, collectives_on_device: bool) -> None:
    """Join the process group torchrun set up (no-op in a one-process run or when already joined).

    `collectives_on_device`: gradients are reduced on this device (DDP), so CUDA uses NCCL.
    Coordination alone (barriers, small objects) always uses gloo on the CPU, with a long timeout.
    """
    import torch
    import torch.distributed as dist

    if not dist_env().distributed or dist.is_initialized():
        return
    if is_cuda(device):
        torch.cuda.set_device(int(device))  # before init: NCCL binds each rank to its current device
    if collectives_on_device:
        dist.init_process_group("nccl" if is_cuda(device) else "gloo")
    else:
        dist.init_process_group("gloo", timeout=COORDINATION_TIMEOUT)


@contextmanager
def held() -> Iterator[None]:
    """One coordination group (gloo, CPU) for every stage of a command run under torchrun, such as
    `spmctl benchmark`: the stages' own `init`/`shutdown` then leave it alone.

    Why: torch cannot join a default group again in the same process once one was destroyed (the new
    group reuses the old one's rendezvous keys in the launcher's store; gloo then dials stale addresses).
    A no-op in a one-process run."""
    global _held
    if not dist_env().distributed:
        yield
        return
    init("cpu", collectives_on_device=False)
    _held = True
    try:
        yield
    finally:
        _held = False
        shutdown()


def shutdown() -> None:
    import torch.distributed as dist

    if dist.is_initialized() and not _held:
        dist.destroy_process_group()
        # free what still refers to the group (gloo work objects) while the interpreter is whole,
        # not during its finalisation
        gc.collect()


def active() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    import torch.distributed as dist

    if active():
        dist.barrier()


def from_main(fn: Callable[[], T]) -> T:
    """Run `fn` on rank 0 only and hand every rank its result, or make every rank raise its error.

    For decisions that read files (resume state, the sweep state): rank 0's disk is the one that
    counts, other nodes may not share it, and ranks must never disagree (a rank that raised alone
    would leave the others waiting in the next collective).
    """
    import torch.distributed as dist

    if not active():
        return fn()
    box: list[Any] = [None]
    error: BaseException | None = None
    if dist.get_rank() == 0:
        try:
            box = [("ok", fn())]
        except SpmctlError as exc:
            box = [("error", exc)]
        except Exception as exc:  # re-raised below on rank 0 with its traceback; others get one line
            error = exc
            box = [("error", SpmctlError(f"rank 0 failed: {one_line(exc, with_type=True)}"))]
    dist.broadcast_object_list(box, src=0)
    status, value = box[0]
    if error is not None:
        raise error
    if status == "error":
        raise value
    return value
