"""UnlearnCanvas style and object classifiers whose verdicts a test can recompute from the PNG alone.

An image `spmctl sample` wrote carries its manifest record in its PNG text ("spmctl"): the prompt's
(style, object), the membranes' concepts and their gates. A label counts as erased in an image when
a membrane whose concepts name it had its gate at 0.5 or more; `gate-style` then answers
`Seed_Images`, `gate-object` the first other object; otherwise each answers the image's own label.
`CANVAS_PLUGIN_SECONDS` (environment) makes each `predict` call take that long: a slow evaluator,
so a test can stop a benchmark while it scores. `CANVAS_PLUGIN_LOG` (a file): each call appends
"<pid> <kind> <number of images>", so a test can count who judged what.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from typing import Any

from spmctl.hookspecs import hookimpl


def record_of(image: Any) -> dict[str, Any]:
    return json.loads(image.info["spmctl"])


def erased(record: dict[str, Any], label: str) -> bool:
    spoken = label.replace("_", " ").casefold()
    return any(gate >= 0.5 and spoken in [c.casefold() for c in concepts]
               for gate, concepts in zip(record.get("gates") or [], record.get("concepts") or [], strict=False))


def verdict(record: dict[str, Any], kind: str, labels: list[str]) -> str:
    own = record["categories"][0 if kind == "style" else 1]
    if not erased(record, own):
        return own
    return "Seed_Images" if kind == "style" else next(label for label in labels if label != own)


class _Classifier:
    description = "test classifier: verdicts from the image's own PNG record"

    def __init__(self, kind: str) -> None:
        from spmctl.eval.classifiers import unlearncanvas_labels

        self.name = f"gate-{kind}"
        self.kind = kind
        self.labels = unlearncanvas_labels(kind, 51 if kind == "style" else 20)

    def predict(self, images: Sequence[Any]) -> list[str]:
        time.sleep(float(os.environ.get("CANVAS_PLUGIN_SECONDS", "0")))
        if os.environ.get("CANVAS_PLUGIN_LOG"):
            with open(os.environ["CANVAS_PLUGIN_LOG"], "a", encoding="utf-8") as log:
                log.write(f"{os.getpid()} {self.kind} {len(images)}\n")
        return [verdict(record_of(im), self.kind, self.labels) for im in images]


@hookimpl
def register_classifiers(register) -> None:  # type: ignore[no-untyped-def]
    register(_Classifier("style"))
    register(_Classifier("object"))
