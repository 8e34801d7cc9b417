"""`spmctl train`'s loop: set up, iterate, log, checkpoint, resume, save on Ctrl-C."""

from __future__ import annotations

import contextlib
import json
import re
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import yaml
from rich.console import Console

from ..config.train import TrainConfig
from ..errors import SpmctlError
from .checkpoint import atomic_write, load_state, save_state, state_path, write_text_atomic
from .objective import Embeds, SPMObjective
from .optim import build_lr_scheduler, build_optimizer, check_optimizer_args
from .prompts import concept_names, resolve_prompt_settings

if TYPE_CHECKING:
    from ..scale.ddp import DataParallel


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:60] or "spm"


def pick_device(devices: str, warn: Any) -> str:
    """The run's device. Several listed devices are not silently truncated: the user is told."""
    listed = [d for d in devices.split(",") if d]
    if listed == ["cpu"] or not torch.cuda.is_available():
        if listed != ["cpu"]:
            warn(f"devices {devices!r}: CUDA is not available here; training on the CPU")
        return "cpu"
    if len(listed) > 1:
        warn(f"devices {devices!r}: one membrane trains on one device; using cuda:{listed[0]}. "
             "To use every device, pass --ddp (this membrane data-parallel over all of them) or "
             "--sweep (one concept per device).")
    return f"cuda:{listed[0]}"


class _Logger:
    """JSON lines on disk, optional W&B."""

    def __init__(self, path: Path, cfg: TrainConfig, warn: Any, resume: bool) -> None:
        self.path = path
        self.file = path.open("a" if resume else "w", encoding="utf-8")
        self.wandb = None
        if cfg.wandb_project or (cfg.logging is not None and cfg.logging.use_wandb):
            try:
                import wandb
            except ImportError:
                warn("wandb_project is set but wandb is not installed: not logging to W&B "
                     "(pip install 'spmctl[wandb]')")
            else:
                self.wandb = wandb.init(project=cfg.wandb_project, name=cfg.wandb_run,
                                        config=cfg.model_dump(mode="json"), resume="allow")

    def log(self, record: dict[str, Any]) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])

    def close(self) -> None:
        self.file.close()
        if self.wandb is not None:
            self.wandb.finish()


def _embeds(model: Any, settings: list[Any], clip_skip: int) -> list[Embeds]:
    from ..models.text import encode_prompts

    out = []
    for s in settings:
        texts = [s.unconditional, s.target, s.positive, s.neutral]
        e = encode_prompts(model.tokenizer, model.text_encoder, texts, clip_skip)
        out.append(Embeds(s, *(e[i:i + 1] for i in range(4))))
    return out


def check_inputs(model: Any, settings: list[Any], device: str, warn: Any) -> None:
    """Say what long prompts lose; refuse a resolution or batch that cannot fit on `device`."""
    from ..models.memory import check_fits
    from ..models.text import warn_truncated

    texts = [t for s in settings for t in (s.target, s.positive, s.neutral, s.unconditional)]
    warn_truncated(model.tokenizer, texts, warn)
    for s in settings:
        check_fits(model, s.batch_size, s.resolution, s.resolution, device,
                   f"prompt.resolution = {s.resolution} with prompt.batch_size = {s.batch_size}")


