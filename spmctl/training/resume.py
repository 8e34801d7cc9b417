"""What must not change between a run and its `--resume`.

The resume state records these settings. Some changes cannot load at all (another rank or
optimizer gives tensors of other shapes), others load and silently mean something else (another
alpha scales the saved weights differently than the file's metadata says; another base model or
concept trains a membrane for something else). Iterations, the save interval or the devices may
change: they do not alter what the saved state means.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config.train import TrainConfig
from ..errors import config_error

FIXED = ("pretrained_model.ckpt_path", "pretrained_model.v2", "pretrained_model.v_pred",
         "pretrained_model.clip_skip", "network.rank", "network.alpha", "train.optimizer_type",
         "train.optimizer_args", "train.lr_scheduler")
# what the resolved prompt settings are called in the message
PROMPT = "prompt (what is erased and how)"


def run_settings(cfg: TrainConfig, settings: list[Any]) -> dict[str, Any]:
    dumped = cfg.model_dump(mode="json")
    out: dict[str, Any] = {}
    for key in FIXED:
        section, leaf = key.split(".")
        out[key] = dumped[section][leaf]
    out[PROMPT] = [s.model_dump(mode="json") for s in settings]
    return out


def check_resumable(state_file: Path, extra: dict[str, Any], now: dict[str, Any]) -> None:
    """Refuse, in one line listing every difference, a resume whose settings differ from the saved run's."""
    saved = extra.get("settings")
    if saved is None:  # a state from before settings were recorded: what it did record
        saved = {"network.rank": extra.get("rank"), "network.alpha": extra.get("alpha")}
    changes = [f"{key} {_short(saved[key])} -> {_short(now.get(key))}"
               if key != PROMPT else PROMPT
               for key in saved if key in now and saved[key] != now[key]]
    if changes:
        raise config_error(f"--resume: {state_file} was trained with other settings: "
                           f"{'; '.join(changes)}; restore them, or train into another output_dir "
                           "(or save.name)")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
