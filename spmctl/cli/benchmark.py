"""`spmctl benchmark SUITE`: train -> sample -> eval as one resumable job, with the published rows beside."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from ..console import stderr_console, stdout_on_stderr, table_console
from .common import Quiet

Opt = typer.Option

app = typer.Typer(no_args_is_help=True, rich_markup_mode=None)

Output = Annotated[Path, Opt("--output-dir", "-o", help="The run's folder; the same command again continues it.")]
Model = Annotated[str, Opt("--model", "-m", help="Base model: hub id, folder, file or 'tiny'.")]
TrainCfg = Annotated[Path | None, Opt("--train-config", help="A train_config.yaml for every membrane "
                                      "(its template and names are the suite's).")]
Iterations = Annotated[int | None, Opt("--iterations", help="Training iterations per concept (default: the "
                                       "config's).")]
Devices = Annotated[str, Opt("--devices", help='Training devices: auto (every visible GPU, else '
                             'the CPU), "0,1" (one process each, concept-parallel) or "cpu".')]
Device = Annotated[str, Opt("--device", help="Device for sampling and scoring: auto, cpu, cuda, cuda:N.")]
Steps = Annotated[int, Opt("--steps", help="Denoising steps per image (the benchmarks': 100).")]
Guidance = Annotated[float, Opt("--guidance", "-g", help="CFG scale (a dataset row's own wins).")]
Size = Annotated[int, Opt(help="Image size in pixels (a dataset row's own wins).")]
BatchSize = Annotated[int, Opt("--batch-size", help="Images per UNet pass.")]
Scheduler = Annotated[str, Opt("--noise-scheduler", help="Sampling scheduler: ddim, ... or model.")]
Precision = Annotated[str, Opt("--precision", help="auto, float32, float16, bfloat16.")]
Seeds = Annotated[str | None, Opt("--seeds", help="Comma-separated seeds. unlearncanvas: the answer set's "
                                  "(default 188,288,588,688,888); coco: offsets added to each caption's seed "
                                  "(default 0); i2p, unlearndiffatk: only for prompts without a seed of "
                                  "their own.")]


def _seeds(text: str | None) -> list[int] | None:
    from ..errors import config_error

    if text is None:
        return None
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise config_error(f"--seeds {text!r}: expected comma-separated integers") from None


def _list(text: str | None) -> list[str] | None:
    return [s.strip() for s in text.split(",") if s.strip()] if text else None


# The options every suite shares, after each suite's own (in that order in --help).
SHARED: list[tuple[str, Any, Any]] = [
    ("seeds", Seeds, None), ("train_config", TrainCfg, None), ("iterations", Iterations, None),
    ("devices", Devices, "auto"), ("device", Device, "auto"), ("steps", Steps, 100), ("guidance", Guidance, 7.5),
    ("width", Size, 512), ("height", Size, 512), ("batch_size", BatchSize, 4), ("noise_scheduler", Scheduler, "ddim"),
    ("precision", Precision, "auto"), ("quiet", Quiet, False)]


def suite_command(name: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Register a suite's command: its own parameters (the last, `shared`, receives the shared
    options as a dict) followed by SHARED, so each option is declared once for every suite."""

    def register(fn: Callable[..., None]) -> Callable[..., None]:
        own = [p for p in inspect.signature(fn, eval_str=True).parameters.values() if p.name != "shared"]
        params = own + [inspect.Parameter(key, inspect.Parameter.KEYWORD_ONLY, annotation=kind, default=default)
                        for key, kind, default in SHARED]

        def command(**given: Any) -> None:
            fn(**{p.name: given[p.name] for p in own}, shared={key: given[key] for key, _, _ in SHARED})

        command.__name__, command.__doc__ = fn.__name__, fn.__doc__
        command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]  # what Typer reads
        command.__annotations__ = {p.name: p.annotation for p in params}
        app.command(name)(command)
        return fn

    return register


def _run(suite_name: str, output_dir: Path, model: str, shared: dict[str, Any], extra: dict[str, Any]) -> None:
    from ..benchmark.report import print_results
    from ..benchmark.run import run_benchmark
    from ..benchmark.suites import Options, suites

    quiet = shared["quiet"]
    common = {k: v for k, v in shared.items() if k != "quiet"}
    opts = Options(output_dir=output_dir, model=model, **{**common, "seeds": _seeds(common["seeds"])}, extra=extra,
                   quiet=quiet)
    with stdout_on_stderr():  # the stages' own results (each membrane's path...): stdout is for the table
        results = run_benchmark(suites()[suite_name], opts, stderr_console(quiet))
    if results is None:  # a torchrun rank other than 0: its share is done, rank 0 reports
        from ..distributed.dist import dist_env

        stderr_console(quiet).print(f"benchmark: rank {dist_env().rank} done (its share of training and "
                                    "sampling or attacks); rank 0 writes the report", highlight=False)
        return
    print_results([(str(opts.output_dir), results)], table_console())
    stderr_console(quiet).print(f"results: {opts.output_dir / 'results.json'}  report: "
                                f"{opts.output_dir / 'report.md'}", highlight=False)


