"""A third-party classifier whose verdicts a test can recompute from the image alone.

`parity` says "cat" when the image's mean pixel value (0..255), times 10000 and rounded down, is
odd, else "dog": about half of any set of images, and known exactly from the PNG.
"""

from __future__ import annotations

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
        return [parity_label(im) for im in images]


@hookimpl
def register_classifiers(register) -> None:  # type: ignore[no-untyped-def]
    register(ParityClassifier())
