"""`spmctl train`'s configuration: the seed's train_config.yaml, key for key.

Also loads the original SPM layout (a config.yaml whose `prompts_file` names a
YAML list of prompt settings, `pretrained_model.name_or_path`, `save.path`,
`logging`), normalised into the same model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..errors import config_error
from ..names import NOISE_SCHEDULERS, NoiseScheduler, Precision, dtype_name
from .loader import COMMAND_LINE, CommandSettings, build_config, expand_dotted, read_yaml, within_float32

# one list each: the config types below are these (a Literal of a tuple is the Literal of its items)
OPTIMIZERS = ("adamw", "adamw8bit", "sgd", "lion", "prodigy")
LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts",
                 "polynomial")
# torch generators take 64-bit seeds; a larger one fails deep inside a run
MAX_SEED = 2**64 - 1
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]


def multiple_of_8(value: int) -> int:
    """Image sizes: the VAE halves them three times."""
    if value % 8:
        raise ValueError(f"must be a multiple of 8 (got {value})")
    return value


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)
    _float32 = field_validator("*", mode="after")(within_float32)


def _precision(value: Any) -> Any:
    if isinstance(value, str):
        return dtype_name(value)
    return value


class PretrainedModel(Section):
    ckpt_path: str = Field("CompVis/stable-diffusion-v1-4", description="hub id, diffusers folder, "
                           ".ckpt/.safetensors file, or 'tiny' (the built-in tiny model)")
    v2: bool = Field(False, description="the checkpoint is SD 2.x")
    v_pred: bool = Field(False, description="v-prediction model (SD 2.x 768)")
    clip_skip: int = Field(1, ge=1, description="use the text encoder's n-th last layer (1 = last)")
    config: str | None = Field(None, description="for a single-file checkpoint: a diffusers folder or hub "
                               "id with its configs (needed offline)")
    family: str | None = Field(None, description="model family (sd1, ...; `spmctl plugins list`); "
                               "default: detected from the model")


class Network(Section):
    rank: int = Field(1, ge=1, description="membrane rank (1 = one-dimensional)")
    alpha: float = Field(1.0, ge=0, description="scale = alpha / rank; 0 means alpha = rank")


class Train(Section):
    precision: Precision = Field("float32", description="UNet/text-encoder dtype; the membrane trains in fp32")
    noise_scheduler: NoiseScheduler = "ddim"
    iterations: int = Field(3000, gt=0)
    batch_size: int = Field(1, gt=0)
    lr: float = Field(1e-4, gt=0)
    unet_lr: float | None = Field(None, gt=0, description="the membrane's learning rate (default: lr)")
    text_encoder_lr: float | None = Field(5e-5, description="accepted; unused (the text encoder has no membrane)")
    optimizer_type: Literal[OPTIMIZERS] = "adamw8bit"  # type: ignore[valid-type]
    optimizer_args: dict[str, Any] = Field(default_factory=dict)
    lr_scheduler: Literal[LR_SCHEDULERS] = "cosine_with_restarts"  # type: ignore[valid-type]
    lr_warmup_steps: int = Field(500, ge=0)
    lr_scheduler_num_cycles: int = Field(3, ge=1)
    lr_scheduler_power: float = Field(1.0, gt=0)
    max_grad_norm: float = Field(0.0, ge=0, description="clip gradients to this norm; 0 = off")
    max_denoising_steps: int = Field(30, ge=2)
    gradient_checkpointing: bool = Field(False, description="recompute the denoiser's activations in the "
                                         "backward pass: less memory, slower steps")
    offload_text_encoders: bool = Field(True, description="move the text encoders and the VAE off the "
                                        "accelerator once the prompts are encoded (training needs neither)")

    _lower = field_validator("optimizer_type", "lr_scheduler", "noise_scheduler", mode="before")(
        lambda v: v.strip().lower() if isinstance(v, str) else v
    )
    _prec = field_validator("precision", mode="before")(_precision)

    @field_validator("optimizer_args", mode="before")
    @classmethod
    def _args(cls, value: Any) -> Any:
        # the original code wrote optimizer args as "key=value key=value" strings or a list of them
        if value is None or value == "":
            return {}
        if isinstance(value, str):
            value = value.split()
        if isinstance(value, list):
            pairs = [str(item).split("=", 1) for item in value]
            if any(len(p) != 2 for p in pairs):
                raise ValueError("expected key=value items")
            import yaml

            return {k.strip(): yaml.safe_load(v) for k, v in pairs}
        return value


class Save(Section):
    per_steps: int = Field(500, gt=0, description="write <name>_<step>steps.safetensors every n steps")
    precision: Precision = "float32"
    name: str | None = Field(None, description="file name stem (default: from the erased concept)")
    path: str | None = Field(None, description="original SPM layout's output folder (= output_dir)")
    sample_every_n_steps: int = Field(0, ge=0, description="write preview images to <output_dir>/samples/ "
                                      "every n steps (0 = never)")
    sample_prompts: list[str] | None = Field(None, description="preview prompts (default: the erased target(s) "
                                             "and one unrelated prompt), each at its FT gate")
    sample_steps: int = Field(30, gt=0, description="denoising steps of each preview image")

    _prec = field_validator("precision", mode="before")(_precision)


class Other(Section):
    use_xformers: bool = Field(False, description="use xformers attention if installed (SDPA otherwise)")


class Logging(Section):
    """The original SPM layout's `logging` section (only what training uses is honoured)."""

    model_config = ConfigDict(extra="allow")
    use_wandb: bool = False
    verbose: bool = False
    seed: int | None = None
    run_name: str | None = None


