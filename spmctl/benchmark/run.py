"""The stages of a benchmark run: train (one sweep per kind), sample (the base model and every
membrane), eval (one row per run), then the report. Each stage is the existing code with its own
manifest, so a re-run of the same command skips what is done and continues what was cut short.

Costs: the first concept trained and the first run sampled (or the first prompts attacked) are the
warm-up; their measured seconds per iteration, per image (per prompt) give the estimate of the
device-hours left, printed then.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from ..errors import SpmctlError
from ..names import slug
from .pins import package_versions
from .state import RunState
from .suites import Options

BASE = "base"


def training_devices(opts: Options) -> str:
    """`--devices auto` (the default): every visible GPU, one training process each, else the CPU.
    A training config takes only indices or "cpu", so "auto" is resolved here, before it gets one."""
    if opts.devices != "auto":
        return opts.devices
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return ",".join(str(i) for i in range(count)) if count else "cpu"


def device_count(opts: Options) -> int:
    from ..distributed.dist import dist_env, listed_devices

    env = dist_env()
    if env.distributed:  # torchrun's processes, one device each
        return env.world_size
    return max(1, len(listed_devices(training_devices(opts))))


def run_benchmark(suite: Any, opts: Options, console: Console) -> dict[str, Any] | None:
    """Every stage, then the report; returns the results (also written to results.json).

    Under torchrun every rank trains its share of the concepts and samples (or attacks) its share of
    the images (prompts), then waits for the others; rank 0 alone scores, estimates, keeps
    benchmark.json and writes the report. The other ranks return None once the images are all on disk."""
    from ..distributed import dist
    from .report import build_results, write_results

    root = opts.output_dir
    if hasattr(suite, "check"):  # a missing input fails now, not after hours of training (and writes nothing)
        suite.check(opts)
    env = dist.dist_env()
    if not env.is_main:
        console = Console(stderr=True, quiet=True)  # rank 0 speaks for the run
    state: RunState | None = None
    started = time.perf_counter()
    try:
        with dist.held():  # under torchrun: one process group for the training and sampling stages
            # rank 0's disk decides (a refused setting is refused on every rank); the others never write it
            state = dist.from_main(lambda: RunState.open(root, suite.name, opts.settings(),
                                                         getattr(suite, "rescore", frozenset())))
            state.main = env.is_main
            _notes(suite, opts, state, console)  # before hours of work; after a refusal, which is one line
            membranes = train_stage(suite, opts, state, console)
            folders = None
            if hasattr(suite, "attack_stage"):  # the attack makes and judges its own images, shared out
                rows, pins = suite.attack_stage(opts, state, console, membranes, env)
            else:
                folders = sample_stage(suite, opts, state, console, membranes)
            dist.barrier()  # every rank's images (and rank 0's merged manifests) are on disk
        if not env.is_main:
            return None
        if folders is not None:
            rows, pins = eval_stage(suite, opts, state, console, folders)
        pins["training"] = training_pins(opts)
    finally:  # device time counts even for a run cut short
        if state is not None:
            state.spend(time.perf_counter() - started, device_count(opts))
    results = build_results(suite, opts, state, rows, pins, membranes)
    write_results(root, results)
    return results


def _notes(suite: Any, opts: Options, state: RunState, console: Console) -> None:
    for reason in suite.unavailable(opts) if hasattr(suite, "unavailable") else ():
        console.print(f"note: will not be computed here: {reason}", highlight=False, markup=False)
    if state.changed:
        console.print(f"note: evaluator settings changed since the last run ({'; '.join(state.changed)}): the "
                      "membranes and images are kept, every run is scored again", highlight=False, markup=False)


# -- train ---------------------------------------------------------------------------------------

def train_config(opts: Options, folder: Path) -> Any:
    from ..config.train import load_train_config

    overrides: dict[str, Any] = {"pretrained_model": {"ckpt_path": opts.model}, "output_dir": str(folder),
                                 "devices": training_devices(opts), "seed": opts.train_seed}
    if opts.iterations is not None:
        overrides["train"] = {"iterations": opts.iterations}
    cfg, _ = load_train_config(opts.train_config, overrides)
    return cfg


def train_stage(suite: Any, opts: Options, state: RunState, console: Console) -> dict[str, Path]:
    """One sweep per kind (styles, objects, concepts); returns concept -> membrane file."""
    from ..distributed.dist import from_main
    from ..distributed.launch import train_scaled
    from ..distributed.sweep import SweepSpec
    from ..distributed.sweep_state import read_entries

    groups = suite.train_groups(opts)
    state.stage("train", status="running")
    membranes: dict[str, Path] = {}
    for template, names, sub in groups:
        folder = opts.output_dir / "train" / sub
        cfg = train_config(opts, folder)
        # warm-up: one concept, measured (every rank joins the same sweeps: rank 0's state decides)
        if from_main(lambda: "seconds_per_iteration" not in state.costs):
            _sweep(train_scaled, cfg, SweepSpec(template=template, names=names[0]), opts)
            _measure_training(state, folder, read_entries(folder).get(names[0], {}))
            estimate(suite, opts, state, console, "after the training warm-up")
        _sweep(train_scaled, cfg, SweepSpec(template=template, names=",".join(names)), opts)
        entries = read_entries(folder)
        for name in names:
            membranes[name] = folder / entries[name]["output"]
    state.stage("train", status="done", concepts=len(membranes))
    return membranes


def _sweep(train_scaled: Any, cfg: Any, spec: Any, opts: Options) -> None:
    code = train_scaled(cfg, spec, quiet=opts.quiet)
    if code:
        error = SpmctlError(f"training failed or was interrupted (exit code {code}); its error is above; run the "
                            "same command again to continue the benchmark")
        error.exit_code = 130 if code == 130 else 1
        raise error


def _measure_training(state: RunState, folder: Path, entry: dict[str, Any]) -> None:
    from ..eval.cost import summary_of

    output = entry.get("output")
    if not output:
        return
    summary = _read_json(summary_of(folder / output))
    if summary.get("seconds_per_iteration"):
        state.costs["seconds_per_iteration"] = float(summary["seconds_per_iteration"])
        state.save()


# -- sample --------------------------------------------------------------------------------------

def sample_config(suite: Any, opts: Options, spm: Path | None, folder: Path) -> Any:
    from ..config.sample import load_sample_config

    overrides: dict[str, Any] = {
        "model": opts.model, "spms": [str(spm)] if spm else [], "output_dir": str(folder), "steps": opts.steps,
        "guidance": opts.guidance, "width": opts.width, "height": opts.height, "batch_size": opts.batch_size,
        "precision": opts.precision, "device": opts.device, "noise_scheduler": opts.noise_scheduler,
        "negative_prompt": opts.negative_prompt, **suite.sample_overrides(opts, opts.output_dir)}
    if opts.seeds:
        overrides["seeds"] = list(opts.seeds)
    cfg, _ = load_sample_config(None, overrides)
    return cfg


def run_labels(membranes: dict[str, Path]) -> list[tuple[str, Path | None]]:
    return [(BASE, None), *membranes.items()]


def sample_folder(root: Path, label: str) -> Path:
    return root / "samples" / slug(label)


def sample_stage(suite: Any, opts: Options, state: RunState, console: Console,
                 membranes: dict[str, Path]) -> dict[str, Path]:
    """The base model's images and each membrane's, one folder each; returns label -> folder."""
    from ..distributed.dist import dist_env
    from ..sampling.run import run_sampling

    state.stage("sample", status="running")
    folders: dict[str, Path] = {}
    for label, spm in run_labels(membranes):
        folder = sample_folder(opts.output_dir, label)
        cfg = sample_config(suite, opts, spm, folder)
        before = _images(folder)
        started = time.perf_counter()
        console.print(f"benchmark: sampling {label} -> {folder}", highlight=False)
        run_sampling(cfg, console=console, quiet=opts.quiet, ranks=dist_env())  # shares under torchrun
        made = _images(folder) - before
        if made and "seconds_per_image" not in state.costs:  # warm-up: the first run that generated images
            # device-seconds: under torchrun `made` counts every rank's images, made side by side
            state.costs["seconds_per_image"] = (time.perf_counter() - started) * dist_env().world_size / made
            state.costs["images_per_run"] = _images(folder)
            state.save()
            estimate(suite, opts, state, console, "after the sampling warm-up", sampled=set(folders) | {label})
        folders[label] = folder
    state.stage("sample", status="done", runs=len(folders))
    return folders


def _images(folder: Path) -> int:
    return sum(1 for _ in folder.glob("*.png")) if folder.is_dir() else 0


# -- eval ----------------------------------------------------------------------------------------

def manifest_digest(folder: Path) -> str:
    from ..image_index import MANIFEST

    path = folder / MANIFEST
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""


def eval_stage(suite: Any, opts: Options, state: RunState, console: Console,
               folders: dict[str, Path]) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """One row per run; a run's row is kept in eval/<label>.json and reused while its images and the
    evaluator's settings are unchanged (so a run cut short during eval does not score twice)."""
    from ..eval.base import load_runs
    from ..fileio import write_text_atomic

    state.stage("eval", status="running")
    score = suite.scorer(opts)
    evaluator_files = evaluator_digests(opts)  # a classifier file replaced in place: score again
    if hasattr(suite, "evaluator_digests"):  # the suite's own evaluator weights (CLIP)
        evaluator_files.update(suite.evaluator_digests(opts))
    rows: dict[str, dict[str, Any]] = {}
    evaluator: dict[str, Any] = {}
    for label, folder in folders.items():
        cache = opts.output_dir / "eval" / f"{folder.name}.json"
        key = {"manifest": manifest_digest(folder), "settings": opts.settings(), "evaluator": evaluator_files}
        cached = _read_json(cache)
        if cached.get("key") == key:
            rows[label], evaluator = cached["row"], cached["pins"]
            continue
        console.print(f"benchmark: scoring {label}", highlight=False)
        run = load_runs([folder], [label])[0]
        row, evaluator = score(run)
        rows[label] = row
        cache.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(cache, json.dumps({"key": key, "row": row, "pins": evaluator}, indent=2, default=str))
    state.stage("eval", status="done")
    pins = {"packages": package_versions(suite.package_pins()), "evaluator": evaluator,
            "sampling": {k: opts.settings()[k] for k in ("model", "steps", "guidance", "width", "height",
                                                         "noise_scheduler", "precision", "negative_prompt")},
            "seeds": opts.seeds or "suite default"}
    return rows, pins


