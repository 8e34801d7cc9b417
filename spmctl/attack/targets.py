"""Target images: the concept image an attack steers toward, and its latents."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError


def _open(path: Path, want: tuple[int, int]) -> Any:
    from PIL import Image

    try:
        with Image.open(path) as im:
            image = im.convert("RGB")
    except OSError as exc:
        raise ConfigError(f"target image {path}: cannot read: {exc}") from None
    if image.size != want:
        raise ConfigError(f"target image {path}: {image.size[0]}x{image.size[1]}, expected {want[0]}x{want[1]} "
                          "(the attack's --width x --height)")
    return image


def given_target(cfg: Any, item: Any) -> Any:
    """The user's image for this prompt: from --target-images (a folder `spmctl sample` wrote; the
    image of the same prompt, preferably the same seed), else the dataset row's own image; or None."""
    from ..eval.base import read_records

    want = (item.job.width, item.job.height)
    if cfg.target_images:
        folder = Path(cfg.target_images)
        if not folder.is_dir():
            raise ConfigError(f"--target-images {folder}: no such folder")
        records = [r for r in read_records(folder) if r.get("prompt") == item.job.prompt]
        if not records:
            raise ConfigError(f"--target-images {folder}: no image of prompt {item.job.prompt[:60]!r} "
                              "in its manifest.jsonl")
        records.sort(key=lambda r: r.get("seed") != item.job.seed)
        return _open(folder / records[0]["file"], want)
    return _open(Path(item.image), want) if item.image else None


def encode_images(model: Any, images: list[Any]) -> torch.Tensor:
    """VAE latents (mean of the posterior, scaled), float32, as the references encode x0."""
    import numpy as np

    vae = model.vae
    arrays = np.stack([np.asarray(im, dtype=np.float32) / 127.5 - 1.0 for im in images])
    pixels = torch.from_numpy(arrays).permute(0, 3, 1, 2).to(vae.device, vae.dtype)
    with torch.no_grad():
        latents = vae.encode(pixels).latent_dist.mean * vae.config.scaling_factor
    return latents.float()