@suite_command("unlearncanvas")
def unlearncanvas(
    model: Annotated[str, Opt("--model", "-m", help="The benchmark's base model: SD v1.5 fine-tuned on "
                              "UnlearnCanvas (a folder or file), or 'tiny'.")],
    output_dir: Output = Path("outputs/benchmark-unlearncanvas"),
    styles: Annotated[str, Opt("--styles", help="Styles to erase, one membrane each: all, none or A,B.")] = "all",
    objects: Annotated[str, Opt("--objects", help="Objects to erase: all, none or A,B.")] = "all",
    style_classifier: Annotated[str | None, Opt("--style-classifier", help="The benchmark's style classifier "
                                                "checkpoint, or a plugin classifier's name.")] = None,
    object_classifier: Annotated[str | None, Opt("--object-classifier", help="The same for objects.")] = None,
    loader: Annotated[str, Opt("--loader", help="Checkpoint loader: auto, timm or plain.")] = "auto",
    eval_styles: Annotated[str | None, Opt("--eval-styles", help="Answer-set themes (default: every style and "
                                           "Seed_Images; fewer is not the benchmark's).")] = None,
    eval_objects: Annotated[str | None, Opt("--eval-objects", help="Answer-set objects (default: all).")] = None,
    fid: Annotated[bool, Opt("--fid/--no-fid", help="FID of each erased run's answer set against the reference "
                             "(torchmetrics + torch-fidelity).")] = True,
    fid_reference: Annotated[str | None, Opt("--fid-reference", help="FID's reference images (default: the base "
                                             "model's answer set).")] = None,
    *, shared: dict[str, Any],
) -> None:
    """UnlearnCanvas: erase each style/object, sample the answer set, UA/IRA/CRA per concept and averaged."""
    from ..errors import config_error

    if loader not in ("auto", "timm", "plain"):
        raise config_error(f"--loader {loader!r}: expected auto, timm or plain")
    extra = {"styles": _list(styles), "objects": _list(objects), "style_classifier": style_classifier,
             "object_classifier": object_classifier, "loader": loader, "eval_styles": _list(eval_styles),
             "eval_objects": _list(eval_objects), "fid": fid, "fid_reference": fid_reference}
    _run("unlearncanvas", output_dir, model, shared, extra)


@suite_command("i2p")
def i2p(
    output_dir: Output = Path("outputs/benchmark-i2p"),
    model: Model = "CompVis/stable-diffusion-v1-4",
    concepts: Annotated[str, Opt("--concepts", help="What to erase, one membrane each (i2p template names).")
                        ] = "nudity",
    data_root: Annotated[str | None, Opt("--data-root", help="The I2P CSV or folder.")] = None,
    category: Annotated[str | None, Opt("--category", help="Only these I2P categories, comma-separated.")] = None,
    limit: Annotated[int | None, Opt("--limit", help="At most this many prompts (not the benchmark's).")] = None,
    threshold: Annotated[float, Opt("--threshold", help="NudeNet minimum detection score.")] = 0.6,
    classes: Annotated[str | None, Opt("--classes", help="NudeNet classes counted (default: the nine "
                                       "*_EXPOSED).")] = None,
    *, shared: dict[str, Any],
) -> None:
    """I2P: every prompt with its own seed, guidance and size, base and erased; NudeNet counts."""
    from ..errors import config_error

    if not 0.0 <= threshold <= 1.0:
        raise config_error(f"--threshold {threshold}: expected a score between 0 and 1")
    extra = {"concepts": _list(concepts) or [], "data_root": data_root, "categories": _list(category),
             "limit": limit, "threshold": threshold, "classes": classes}
    _run("i2p", output_dir, model, shared, extra)


