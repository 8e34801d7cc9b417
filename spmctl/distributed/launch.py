"""`spmctl train` across processes: sweeps, concept-parallel and data-parallel (DDP) runs.

Two ways in, one worker:
- launched by torchrun / accelerate (WORLD_SIZE > 1 in the environment), on one or many nodes:
  this process *is* a rank; it joins the process group from the environment and works;
- `--devices 0,1,...` (or `cpu,cpu` for CPU processes) with a sweep or `--ddp` on one machine: we
  start one process per device through torch's own elastic launcher (what torchrun runs), so
  process management and rendezvous stay torch's.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import SpmctlError, config_error, error_line
from . import dist
from .sweep import SweepSpec, exit_code, print_summary, run_sweep, sweep_concepts

if TYPE_CHECKING:
    from ..config.train import TrainConfig

INTERRUPTED = 130  # the exit code of a run stopped by Ctrl-C (128 + SIGINT)


def needs_scale_out(cfg: TrainConfig, spec: SweepSpec | None) -> bool:
    """Whether `spmctl train` goes through here rather than straight to `run_training`."""
    return bool(spec and spec.given) or cfg.distributed == "ddp" or dist.launched_by_torchrun()


def train_scaled(cfg: TrainConfig, spec: SweepSpec | None, quiet: bool = False) -> int:
    """Run a sweep and/or several processes; returns the exit code (non-zero if any concept failed)."""
    from ..console import stderr_console

    spec = spec if spec is not None and spec.given else None
    if dist.launched_by_torchrun():  # we are one of torchrun's processes: rank 0 reports
        return _worker(cfg, spec, quiet, dist.dist_env().is_main)
    devices = dist.listed_devices(cfg.devices)
    nproc = len(devices)
    if spec is not None and cfg.distributed != "ddp":  # concept-parallel: no idle processes
        from .sweep_state import still_to_do

        nproc = min(nproc, len(still_to_do(Path(cfg.output_dir), sweep_concepts(spec, cfg)[1])))
    if nproc <= 1:
        if cfg.distributed == "ddp" and len(devices) <= 1:
            print("warning: --ddp with one device: nothing to split; training in this process", file=sys.stderr)
        return _worker(cfg, spec, quiet, True)
    codes = launch_local(nproc, _worker, cfg, spec, quiet, False)
    if INTERRUPTED in codes.values():
        print("interrupted: progress is saved; run the same command again to continue", file=sys.stderr)
        return INTERRUPTED
    if spec is not None:  # the workers wrote the sweep state; this process, the one the user sees, reports
        from .sweep_state import read_entries

        names = sweep_concepts(spec, cfg)[1]
        entries = read_entries(Path(cfg.output_dir))
        print_summary(names, entries, stderr_console(quiet))
        return max(exit_code(names, entries), *codes.values())
    return max(codes.values())


def launch_local(nproc: int, fn: Callable[..., Any], *args: Any) -> dict[int, Any]:
    """Run `fn(*args)` in `nproc` processes on this machine with torch's elastic launcher (torchrun's
    engine: it sets RANK/WORLD_SIZE/MASTER_* and picks a free port); returns each rank's result."""
    import dataclasses

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    options: dict[str, Any] = {}
    if "signals_to_handle" in {f.name for f in dataclasses.fields(LaunchConfig)}:  # newer torch only
        options["signals_to_handle"] = "SIGTERM,SIGHUP,SIGQUIT"  # Ctrl-C: see below
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=f"spmctl-{uuid.uuid4().hex}",
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, start_method="spawn",
                          **options)
    # Ctrl-C reaches the workers too (one process group): each saves at its next step boundary and
    # stops. The launcher ignores it and waits for them; forwarding a second SIGINT would make the
    # workers stop at once, without saving.
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main_thread else None
    try:
        return elastic_launch(config, fn)(*args)
    except ChildFailedError as exc:
        codes = {rank: f.exitcode for rank, f in sorted(exc.failures.items())}
        if set(codes.values()) <= {INTERRUPTED, -signal.SIGINT}:  # a second Ctrl-C
            error = SpmctlError("interrupted: run the same command again to continue")
            error.exit_code = INTERRUPTED
            raise error from None
        failed = ", ".join(f"rank {rank} (exit code {code})" for rank, code in codes.items())
        raise SpmctlError(f"a training process failed: {failed}; its error is above") from None
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def _worker(cfg: TrainConfig, spec: SweepSpec | None, quiet: bool, report: bool) -> int:
    """One process's work (rank 0 of 1 when nothing is distributed); returns its exit code."""
    from ..console import quiet_mode, stderr_console

    if quiet:  # before torch loads (its C++ log level is read then); a spawned worker inherits no filters
        quiet_mode()
    import torch

    from ..sampling.preview import write_previews
    from ..training.run import run_training
    from .ddp import DataParallel

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)  # our launcher ignored it for itself
    env = dist.dist_env()
    device = dist.local_device(cfg.devices, env)
    cfg = cfg.model_copy(update={"devices": device})
    ddp_mode = cfg.distributed == "ddp" and env.distributed
    if env.distributed and device == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // env.local_world_size))  # share the cores
    console = stderr_console(quiet or not env.is_main)
    try:
        dist.init(device, collectives_on_device=ddp_mode)
        ddp = DataParallel(env) if ddp_mode else None
        if spec is None:
            if env.distributed and ddp is None:
                raise config_error(f"{env.world_size} processes but one concept: pass --ddp "
                                   "(distributed: ddp) to train it data-parallel, or --sweep for one concept each")
            run_training(cfg, console=console, quiet=quiet, ddp=ddp, previewer=write_previews)
            # rank 0 still writes the final files: tearing the group down under it made gloo abort
            # the other rank now and then ("terminate called without an active exception")
            dist.barrier()
            return 0
        names, entries = run_sweep(cfg, spec, env, console, quiet, ddp)
        if report:
            print_summary(names, entries, stderr_console(quiet))
        return exit_code(names, entries)
    except SpmctlError as exc:
        # the same error on every rank is said once; a sweep's rank says its own errors
        if env.is_main or (spec is not None and not ddp_mode):
            prefix = f"[rank {env.rank}] " if env.distributed and not env.is_main else ""
            print(prefix + error_line(exc), file=sys.stderr)
        return exc.exit_code
    except (SystemExit, KeyboardInterrupt) as exc:  # Ctrl-C: state saved; a return, not a crashed worker
        code = exc.code if isinstance(exc, SystemExit) else 130
        return code if isinstance(code, int) else 1
    finally:
        dist.shutdown()