class PromptSettings(Section):
    target: str | None = Field(None, description="concept to erase (default: template_name)")
    positive: str | None = Field(None, description="prompt whose prediction is pushed away (default: target)")
    unconditional: str = ""
    neutral: str | None = Field(None, description="surrogate concept (default: unconditional)")
    action: Literal["erase", "erase_with_la"] = "erase_with_la"
    guidance_scale: float = 1.0
    resolution: int = Field(512, ge=8)
    batch_size: int = Field(1, gt=0)
    dynamic_resolution: bool = False
    la_strength: float = Field(1000.0, ge=0)
    sampling_batch_size: int = Field(4, gt=0)

    @model_validator(mode="after")
    def _check(self) -> PromptSettings:
        if self.sampling_batch_size % self.batch_size:
            raise ValueError(
                f"sampling_batch_size ({self.sampling_batch_size}) must be a multiple of "
                f"batch_size ({self.batch_size})"
            )
        return self

    # a field check (not in _check), so the error names the key and the source that set it
    _res = field_validator("resolution")(multiple_of_8)

    def resolved(self, fallback_target: str | None = None) -> PromptSettings:
        """Fill the documented defaults: positive = target, neutral = unconditional."""
        target = self.target or fallback_target
        if not target:
            raise config_error("prompt.target is empty and no template_name is set")
        return self.model_copy(update={
            "target": target,
            "positive": self.positive if self.positive is not None else target,
            "neutral": self.neutral if self.neutral is not None else self.unconditional,
        })


class TrainConfig(CommandSettings):
    pretrained_model: PretrainedModel = PretrainedModel()
    network: Network = Network()
    train: Train = Train()
    save: Save = Save()
    other: Other = Other()
    logging: Logging | None = None
    prompt: list[PromptSettings] | None = Field(
        None, description="prompt settings (one mapping or a list of them); used as written")
    prompts_file: str | None = Field(None, description="original layout: YAML list of prompt settings")
    wandb_project: str | None = None
    wandb_run: str | None = None
    use_sample: bool = Field(True, description="use the dataset's sample variant")
    dataset_type: str = Field("unlearncanvas", description="dataset provider (plugin) name")
    data_root: str | None = Field(None, description="dataset folder (default: the seed's data/ layout)")
    template: str | None = Field(None, description="template provider: object, style, i2p, concept")
    template_name: str | None = Field(None, description="what the template erases, e.g. Abstractionism")
    devices: str = Field("0", description='CUDA devices, e.g. "0" or "0,1"')
    distributed: Literal["concepts", "ddp"] = Field(
        "concepts", description="several processes: 'concepts' trains one concept per process (sweeps); "
        "'ddp' trains each membrane data-parallel over all of them")
    output_dir: str = "outputs/semipermeable_membrane/finetuned_models"
    verbose: bool = False
    seed: Seed = Field(0, description="random seed of the run")
    resume: bool = Field(False, description="continue from the latest checkpoint in output_dir")
    compat: Literal["default", "original"] = Field(
        "default", description="'original': the original SPM code's training iteration, its defects "
        "included (README: Differences from the original SPM)")

    @field_validator("prompt", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, dict) else value

    @field_validator("devices", mode="before")
    @classmethod
    def _devices(cls, value: Any) -> Any:
        if isinstance(value, int):
            return str(value)
        if isinstance(value, list | tuple):
            return ",".join(str(v) for v in value)
        return value

    @field_validator("devices")
    @classmethod
    def _check_devices(cls, value: str) -> str:
        parts = [p.strip() for p in value.split(",") if p.strip()]
        if not parts or not all(p.isdigit() or p == "cpu" for p in parts):
            raise ValueError('expected device indices like "0" or "0,1", or "cpu"')
        return ",".join(parts)

    def prompt_list(self) -> list[PromptSettings]:
        return list(self.prompt or [])


