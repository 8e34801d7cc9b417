"""Load a Stable Diffusion model from wherever the user has it, with one clear line on failure.

Accepted: `tiny` / `builtin:tiny-sd` (the built-in tiny model), a local diffusers
folder, a single-file checkpoint (`.ckpt`, loaded with weights_only, or
`.safetensors`) for SD 1.x and 2.x, or a Hugging Face hub id.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import SpmctlError, one_line
from ..names import DTYPES, MODEL_SCHEDULER, NOISE_SCHEDULERS
from .tiny import build_tiny_pipeline, is_tiny


@dataclass
class SDModel:
    """The parts of a Stable Diffusion model that spmctl uses."""

    tokenizer: Any
    text_encoder: Any
    unet: Any
    vae: Any
    scheduler_config: dict[str, Any]
    source: str

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1) if self.vae is not None else 8


def torch_dtype(name: str):
    import torch

    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; expected one of {', '.join(DTYPES)}")
    return getattr(torch, name)


def quiet_libraries() -> None:
    """Silence library chatter that is not about the user's run (e.g. optional-backend notices)."""
    try:
        from transformers.utils import logging as tlog

        tlog.set_verbosity_error()
    except ImportError:  # pragma: no cover
        pass
    try:
        from diffusers.utils import logging as dlog

        dlog.set_verbosity_error()
    except ImportError:  # pragma: no cover
        logging.getLogger("diffusers").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*torchvision.*")


def make_scheduler(name: str, base_config: dict[str, Any], v_pred: bool = False):
    """A noise scheduler `name` built from `base_config` (the model's scheduler config). `model`: the
    model's own scheduler class (PNDM for SD 1.4), what the original SPM code samples with."""
    import diffusers

    if name == MODEL_SCHEDULER:
        cls = _model_scheduler_class(base_config)
    elif name in NOISE_SCHEDULERS:
        cls = getattr(diffusers, NOISE_SCHEDULERS[name])
    else:
        raise SpmctlError(f"unknown noise scheduler {name!r}; expected one of "
                          f"{', '.join([*NOISE_SCHEDULERS, MODEL_SCHEDULER])}")
    config = {k: v for k, v in base_config.items() if not k.startswith("_")}
    if name != MODEL_SCHEDULER or v_pred:  # the model's own scheduler keeps its prediction type
        config["prediction_type"] = "v_prediction" if v_pred else "epsilon"
    try:
        return cls.from_config(config)
    except ImportError as exc:  # e.g. lms needs scipy
        missing = "scipy" if "scipy" in str(exc) else one_line(exc)
        raise SpmctlError(f"noise scheduler {name!r} needs {missing}: pip install {missing}") from None


def _model_scheduler_class(config: dict[str, Any]):
    import diffusers

    name = str(config.get("_class_name", ""))
    cls = getattr(diffusers, name, None) if name.endswith("Scheduler") else None
    if cls is None or not isinstance(cls, type) or not issubclass(cls, diffusers.SchedulerMixin):
        raise SpmctlError(f"noise scheduler 'model': the model's scheduler {name or '(unnamed)'!r} is not a "
                          f"diffusers scheduler; choose one of {', '.join(NOISE_SCHEDULERS)}")
    return cls


def _from_pipeline(pipe: Any, source: str) -> SDModel:
    # the class name goes with the config: `--noise-scheduler model` rebuilds the model's own scheduler
    config = {**pipe.scheduler.config, "_class_name": type(pipe.scheduler).__name__}
    return SDModel(pipe.tokenizer, pipe.text_encoder, pipe.unet, pipe.vae, config, source)


def _check_architecture(model: SDModel) -> None:
    from diffusers import UNet2DConditionModel

    if not isinstance(model.unet, UNet2DConditionModel):
        raise SpmctlError(f"{model.source}: unsupported architecture {type(model.unet).__name__} "
                          "(spmctl supports SD 1.x/2.x UNet2DConditionModel)")
    if getattr(model.unet.config, "addition_embed_type", None):
        raise SpmctlError(f"{model.source}: SDXL-style UNets are not supported yet (SD 1.x/2.x only)")


def load_sd_model(path: str, *, v2: bool = False, v_pred: bool = False, dtype: str = "float32",
                  device: str = "cpu", config: str | None = None) -> SDModel:
    """Load the model at `path`; every failure is one SpmctlError line naming the path.

    `config`: for a single-file checkpoint, a diffusers folder or hub id whose configs describe it
    (offline, a single file cannot be turned into a pipeline without them)."""
    quiet_libraries()
    if is_tiny(path):
        model = _from_pipeline(build_tiny_pipeline(), "builtin:tiny-sd")
        if device == "cpu" and "OMP_NUM_THREADS" not in os.environ:
            # The tiny model's ops take microseconds: worker threads only add hand-offs, and on a busy
            # machine spinning OpenMP workers slow it down many times over. OMP_NUM_THREADS overrides.
            import torch

            torch.set_num_threads(1)
    else:
        model = _load_external(path, v2=v2, v_pred=v_pred, config=config)
    _check_architecture(model)
    torch_type = torch_dtype(dtype)
    for part in (model.unet, model.text_encoder, model.vae):
        if part is not None:
            part.requires_grad_(False)
            # cast only when needed: diffusers warns on every .to() that names a dtype, even a no-op one
            if part.dtype == torch_type:
                part.to(device)
            else:
                part.to(device=device, dtype=torch_type)
            part.eval()
    return model