def run_training(cfg: TrainConfig, console: Console | None = None, quiet: bool = False,
                 ddp: DataParallel | None = None, resume_hint: str = "continue with --resume") -> Path:
    """Train; returns the path of `<name>_last.safetensors`.

    `ddp`: this process is one rank of a data-parallel run (spmctl.scale); only rank 0 writes.
    `resume_hint`: how the user continues after Ctrl-C (a sweep just runs its command again)."""
    from ..membrane import MembraneNetwork, save_membrane
    from ..models.loading import load_sd_model, make_scheduler, torch_dtype

    main = ddp is None or ddp.is_main
    quiet = quiet or not main
    console = console if console is not None and main else Console(stderr=True, quiet=quiet)

    def warn(msg: str) -> None:
        if main:  # every rank reads the same config: one copy of each warning is enough
            print(f"warning: {msg}", file=sys.stderr)

    settings = resolve_prompt_settings(cfg, warn)
    check_optimizer_args(cfg.train)  # before the model loads and before output_dir is made
    concepts = concept_names(settings)
    if cfg.train.text_encoder_lr is not None and cfg.verbose:
        console.print("train.text_encoder_lr is unused: the text encoder has no membrane")
    if any(cfg.train.batch_size != s.batch_size for s in settings):
        # as in the original code, each prompt setting's batch_size is what a step draws
        warn(f"train.batch_size = {cfg.train.batch_size} is not used: prompt.batch_size "
             f"({', '.join(str(s.batch_size) for s in settings)}) sets the batch of each step")
    device = pick_device(cfg.devices, warn)
    name = cfg.save.name or slug("_".join(concepts))
    out_dir = Path(cfg.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    resume_file = state_path(out_dir, name)

    def read_resume_state() -> dict[str, Any] | None:
        if resume_file.exists() and not cfg.resume:
            raise SpmctlError(f"{out_dir}: holds a run of {name!r} already; pass --resume to continue it, "
                              "or choose another output_dir")
        return load_state(resume_file) if cfg.resume and resume_file.exists() else None

    # DDP: rank 0 reads it and every rank gets the same state (other nodes may not see rank 0's disk)
    state = ddp.from_main(read_resume_state) if ddp is not None else read_resume_state()
    if ddp is not None and main and (note := ddp.batch_note(settings)):
        warn(note)

    torch.manual_seed(cfg.seed)
    model = load_sd_model(cfg.pretrained_model.ckpt_path, v2=cfg.pretrained_model.v2,
                          v_pred=cfg.pretrained_model.v_pred, dtype=cfg.train.precision, device=device,
                          config=cfg.pretrained_model.config)
    check_inputs(model, settings, device, warn)
    if cfg.other.use_xformers:
        _enable_xformers(model.unet, warn)
    network = MembraneNetwork(model.unet, rank=cfg.network.rank, alpha=cfg.network.alpha, num_membranes=1)
    network.to(device=device)  # the membrane itself stays fp32 whatever train.precision is
    params = network.trainable_parameters()
    optimizer = build_optimizer(params, cfg.train)
    lr_scheduler = build_lr_scheduler(optimizer, cfg.train)
    gen = torch.Generator().manual_seed(cfg.seed)
    objective = SPMObjective(
        model.unet, network,
        lambda: make_scheduler(cfg.train.noise_scheduler, model.scheduler_config, cfg.pretrained_model.v_pred),
        cfg.train.max_denoising_steps, model.vae_scale_factor)
    embeds = _embeds(model, settings, cfg.pretrained_model.clip_skip)
    if ddp is not None:  # identical start on every rank; each computes its slice of every batch
        ddp.broadcast_(params)
        objective.shard = ddp.shard

    start = 0
    if state is not None:
        network.load_state_dict_for(0, state["membrane"])
        optimizer.load_state_dict(state["optimizer"])
        lr_scheduler.load_state_dict(state["lr_scheduler"])
        gen.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        start = int(state["step"])
        console.print(f"resuming {name!r} from step {start}")
    elif cfg.resume:
        warn(f"--resume: no saved state in {out_dir}; starting from step 0")

    if main:
        write_text_atomic(out_dir / "config.yaml", yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    logger = _Logger(out_dir / "log.jsonl", cfg, warn, resume=start > 0) if main else _null_logger()
    meta = {"rank": cfg.network.rank, "alpha": cfg.network.alpha, "concepts": concepts}

    def save_membrane_file(path: Path) -> None:
        if not main:
            return
        save_membrane(path, network.state_dict_for(0), prompts=concepts, rank=cfg.network.rank,
                      alpha=cfg.network.alpha, dtype=torch_dtype(cfg.save.precision),
                      extra_metadata={"spmctl_base_model": model.source})

    def checkpoint(step: int) -> None:
        if not main:
            return
        save_state(resume_file, step=step, membrane=network.state_dict_for(0), optimizer=optimizer,
                   lr_scheduler=lr_scheduler, generator=gen, extra=meta)

    step = start
    started = time.perf_counter()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)
    with _progress(console, quiet) as progress, _deferred_interrupt() as stop:
        task = progress.add_task("training", total=cfg.train.iterations, completed=start,
                                 loss=0.0, la=0.0, lr=0.0)
        while step < cfg.train.iterations:
            setting = embeds[int(torch.randint(len(embeds), (1,), generator=gen))]
            optimizer.zero_grad(set_to_none=True)
            loss, terms = objective.loss(setting, gen)
            finite = ddp.all_finite(loss) if ddp is not None else bool(torch.isfinite(loss))
            if not finite:  # before the update, so the saved membrane is still good
                checkpoint(step)
                raise SpmctlError(f"loss became {float(loss)} at step {step + 1}; stopped before updating "
                                  "(lower train.lr or prompt.la_strength); state saved, --resume continues")
            loss.backward()
            if ddp is not None:  # every rank steps with the whole batch's gradient
                terms, stop_any = ddp.average(params, terms, stop.requested)
                stop.requested = stop.requested or stop_any
            if cfg.train.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.train.max_grad_norm)
            optimizer.step()
            lr = lr_scheduler.get_last_lr()[0]
            lr_scheduler.step()
            step += 1
            logger.log({"step": step, **terms, "lr": lr, "target": setting.settings.target})
            progress.update(task, advance=1, loss=terms["erase_loss"], la=terms["anchor_loss"], lr=lr)
            if stop.requested:  # Ctrl-C: save at this step boundary, where the state is consistent
                checkpoint(step)
                save_membrane_file(out_dir / f"{name}_{step}steps.safetensors")
                logger.close()
                progress.stop()
                print(f"interrupted at step {step}: saved; {resume_hint}", file=sys.stderr)
                raise SystemExit(130)
            if step % cfg.save.per_steps == 0 and step < cfg.train.iterations:
                save_membrane_file(out_dir / f"{name}_{step}steps.safetensors")
                checkpoint(step)
    elapsed = time.perf_counter() - started
    last = out_dir / f"{name}_last.safetensors"
    save_membrane_file(last)
    checkpoint(step)
    logger.close()
    if main:  # under DDP only rank 0 wrote `last`
        summary = {"name": name, "concepts": concepts, "iterations": step, "seconds": elapsed,
                   "seconds_per_iteration": elapsed / max(1, step - start), "device": device,
                   "peak_memory_bytes": _peak_memory(device), "adapter_bytes": last.stat().st_size,
                   "processes": ddp.world_size if ddp is not None else 1}
        write_text_atomic(out_dir / "summary.json", json.dumps(summary, indent=2))
        console.print(f"saved {last}")
        print(str(last))
    return last


