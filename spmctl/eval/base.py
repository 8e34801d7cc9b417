"""What every metric shares: the runs it reads, the result it returns, and finding metrics by name."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import SpmctlError, did_you_mean
from ..image_index import MANIFEST, read_manifest

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")

Scalar = float | int | str | None


class MetricUnavailable(SpmctlError):
    """A metric cannot run here (a package or weights missing); its message is one line naming what."""


@dataclass
class EvalRun:
    """One run to evaluate: a sample folder, its label, and its manifest records (one per image)."""

    label: str
    folder: Path
    records: list[dict[str, Any]]

    def image_path(self, record: dict[str, Any]) -> Path:
        return self.folder / record["file"]

    @property
    def paths(self) -> list[Path]:
        return [self.image_path(r) for r in self.records]


@dataclass
class MetricResult:
    """A metric's results for all runs, side by side.

    `table[label][column]` is what the terminal table, the JSON and the Markdown show; `charts`
    (name -> label -> x -> value) become one grouped bar chart each (default: the numeric columns);
    `details` holds anything else worth keeping in the JSON (per class, per concept, ...).
    """

    metric: str
    table: dict[str, dict[str, Scalar]] = field(default_factory=dict)
    charts: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"metric": self.metric}
        if self.error is not None:
            out["error"] = self.error
            return out
        out.update(table=self.table, details=self.details, notes=self.notes)
        return out


def read_records(folder: Path) -> list[dict[str, Any]]:
    """The manifest's records whose image exists, in manifest order; a torn last line is skipped.

    Without a manifest (a folder of reference images, e.g. for FID) every image becomes a bare
    record, so such folders still work where no prompt or concept is needed.
    """
    if not (folder / MANIFEST).is_file():
        files = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        return [{"file": name} for name in files]
    return [r for r in read_manifest(folder).values() if (folder / r["file"]).is_file()]


def parse_labels(labels: str | None, count: int) -> list[str] | None:
    if labels is None:
        return None
    parts = [p.strip() for p in labels.split(",")]
    if len(parts) != count or not all(parts):
        raise SpmctlError(f"--labels: give {count} non-empty comma-separated labels (one per run), got {labels!r}")
    if len(set(parts)) != len(parts):
        raise SpmctlError(f"--labels: labels must differ, got {labels!r}")
    return parts


def load_runs(folders: Sequence[str | Path], labels: str | Sequence[str] | None = None,
              require_images: bool = True) -> list[EvalRun]:
    """Runs from sample folders; labels default to the folder names (made unique).

    `require_images=False` lets `cost` take training output folders (summary.json, no images).
    """
    if not folders:
        raise SpmctlError("no run folders given")
    given = parse_labels(labels, len(folders)) if isinstance(labels, str) else (list(labels) if labels else None)
    runs: list[EvalRun] = []
    seen: set[str] = set()
    for i, entry in enumerate(folders):
        folder = Path(entry)
        if not folder.is_dir():
            raise SpmctlError(f"run folder {folder} not found (give a folder `spmctl sample` wrote)")
        records = read_records(folder)
        if not records and require_images:
            raise SpmctlError(f"{folder}: no images (expected PNGs and {MANIFEST} from `spmctl sample`)")
        label = given[i] if given else folder.resolve().name
        while label in seen:  # two folders with one name: keep both apart in the report
            label = f"{label}-{i + 1}"
        seen.add(label)
        runs.append(EvalRun(label, folder, records))
    return runs


def split_list(value: str | Iterable[str] | None) -> list[str]:
    """A comma-separated option, or a repeated one, as a clean list."""
    if value is None:
        return []
    items = [value] if isinstance(value, str) else list(value)
    return [part.strip() for item in items for part in str(item).split(",") if part.strip()]


def available_metrics() -> dict[str, Any]:
    """Every metric by name: spmctl's own (default plugins) and third-party ones, through one hook."""
    from ..plugins import get_metrics

    return get_metrics()


def get_metric(name: str) -> Any:
    metrics = available_metrics()
    if name in metrics:
        return metrics[name]
    if name.replace("-", "_") in metrics:  # `clip-score` as the command spells it
        return metrics[name.replace("-", "_")]
    hint = did_you_mean(name.replace("-", "_"), metrics)
    raise SpmctlError(f"unknown metric {name!r}{hint}; known: {', '.join(sorted(metrics))}")


def _named(metric: str) -> str:
    """The metric's name, and the plugin's where a third-party plugin provides it (for messages)."""
    from ..plugins import describe, is_builtin, provider_owner

    owner = provider_owner("register_metrics", metric)
    return metric if owner == "?" or is_builtin(owner) else f"{metric} ({describe(owner)})"


def as_result(name: str, value: Any) -> MetricResult:
    """A plugin may return a MetricResult or just {label: {column: value}}."""
    if isinstance(value, MetricResult):
        return value
    if isinstance(value, dict) and all(isinstance(v, dict) for v in value.values()):
        return MetricResult(metric=name, table={str(k): dict(v) for k, v in value.items()})
    raise SpmctlError(f"metric {_named(name)} returned {type(value).__name__}, expected a MetricResult or "
                      "{run label: {column: value}}")


def evaluate_all(runs: list[EvalRun], metrics: Sequence[str], options: dict[str, dict[str, Any]]) -> list[
        MetricResult]:
    """Run each metric; one that cannot run becomes a result carrying its one-line error.

    A metric failing (weights offline, a package missing) must not hide the others' results, so
    errors are caught per metric; unknown metric names still fail at once (a typo is a usage error).
    """
    chosen = [(getattr(metric, "name", name), metric) for name, metric in ((n, get_metric(n)) for n in metrics)]
    results: list[MetricResult] = []
    for name, metric in chosen:
        try:
            given = {**options.get(name.replace("_", "-"), {}), **options.get(name, {})}
            results.append(as_result(name, metric.evaluate(runs, **given)))
        except SpmctlError as exc:
            print(f"error: {exc}", file=sys.stderr)
            results.append(MetricResult(metric=name, error=str(exc)))
        except (Exception, SystemExit) as exc:  # a plugin's bug, even sys.exit: one line naming it, keep the others
            from ..errors import one_line

            message = f"{_named(name)}: {one_line(exc, with_type=True)}"
            print(f"error: {message}", file=sys.stderr)
            results.append(MetricResult(metric=name, error=message))
    return results
