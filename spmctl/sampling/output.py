"""What a sampling run leaves on disk: PNGs with text metadata, `manifest.jsonl`, `grid.png`.

Every PNG is written to a temporary name and renamed; each manifest line is appended and flushed
after its PNG is in place, so an interrupted run leaves only complete images and at most one torn
last line (ignored on reading). At the end the manifest is rewritten once, atomically, in job order
and without duplicates.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from ..fileio import atomic_write, make_parents, remove_empty, write_error, write_text_atomic
from ..image_index import MANIFEST, read_manifest
from ..names import slug
from .generate import Job

GRID = "grid.png"
# what must agree for an existing image to count as this run's image
SETTINGS_KEYS = (
    "prompt",
    "seed",
    "index",
    "image_seed",
    "guidance",
    "width",
    "height",
    "steps",
    "spms",
    "spm_sha256",
    "gates",
    "negative_prompt",
    "model",
    "noise_scheduler",
    "ft_compat",
    "clip_skip",
    "precision",
)


def file_names(jobs: Iterable[Job]) -> list[str]:
    """`<slug>_<seed>_<idx>.png`; a name two different jobs would share gets a short hash suffix."""
    names: list[str] = []
    owner: dict[str, Job] = {}
    for job in jobs:
        stem = f"{slug(job.prompt)}_{job.seed}_{job.index}"
        if stem in owner and owner[stem] != job:
            key = f"{job.prompt}|{job.seed}|{job.index}|{job.guidance}|{job.width}x{job.height}"
            stem = f"{stem}_{hashlib.sha1(key.encode()).hexdigest()[:8]}"
        owner.setdefault(stem, job)
        names.append(f"{stem}.png")
    return names


def differing_setting(old: dict[str, Any], new: dict[str, Any]) -> str | None:
    for key in SETTINGS_KEYS:
        if json.dumps(old.get(key)) != json.dumps(new.get(key)):
            return key
    return None


class ManifestWriter:
    """Appends a record per image (flushed, so an interruption loses at most a torn line) and
    rewrites the manifest in run order at the end. `path`: another file than the folder's manifest
    (one process's part under torchrun)."""

    def __init__(self, folder: Path, existing: dict[str, dict[str, Any]], path: Path | None = None) -> None:
        self.folder = folder
        self.path = path or folder / MANIFEST
        self.records = dict(existing)
        self._created = make_parents(self.path)
        try:
            self._handle = self.path.open("a", encoding="utf-8")
        except OSError as exc:
            remove_empty(self._created)
            raise write_error(self.path, exc) from None

    def add(self, record: dict[str, Any]) -> None:
        self.records[record["file"]] = record
        try:
            self._handle.write(json.dumps(record) + "\n")
            self._handle.flush()
        except OSError as exc:
            raise write_error(self.path, exc) from None

    def finish(self, order: list[str], failed: bool = False) -> None:
        with contextlib.suppress(OSError):  # a full disk: the error being raised says so already
            self._handle.close()
        if failed and not self.records:  # nothing made: leave nothing behind
            self.path.unlink(missing_ok=True)
            remove_empty(self._created)
            return
        keep = [self.records[name] for name in order if name in self.records]
        others = [r for name, r in self.records.items() if name not in set(order)]  # earlier runs' images
        write_text_atomic(self.path, "".join(json.dumps(r) + "\n" for r in others + keep))


def to_pil(image: np.ndarray):
    from PIL import Image

    return Image.fromarray((np.clip(image, 0.0, 1.0) * 255).round().astype(np.uint8))


def a1111_parameters(record: dict[str, Any]) -> str:
    """The `parameters` text A1111-style tools show for an image."""
    lines = [record["prompt"]]
    if record.get("negative_prompt"):
        lines.append(f"Negative prompt: {record['negative_prompt']}")
    spms = ", ".join(f"{s}: {g:.4g}" for s, g in zip(record["spms"], record["gates"], strict=True))
    lines.append(
        f"Steps: {record['steps']}, Sampler: {record['noise_scheduler']}, CFG scale: {record['guidance']}, "
        f"Seed: {record['image_seed']}, Size: {record['width']}x{record['height']}, "
        f"Model: {record['model']}, SPM gates: {spms or 'none'}"
    )
    return "\n".join(lines)


def save_png(path: Path, image: np.ndarray, record: dict[str, Any]) -> None:
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("parameters", a1111_parameters(record))
    for key in ("prompt", "negative_prompt", "seed", "image_seed", "spms", "gates"):
        value = record.get(key)
        info.add_text(key, value if isinstance(value, str) else json.dumps(value))
    info.add_text("spmctl", json.dumps(record))
    pil = to_pil(image)
    atomic_write(path, lambda tmp: pil.save(tmp, format="PNG", pnginfo=info))


def write_grid(folder: Path, files: list[str], limit: int = 256, cell: int = 256) -> Path | None:
    """A contact sheet of (up to `limit` of) the run's images, each scaled to `cell` px (small ones
    enlarged, pixel-sharp) and labelled with its prompt and gates from the run's manifest."""
    from PIL import Image, ImageDraw, ImageFont

    paths = [folder / f for f in files[:limit] if (folder / f).is_file()]
    if not paths:
        return None
    labels = _grid_labels(folder)
    font = ImageFont.load_default()
    line = 12
    cols = math.ceil(math.sqrt(len(paths)))
    rows = math.ceil(len(paths) / cols)
    height = cell + 2 * line + 4
    sheet = Image.new("RGB", (cols * cell, rows * height), "white")
    draw = ImageDraw.Draw(sheet)
    chars = max(8, cell // 6)  # the default bitmap font is ~6 px wide
    for i, path in enumerate(paths):
        x, y = (i % cols) * cell, (i // cols) * height
        with Image.open(path) as img:
            image = img.convert("RGB")
        scale = cell / max(image.size)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.NEAREST if scale >= 2 else Image.Resampling.LANCZOS)
        sheet.paste(image, (x + (cell - size[0]) // 2, y))
        prompt, gates = labels.get(path.name, (path.stem, ""))
        prompt = prompt if len(prompt) <= chars else prompt[: chars - 1] + "~"
        draw.text((x + 2, y + cell + 1), prompt, fill="black", font=font)
        draw.text((x + 2, y + cell + 1 + line), gates[:chars], fill="dimgray", font=font)
    target = folder / GRID
    atomic_write(target, lambda tmp: sheet.save(tmp, format="PNG"))
    return target


def _grid_labels(folder: Path) -> dict[str, tuple[str, str]]:
    """file -> (prompt, "gates 0.93, 0.05") from the run's manifest.jsonl (what is there of it)."""
    out: dict[str, tuple[str, str]] = {}
    for name, record in read_manifest(folder).items():
        try:
            gates = record.get("gates") or []
            shown = "gates " + ", ".join(f"{float(g):.2f}" for g in gates) if gates else "base model"
            out[name] = (str(record.get("prompt", "")), shown)
        except (ValueError, TypeError):
            continue  # a malformed record: that image keeps its file name as label
    return out
