"""`spmctl sample`'s configuration: base model, membranes, prompts, generation and FT settings.

Layering as for every command: defaults < `--config` YAML < `SPMCTL_*` environment < flags/`--set`.
The original SPM `generation.yaml` keys (`prompts`, `negative_prompt`, `width`, `height`,
`num_inference_steps`, `guidance_scale`, `seed`, `generate_num`, `save_path`) load too: they are
renamed to ours before validation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from ..errors import config_error
from ..names import DEFAULT_FT_METRIC, DTYPES, FT_METRICS, FTMetric, SampleNoiseScheduler
from .loader import COMMAND_LINE, CommandSettings, build_config, expand_dotted, read_yaml
from .train import MAX_SEED, Seed, _precision, multiple_of_8

# original SPM generation.yaml key -> our key
_ORIGINAL_KEYS = {
    "num_inference_steps": "steps",
    "guidance_scale": "guidance",
    "generate_num": "images_per_prompt",
    "seed": "seeds",
    "save_path": "output_dir",
    "matching_metric": "ft_metric",
    "spm_multiplier": "multiplier",
    "spm_path": "spms",
    "base_model": "model",
}


class SampleConfig(CommandSettings):
    # the base model (as in `spmctl train`'s pretrained_model section)
    model: str | None = Field(
        None,
        description="hub id, diffusers folder, .ckpt/.safetensors file, or 'tiny' (default: the base "
        "model the membranes record, else CompVis/stable-diffusion-v1-4)",
    )
    v2: bool = Field(False, description="the checkpoint is SD 2.x")
    v_pred: bool = Field(False, description="v-prediction model (SD 2.x 768)")
    clip_skip: int = Field(1, ge=1, description="condition on the text encoder's n-th last layer")
    family: str | None = Field(None, description="model family (sd1, ...); default: detected from the model")
    # membranes
    spms: list[str] = Field(
        default_factory=list, description="SPM files; a folder means <name>_last.safetensors"
    )
    concepts: list[str] | None = Field(
        None, description="per SPM, comma-joined concepts for FT (default: the file's `prompts` metadata)"
    )
    multiplier: list[float] | None = Field(
        None, description="fixed gates instead of FT: one value, or one per SPM"
    )
    ft_metric: FTMetric = Field(
        DEFAULT_FT_METRIC, description="FT score: max of the named metrics"
    )
    facilitate_factor: float = Field(1.0, ge=0, description="FT gate = clip(max score x factor, 0, 1)")
    compat: Literal["default", "original"] = Field(
        "default",
        description="'original': the original code's inference: the model's own scheduler, gates x "
        "factor unclipped, gate-scaled weights summed into one adapter (squared gates, cross terms)",
    )
    ft_compat: Literal["default", "original"] = Field("default", description="alias of compat")
    # prompts
    prompts: list[str] = Field(default_factory=list, description="prompts to generate")
    prompts_file: str | None = Field(None, description=".txt (one per line) or .csv with a 'prompt' column")
    dataset: str | None = Field(
        None, description="dataset provider: i2p, unlearncanvas, prompts or a plugin's"
    )
    data_root: str | None = Field(None, description="the dataset's folder or file (default: the seed layout)")
    use_sample: bool = Field(True, description="use the dataset's sample variant")
    dataset_options: dict[str, Any] = Field(
        default_factory=dict, description="provider options, e.g. categories, styles, objects, seeds, limit"
    )
    row_settings: bool = Field(
        True, description="use a dataset row's own seed/guidance/size when it has them"
    )
    negative_prompt: str = ""
    # generation
    steps: int = Field(30, gt=0, description="denoising steps")
    guidance: float = Field(7.5, ge=0, description="classifier-free guidance scale (<= 1: no CFG)")
    width: int = Field(512, gt=0)
    height: int = Field(512, gt=0)
    seeds: list[Seed] = Field(
        default_factory=lambda: [0],
        description="one image set per seed; image i of seed s uses generator seed s+i",
    )
    images_per_prompt: int = Field(1, gt=0)
    batch_size: int = Field(4, gt=0, description="images per UNet pass (CFG doubles the UNet batch)")
    noise_scheduler: SampleNoiseScheduler = Field(
        "ddim", description="model: the model's own scheduler (PNDM for SD 1.4); the default under compat")
    precision: Literal[("auto", *DTYPES)] = Field(  # type: ignore[valid-type]
        "auto", description="auto: float16 on CUDA, float32 on the CPU"
    )
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    output_dir: str = "outputs/samples"
    grid: bool = Field(False, description="also write grid.png, a contact sheet of the run")
    overwrite: bool = Field(False, description="regenerate images that exist with other settings")

    _prec = field_validator("precision", mode="before")(_precision)

    @field_validator("spms", "prompts", "seeds", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str | int) else value

    @field_validator("concepts", "multiplier", mode="before")
    @classmethod
    def _optional_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str | int | float) else value

    _size = field_validator("width", "height")(multiple_of_8)

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        value = value.strip().lower()
        kind, _, index = value.partition(":")
        if value in ("auto", "cpu", "cuda", "mps") or (kind == "cuda" and index.isdigit()):
            return value
        raise ValueError("expected auto, cpu, cuda, cuda:N or mps")

    @field_validator("dataset_options")
    @classmethod
    def _options(cls, value: dict[str, Any]) -> dict[str, Any]:
        limit = value.get("limit")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
            raise ValueError(f"limit must be a whole number >= 0, not {limit!r}")
        return value

    @model_validator(mode="before")
    @classmethod
    def _compat(cls, values: Any) -> Any:
        """`ft_compat: original` is `compat: original`; compat samples with the model's own scheduler
        unless one is named (the original uses the pipeline's scheduler as it comes)."""
        if not isinstance(values, dict):
            return values
        if "original" in (values.get("compat"), values.get("ft_compat")):
            values = {**values, "compat": "original", "ft_compat": "original"}
            values.setdefault("noise_scheduler", "model")
        return values

    @model_validator(mode="after")
    def _check(self) -> SampleConfig:
        if any(s + self.images_per_prompt - 1 > MAX_SEED for s in self.seeds):
            raise ValueError(f"seeds: image i of seed s uses seed s+i, which must stay <= {MAX_SEED}")
        if self.multiplier is not None and self.spms and len(self.multiplier) not in (1, len(self.spms)):
            raise ValueError(
                f"multiplier: give one value or one per SPM ({len(self.spms)}), not {len(self.multiplier)}"
            )
        if self.concepts is not None and self.spms and len(self.concepts) != len(self.spms):
            raise ValueError(
                f"concepts: give one entry (comma-joined concepts) per SPM ({len(self.spms)}), "
                f"not {len(self.concepts)}"
            )
        return self

    def resolved_device(self) -> str:
        """The device to run on; one that this machine does not have is a ConfigError."""
        import torch

        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        if self.device.startswith("cuda"):
            count = torch.cuda.device_count() if torch.cuda.is_available() else 0
            index = int(self.device.partition(":")[2] or 0)
            if index >= count:
                have = f"{count} CUDA device{'s' * (count != 1)}" if count else "no usable CUDA device"
                raise config_error(f"device = {self.device!r}: this machine has {have} "
                                   f"(torch {torch.__version__}); use --device cpu or auto")
        if self.device == "mps" and not torch.backends.mps.is_available():
            raise config_error("device = 'mps': MPS is not available here; use --device cpu or auto")
        return self.device

    def resolved_precision(self) -> str:
        if self.precision != "auto":
            return self.precision
        return "float16" if self.resolved_device().startswith("cuda") else "float32"


def _normalise(values: dict[str, Any], source: str) -> dict[str, Any]:
    """Accept the original generation.yaml's key names (a key given both ways: ours wins)."""
    out = dict(values)
    for old, new in _ORIGINAL_KEYS.items():
        if old in out:
            value = out.pop(old)
            out.setdefault(new, value)
    suffix = out.pop("unconditional_prompt", None)
    if suffix and isinstance(out.get("prompts"), list):  # the original appends it to every prompt
        out["prompts"] = [f"{p}{suffix}" for p in out["prompts"]]
    if isinstance(out.get("output_dir"), str) and "{}" in out["output_dir"]:
        # the original's save_path is a file template ("out/{}_{}.png"): keep its folder
        out["output_dir"] = str(Path(out["output_dir"]).parent)
    return out


def load_sample_config(
    path: str | Path | None, overrides: dict[str, Any], model: type[SampleConfig] = SampleConfig
) -> tuple[SampleConfig, dict[str, str]]:
    """`model`: SampleConfig, or a command's subclass of it (`spmctl attack`'s)."""
    file_values: dict[str, Any] = {}
    label = "defaults"
    if path is not None:
        raw = read_yaml(path)
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise config_error(f"{path}: expected a mapping of keys, got {type(raw).__name__}")
        file_values = _normalise(expand_dotted(raw, str(path)), str(path))
        label = str(path)
    return build_config(model, file_values, label, overrides, normalise=_normalise)


__all__ = ["SampleConfig", "load_sample_config", "FT_METRICS", "COMMAND_LINE"]