def _load_external(path: str, *, v2: bool, v_pred: bool, config: str | None = None) -> SDModel:
    from diffusers import StableDiffusionPipeline

    local = Path(path).expanduser()
    kwargs: dict[str, Any] = {"safety_checker": None, "requires_safety_checker": False}
    if local.is_dir():
        if not (local / "model_index.json").exists() and not (local / "unet").is_dir():
            raise SpmctlError(f"{path}: not a diffusers model folder (no model_index.json or unet/)")
        try:
            return _from_pipeline(StableDiffusionPipeline.from_pretrained(local, **kwargs), str(local))
        except Exception as exc:
            raise SpmctlError(f"{path}: cannot load diffusers folder: {one_line(exc, limit=300)}") from None
    if local.suffix in {".ckpt", ".safetensors", ".pt", ".bin"}:
        if not local.exists():
            raise SpmctlError(f"{path}: model file not found")
        return _load_single_file(local, v2=v2, v_pred=v_pred, config=config)
    if local.exists():
        raise SpmctlError(f"{path}: not a model (expected a diffusers folder, .ckpt or .safetensors)")
    if not _looks_like_hub_id(path):
        raise SpmctlError(f"{path}: model not found (no such folder or file, and not a hub id "
                          f"'owner/name'){_download_hint(path)}")
    try:
        return _from_pipeline(StableDiffusionPipeline.from_pretrained(path, **kwargs), path)
    except Exception as exc:
        raise SpmctlError(_hub_error(path, exc)) from None


def _looks_like_hub_id(path: str) -> bool:
    """'owner/name', and not a missing local path: `models/compvis` (the seed's download layout)
    or a path whose first folder exists here is a local folder the user has not fetched yet."""
    if path.count("/") != 1 or path.startswith((".", "/", "~")) or "\\" in path:
        return False
    first = path.split("/", 1)[0]
    return first not in ("models", "data", "outputs") and not Path(first).is_dir()


def _download_hint(path: str) -> str:
    """`; fetch it with ...` when `spmctl download model` knows a source that lands at `path`."""
    try:
        from ..download.manifest import load_manifest

        for name, source in load_manifest().models.items():
            if Path(source.dest) == Path(path):
                return f"; fetch it with `spmctl download model {name}`"
    except Exception:  # the hint is a courtesy: a broken sources file must not hide the real error
        pass
    return ""


def _hub_error(hub_id: str, exc: BaseException) -> str:
    """The hub client's failure in spmctl's terms (its own advice names library arguments)."""
    names = {t.__name__ for t in type(exc).__mro__}
    text = str(exc)
    fetch = f"fetch it with `spmctl download model {hub_id}` and pass -m models/{hub_id}"
    if "GatedRepoError" in names or "gated" in text.lower():
        return (f"{hub_id}: the hub refuses access (a gated or private model): accept its terms on its "
                "hub page, log in with `hf auth login`, then try again")
    if "RepositoryNotFoundError" in names or "is not a valid model identifier" in text or "404" in text:
        return f"{hub_id}: no such model on the hub (check the id; a private one needs `hf auth login`)"
    if ("LocalEntryNotFoundError" in names or "not fully cached" in text or "Couldn't connect" in text
            or "offline" in text.lower() or "Connection" in text):
        return (f"{hub_id}: not downloaded yet and the hub cannot be reached (offline, or HF_HUB_OFFLINE "
                f"set); {fetch} (--endpoint for a mirror)")
    return f"{hub_id}: cannot load from the hub: {one_line(exc, limit=300).split(' (')[0]}; or {fetch}"


def _load_single_file(path: Path, *, v2: bool, v_pred: bool, config: str | None = None) -> SDModel:
    """A CompVis/A1111 single-file checkpoint. `.ckpt` pickles are read with weights_only=True."""
    from diffusers import StableDiffusionPipeline

    if path.suffix in {".ckpt", ".pt", ".bin"}:
        _check_pickle_safe(path)
    kwargs: dict[str, Any] = {"safety_checker": None, "requires_safety_checker": False}
    if v_pred:
        kwargs["prediction_type"] = "v_prediction"
    if config:
        kwargs["config"] = config
        kwargs["local_files_only"] = Path(config).expanduser().is_dir()
    elif v2:
        kwargs["config"] = "stabilityai/stable-diffusion-2-1" if v_pred else "stabilityai/stable-diffusion-2-1-base"
    try:
        pipe = StableDiffusionPipeline.from_single_file(str(path), **kwargs)
    except Exception as exc:
        hint = " (is it SD 2.x? set pretrained_model.v2)" if not v2 else ""
        if not config:
            hint += ("; offline, set pretrained_model.config to a diffusers folder (or hub id) holding "
                     "this model's configs")
        raise SpmctlError(f"{path}: cannot load single-file checkpoint: {one_line(exc, limit=300)}{hint}") from None
    return _from_pipeline(pipe, str(path))


def _check_pickle_safe(path: Path) -> None:
    import zipfile

    import torch

    # mmap works only for the zip format; the legacy (pre-1.6) format is read whole, still weights-only
    mmap = zipfile.is_zipfile(path)
    try:
        torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:
        raise SpmctlError(f"{path}: unreadable checkpoint (loaded with weights_only=True, no arbitrary "
                          f"pickle): {one_line(exc, limit=300)}") from None


