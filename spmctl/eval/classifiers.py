"""Style/object classifiers for UnlearnCanvas: the benchmark's timm checkpoints, or a plugin's.

A plugin provides a classifier by registering, through the `register_classifiers` hook, an object
implementing `spmctl.providers.ImageClassifier` (a `name`, a `kind`, its `labels` and
`predict(images)`); users then pass that name to `--style-classifier`/`--object-classifier` instead
of a checkpoint path.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import SpmctlError
from ..providers import ImageClassifier
from .base import MetricUnavailable

if TYPE_CHECKING:
    import torch
    from PIL import Image

KINDS = ("style", "object")
ARCH = "vit_large_patch16_224"  # what the UnlearnCanvas classifiers are trained from
SEED_IMAGES = "Seed_Images"  # the benchmark's style classifier also knows the unstyled photographs


def unlearncanvas_labels(kind: str, num_classes: int | None = None) -> list[str]:
    """The benchmark's label order: `names.json`'s (alphabetical) list, for a head of that size.

    The released style classifier has 51 outputs: the 50 styles plus "Seed_Images" in its
    alphabetical place, so a 51-way head gets that list.
    """
    from ..providers import builtin_names

    names = builtin_names("unlearncanvas_styles" if kind == "style" else "unlearncanvas_objects")
    if num_classes is None or num_classes == len(names):
        return names
    if kind == "style" and num_classes == len(names) + 1:
        bisect.insort(names, SEED_IMAGES)
        return names
    raise SpmctlError(f"the {kind} classifier has {num_classes} classes; UnlearnCanvas has {len(names)} "
                      f"{kind}s{' (or 51 with Seed_Images)' if kind == 'style' else ''}")


def preprocess(images: Sequence[Image.Image], size: int = 224) -> torch.Tensor:
    """The benchmark's transform (accuracy.py: Resize((224, 224)), ToTensor, Normalize([0.5], [0.5])):
    each image resized to size×size with PIL's bilinear filter (what torchvision's Resize does to a PIL
    image), scaled to [0, 1], then to [-1, 1] (mean = std = 0.5 on every channel)."""
    import numpy as np
    import torch
    from PIL import Image

    arrays = [np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR), dtype=np.float32) for im in images]
    batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) / 255.0
    return (batch - 0.5) / 0.5


class TorchClassifier:
    """Any torch module returning logits over `labels`, with the benchmark's preprocessing."""

    def __init__(self, module: Any, labels: list[str], kind: str, name: str, size: int = 224) -> None:
        self.module = module.eval()
        self.labels = labels
        self.kind = kind
        self.name = name
        self.size = size
        self.loader = "module"  # how the network was built: timm, plain (spmctl.eval.vit) or a given module
        self.sha256: str | None = None  # the checkpoint file's, for the results' pins

    def predict(self, images: Sequence[Image.Image]) -> list[str]:
        import torch

        device = next(self.module.parameters()).device
        with torch.inference_mode():
            logits = self.module(preprocess(images, self.size).to(device))
        return [self.labels[i] for i in logits.argmax(dim=-1).tolist()]


def _timm() -> Any:
    """timm, or None where it cannot import (it needs torchvision, which fails beside some torch builds)."""
    try:
        import timm
    except Exception:  # ImportError, or torchvision's "operator torchvision::nms does not exist"
        return None
    return timm


def file_sha256(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_checkpoint(path: Path, kind: str, device: str = "cpu", loader: str = "auto") -> TorchClassifier:
    """The UnlearnCanvas checkpoint: a timm ViT-L/16 state dict under `model_state_dict`.

    `loader`: "timm" (the benchmark's own), "plain" (spmctl.eval.vit, the same network without
    torchvision) or "auto": timm where it imports, else plain.
    """
    import torch

    timm = _timm() if loader in ("auto", "timm") else None
    if loader == "timm" and timm is None:
        raise MetricUnavailable(f"unlearncanvas: loading the {kind} classifier {path} with timm needs timm "
                                "(pip install 'spmctl[eval-unlearncanvas]'); loader 'plain' needs no timm")
    try:  # weights_only: a checkpoint from the internet must not run code on load
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise SpmctlError(f"cannot read the {kind} classifier {path}: {type(exc).__name__}: {exc}") from None
    if isinstance(state, dict) and "model_state_dict" in state:
        state = state["model_state_dict"]
    if not isinstance(state, dict) or "head.weight" not in state:
        raise SpmctlError(f"{path}: not a timm {ARCH} state dict (no 'head.weight' under 'model_state_dict')")
    labels = unlearncanvas_labels(kind, int(state["head.weight"].shape[0]))
    try:
        if timm is not None:
            model = timm.create_model(ARCH, pretrained=False, num_classes=len(labels))
            model.load_state_dict(state)
        else:
            from .vit import from_state_dict

            model = from_state_dict(state)
    except (RuntimeError, KeyError, ValueError) as exc:
        detail = " ".join(str(exc).split())  # torch's message spans lines: keep it one
        raise SpmctlError(f"{path}: does not fit timm {ARCH}: {type(exc).__name__}: {detail[:300]}") from None
    classifier = TorchClassifier(model.to(device), labels, kind, name=str(path))
    classifier.loader = "timm" if timm is not None else "plain"
    classifier.sha256 = file_sha256(path)
    return classifier


def plugin_classifiers() -> dict[str, Any]:
    from ..plugins import get_classifiers

    return get_classifiers()


def resolve_classifier(spec: Any, kind: str, device: str = "cpu", loader: str = "auto") -> Any:
    """A classifier object, a registered classifier's name, or a checkpoint path -> a classifier."""
    if spec is None or isinstance(spec, ImageClassifier):
        return spec
    registered = plugin_classifiers()
    if str(spec) in registered:
        classifier = registered[str(spec)]
        if classifier.kind != kind:
            raise SpmctlError(f"classifier {spec!r} classifies {classifier.kind}s, not {kind}s")
        return classifier
    path = Path(str(spec))
    if path.is_file():
        return load_checkpoint(path, kind, device, loader)
    known = ", ".join(sorted(registered)) or "none registered"
    raise SpmctlError(f"--{kind}-classifier {spec!r}: no such file or plugin classifier (plugin classifiers: "
                      f"{known})")
