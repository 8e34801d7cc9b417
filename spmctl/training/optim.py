"""Optimizers and learning-rate schedules named in the config, or one clear line saying what's missing."""

from __future__ import annotations

import importlib
from typing import Any

import torch

from ..config.train import Train
from ..errors import SpmctlError

# optimizer_type -> (module, attribute, pip extra or package that provides it)
_OPTIONAL = {
    "adamw8bit": ("bitsandbytes.optim", "AdamW8bit", "pip install 'spmctl[bnb]' (bitsandbytes)"),
    "lion": ("lion_pytorch", "Lion", "pip install lion-pytorch"),
    "prodigy": ("prodigyopt", "Prodigy", "pip install prodigyopt"),
}


def build_optimizer(params: list[torch.nn.Parameter], train: Train) -> torch.optim.Optimizer:
    lr = train.unet_lr if train.unet_lr is not None else train.lr
    kind = train.optimizer_type
    args = dict(train.optimizer_args)
    if kind == "adamw":
        return torch.optim.AdamW(params, lr=lr, **args)
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr, **args)
    module_name, attr, install = _OPTIONAL[kind]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise SpmctlError(f"train.optimizer_type = {kind!r} needs a package that is not installed: "
                          f"{install}; or set train.optimizer_type: AdamW") from None
    try:
        return getattr(module, attr)(params, lr=lr, **args)
    except Exception as exc:  # e.g. bitsandbytes without a usable backend on this machine
        raise SpmctlError(f"train.optimizer_type = {kind!r} cannot run here: {str(exc).splitlines()[0]}; "
                          "set train.optimizer_type: AdamW") from None


def build_lr_scheduler(optimizer: torch.optim.Optimizer, train: Train) -> Any:
    from diffusers.optimization import get_scheduler

    return get_scheduler(
        train.lr_scheduler,
        optimizer,
        num_warmup_steps=train.lr_warmup_steps,
        num_training_steps=train.iterations,
        num_cycles=train.lr_scheduler_num_cycles,
        power=train.lr_scheduler_power,
    )
