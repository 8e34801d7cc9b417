"""Optimizers and learning-rate schedules named in the config, or one clear line saying what's missing."""

from __future__ import annotations

import importlib
import inspect
from typing import Any

import torch

from ..config.train import Train
from ..errors import SpmctlError, config_error, did_you_mean, one_line

# optimizer_type -> (module, attribute, pip extra or package that provides it)
_OPTIONAL = {
    "adamw8bit": ("bitsandbytes.optim", "AdamW8bit", "pip install 'spmctl[bnb]' (bitsandbytes)"),
    "lion": ("lion_pytorch", "Lion", "pip install lion-pytorch"),
    "prodigy": ("prodigyopt", "Prodigy", "pip install prodigyopt"),
}


def optimizer_class(kind: str) -> type[torch.optim.Optimizer]:
    """The class `train.optimizer_type` names; a missing optional package is one clear line."""
    if kind == "adamw":
        return torch.optim.AdamW
    if kind == "sgd":
        return torch.optim.SGD
    module_name, attr, install = _OPTIONAL[kind]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise SpmctlError(f"train.optimizer_type = {kind!r} needs a package that is not installed: "
                          f"{install}; or set train.optimizer_type: AdamW") from None
    return getattr(module, attr)


def check_optimizer_args(train: Train) -> None:
    """Refuse unknown or ill-typed `train.optimizer_args` before a model is loaded: the optimizer
    is built once on a one-element tensor, so its own checks (betas in [0, 1), ...) run too."""
    cls = optimizer_class(train.optimizer_type)
    accepted = [name for name, p in inspect.signature(cls).parameters.items()
                if name not in ("self", "params", "lr") and p.kind is not p.VAR_KEYWORD]
    for key in train.optimizer_args:
        if key not in accepted:
            raise config_error(f"train.optimizer_args: {cls.__name__} has no option {key!r}"
                               f"{did_you_mean(key, accepted)}; it accepts {', '.join(accepted)}")
    _build(cls, [torch.zeros(1, requires_grad=True)], train)


def build_optimizer(params: list[torch.nn.Parameter], train: Train, compat: str = "default") -> torch.optim.Optimizer:
    return _build(optimizer_class(train.optimizer_type), params, train, compat)


def _build(cls: type[torch.optim.Optimizer], params: list[Any], train: Train,
           compat: str = "default") -> torch.optim.Optimizer:
    from .original import membrane_lr

    lr = membrane_lr(train, compat)
    try:
        return cls(params, lr=lr, **train.optimizer_args)
    except (TypeError, ValueError) as exc:  # a value of the wrong type or out of range
        raise config_error(f"train.optimizer_args {train.optimizer_args}: {cls.__name__} "
                           f"refuses them: {one_line(exc)}") from None
    except Exception as exc:  # e.g. bitsandbytes without a usable backend on this machine
        raise SpmctlError(f"train.optimizer_type = {train.optimizer_type!r} cannot run here: "
                          f"{one_line(exc)}; set train.optimizer_type: AdamW") from None


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
