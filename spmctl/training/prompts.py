"""Which prompt settings a run trains on.

Rule (documented in the README): when `template` and `template_name` are set,
the template decides *what* is erased (target, positive, neutral,
unconditional); the `prompt` section, if present, decides *how* (action,
guidance, resolution, anchors...). Without a template the `prompt` section is
used as written (unlike the seed, which silently trained on empty prompts).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..config.train import PromptSettings, TrainConfig
from ..errors import ConfigError, config_error

WHAT_KEYS = ("target", "positive", "neutral", "unconditional")


# The built-in tiny models' images are 64 px: the templates' 512 px would cost ~60x the compute.
TINY_RESOLUTION = 64


def resolve_prompt_settings(cfg: TrainConfig, warn: Callable[[str], None] = print) -> list[PromptSettings]:
    from ..families import tiny_names

    settings = _resolve(cfg, warn)
    chosen = any("resolution" in s.model_fields_set for s in cfg.prompt_list())
    if cfg.pretrained_model.ckpt_path in tiny_names() and not chosen:
        settings = [s.model_copy(update={"resolution": TINY_RESOLUTION}) for s in settings]
    return settings


def _resolve(cfg: TrainConfig, warn: Callable[[str], None]) -> list[PromptSettings]:
    from .. import plugins

    if cfg.dataset_type:
        plugins.get_dataset(cfg.dataset_type)  # an unknown provider is an error, not ignored
    explicit = cfg.prompt_list()
    if cfg.template and cfg.template_name:
        provider = plugins.get_template(cfg.template)
        from_template = [PromptSettings(**s) for s in _template_settings(provider, cfg.template,
                                                                          cfg.template_name)]
        if not explicit:
            return [s.resolved() for s in from_template]
        how = explicit[0].model_dump(exclude=set(WHAT_KEYS), exclude_unset=True)
        if explicit[0].target and explicit[0].target not in {s.target for s in from_template}:
            warn(f"prompt.target {explicit[0].target!r} differs from template_name "
                 f"{cfg.template_name!r}: erasing the template's {cfg.template_name!r}")
        return [_merge(s, how).resolved() for s in from_template]
    if cfg.template_name and not cfg.template and not explicit:
        raise config_error("template_name is set but template is not "
                           "(use --template style|object|i2p|concept)")
    if not explicit:
        raise config_error("nothing to erase: set prompt.target, or template and template_name")
    return [s.resolved(fallback_target=cfg.template_name) for s in explicit]


def _template_settings(provider: Any, template: str, name: str) -> list[dict[str, Any]]:
    """The template's settings for `name`; an unknown name is a config error (exit 2) that lists
    close names and says which other template has it."""
    from ..errors import SpmctlError
    from ..plugins import templates_having

    try:
        return provider.prompt_settings(name)
    except ConfigError:
        raise
    except SpmctlError as exc:
        if not str(exc).startswith("unknown "):
            raise  # the template itself failed (a plugin's bug): a runtime error, not the user's name
        others = [t for t in templates_having(name) if t != template]
        hint = f"; {name!r} is a name of --template {' / '.join(others)}" if others else ""
        raise config_error(f"template_name: {exc}{hint} "
                          f"(`spmctl names {template}` lists them)") from None


def _merge(settings: PromptSettings, how: dict[str, Any]) -> PromptSettings:
    return PromptSettings(**{**settings.model_dump(), **how})


def concept_names(settings: list[PromptSettings]) -> list[str]:
    """The erased concepts, in order, without repeats (written to the file's `prompts` metadata)."""
    seen: dict[str, None] = {}
    for s in settings:
        seen.setdefault(str(s.target), None)
    return list(seen)
