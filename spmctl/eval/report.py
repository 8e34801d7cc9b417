"""Reporting: a rich table per metric on stdout, `results.json`, `report.md` and one bar chart per chart.

Runs are compared side by side: table rows and bar groups are the runs' labels.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .base import EvalRun, MetricResult, Scalar

RESULTS_JSON = "results.json"
REPORT_MD = "report.md"
CHARTS = "charts"
TRANSPOSE_OVER = 8


def fmt(value: Scalar) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def columns(result: MetricResult) -> list[str]:
    seen: dict[str, None] = {}
    for row in result.table.values():
        seen.update(dict.fromkeys(row))
    return list(seen)


def print_tables(results: Sequence[MetricResult]) -> None:
    """The results on stdout (what a user pipes or reads); errors were already said on stderr."""
    from rich.markup import escape
    from rich.table import Table

    def cell(value: Scalar) -> str:  # labels and columns are data, not rich markup ("[x]" must show)
        return escape(fmt(value))

    from ..console import table_console

    console = table_console()  # fits the terminal (COLUMNS); unbounded when piped
    for result in results:
        if result.error is not None:
            console.print(f"not computed: {result.error}", highlight=False, markup=False, soft_wrap=True)
            continue
        cols = columns(result)
        if len(cols) > TRANSPOSE_OVER:  # many columns (e.g. per class): one row per column reads better
            table = Table("", *map(cell, result.table), title=result.metric, title_justify="left")
            for col in cols:
                table.add_row(cell(col), *(cell(row.get(col)) for row in result.table.values()))
        else:
            table = Table("run", *map(cell, cols), title=result.metric, title_justify="left")
            for label, row in result.table.items():
                table.add_row(cell(label), *(cell(row.get(c)) for c in cols))
        console.print(table)


def bar_chart(path: Path, title: str, data: dict[str, dict[str, float]]) -> Path:
    """Grouped bars: one group per x key, one bar per run."""
    import matplotlib

    matplotlib.use("Agg")  # no display: charts are files
    import matplotlib.pyplot as plt

    labels = list(data)
    keys = list(dict.fromkeys(k for values in data.values() for k in values))
    width = 0.8 / max(1, len(labels))
    fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * len(keys) * max(1, len(labels)) + 2), 3.6))
    for i, label in enumerate(labels):
        xs = [j + (i - (len(labels) - 1) / 2) * width for j in range(len(keys))]
        ax.bar(xs, [data[label].get(k, 0.0) for k in keys], width, label=label)
    ax.set_xticks(range(len(keys)))
    ax.set_xticklabels(keys, rotation=30 if len(keys) > 3 else 0, ha="right" if len(keys) > 3 else "center",
                       fontsize=8)
    values = [v for row in data.values() for v in row.values()]
    if values and min(values) >= 0:  # counts, shares, seconds: start at 0 (and show an all-zero chart as such)
        ax.set_ylim(0, max(values) * 1.1 or 1.0)
    ax.set_title(f"{title}: each run's values")
    ax.set_xlabel(f"{title} table column")
    ax.set_ylabel("value (as in report.md)")
    ax.legend(title="run", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)
    return path


def write_charts(out_dir: Path, results: Sequence[MetricResult]) -> dict[str, Path]:
    charts: dict[str, Path] = {}
    for result in results:
        if result.error is not None:
            continue
        specs = result.charts or {result.metric: _numeric(result)}
        for name, data in specs.items():
            if not any(data.values()):
                continue
            try:
                charts[name] = bar_chart(out_dir / CHARTS / f"{name}.png", name, data)
            except ImportError:  # charts are a bonus: the numbers are already in the JSON and Markdown
                print("warning: matplotlib is not installed: no charts (pip install 'spmctl[eval]')", file=sys.stderr)
                return charts
    return charts


def _numeric(result: MetricResult) -> dict[str, dict[str, float]]:
    return {label: {k: float(v) for k, v in row.items() if isinstance(v, int | float) and not isinstance(v, bool)}
            for label, row in result.table.items()}


def markdown(runs: Sequence[EvalRun], results: Sequence[MetricResult], charts: dict[str, Path],
             out_dir: Path) -> str:
    lines = ["# spmctl eval report", "", "| run | folder | images |", "| --- | --- | --- |"]
    lines += [f"| {r.label} | `{r.folder}` | {len(r.records)} |" for r in runs]
    for result in results:
        lines += ["", f"## {result.metric}", ""]
        if result.error is not None:
            lines.append(f"**Not computed:** {result.error}")
            continue
        cols = columns(result)
        lines += ["| run | " + " | ".join(cols) + " |", "| --- |" + " --- |" * len(cols)]
        lines += [f"| {label} | " + " | ".join(fmt(row.get(c)) for c in cols) + " |"
                  for label, row in result.table.items()]
        lines += [""] + [f"_{note}_" for note in result.notes]
        for name in result.charts or {result.metric: None}:
            if name in charts:
                lines += ["", f"![{name}]({charts[name].relative_to(out_dir).as_posix()})"]
    return "\n".join(lines) + "\n"


def write_report(out_dir: Path, runs: Sequence[EvalRun], results: Sequence[MetricResult]) -> dict[str, Any]:
    """results.json, report.md and charts/*.png under `out_dir`; returns what was written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    charts = write_charts(out_dir, results)
    payload = {
        "runs": [{"label": r.label, "folder": str(r.folder), "images": len(r.records)} for r in runs],
        "results": {r.metric: r.to_json() for r in results},
        "charts": {name: str(path.relative_to(out_dir)) for name, path in charts.items()},
    }
    (out_dir / RESULTS_JSON).write_text(json.dumps(payload, indent=2, default=str), encoding="utf-8")
    (out_dir / REPORT_MD).write_text(markdown(runs, results, charts, out_dir), encoding="utf-8")
    return {"json": out_dir / RESULTS_JSON, "markdown": out_dir / REPORT_MD, "charts": charts}
