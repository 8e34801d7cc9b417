"""A third-party classifier whose verdicts a test can recompute from the image alone.

`parity` says "cat" when the image's mean pixel value (0..255), times 10000 and rounded down, is
odd, else "dog": about half of any set of images, and known exactly from the PNG.
`VERDICT_PLUGIN_SECONDS` (environment) makes each `predict` call take that long (a slow judge, so a
test can stop an attack part-way); `VERDICT_PLUGIN_LOG` (a file): each call appends "<pid> <number
of images>", so a test can count who judged how much.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

from spmctl.hookspecs import hookimpl


def parity_label(image: Any) -> str:
    import numpy as np

    mean = float(np.asarray(image.convert("RGB"), dtype=np.float64).mean())
    return "cat" if int(mean * 10000) % 2 else "dog"


class ParityClassifier:
    name = "parity"
    kind = "object"
    labels = ["cat", "dog", "bird"]  # "bird" is never said: a concept no image shows

    def predict(self, images: Sequence[Any]) -> list[str]:
        time.sleep(float(os.environ.get("VERDICT_PLUGIN_SECONDS", "0")))
        if os.environ.get("VERDICT_PLUGIN_LOG"):
            with open(os.environ["VERDICT_PLUGIN_LOG"], "a", encoding="utf-8") as log:
                log.write(f"{os.getpid()} {len(images)}\n")
        return [parity_label(im) for im in images]


@hookimpl
def register_classifiers(register) -> None:  # type: ignore[no-untyped-def]
    register(ParityClassifier())