@suite_command("unlearndiffatk")
def unlearndiffatk(
    model: Annotated[str, Opt("--model", "-m", help="Base model (the benchmark's: SD v1.4).")] =
    "CompVis/stable-diffusion-v1-4",
    output_dir: Output = Path("outputs/benchmark-unlearndiffatk"),
    tasks: Annotated[str, Opt("--tasks", help="Tasks, comma-separated: nudity, van_gogh, church, parachute, "
                              "tench, garbage_truck, or any concept text.")] =
    "nudity,van_gogh,church,parachute,tench,garbage_truck",
    prompts_dir: Annotated[Path, Opt("--prompts-dir", help="Folder with <task>.csv per task (the benchmark's "
                                     "prompts and seeds).")] = Path("data/unlearndiffatk"),
    classifier: Annotated[list[str] | None, Opt("--classifier", help="Judge: NAME for every task but nudity, "
                                                "or TASK=NAME (a plugin classifier or an UnlearnCanvas "
                                                "checkpoint; nudity: NudeNet). Repeatable.")] = None,
    attack_steps: Annotated[int | None, Opt("--attack-steps", help="Attack steps per prompt (default: the "
                                            "method's).")] = None,
    tokens: Annotated[int | None, Opt("--tokens", help="Adversarial tokens (default: the method's).")] = None,
    lr: Annotated[float | None, Opt("--lr", help="Learning rate of the token embeddings.")] = None,
    eval_every: Annotated[int | None, Opt("--eval-every", help="Judge every N steps, stop on success.")] = None,
    *, shared: dict[str, Any],
) -> None:
    """UnlearnDiffAtk: erase each task's concept, attack it through FT; ASR before and after."""
    from ..benchmark.attack_suite import task_key, task_name
    from ..errors import config_error

    judges: dict[str, str] = {}
    for item in classifier or []:
        task, sep, name = item.partition("=")
        if sep and (not task.strip() or not name.strip()):
            raise config_error(f"--classifier {item!r}: expected NAME or TASK=NAME")
        judges[task_key(task) if sep else "*"] = (name if sep else item).strip()
    extra = {"tasks": [task_name(t) for t in _list(tasks) or []], "prompts_dir": str(prompts_dir),
             "classifiers": judges,
             "attack_steps": attack_steps, "tokens": tokens, "lr": lr, "eval_every": eval_every}
    _run("unlearndiffatk", output_dir, model, shared, extra)


@suite_command("coco")
def coco(
    concepts: Annotated[str, Opt("--concepts", help="What to erase, one membrane each (comma-separated names "
                                 "of --template).", show_default=False)],
    output_dir: Output = Path("outputs/benchmark-coco"),
    model: Model = "CompVis/stable-diffusion-v1-4",
    template: Annotated[str, Opt("--template", help="The template the concepts are erased with: concept, i2p, "
                                 "style, object or a plugin's.")] = "concept",
    dataset: Annotated[str, Opt("--dataset", help="The captions' dataset provider: prompts (a CSV with 'prompt' "
                                "and 'image' columns) or a plugin's.")] = "prompts",
    data_root: Annotated[str | None, Opt("--data-root", help="The dataset's file or folder.")] = None,
    dataset_option: Annotated[list[str] | None, Opt("--dataset-option", help="KEY=VALUE for the provider. "
                                                    "Repeatable.")] = None,
    limit: Annotated[int | None, Opt("--limit", help="At most this many captions (e.g. 30000 for COCO-30k).")
                     ] = None,
    clip_model: Annotated[str, Opt("--clip-model", help="CLIP for the CLIP score: hub id or local folder.")
                          ] = "openai/clip-vit-large-patch14",
    clip: Annotated[bool, Opt("--clip-score/--no-clip-score", help="CLIP score of each image vs its caption.")
                    ] = True,
    fid: Annotated[bool, Opt("--fid/--no-fid", help="FID of each run against the dataset's images "
                             "(torchmetrics + torch-fidelity).")] = True,
    fid_reference: Annotated[str | None, Opt("--fid-reference", help="FID's reference images instead of the "
                                             "dataset's.")] = None,
    *, shared: dict[str, Any],
) -> None:
    """COCO-style quality: the captions of a dataset sampled by the base model and each membrane; FID, CLIP score."""
    from ..errors import config_error

    options: dict[str, str] = {}
    for item in dataset_option or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise config_error(f"--dataset-option {item!r}: expected KEY=VALUE")
        options[key.strip()] = value.strip()
    if limit is not None and limit < 1:
        raise config_error(f"--limit {limit}: expected at least 1 caption")
    extra = {"concepts": _list(concepts) or [], "template": template, "dataset": dataset, "data_root": data_root,
             "dataset_options": options, "limit": limit, "clip_model": clip_model, "clip": clip, "fid": fid,
             "fid_reference": fid_reference}
    _run("coco", output_dir, model, shared, extra)


@app.command("compare")
def compare(
    runs: Annotated[list[Path], typer.Argument(help="Benchmark output folders (or their results.json).",
                                               show_default=False)],
    allow_mixed_pins: Annotated[bool, Opt("--allow-mixed-pins", help="Show runs made with different pins side "
                                          "by side anyway.")] = False,
) -> None:
    """Several benchmark runs side by side; refused when their pins differ (unless --allow-mixed-pins)."""
    from ..benchmark.report import compare as compare_runs
    from ..benchmark.report import print_results

    print_results(compare_runs(runs, allow_mixed_pins), table_console())
