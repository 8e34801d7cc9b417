"""`spmctl eval`: measure erasure over the folders `spmctl sample` writes.

Each metric reads runs (a sample folder: PNGs + `manifest.jsonl`) and returns a `MetricResult`;
`report` turns results into a terminal table, a JSON file, a Markdown report and bar charts.
Built-in metrics live in this package and are default plugins (`spmctl.plugins.DEFAULT_PLUGINS`);
plugins add more through the `register_metrics` hook (`spmctl.providers.Metric`), and UnlearnCanvas
classifiers through `register_classifiers` (`spmctl.providers.ImageClassifier`).

Nothing heavy is imported here: NudeNet, torchmetrics, timm and matplotlib load inside the metric
that needs them, so a missing optional package only disables that metric.
"""

from __future__ import annotations

from .base import EvalRun, MetricResult, MetricUnavailable, load_runs

__all__ = ["EvalRun", "MetricResult", "MetricUnavailable", "load_runs"]
