"""Cost: training time per concept, peak memory and adapter size, from `spmctl train`'s summary.json.

A run folder may be a training output folder (with summary.json) or a sample folder: then the
summaries beside the SPM files its manifest names are read (several SPMs: times and sizes add up,
peak memory is the largest).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import SpmctlError
from ..hookspecs import hookimpl
from .base import EvalRun, MetricResult

SUMMARY = "summary.json"
MIB = 1024 * 1024


def summaries_for(folder: Path, records: Sequence[dict[str, Any]]) -> list[Path]:
    """A training folder's summaries (`<name>_summary.json`, one per run in it, or an older
    folder's bare `summary.json`), or those of the SPM files a sample folder's manifest names."""
    found = sorted(folder.glob(f"*_{SUMMARY}")) or [p for p in [folder / SUMMARY] if p.is_file()]
    if found:
        return found
    spms = (records[0].get("spms") or []) if records else []
    return list(dict.fromkeys(summary_of(Path(s)) for s in spms))


def summary_of(spm: Path) -> Path:
    """The summary of the run that wrote `spm` (`<name>_last.safetensors` -> `<name>_summary.json`)."""
    own = spm.with_name(f"{spm.name.split('.')[0].removesuffix('_last')}_{SUMMARY}")
    return own if own.is_file() or not (spm.parent / SUMMARY).is_file() else spm.parent / SUMMARY


def combine(summaries: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One row from one or more training summaries."""
    concepts = sum(len(s.get("concepts") or []) or 1 for s in summaries)
    seconds = sum(float(s.get("seconds") or 0.0) for s in summaries)
    peaks = [int(s["peak_memory_bytes"]) for s in summaries if s.get("peak_memory_bytes") is not None]
    return {
        "spms": len(summaries),
        "concepts": concepts,
        "seconds": round(seconds, 3),
        "seconds_per_concept": round(seconds / concepts, 3),
        "seconds_per_iteration": round(sum(float(s.get("seconds_per_iteration") or 0.0) for s in summaries)
                                       / len(summaries), 5),
        "peak_memory_mib": round(max(peaks) / MIB, 2) if peaks else None,
        "adapter_mib": round(sum(int(s.get("adapter_bytes") or 0) for s in summaries) / MIB, 4),
    }


class CostMetric:
    name = "cost"
    description = "training time per concept, peak memory and adapter size (from train's summary.json)"

    def evaluate(self, runs: Sequence[EvalRun], **_: Any) -> MetricResult:
        result = MetricResult(metric=self.name)
        for run in runs:
            paths = summaries_for(run.folder, run.records)
            missing = [p for p in paths if not p.is_file()]
            if missing:
                raise SpmctlError(f"cost: {run.label}: {missing[0]} not found (written by `spmctl train`)")
            if not paths:  # the base model: nothing was trained
                result.table[run.label] = {"spms": 0}
                continue
            summaries = [json.loads(p.read_text(encoding="utf-8")) for p in paths]
            result.table[run.label] = combine(summaries)
            result.details[run.label] = {"summaries": [str(p) for p in paths]}
        numeric = ("seconds_per_concept", "peak_memory_mib", "adapter_mib")
        result.charts = {f"cost_{key}": {label: {key: float(row[key])} for label, row in result.table.items()
                                         if row.get(key) is not None} for key in numeric}
        return result


@hookimpl
def register_metrics(register) -> None:  # type: ignore[no-untyped-def]
    register(CostMetric())