def _normalise_original(values: dict[str, Any], label: str, base_dir: Path | None) -> dict[str, Any]:
    """Map the original SPM layout's keys onto the seed's."""
    values = dict(values)
    model = values.get("pretrained_model")
    if isinstance(model, dict) and "name_or_path" in model:
        model = dict(model)
        model.setdefault("ckpt_path", model.pop("name_or_path"))
        values["pretrained_model"] = model
    save = values.get("save")
    if isinstance(save, dict) and save.get("path") and "output_dir" not in values:
        values["output_dir"] = save["path"]
    prompts_file = values.get("prompts_file")
    if prompts_file and "prompt" not in values:
        path = Path(prompts_file)
        if not path.is_absolute() and base_dir is not None and (base_dir / path).exists():
            path = base_dir / path
        prompts = read_yaml(path)
        if isinstance(prompts, dict):
            prompts = [prompts]
        if not isinstance(prompts, list):
            raise config_error(f"{path}: expected a YAML list of prompt settings")
        values["prompt"] = prompts
    logging = values.get("logging")
    if isinstance(logging, dict) and logging.get("verbose") and "verbose" not in values:
        values["verbose"] = True
    return values


def load_train_config(
    config_path: str | Path | None, cli_values: dict[str, Any] | None = None
) -> tuple[TrainConfig, dict[str, str]]:
    """Build the train configuration; returns it and where each value came from."""
    file_values: dict[str, Any] = {}
    label = "default"
    base_dir = None
    if config_path is not None:
        raw = read_yaml(config_path)
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise config_error(f"{config_path}: expected a mapping of keys at the top level, "
                               f"got {type(raw).__name__}")
        base_dir = Path(config_path).parent
        label = str(config_path)
        file_values = _normalise_original(expand_dotted(raw, label), label, base_dir)

    def normalise(values: dict[str, Any], source: str) -> dict[str, Any]:
        return _normalise_original(values, source, Path.cwd())

    cfg, origin = build_config(TrainConfig, file_values, label, cli_values or {}, normalise)
    fit_default_optimizer(cfg, origin)
    return cfg, origin


# Where the default optimizer was replaced (the source comment --print-config shows).
OPTIMIZER_FALLBACK = ("default AdamW8bit needs bitsandbytes, not installed: AdamW "
                      "(pip install 'spmctl[bnb]' for the original's optimizer)")


def fit_default_optimizer(cfg: TrainConfig, origin: dict[str, str]) -> None:
    """The seed's default optimizer is bitsandbytes' AdamW8bit, which a standard install lacks:
    when nobody chose the optimizer and bitsandbytes is missing, train with AdamW instead (the
    same update in 32-bit state). A chosen AdamW8bit still fails with the install command."""
    import importlib.util

    from .loader import DEFAULT, source_of

    if (source_of(origin, "train.optimizer_type") == DEFAULT and cfg.train.optimizer_type == "adamw8bit"
            and importlib.util.find_spec("bitsandbytes") is None):
        cfg.train.optimizer_type = "adamw"
        origin["train.optimizer_type"] = OPTIMIZER_FALLBACK


__all__ = ["TrainConfig", "PromptSettings", "load_train_config", "OPTIMIZER_FALLBACK", "COMMAND_LINE",
           "OPTIMIZERS", "LR_SCHEDULERS", "NOISE_SCHEDULERS"]