def _null_logger() -> Any:
    from ..scale.ddp import NullLogger

    return NullLogger()


class _StopRequest:
    requested = False


@contextlib.contextmanager
def _deferred_interrupt():
    """The first Ctrl-C asks the loop to stop at the next step boundary (so what is saved is
    consistent); a second one interrupts at once."""
    stop = _StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum: int, frame: Any) -> None:
        if stop.requested:
            raise KeyboardInterrupt
        stop.requested = True

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)




def _peak_memory(device: str) -> int:
    if device.startswith("cuda"):
        return int(torch.cuda.max_memory_allocated(device))
    try:
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
    except ImportError:  # pragma: no cover - not on Linux
        return 0


def _enable_xformers(unet: Any, warn: Any) -> None:
    try:
        import xformers  # noqa: F401
    except ImportError:
        warn("other.use_xformers is set but xformers is not installed: using PyTorch SDPA attention")
        return
    unet.enable_xformers_memory_efficient_attention()


def _progress(console: Console, quiet: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4g}  la {task.fields[la]:.3g}  lr {task.fields[lr]:.2e}"),
        _speed_column(),
        TimeRemainingColumn(), console=console, disable=quiet, transient=False,
    )


def _speed_column():
    from rich.progress import ProgressColumn
    from rich.text import Text

    class SpeedColumn(ProgressColumn):
        def render(self, task: Any) -> Text:
            return Text(f"{task.speed:.2f} it/s" if task.speed else "-- it/s")

    return SpeedColumn()


__all__ = ["run_training", "atomic_write"]
