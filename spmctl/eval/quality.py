"""Image quality: CLIP score (image vs its prompt) and FID (against a reference run), via torchmetrics.

Both need weights their libraries fetch on first use (CLIP from the Hugging Face hub, Inception
through torch-fidelity). Offline and uncached, each fails with one line naming what is missing,
and `evaluate_all` keeps the other metrics' results.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import SpmctlError, one_line
from ..hookspecs import hookimpl
from .base import EvalRun, MetricResult, MetricUnavailable, load_runs

if TYPE_CHECKING:
    import torch

DEFAULT_CLIP = "openai/clip-vit-large-patch14"
FID_SIZE = 299  # Inception's input size; images are resized so batches of mixed sizes stack


def _torchmetrics(metric: str, extra: str = "eval") -> None:
    try:
        import torchmetrics  # noqa: F401
    except ImportError:
        raise MetricUnavailable(f"{metric}: needs torchmetrics (pip install 'spmctl[{extra}]')") from None


def load_images(paths: Sequence[Path], size: int | None = None) -> list[torch.Tensor]:
    """uint8 (3, H, W) tensors; resized to size×size when given."""
    import numpy as np
    import torch
    from PIL import Image

    out = []
    for path in paths:
        with Image.open(path) as im:
            rgb = im.convert("RGB")
        if size is not None:
            rgb = rgb.resize((size, size), Image.BICUBIC)
        out.append(torch.from_numpy(np.array(rgb)).permute(2, 0, 1).contiguous())
    return out


def _features_as_tensors(model: Any) -> Any:
    """Make `get_image_features`/`get_text_features` return tensors, as torchmetrics expects.

    transformers 5 returns a model output (projected features in `pooler_output`) where 4.x
    returned the tensor; torchmetrics (1.9) still calls `.norm()` on the result.
    """
    for name in ("get_image_features", "get_text_features"):
        original = getattr(model, name)

        def as_tensor(*args: Any, _original: Any = original, **kwargs: Any) -> Any:
            out = _original(*args, **kwargs)
            return out if hasattr(out, "norm") else out.pooler_output

        setattr(model, name, as_tensor)
    return model


def _hub_resolves() -> bool:
    """Whether the hub's host name resolves: offline, fail at once instead of after the hub's retries.

    Behind a proxy the name may only resolve there, so then the download is simply tried.
    """
    import socket
    from urllib.parse import urlparse

    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY")):
        return True
    host = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co").hostname or "huggingface.co"
    try:
        socket.getaddrinfo(host, 443)
    except OSError:
        return False
    return True


FID_MISSING = ("fid: needs torch-fidelity for its Inception network (pip install 'spmctl[eval-fid]'; "
               "it needs torchvision)")


def fid_unavailable() -> str | None:
    """Why FID cannot be computed here (its Inception network's package is missing), else None:
    asked before a benchmark trains, so the answer comes before hours of work, not after."""
    import importlib.util

    if importlib.util.find_spec("torch_fidelity") is None:
        return FID_MISSING
    return None


def clip_unavailable(model: str) -> str | None:
    """Why CLIP weights `model` cannot be loaded here (offline and not in the hub cache), else None.
    Only checks where they would come from; loading them is left to the metric."""
    if Path(model).is_dir():
        return None
    try:
        from huggingface_hub import try_to_load_from_cache

        if isinstance(try_to_load_from_cache(model, "config.json"), str):
            return None
    except Exception:  # an id the hub library rejects: the metric says why when it runs
        return None
    return clip_offline(model) if _hub_offline() or not _hub_resolves() else None


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE") in ("1", "true", "True")


def clip_offline(model: str) -> str:
    return (f"clip_score: CLIP weights {model!r} are not available offline (not in the Hugging Face cache; "
            "--clip-model takes a local folder)")


def load_clip(model: str) -> tuple[Any, Any]:
    """CLIP model and processor from a local folder or the hub cache, downloading only if allowed."""
    from transformers import CLIPModel, CLIPProcessor

    def attempt(local_only: bool) -> tuple[Any, Any]:
        return (_features_as_tensors(CLIPModel.from_pretrained(model, local_files_only=local_only).eval()),
                CLIPProcessor.from_pretrained(model, local_files_only=local_only))

    try:  # the cache first: no network round trip when the weights are already here
        return attempt(True)
    except Exception:
        if Path(model).is_dir() or _hub_offline():
            raise MetricUnavailable(clip_offline(model)) from None
    if not _hub_resolves():
        raise MetricUnavailable(f"clip_score: CLIP weights {model!r} are not available: not in the Hugging Face "
                                "cache and the hub cannot be reached (no network?)")
    try:
        return attempt(False)
    except Exception as exc:
        reason = one_line(exc, limit=160)
        raise MetricUnavailable(f"clip_score: CLIP weights {model!r} are not available: not in the Hugging Face "
                                f"cache and the download failed ({reason})") from None


class ClipScoreMetric:
    name = "clip_score"
    description = "CLIP score of each image against its prompt (torchmetrics), mean per run"

    def evaluate(self, runs: Sequence[EvalRun], clip_model: str = DEFAULT_CLIP, batch_size: int = 16,
                 device: str = "cpu", **_: Any) -> MetricResult:
        _torchmetrics(self.name)
        for run in runs:  # before loading CLIP: a folder without prompts can't be scored
            if any(not r.get("prompt") for r in run.records):
                raise SpmctlError(f"clip_score: {run.label}: images without a prompt (no {run.folder}/manifest.jsonl?)")
        from torchmetrics.multimodal.clip_score import CLIPScore

        loaded = load_clip(clip_model)
        result = MetricResult(metric=self.name, notes=[f"CLIP model: {clip_model}"])
        for run in runs:
            print(f"clip_score: {run.label}: {len(run.records)} images", file=sys.stderr)
            metric = CLIPScore(model_name_or_path=lambda: loaded).to(device)
            for start in range(0, len(run.records), batch_size):
                chunk = run.records[start : start + batch_size]
                images = [image.to(device) for image in load_images([run.image_path(r) for r in chunk])]
                metric.update(images, [r["prompt"] for r in chunk])
            result.table[run.label] = {"images": len(run.records), "clip_score": round(float(metric.compute()), 4)}
        result.charts = {"clip_score": {k: {"clip_score": float(v["clip_score"])} for k, v in result.table.items()}}
        return result


def make_fid(feature: Any) -> Any:
    _torchmetrics("fid", "eval-fid")
    from torchmetrics.image.fid import FrechetInceptionDistance

    try:
        return FrechetInceptionDistance(feature=feature, normalize=True)
    except ModuleNotFoundError:
        raise MetricUnavailable(FID_MISSING) from None
    except Exception as exc:  # the Inception weights are downloaded on first use
        raise MetricUnavailable(f"fid: Inception weights (torch-fidelity's pt_inception-2015-12-05) are not "
                                f"available: {one_line(exc, limit=160, with_type=True)}") from None


def _update(fid: Any, run: EvalRun, real: bool, batch_size: int, device: str = "cpu") -> None:
    import torch

    for start in range(0, len(run.records), batch_size):
        images = load_images(run.paths[start : start + batch_size], FID_SIZE)
        fid.update((torch.stack(images).float() / 255.0).to(device), real=real)


class FidReference:
    """FID against one reference set, its statistics computed once (on first use) for every run scored."""

    def __init__(self, reference: EvalRun, feature: Any = 2048, batch_size: int = 32, device: str = "cpu") -> None:
        self.reference, self.feature, self.batch_size, self.device = reference, feature, batch_size, device
        self._fid: Any = None
        _at_least_two(reference)

    def score(self, run: EvalRun) -> float:
        _at_least_two(run)
        if self._fid is None:
            fid = make_fid(self.feature)
            fid.reset_real_features = False  # the reference's statistics are kept across runs
            fid.to(self.device)
            ref = self.reference
            print(f"fid: reference {ref.label} ({ref.folder}): {len(ref.records)} images", file=sys.stderr)
            _update(fid, ref, True, self.batch_size, self.device)
            self._fid = fid
        print(f"fid: {run.label}: {len(run.records)} images", file=sys.stderr)
        self._fid.reset()
        _update(self._fid, run, False, self.batch_size, self.device)
        return round(float(self._fid.compute()), 4)


def _at_least_two(run: EvalRun) -> None:
    if len(run.records) < 2:
        raise SpmctlError(f"fid: {run.label}: needs at least 2 images, has {len(run.records)}")


class FidMetric:
    name = "fid"
    description = "FID of each run against a reference folder (default: the first run), torchmetrics"

    def evaluate(self, runs: Sequence[EvalRun], reference: str | Path | EvalRun | None = None, feature: Any = 2048,
                 batch_size: int = 32, device: str = "cpu", **_: Any) -> MetricResult:
        """`feature`: Inception feature size, or (tests, plugins) any module mapping images to features;
        `reference`: a folder, or the images themselves (an EvalRun, e.g. a dataset's)."""
        if isinstance(reference, EvalRun):
            ref = reference
        else:
            ref = load_runs([reference], ["reference"])[0] if reference is not None else runs[0]
        for run in runs:
            _at_least_two(run)
        against = FidReference(ref, feature, batch_size, device)
        result = MetricResult(metric=self.name, notes=[f"reference: {ref.folder}"])
        for run in runs:
            fid = None if run is ref else against.score(run)
            result.table[run.label] = {"images": len(run.records), "fid": fid}
        result.charts = {"fid": {k: {"fid": float(v["fid"])} for k, v in result.table.items() if v["fid"] is not None}}
        return result


@hookimpl
def register_metrics(register) -> None:  # type: ignore[no-untyped-def]
    register(ClipScoreMetric())
    register(FidMetric())
