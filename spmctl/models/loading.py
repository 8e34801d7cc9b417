"""Loading diffusers models, for every family: sources, dtypes, schedulers, one clear line on failure.

Accepted sources: a local diffusers folder, a single-file checkpoint (`.ckpt`, loaded with
weights_only, or `.safetensors`), or a Hugging Face hub id. Which pipeline class reads them, and
what a single file needs, is the model family's (`spmctl.families`); the built-in tiny models are
the families' too.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import SpmctlError, one_line
from ..names import DTYPES, MODEL_SCHEDULER, NOISE_SCHEDULERS


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


def load_pipeline(path: str, pipeline_cls: Any, single_file: Callable[[Path], Any],
                  kwargs: dict[str, Any] | None = None) -> Any:
    """The diffusers pipeline `pipeline_cls` at `path` (folder or hub id); a single-file checkpoint
    goes to `single_file(path)` (the family knows what its files need). Failures: one line."""
    local = Path(path).expanduser()
    kwargs = dict(kwargs or {})
    if local.is_dir():
        if not (local / "model_index.json").exists() and not (local / "unet").is_dir():
            raise SpmctlError(f"{path}: not a diffusers model folder (no model_index.json or unet/)")
        try:
            return pipeline_cls.from_pretrained(local, **kwargs)
        except Exception as exc:
            raise SpmctlError(f"{path}: cannot load diffusers folder: {one_line(exc, limit=300)}") from None
    if local.suffix in {".ckpt", ".safetensors", ".pt", ".bin"}:
        if not local.exists():
            raise SpmctlError(f"{path}: model file not found")
        if local.suffix in {".ckpt", ".pt", ".bin"}:
            _check_pickle_safe(local)
        return single_file(local)
    if local.exists():
        raise SpmctlError(f"{path}: not a model (expected a diffusers folder, .ckpt or .safetensors)")
    if not _looks_like_hub_id(path):
        raise SpmctlError(f"{path}: model not found (no such folder or file, and not a hub id "
                          f"'owner/name'){_download_hint(path)}")
    try:
        return pipeline_cls.from_pretrained(path, **kwargs)
    except Exception as exc:
        raise SpmctlError(_hub_error(path, exc)) from None


def prepare_parts(parts: list[Any], dtype: str, device: str) -> None:
    """Freeze every part, cast it to `dtype` and move it to `device`, in eval mode."""
    torch_type = torch_dtype(dtype)
    for part in parts:
        if part is None:
            continue
        part.requires_grad_(False)
        # cast only when needed: diffusers warns on every .to() that names a dtype, even a no-op one
        if part.dtype == torch_type:
            part.to(device)
        else:
            part.to(device=device, dtype=torch_type)
        part.eval()


def tiny_threads(device: str) -> None:
    """The tiny models' ops take microseconds: worker threads only add hand-offs, and on a busy
    machine spinning OpenMP workers slow them down many times over. OMP_NUM_THREADS overrides."""
    if device == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        import torch

        torch.set_num_threads(1)


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


