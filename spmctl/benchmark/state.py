"""`benchmark.json`: a benchmark run's settings, its stages' status and the costs measured so far.

The settings are what the command asked for; a re-run in the same folder must ask for the same
(it continues the run), else it is refused, naming the first setting that differs. Evaluator
settings (`rescore`: a classifier, the detector's threshold, the CLIP model, FID) may change: the
trained membranes and sampled images are kept and every run is scored again (`changed` names them). Costs are
measured once, on the first concept trained and the first run sampled (the warm-up), and kept, so
a resumed run still estimates; device-seconds add up over every invocation.

Under torchrun only rank 0 writes it (`main`); the other ranks hold rank 0's copy in memory.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import config_error
from ..fileio import write_text_atomic

STATE = "benchmark.json"


class RunState:
    def __init__(self, root: Path, data: dict[str, Any], main: bool = True) -> None:
        self.root = root
        self.data = data
        self.main = main  # the process that writes the file and reports (rank 0)
        self.changed: list[str] = []  # evaluator settings that differ from the last invocation's

    @classmethod
    def open(cls, root: Path, suite: str, settings: dict[str, Any], rescore: frozenset[str] = frozenset()) -> RunState:
        path = root / STATE
        data: dict[str, Any] = {}
        if path.is_file():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                data = {}  # a foreign or torn file: the stages' own manifests still hold the progress
        if data.get("suite") not in (None, suite):
            raise config_error(f"{root} holds a '{data['suite']}' benchmark run; give another --output-dir")
        old = data.get("settings")
        changed = []
        if isinstance(old, dict):
            for key in sorted(set(old) | set(settings)):
                if old.get(key) == settings.get(key):
                    continue
                if key in rescore:
                    changed.append(f"{key} {old.get(key)!r} -> {settings.get(key)!r}")
                else:
                    raise config_error(
                        f"{root} holds a benchmark run with {key} = {old.get(key)!r}, this command asks for "
                        f"{settings.get(key)!r}; run the same command to continue it, or give another --output-dir")
        data.update(suite=suite, settings=settings)
        data.setdefault("stages", {})
        data.setdefault("costs", {})
        data.setdefault("device_seconds", 0.0)
        state = cls(root, data)
        state.changed = changed
        state.save()
        return state

    @property
    def costs(self) -> dict[str, Any]:
        return self.data["costs"]

    def stage(self, name: str, **fields: Any) -> None:
        self.data["stages"].setdefault(name, {}).update(fields)
        self.save()

    def spend(self, seconds: float, devices: int) -> None:
        """Device-seconds used by this invocation's work (wall time x devices held)."""
        self.data["device_seconds"] = float(self.data.get("device_seconds", 0.0)) + seconds * devices
        self.save()

    def save(self) -> None:
        if not self.main:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.root / STATE, json.dumps(self.data, indent=2, default=str) + "\n")
