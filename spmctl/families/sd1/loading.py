"""Loading an SD 1.x/2.x model: a StableDiffusionPipeline from a folder, a single file or the hub."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...errors import SpmctlError, one_line
from ...models.loading import load_pipeline, prepare_parts, quiet_libraries, tiny_threads
from ..base import LoadOptions, ModelBundle

_NO_CHECKER: dict[str, Any] = {"safety_checker": None, "requires_safety_checker": False}


def from_pipeline(family: Any, pipe: Any, source: str, v_pred: bool = False) -> ModelBundle:
    return ModelBundle(family, source, pipe.unet, pipe.vae, family.scheduler_config_of(pipe), (pipe.tokenizer,),
                       (pipe.text_encoder,), {"v_pred": v_pred})


def check_architecture(model: ModelBundle) -> None:
    from diffusers import UNet2DConditionModel

    if not isinstance(model.denoiser, UNet2DConditionModel):
        raise SpmctlError(f"{model.source}: unsupported architecture {type(model.denoiser).__name__} "
                          "(the sd1 family is SD 1.x/2.x UNet2DConditionModel)")
    if getattr(model.denoiser.config, "addition_embed_type", None):
        raise SpmctlError(f"{model.source}: an SDXL-style UNet, not SD 1.x/2.x (set pretrained_model.family)")


def load_sd1(family: Any, path: str, options: LoadOptions) -> ModelBundle:
    """Load the model at `path`; every failure is one SpmctlError line naming the path.

    `options.config`: for a single-file checkpoint, a diffusers folder or hub id whose configs describe
    it (offline, a single file cannot be turned into a pipeline without them)."""
    quiet_libraries()  # before diffusers' pipelines are imported: importing them is chatty
    from diffusers import StableDiffusionPipeline

    if family.is_tiny(path):
        from .tiny import build_tiny_pipeline

        model = from_pipeline(family, build_tiny_pipeline(), "builtin:tiny-sd", options.v_pred)
        tiny_threads(options.device)
    else:
        pipe = load_pipeline(path, StableDiffusionPipeline, lambda file: _single_file(file, options), _NO_CHECKER)
        model = from_pipeline(family, pipe, str(Path(path).expanduser()) if Path(path).expanduser().exists()
                              else path, options.v_pred)
    check_architecture(model)
    prepare_parts([model.denoiser, model.text_encoder, model.vae], options.dtype, options.device)
    return model


def _single_file(path: Path, options: LoadOptions) -> Any:
    """A CompVis/A1111 single-file checkpoint (a `.ckpt` was checked to load with weights_only)."""
    from diffusers import StableDiffusionPipeline

    kwargs: dict[str, Any] = dict(_NO_CHECKER)
    v2, config = options.v2, options.config
    if options.v_pred:
        kwargs["prediction_type"] = "v_prediction"
    if config:
        kwargs["config"] = config
        kwargs["local_files_only"] = Path(config).expanduser().is_dir()
    elif v2:
        kwargs["config"] = ("stabilityai/stable-diffusion-2-1" if options.v_pred
                            else "stabilityai/stable-diffusion-2-1-base")
    try:
        return StableDiffusionPipeline.from_single_file(str(path), **kwargs)
    except Exception as exc:
        hint = " (is it SD 2.x? set pretrained_model.v2)" if not v2 else ""
        if not config:
            hint += ("; offline, set pretrained_model.config to a diffusers folder (or hub id) holding "
                     "this model's configs")
        raise SpmctlError(f"{path}: cannot load single-file checkpoint: {one_line(exc, limit=300)}{hint}") from None
