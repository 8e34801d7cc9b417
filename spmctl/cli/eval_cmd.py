"""`spmctl eval`: measure erasure over sample folders (nudity, UnlearnCanvas, CLIP score, FID, cost).

Every command takes one or more run folders (what `spmctl sample` wrote) and compares them side by
side: a table per metric on stdout, and `results.json`, `report.md` and bar charts in --output-dir.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

Opt = typer.Option

app = typer.Typer(no_args_is_help=True, rich_markup_mode=None)

Runs = Annotated[list[Path], typer.Argument(help="Sample folders (PNGs + manifest.jsonl), compared side by side.",
                                            show_default=False)]
Labels = Annotated[str | None, Opt("--labels", "-l", help="Comma-separated run labels, e.g. base,spm "
                                   "(default: folder names).")]
OutputDir = Annotated[Path | None, Opt("--output-dir", "-o", help="Where results.json, report.md and charts/ go "
                                        "(default: outputs/eval, or outputs/eval-2, -3, ... when it holds an "
                                        "earlier report).", show_default=False)]
DEFAULT_OUT = Path("outputs/eval")


def fresh_report_dir(base: Path = DEFAULT_OUT) -> Path:
    """`base`, or the first `base-N` holding no report: without -o an earlier report is kept."""
    candidate, n = base, 1
    while (candidate / "results.json").exists() or (candidate / "report.md").exists():
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate


def _evaluate(runs_dirs: list[Path], labels: str | None, metrics: list[str], options: dict[str, dict[str, Any]],
              output_dir: Path | None) -> None:
    """Shared by every command: run the metrics, print the tables, write the report.

    Exit status 1 when any metric could not run (its line is on stderr; the others' results are
    still printed and written).
    """
    from ..console import stderr_console
    from ..eval.base import evaluate_all, load_runs
    from ..eval.report import print_tables, write_report

    runs = load_runs(runs_dirs, labels, require_images=metrics != ["cost"])
    results = evaluate_all(runs, metrics, options)
    if all(r.error is not None for r in results):
        raise typer.Exit(1)  # each error has been said on its own line already
    print_tables(results)
    console = stderr_console()
    if output_dir is None:
        output_dir = fresh_report_dir()
        if output_dir != DEFAULT_OUT:
            console.print(f"{DEFAULT_OUT} holds an earlier report: writing to {output_dir} (-o chooses)",
                          highlight=False)
    written = write_report(output_dir, runs, results)
    console.print(f"report: {written['markdown']}  json: {written['json']}  charts: {len(written['charts'])}",
                  highlight=False)
    if any(r.error is not None for r in results):
        raise typer.Exit(1)


@app.command("nudity")
def nudity(
    runs: Runs,
    labels: Labels = None,
    classes: Annotated[str | None, Opt("--classes", help="Comma-separated NudeNet classes to count "
                                       "(default: the nine *_EXPOSED classes).")] = None,
    threshold: Annotated[float, Opt("--threshold", "-t", help="Minimum detection score.")] = 0.6,
    output_dir: OutputDir = None,
) -> None:
    """I2P nudity: NudeNet exposed-body-part detections per class, per image and per I2P category."""
    if not 0.0 <= threshold <= 1.0:  # NaN too: every comparison with it is false
        from ..errors import config_error

        raise config_error(f"--threshold {threshold}: expected a detection score between 0 and 1")
    _evaluate(runs, labels, ["nudity"], {"nudity": {"classes": classes, "threshold": threshold}}, output_dir)


@app.command("unlearncanvas")
def unlearncanvas(
    runs: Runs,
    labels: Labels = None,
    style_classifier: Annotated[str | None, Opt("--style-classifier", help="UnlearnCanvas style classifier "
                                                "checkpoint (needs timm) or a plugin classifier's name.")] = None,
    object_classifier: Annotated[str | None, Opt("--object-classifier", help="The same for objects.")] = None,
    erased: Annotated[list[str] | None, Opt("--erased", help="LABEL=Concept[+Concept]: what a run erased "
                                            "(default: its SPMs' concepts; LABEL= for none). Repeatable.")] = None,
    seeds: Annotated[str | None, Opt("--seeds", help="Only these prompt seeds, comma-separated "
                                     "(the benchmark's: 188,288,588,688,888).")] = None,
    batch_size: Annotated[int, Opt("--batch-size", help="Images per classifier call.")] = 16,
    device: Annotated[str, Opt("--device", help="Device for checkpoint classifiers.")] = "cpu",
    loader: Annotated[str, Opt("--loader", help="Checkpoint loader: auto (timm where it imports, else plain), "
                               "timm, or plain (the same ViT without timm/torchvision).")] = "auto",
    output_dir: OutputDir = None,
) -> None:
    """UnlearnCanvas: UA, IRA and CRA per erased concept and averaged."""
    from ..errors import config_error

    if loader not in ("auto", "timm", "plain"):
        raise config_error(f"--loader {loader!r}: expected auto, timm or plain")
    options = {"style_classifier": style_classifier, "object_classifier": object_classifier, "erased": erased,
               "seeds": seeds, "batch_size": batch_size, "device": device, "loader": loader}
    _evaluate(runs, labels, ["unlearncanvas"], {"unlearncanvas": options}, output_dir)


@app.command("clip-score")
def clip_score(
    runs: Runs,
    labels: Labels = None,
    clip_model: Annotated[str, Opt("--clip-model", help="CLIP hub id or local folder.")] =
    "openai/clip-vit-large-patch14",
    output_dir: OutputDir = None,
) -> None:
    """CLIP score of each image against its prompt (torchmetrics; downloads CLIP once)."""
    _evaluate(runs, labels, ["clip_score"], {"clip_score": {"clip_model": clip_model}}, output_dir)


@app.command("fid")
def fid(
    runs: Runs,
    labels: Labels = None,
    reference: Annotated[Path | None, Opt("--reference", "-r", help="Folder of reference images "
                                          "(default: the first run, e.g. the base model).")] = None,
    output_dir: OutputDir = None,
) -> None:
    """FID of each run against a reference (torchmetrics + torch-fidelity; downloads Inception once)."""
    _evaluate(runs, labels, ["fid"], {"fid": {"reference": reference}}, output_dir)


@app.command("cost")
def cost(runs: Runs, labels: Labels = None, output_dir: OutputDir = None) -> None:
    """Training cost: time per concept, peak memory, adapter size (train's summary.json).

    Each folder is a training output folder, or a sample folder whose SPMs' summaries are read.
    """
    _evaluate(runs, labels, ["cost"], {}, output_dir)


@app.command("run")
def run(
    runs: Runs,
    metric: Annotated[list[str], Opt("--metric", "-m", help="Metric names, comma-separated or repeated "
                                     "(see `spmctl eval list`).")],
    labels: Labels = None,
    assignments: Annotated[list[str] | None, Opt("--set", "-s", metavar="METRIC.KEY=VALUE",
                                                 help="A metric option, e.g. nudity.threshold=0.5 (repeatable).")
                           ] = None,
    output_dir: OutputDir = None,
) -> None:
    """Several metrics (built-in or from plugins) in one report; one failing doesn't stop the others."""
    from ..config.loader import parse_assignment
    from ..errors import SpmctlError
    from ..eval.base import split_list

    names = list(dict.fromkeys(split_list(metric)))
    options: dict[str, dict[str, Any]] = {}
    for item in assignments or []:
        path, value = parse_assignment(item)
        if len(path) != 2 or path[0] not in names + [n.replace("-", "_") for n in names]:
            raise SpmctlError(f"--set {item!r}: expected METRIC.KEY=VALUE for a chosen metric ({', '.join(names)})")
        options.setdefault(path[0], {})[path[1].replace("-", "_")] = value
    _evaluate(runs, labels, names, options, output_dir)


@app.command("list")
def list_metrics() -> None:
    """The metrics `spmctl eval run` knows, and the classifiers plugins provide."""
    from ..eval.base import available_metrics
    from ..eval.classifiers import plugin_classifiers

    for name, metric in sorted(available_metrics().items()):
        typer.echo(f"metric      {name:16} {getattr(metric, 'description', '')}")
    for name, classifier in sorted(plugin_classifiers().items()):
        typer.echo(f"classifier  {name:16} {getattr(classifier, 'kind', '?')}: "
                   f"{getattr(classifier, 'description', '')}")
