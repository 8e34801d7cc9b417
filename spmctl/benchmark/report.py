"""A benchmark's results: the scores table, the cost table, the pins and the published rows.

`results.json` holds everything; `report.md` and the terminal show the same. The scores depend
only on the images (a resumed run gives the same table); costs are measured and vary.
`compare` puts several runs' tables side by side, refusing runs whose pins differ unless asked.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from statistics import mean
from typing import Any

from ..errors import SpmctlError, config_error
from ..eval.report import fmt
from ..fileio import write_text_atomic
from .pins import differences
from .published import published_rows

RESULTS = "results.json"
REPORT = "report.md"
AVERAGE = "(average)"
UNITS = "scores in %"
MIB = 1024 * 1024


def build_results(suite: Any, opts: Any, state: Any, rows: dict[str, dict[str, Any]], pins: dict[str, Any],
                  membranes: dict[str, Path]) -> dict[str, Any]:
    from .run import BASE

    table = dict(rows)
    erased = [label for label in rows if label != BASE]
    # the benchmark reports the mean over concepts, each erased by its own membrane (attacks: per task)
    if len(erased) > 1 and getattr(suite, "average", True):
        table[AVERAGE] = {c: _mean([rows[label].get(c) for label in erased]) for c in suite.score_columns}
    cost = cost_table(membranes)
    peak = max((c["peak_memory_mib"] for c in cost.values() if c.get("peak_memory_mib") is not None), default=None)
    return {
        "suite": suite.name,
        "units": getattr(suite, "units", UNITS),
        "table": table,
        "score_columns": list(suite.score_columns),
        "cost": cost,
        "device_hours_spent": round(float(state.data.get("device_seconds", 0.0)) / 3600.0, 6),
        "peak_memory_mib": peak,
        "costs_measured": state.costs,
        "pins": pins,
        "published": suite.published(opts, published_rows(suite.name)) if hasattr(suite, "published")
        else published_rows(suite.name),
        "row_kind": getattr(suite, "row_kind", "run"),
    }


def cost_table(membranes: dict[str, Path]) -> dict[str, dict[str, Any]]:
    """Training seconds and peak memory per concept, from each membrane's summary.json."""
    from ..eval.cost import summary_of

    out: dict[str, dict[str, Any]] = {}
    for name, spm in membranes.items():
        try:
            summary = json.loads(summary_of(spm).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            summary = {}
        peak = summary.get("peak_memory_bytes")
        out[name] = {"seconds": summary.get("seconds"), "iterations": summary.get("iterations"),
                     "peak_memory_mib": round(peak / MIB, 1) if peak else None}
    return out


def _mean(values: Sequence[Any]) -> float | None:
    present = [float(v) for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
    return round(mean(present), 2) if present else None


def score_lines(results: dict[str, Any], prefix: str = "") -> list[list[str]]:
    cols = results["score_columns"]
    return [[prefix + label, *(fmt(row.get(c)) for c in cols)] for label, row in results["table"].items()]


def published_lines(rows: list[dict[str, Any]], cols: Sequence[str]) -> list[list[str]]:
    return [[f"{r['method']} ({r.get('task', '')})", *(as_published(r.get(c)) for c in cols), r["source"]]
            for r in rows]


def as_published(value: Any) -> str:
    """A published figure as its source prints it (182.01 stays 182.01; fmt's 4 digits would say 182)."""
    if isinstance(value, float):
        return f"{value:.10g}"
    return fmt(value)


def detail_columns(results: dict[str, Any]) -> list[str]:
    """The counts each run's row holds besides the scores (images, each NudeNet class's detections)."""
    seen: dict[str, None] = {}
    for label, row in results["table"].items():
        if label != AVERAGE:
            seen.update(dict.fromkeys(k for k, v in row.items() if k not in results["score_columns"]
                                      and isinstance(v, int | float) and not isinstance(v, bool)))
    return list(seen)


def markdown(results: dict[str, Any]) -> str:
    cols = results["score_columns"]
    units = results.get("units", UNITS)
    average = "; the average is over the erased concepts" if AVERAGE in results["table"] else ""
    per = f"per {results.get('row_kind', 'run')}{average}"
    lines = [f"# spmctl benchmark {results['suite']}", "", f"{units[0].upper()}{units[1:]} ({per}).", "",
             "| run | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in score_lines(results)]
    details = detail_columns(results)
    if details:
        lines += ["", "## Counts", "", "| run | " + " | ".join(details) + " |", "|---" * (len(details) + 1) + "|"]
        lines += ["| " + " | ".join([label, *(fmt(row.get(c)) for c in details)]) + " |"
                  for label, row in results["table"].items() if label != AVERAGE]
    if results["published"]:
        lines += ["", "## Published", "", "| method | " + " | ".join(cols) + " | source |",
                  "|---" * (len(cols) + 2) + "|"]
        lines += ["| " + " | ".join(cells) + " |" for cells in published_lines(results["published"], cols)]
        extra = sorted({k for r in results["published"] for k in r} - {*cols, "method", "task", "source", "setting",
                                                                      "checked"})
        lines += ["", "Other published figures: " + "; ".join(
            f"{r['method']}: " + ", ".join(f"{k} {r[k]}" for k in extra if k in r) for r in results["published"]
            if any(k in r for k in extra)) if extra else ""]
    lines += ["", "## Cost", "", f"Device-hours spent: {results['device_hours_spent']:.4g}; peak training memory: "
              f"{fmt(results['peak_memory_mib'])} MiB", "", "| concept | seconds | iterations | peak MiB |",
              "|---|---|---|---|"]
    lines += [f"| {name} | {fmt(c['seconds'])} | {fmt(c['iterations'])} | {fmt(c['peak_memory_mib'])} |"
              for name, c in results["cost"].items()]
    lines += ["", "## Pins", "", "```json", json.dumps(results["pins"], indent=2, default=str), "```", ""]
    return "\n".join(lines)


def write_results(root: Path, results: dict[str, Any]) -> None:
    write_text_atomic(root / RESULTS, json.dumps(results, indent=2, default=str) + "\n")
    write_text_atomic(root / REPORT, markdown(results))


def print_results(results_list: Sequence[tuple[str, dict[str, Any]]], console: Any) -> None:
    """The scores (one table, several runs side by side), the published rows, costs and pins."""
    from rich.markup import escape
    from rich.table import Table

    cols = results_list[0][1]["score_columns"]
    several = len(results_list) > 1
    first = results_list[0][1]
    table = Table("run", *cols, title=f"benchmark {first['suite']}", title_justify="left")
    for name, results in results_list:
        for cells in score_lines(results, f"{name}: " if several else ""):
            table.add_row(*map(escape, cells))
    console.print(table)
    console.print(first.get("units", UNITS), highlight=False, markup=False)  # under the table: a title wraps
    published = results_list[0][1]["published"]
    if published:
        pub = Table("published", *cols, "source", title="published rows", title_justify="left")
        for cells in published_lines(published, cols):
            pub.add_row(*map(escape, cells))
        console.print(pub)
    for name, results in results_list:
        who = f"{name}: " if several else ""
        console.print(f"{who}device-hours spent {results['device_hours_spent']:.4g}, peak training memory "
                      f"{fmt(results['peak_memory_mib'])} MiB", highlight=False, markup=False)
        console.print(f"{who}pins: {json.dumps(results['pins'], default=str)}", highlight=False, markup=False,
                      soft_wrap=True)


def load_results(folder: Path) -> dict[str, Any]:
    path = folder / RESULTS if folder.is_dir() else folder
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError:
        raise config_error(f"{path}: no benchmark results (run `spmctl benchmark SUITE -o {folder}` first)") from None
    except json.JSONDecodeError as exc:
        raise SpmctlError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
    if not isinstance(data, dict) or "table" not in data or "pins" not in data:
        raise config_error(f"{path}: not a `spmctl benchmark` results.json (no table or pins)")
    return data


def compare(folders: Sequence[Path], allow_mixed_pins: bool) -> list[tuple[str, dict[str, Any]]]:
    """Several runs' results, checked to be comparable: one suite, the same pins (unless allowed)."""
    loaded = [(str(folder), load_results(folder)) for folder in folders]
    first_name, first = loaded[0]
    for name, results in loaded[1:]:
        if results["suite"] != first["suite"]:
            raise config_error(f"{name} is a '{results['suite']}' benchmark, {first_name} a '{first['suite']}' one")
        diff = differences(first["pins"], results["pins"])
        if diff and not allow_mixed_pins:
            shown = ", ".join(diff[:3]) + (f" and {len(diff) - 3} more" if len(diff) > 3 else "")
            raise config_error(f"{name} and {first_name} were made with different pins ({shown}); their numbers "
                               "are not comparable. Pass --allow-mixed-pins to show them side by side anyway")
    return loaded
