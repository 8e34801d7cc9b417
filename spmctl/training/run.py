"""`spmctl train`'s loop: set up, iterate, log, checkpoint, resume, save on Ctrl-C."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import yaml
from rich.console import Console

from ..config.train import TrainConfig
from ..errors import SpmctlError
from ..fileio import write_text_atomic
from ..names import run_slug
from .checkpoint import all_finite, load_state, save_state
from .folder import RunFolder
from .objective import Embeds, SPMObjective
from .optim import build_lr_scheduler, build_optimizer, check_optimizer_args
from .original import membrane_dtypes, scheduler_config
from .parallel import batch_note
from .prompts import concept_names, resolve_prompt_settings
from .resume import check_resumable, run_settings
from .signals import EXIT_CODES, QuitNow, deferred_stop

if TYPE_CHECKING:
    from .parallel import Parallel


def pick_device(devices: str, warn: Any) -> str:
    """The run's device. Several listed devices are not silently truncated: the user is told."""
    listed = [d for d in devices.split(",") if d]
    if all(d == "cpu" for d in listed) or not torch.cuda.is_available():
        if any(d != "cpu" for d in listed):
            warn(f"devices {devices!r}: CUDA is not available here; training on the CPU")
        elif len(listed) > 1:
            warn(f"devices {devices!r}: one membrane trains on one device; using the first (cpu). "
                 "To use every device, pass --ddp (this membrane data-parallel over all of them) or "
                 "--sweep (one concept per device).")
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
    out = []
    for s in settings:
        texts = [s.unconditional, s.target, s.positive, s.neutral]
        cond = model.family.encode(model, texts, clip_skip=clip_skip)
        out.append(Embeds(s, *(cond[i] for i in range(4))))
    return out


def check_inputs(model: Any, settings: list[Any], device: str, warn: Any, train: Any = None) -> None:
    """Say what long prompts lose; refuse a resolution or batch that cannot fit on `device`."""
    from ..models.memory import check_fits

    texts = [t for s in settings for t in (s.target, s.positive, s.neutral, s.unconditional)]
    model.family.warn_truncated(model, texts, warn)
    for s in settings:
        # the membrane-ON pass, which keeps its activations for the backward: the latents and the anchors
        anchors = s.sampling_batch_size if s.action == "erase_with_la" else 0
        check_fits(model, s.batch_size + anchors, s.resolution, s.resolution, device,
                   f"prompt.resolution = {s.resolution} with prompt.batch_size = {s.batch_size}", training=True,
                   checkpointing=bool(train and train.gradient_checkpointing),
                   offload=bool(train is None or train.offload_text_encoders))


# draws `save.sample_every_n_steps` previews: (model, membrane, cfg, targets, folder, name, step) ->
# (files, seconds); `spmctl.sampling.preview.write_previews`, handed down by the callers above training
Previewer = Callable[..., tuple[list[Path], float]]


def run_training(cfg: TrainConfig, console: Console | None = None, quiet: bool = False,
                 ddp: Parallel | None = None, resume_hint: str = "continue with --resume",
                 previewer: Previewer | None = None) -> Path:
    """Train; returns the path of `<name>_last.safetensors`.

    `ddp`: this process is one rank of a data-parallel run (spmctl.distributed passes its
    `DataParallel`); only rank 0 writes.
    `resume_hint`: how the user continues after Ctrl-C (a sweep just runs its command again).
    `previewer`: what draws preview images (training itself has no sampler); without one,
    `save.sample_every_n_steps` is refused."""
    if cfg.save.sample_every_n_steps and previewer is None:
        raise SpmctlError("save.sample_every_n_steps: this way of running training draws no previews "
                          "(spmctl train does; from Python pass previewer=spmctl.sampling.preview.write_previews)")
    run = TrainingRun(cfg, console, quiet, ddp, resume_hint)
    run.previewer = previewer
    failed = True
    try:
        run.prepare()
        last = run.train()
        failed = False
        return last
    except SystemExit as exc:  # a stop that saved: resumable
        failed = exc.code not in EXIT_CODES.values()
        raise
    finally:
        run.close(failed)