def training_pins(opts: Options) -> dict[str, Any]:
    return {"iterations": train_config(opts, opts.output_dir / "train").train.iterations, "seed": opts.train_seed,
            "config": str(opts.train_config) if opts.train_config else None}


def evaluator_digests(opts: Options) -> dict[str, str]:
    """SHA-256 of every evaluator option that names a file (classifier checkpoints)."""
    from ..eval.classifiers import file_sha256

    out = {}
    for key, value in sorted(opts.extra.items()):
        if isinstance(value, str) and key.endswith("classifier") and Path(value).is_file():
            out[key] = file_sha256(Path(value))
    return out


# -- estimate ------------------------------------------------------------------------------------

def estimate(suite: Any, opts: Options, state: RunState, console: Console, when: str,
             sampled: set[str] | None = None) -> float | None:
    """Device-hours left from the measured costs: iterations still to train x seconds per iteration,
    images still to sample x seconds per image (unknown parts are left out and said so). Rank 0 only."""
    from ..distributed.sweep_state import read_entries

    if not state.main:
        return None
    costs = state.costs
    per_it, per_image = costs.get("seconds_per_iteration"), costs.get("seconds_per_image")
    iterations = opts.iterations or train_config(opts, opts.output_dir / "train").train.iterations
    concepts_left = 0
    total = 0
    for _template, names, sub in suite.train_groups(opts):
        entries = read_entries(opts.output_dir / "train" / sub)
        concepts_left += sum(1 for n in names if entries.get(n, {}).get("status") != "done")
        total += len(names)
    seconds = concepts_left * iterations * per_it if per_it else 0.0
    unknown = []
    if hasattr(suite, "attack_stage"):
        prompts_left = suite.prompts_left(opts)
        work = f"{prompts_left} prompts to attack"
        if costs.get("seconds_per_attack_prompt"):  # an average: a prompt stops early once the attack succeeds
            seconds += prompts_left * costs["seconds_per_attack_prompt"]
        else:
            unknown.append("the attacks (measured after their warm-up)")
    else:
        runs_left = max(0, total + 1 - len(sampled or ()))
        work = f"{runs_left} runs to sample"
        if per_image and costs.get("images_per_run"):
            seconds += runs_left * costs["images_per_run"] * per_image
        else:
            unknown.append("sampling (measured after its warm-up)")
    devices = device_count(opts)
    # training spreads over the devices (concept-parallel); device-hours are the same either way
    hours = seconds / 3600.0
    note = f"; not yet counted: {', '.join(unknown)}" if unknown else ""
    console.print(f"benchmark estimate {when}: about {hours:.3g} device-hours left ({concepts_left} concepts to "
                  f"train, {work}, {devices} device(s)){note}", highlight=False, soft_wrap=True)
    state.costs["estimate_hours_left"] = round(hours, 4)
    state.save()
    return hours


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}
