"""The papers' rows (`datasets/benchmark_published.yaml`): every figure with its source."""

from __future__ import annotations

from typing import Any

from ..errors import SpmctlError

FILE = "benchmark_published.yaml"


def published_rows(suite: str) -> list[dict[str, Any]]:
    """The suite's published rows; each has `method`, `task`, its figures, `setting` and `source`."""
    from ..config.yamlsafe import safe_load_bounded
    from ..datafiles import data_file

    path = data_file(FILE)
    data = safe_load_bounded(path.read_text(encoding="utf-8")) or {}
    rows = data.get(suite) or []
    for row in rows:
        if not row.get("source"):  # a figure without its source is not shown beside anyone's
            raise SpmctlError(f"{path}: a '{suite}' row ({row.get('method')}) has no source")
    return rows