class TrainingRun:
    """One training run: its folder, model, membrane, optimizer, RNG and the time spent so far.

    `save` is the only writer of checkpoints (every `save.per_steps`, on Ctrl-C/SIGTERM, on a
    non-finite loss, at the end), so what a run leaves behind is decided in one place."""

    def __init__(self, cfg: TrainConfig, console: Console | None, quiet: bool, ddp: Parallel | None,
                 resume_hint: str) -> None:
        self.cfg, self.ddp, self.resume_hint = cfg, ddp, resume_hint
        self.previewer: Previewer | None = None
        self.main = ddp is None or ddp.is_main
        self.quiet = quiet or not self.main
        self.console = console if console is not None and self.main else Console(stderr=True, quiet=self.quiet)
        self.settings = resolve_prompt_settings(cfg, self.warn)
        check_optimizer_args(cfg.train)  # before the model loads and before output_dir is made
        self.concepts = concept_names(self.settings)
        self.name = cfg.save.name or run_slug("_".join(self.concepts))
        self.folder = RunFolder(Path(cfg.output_dir), self.name)
        self.saved_step: int | None = None  # the step of the resume state on disk
        self.parts: list[dict[str, Any]] = []  # earlier parts of a resumed run
        self.part_start, self.part_began = 0, time.perf_counter()

    def warn(self, msg: str) -> None:
        if self.main:  # every rank reads the same config: one copy of each warning is enough
            print(f"warning: {msg}", file=sys.stderr)

    # -- set-up -------------------------------------------------------------------------------
    def prepare(self) -> None:
        from ..families import load_model
        from ..membrane import MembraneNetwork

        cfg = self.cfg
        if cfg.train.text_encoder_lr is not None and cfg.verbose:
            self.console.print("train.text_encoder_lr is unused: the text encoder has no membrane")
        if any(cfg.train.batch_size != s.batch_size for s in self.settings):
            # as in the original code, each prompt setting's batch_size is what a step draws
            self.warn(f"train.batch_size = {cfg.train.batch_size} is not used: prompt.batch_size "
                      f"({', '.join(str(s.batch_size) for s in self.settings)}) sets the batch of each step")
        self.device = pick_device(cfg.devices, self.warn)
        torch.manual_seed(cfg.seed)
        pm = cfg.pretrained_model
        self.model = load_model(pm.ckpt_path, family=pm.family, v2=pm.v2, v_pred=pm.v_pred,
                                dtype=cfg.train.precision, device=self.device, config=pm.config)
        family = self.model.family
        check_inputs(self.model, self.settings, self.device, self.warn, cfg.train)  # refused: nothing was created
        # DDP: rank 0 takes the folder's lock and reads the resume state; every rank gets the same
        # state, or the same one-line refusal (a busy folder), rather than waiting for rank 0 forever
        ddp = self.ddp
        state = ddp.from_main(self._open_folder) if ddp is not None else self._open_folder()
        if state is not None:
            check_resumable(self.folder.state, state["extra"], run_settings(cfg, self.settings))
        if ddp is not None and self.main and (note := batch_note(ddp.world_size, self.settings)):
            self.warn(note)

        if cfg.other.use_xformers:
            _enable_xformers(self.model.denoiser, self.warn)
        if cfg.train.gradient_checkpointing:
            family.enable_gradient_checkpointing(self.model)
        self.network = MembraneNetwork.for_model(self.model, rank=cfg.network.rank, alpha=cfg.network.alpha)
        from ..models.loading import torch_dtype

        train_dtype, self.save_dtype = membrane_dtypes(cfg.train.precision, cfg.save.precision, cfg.compat)
        # by default the membrane itself stays fp32 whatever train.precision is
        self.network.to(device=self.device, dtype=torch_dtype(train_dtype) if train_dtype else None)
        self.params = self.network.trainable_parameters()
        self.optimizer = build_optimizer(self.params, cfg.train, cfg.compat)
        self.lr_scheduler = build_lr_scheduler(self.optimizer, cfg.train)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        model = self.model
        self.objective = SPMObjective(
            model, self.network,
            lambda: family.make_scheduler(model, cfg.train.noise_scheduler,
                                          config=scheduler_config(cfg.compat, model.scheduler_config)),
            cfg.train.max_denoising_steps, cfg.compat)
        self.embeds = _embeds(model, self.settings, cfg.pretrained_model.clip_skip)
        if cfg.train.offload_text_encoders:  # every prompt is encoded: training needs them no more
            family.offload_text_encoders(model)
        if ddp is not None:  # identical start on every rank; each computes its slice of every batch
            ddp.broadcast_(self.params)
            self.objective.shard = ddp.shard

        self.step = 0
        if state is not None:
            self.network.load_state_dict_for(0, state["membrane"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.lr_scheduler.load_state_dict(state["lr_scheduler"])
            self.gen.set_state(state["generator"])
            torch.set_rng_state(state["torch_rng"])
            self.step = self.saved_step = int(state["step"])
            self.parts = list(state["extra"].get("parts") or [])
            self.console.print(f"resuming {self.name!r} from step {self.step}")
        elif cfg.resume:
            self.warn(f"--resume: no saved state of {self.name!r} in {self.folder.path}; starting from step 0")

        if self.main:
            write_text_atomic(self.folder.config, yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
            if self.step:
                self.folder.truncate_log(self.step)  # records past the checkpoint are redone
        self.logger = (_Logger(self.folder.log, cfg, self.warn, resume=self.step > 0) if self.main
                       else _null_logger())

    def _open_folder(self) -> dict[str, Any] | None:
        """Create and lock the run folder, then read the state to resume from (None: a new run)."""
        folder = self.folder
        folder.open()
        if folder.state.exists() and not self.cfg.resume:
            raise SpmctlError(f"{folder.path}: holds a run of {self.name!r} already; pass --resume to continue "
                              "it, or choose another output_dir or save.name")
        if not (self.cfg.resume and folder.state.exists()):
            return None
        folder.adopt_old_layout()
        return load_state(folder.state)

    # -- the loop -----------------------------------------------------------------------------
    def train(self) -> Path:
        cfg, ddp, step = self.cfg, self.ddp, self.step
        self.part_start, self.part_began = step, time.perf_counter()
        if self.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats(self.device)
        with _progress(self.console, self.quiet) as progress, deferred_stop() as stop:
            task = progress.add_task("training", total=cfg.train.iterations, completed=step,
                                     loss=0.0, la=0.0, lr=0.0)
            try:
                while step < cfg.train.iterations:
                    setting = self.embeds[int(torch.randint(len(self.embeds), (1,), generator=self.gen))]
                    self.optimizer.zero_grad(set_to_none=True)
                    loss, terms = self.objective.loss(setting, self.gen)
                    finite = ddp.all_finite(loss) if ddp is not None else bool(torch.isfinite(loss))
                    if not finite:  # before the update, so the membrane is still the last step's
                        self.save(step, membrane=False)
                        raise SpmctlError(f"loss became {float(loss)} at step {step + 1}; stopped before "
                                          "updating (lower train.lr or prompt.la_strength); state saved, "
                                          "--resume continues")
                    loss.backward()
                    if ddp is not None:  # every rank steps with the whole batch's gradient
                        terms, stop.remote = ddp.average(self.params, terms, stop.requested)
                    if cfg.train.max_grad_norm > 0:
                        torch.nn.utils.clip_grad_norm_(self.params, cfg.train.max_grad_norm)
                    self.optimizer.step()
                    lr = self.lr_scheduler.get_last_lr()[0]
                    self.lr_scheduler.step()
                    step += 1
                    record = {"step": step, **terms, "lr": lr, "target": setting.settings.target}
                    if cfg.save.sample_every_n_steps and step % cfg.save.sample_every_n_steps == 0 and self.main:
                        record["preview_seconds"] = self.preview(step)
                    self.logger.log(record)
                    progress.update(task, advance=1, loss=terms["erase_loss"], la=terms["anchor_loss"], lr=lr)
                    if stop.requested:  # at this step boundary the state is consistent
                        self.save(step)
                        stop.saved_at = step
                        progress.stop()
                        print(f"{stop.what} at step {step}: saved; {self.resume_hint}", file=sys.stderr)
                        raise SystemExit(stop.exit_code)
                    if step % cfg.save.per_steps == 0 and step < cfg.train.iterations:
                        self.save(step)
            except QuitNow:
                progress.stop()
                error = SpmctlError(f"interrupted again at step {step}: quit without saving it; {self._kept()}")
                error.exit_code = 130  # as for any Ctrl-C
                raise error from None
        return self.save(step, final=True)

    # -- the one writer -----------------------------------------------------------------------
    def save(self, step: int, *, membrane: bool = True, final: bool = False) -> Path:
        """Write the membrane of `step` (`<name>_<step>steps`, or `<name>_last` when `final`),
        the resume state and, when `final`, the summary. A non-finite membrane or optimizer state
        is never written: the last good state stays the one to resume from."""
        weights = self.network.state_dict_for(0)
        if not all_finite(weights, self.optimizer):  # same answer on every rank: all stop together
            raise SpmctlError(f"the membrane or optimizer state became non-finite by step {step}; not saved "
                              f"(lower train.lr or prompt.la_strength); {self._kept()}")
        path = self.folder.last if final else self.folder.step_file(step)
        if not self.main:
            return path
        parts = self._parts(step)
        cfg = self.cfg
        try:  # the state first: a membrane file is never newer than the state that resumes past it
            extra = {"rank": cfg.network.rank, "alpha": cfg.network.alpha, "concepts": self.concepts,
                     "settings": run_settings(cfg, self.settings), "parts": parts}
            save_state(self.folder.state, step=step, membrane=weights, optimizer=self.optimizer,
                       lr_scheduler=self.lr_scheduler, generator=self.gen, extra=extra)
            self.saved_step = step
            if membrane:
                from ..membrane import save_membrane
                from ..models.loading import torch_dtype

                save_membrane(path, weights, prompts=self.concepts, rank=cfg.network.rank,
                              alpha=cfg.network.alpha, dtype=torch_dtype(self.save_dtype),
                              extra_metadata={"spmctl_base_model": self.model.source,
                                              "spmctl_model_family": self.model.family.name})
            if final:
                self._write_summary(step, parts, path)
        except SpmctlError as exc:
            raise SpmctlError(f"{exc}; {self._kept()}") from None
        return path

    def preview(self, step: int) -> float:
        """Preview images of this step's membrane (`save.sample_every_n_steps`); returns the seconds
        they took, which the log records. The UNet is lent to `spmctl sample`'s membrane stack."""
        from ..membrane.io import MembraneFile
        from .folder import PREVIEWS

        cfg = self.cfg
        weights = {k: v.detach().clone() for k, v in self.network.state_dict_for(0).items()}
        membrane = MembraneFile(weights, self.concepts, cfg.network.rank, cfg.network.alpha)
        assert self.previewer is not None  # run_training refuses previews without one
        self.network.detach()
        offloaded = cfg.train.offload_text_encoders
        if offloaded:  # the previews encode prompts and decode latents where the UNet is
            self.model.family.onload_text_encoders(self.model)
        try:
            written, seconds = self.previewer(self.model, membrane, cfg, self.settings, self.folder.path / PREVIEWS,
                                              self.name, step)
        finally:
            self.network.attach()
            if offloaded:
                self.model.family.offload_text_encoders(self.model)
        self.console.print(f"step {step}: {len(written)} preview images in {seconds:.1f} s "
                           f"({self.folder.path / PREVIEWS})", highlight=False)
        return seconds

    def _parts(self, step: int) -> list[dict[str, Any]]:
        """Every part of the run up to `step`: earlier ones from the state, and this one so far."""
        if step == self.part_start:
            return self.parts
        return [*self.parts, {"from_step": self.part_start, "to_step": step,
                              "seconds": time.perf_counter() - self.part_began,
                              "peak_memory_bytes": _peak_memory(self.device)}]

    def _write_summary(self, step: int, parts: list[dict[str, Any]], last: Path) -> None:
        seconds = sum(float(p["seconds"]) for p in parts)
        summary = {"name": self.name, "concepts": self.concepts, "iterations": step, "seconds": seconds,
                   "seconds_per_iteration": seconds / max(1, step), "parts": parts, "device": self.device,
                   "peak_memory_bytes": max((int(p["peak_memory_bytes"]) for p in parts), default=0),
                   "adapter_bytes": last.stat().st_size,
                   "processes": self.ddp.world_size if self.ddp is not None else 1}
        write_text_atomic(self.folder.summary, json.dumps(summary, indent=2))
        self.console.print(f"saved {last}")
        print(str(last))

    def _kept(self) -> str:
        if self.saved_step is None:
            return "nothing was saved to resume from"
        return f"the last good state (step {self.saved_step}) is kept in {self.folder.state}: --resume continues"

    def close(self, failed: bool) -> None:
        if hasattr(self, "logger"):
            self.logger.close()
        if self.main:
            self.folder.close(failed)


def _null_logger() -> Any:
    from .parallel import NullLogger

    return NullLogger()


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


__all__ = ["run_training"]
