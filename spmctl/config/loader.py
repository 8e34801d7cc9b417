"""Load a command's configuration from defaults < YAML file < SPMCTL_* env < command line.

Each command has one pydantic-settings model. This module merges the sources,
remembers where every value came from (for `--print-config` and for error
messages), and turns any validation problem into one line naming the source,
the key, the bad value and what was expected.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from ..errors import ConfigError, SpmctlError, config_error, config_message, did_you_mean, one_line
from ..textio import read_text_file
from .yamlsafe import YAMLBoundError, safe_load_bounded

ENV_PREFIX = "SPMCTL_"
DEFAULT = "default"
COMMAND_LINE = "command line"

# The file-level values of the configuration being built; read by FileSource.
_file_values: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("file_values")


class FileSource(PydanticBaseSettingsSource):
    """The YAML file's values, already read and normalised by `load_config`."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return _file_values.get({}).get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(_file_values.get({}))


# Every tensor a setting reaches is float32 (or narrower): a finite value beyond its range (lr 1e300)
# overflows inside torch with a traceback, or turns the weights into Inf. Refused like NaN/Inf.
FLOAT32_MAX = 3.4028234663852886e38


def within_float32(value: Any) -> Any:
    """A field validator for every field: floats (alone or in a list) must fit float32."""
    for item in value if isinstance(value, list | tuple) else (value,):
        if isinstance(item, float) and abs(item) > FLOAT32_MAX:
            raise ValueError(f"{item:g} is beyond the float32 range (about ±3.4e38) that the tensors use")
    return value


class CommandSettings(BaseSettings):
    """Base of every command's configuration model."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", validate_default=True,
        allow_inf_nan=False,  # a NaN gate or guidance scale renders black images and exits 0
    )
    _float32 = field_validator("*", mode="after")(within_float32)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Highest first: command line (init kwargs), environment, YAML file.
        return (init_settings, env_settings, FileSource(settings_cls))


C = TypeVar("C", bound=CommandSettings)


def read_yaml(path: str | Path) -> Any:
    """Read a YAML file; every failure is a one-line ConfigError naming the file."""
    path = Path(path)
    if not path.exists():
        raise config_error(f"{path}: file not found")
    if path.is_dir():
        raise config_error(f"{path}: is a directory, expected a YAML file")
    try:
        text = read_text_file(path)
    except SpmctlError as exc:
        raise config_error(f"{exc}") from None
    try:
        return safe_load_bounded(text)
    except YAMLBoundError as exc:
        raise config_error(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or one_line(exc)
        raise config_error(f"{path}: invalid YAML{where}: {problem}") from None


def parse_assignment(text: str) -> tuple[list[str], Any]:
    """`section.key=value` (value in YAML syntax) -> (["section", "key"], value)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise config_error(f"--set {text!r}: expected section.key=value")
    try:
        value = safe_load_bounded(raw) if raw.strip() else raw
    except YAMLBoundError as exc:
        raise config_error(f"--set {key.strip()}: {exc}") from None
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def nest(path: list[str], value: Any) -> dict[str, Any]:
    out: Any = value
    for part in reversed(path):
        out = {part: out}
    return out


def expand_dotted(values: Mapping[str, Any], label: str) -> dict[str, Any]:
    """Dotted keys as `--print-config` prints them and `--set` takes them (`train.lr: 3e-4`,
    `prompt.0.target: cat`) -> nested sections; numbered parts become list items. A key given
    both ways is a one-line ConfigError naming the file."""
    if not any(isinstance(k, str) and "." in k for k in values):
        return dict(values)
    out: dict[Any, Any] = {}
    for key, value in values.items():
        path = key.split(".") if isinstance(key, str) else [key]
        _merge_strict(out, nest(path, value), label, "")
    return _numbered_to_lists(out)


def _merge_strict(into: dict[Any, Any], new: Mapping[Any, Any], label: str, prefix: str) -> None:
    for key, value in new.items():
        if key not in into:
            into[key] = value
        elif isinstance(into[key], Mapping) and isinstance(value, Mapping):
            into[key] = dict(into[key])
            _merge_strict(into[key], value, label, f"{prefix}{key}.")
        else:
            raise config_error(f"{label}: {prefix}{key} is given twice")


def _numbered_to_lists(value: Any) -> Any:
    if not isinstance(value, dict):
        return value
    items = {k: _numbered_to_lists(v) for k, v in value.items()}
    numbered = items and all(isinstance(k, str) and k.isdigit() for k in items)
    if numbered and sorted(int(k) for k in items) == list(range(len(items))):
        return [items[str(i)] for i in range(len(items))]
    return items


def deep_merge(low: Mapping[str, Any], high: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(low)
    for key, value in high.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def leaves(values: Mapping[str, Any], prefix: str = "", lists: bool = False) -> dict[str, Any]:
    """{"a": {"b": 1, "c": {}}} -> {"a.b": 1, "a.c": {}}: every value by its dotted key (the `--set`
    form); an empty section is a value, so that setting one is seen. A list is one value (a source
    that sets one replaces it whole) unless `lists`: then its items are numbered keys, as
    `--print-config` shows them ({"p": [{"a": 1}]} -> {"p.0.a": 1}; an empty list stays a value)."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        if lists and isinstance(value, list) and value:
            value = {str(i): item for i, item in enumerate(value)}
        if isinstance(value, Mapping) and value:
            out.update(leaves(value, dotted + ".", lists))
        else:
            out[dotted] = value
    return out


def env_values(model: type[CommandSettings]) -> dict[str, Any]:
    try:
        return EnvSettingsSource(model)()
    except SettingsError as exc:
        raise ConfigError(_env_error(str(exc))) from None


def _env_error(message: str) -> str:
    """pydantic-settings says only which field failed; name the variable and where its JSON breaks."""
    import json
    import os
    import re

    field = re.search(r'field "([^"]+)"', message)
    name = ENV_PREFIX + (field.group(1).upper() if field else "*")
    raw = next((v for k, v in os.environ.items() if k.upper() == name), None)
    try:
        json.loads(raw or "")
    except ValueError as exc:
        return config_message(f"environment ({name}): not valid JSON ({exc}); a section or list is "
                              f"given as JSON, e.g. {ENV_PREFIX}TRAIN='{{\"lr\": 0.0001}}'")
    return config_message(f"environment ({name}): {message}")


class Provenance(dict[str, str]):
    """Dotted leaf key -> the source that set it, plus `sections`: dotted section -> the highest
    source that set anything inside it (so a lookup costs the key's depth, not the config's size)."""

    sections: dict[str, str]


def provenance(sources: list[tuple[str, Mapping[str, Any]]]) -> Provenance:
    """Where every value came from (sources lowest first), in time linear in the number of leaves.

    Mirrors `deep_merge`: a higher source's section merges into a lower one's; anything else it sets
    (a value, a list, or a section where the lower source had a value) replaces what was there."""
    tree: dict[str, Any] = {}
    for name, values in sources:
        for key in leaves(values):
            node = tree
            *parents, last = key.split(".")
            for part in parents:
                child = node.get(part)
                if not isinstance(child, dict):  # a lower source's value is replaced by a section
                    child = node[part] = {}
                node = child
            node[last] = name  # also hides a lower source's keys inside this one
    origin = Provenance()
    origin.sections = {}
    rank = {name: i for i, (name, _) in enumerate(sources)}
    pending: list[tuple[str, dict[str, Any]]] = [("", tree)]
    while pending:
        prefix, node = pending.pop()
        for part, child in node.items():
            dotted = prefix + part
            if isinstance(child, dict):
                pending.append((dotted + ".", child))
                continue
            origin[dotted] = child
            section = dotted.rpartition(".")[0]
            while section:
                known = origin.sections.get(section)
                if known is not None and rank[known] >= rank[child]:
                    break  # that section and those above it already name a source this high
                origin.sections[section] = child
                section = section.rpartition(".")[0]
    return origin


def source_of(origin: Mapping[str, str], dotted: str) -> str:
    """Where the value at `dotted` came from; `prompt.0.x` also matches a single-mapping `prompt.x`."""
    candidates = [dotted]
    parts = dotted.split(".")
    if len(parts) > 1 and parts[1] == "0":
        candidates.append(".".join(parts[:1] + parts[2:]))
    for key in candidates:
        if key in origin:
            return origin[key]
    for key in candidates:  # a whole section (or list) set by one source that holds this key
        section = key.rpartition(".")[0]
        while section:
            if section in origin:
                return origin[section]
            section = section.rpartition(".")[0]
    sections = getattr(origin, "sections", {})
    for key in candidates:  # a section: the highest source that set anything in it
        if key in sections:
            return sections[key]
    return DEFAULT


def _model_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The valid keys at the level `loc` points into (for "did you mean")."""
    current: Any = model
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return []
        annotation = field.annotation
        current = _first_model(annotation)
        if current is None:
            return []
    return list(getattr(current, "model_fields", {}))


def _first_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _first_model(arg)
        if found is not None:
            return found
    return None


def format_validation_error(
    exc: ValidationError, model: type[BaseModel], origin: Mapping[str, str]
) -> str:
    errors = exc.errors(include_url=False)
    err = errors[0]
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    dotted = ".".join(str(p) for p in loc)
    source = source_of(origin, dotted)
    more = f" (and {len(errors) - 1} more problem{'s' * (len(errors) > 2)})" if len(errors) > 1 else ""
    if err["type"] == "extra_forbidden":
        keys = _model_keys(model, tuple(p for p in loc if not isinstance(p, int)))
        hint = did_you_mean(str(loc[-1]), keys) or f"; valid keys here: {', '.join(keys)}"
        return config_message(f"{source}: unknown key {dotted!r}{hint}{more}")
    msg = err["msg"].removeprefix("Value error, ")
    if not dotted:  # a whole-model check; its message starts with the key it is about ("seeds: ...")
        key = msg.partition(":")[0]
        source = source_of(origin, key) if key in model.model_fields else source
        return config_message(f"{source}: {msg}{more}")
    value = err.get("input")
    if isinstance(value, Mapping | list):  # a whole section: the message names the keys
        return config_message(f"{source}: {dotted}: {msg}{more}")
    return config_message(f"{source}: {dotted} = {value!r}: {msg[0].lower() + msg[1:]}{more}")


def build_config(
    model: type[C],
    file_values: Mapping[str, Any],
    file_label: str,
    cli_values: Mapping[str, Any],
    normalise: Callable[[dict[str, Any], str], dict[str, Any]] | None = None,
) -> tuple[C, dict[str, str]]:
    """Validate defaults < file < env < command line into `model`; return it and its provenance.

    `cli_values` may carry `layers` (see `collect_overrides`): then each `--set` item is its own
    source, so an error in it names it rather than the command line as a whole."""
    env = env_values(model)
    layers = list(getattr(cli_values, "layers", None) or [(COMMAND_LINE, cli_values)])
    if normalise is not None:
        env = normalise(dict(env), "environment")
        cli_values = normalise(dict(cli_values), COMMAND_LINE)
        layers = [(name, normalise(dict(values), name)) for name, values in layers]
    env_names = sorted(ENV_PREFIX + k.replace(".", "__").upper() for k in leaves(env))
    env_label = "environment (" + ", ".join(env_names) + ")"
    origin = provenance([(file_label, file_values), (env_label, env), *layers])
    token = _file_values.set(dict(file_values))
    try:
        config = model(**cli_values)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, model, origin)) from None
    except SettingsError as exc:
        raise ConfigError(_env_error(str(exc))) from None
    finally:
        _file_values.reset(token)
    return config, origin


class Overrides(dict[str, Any]):
    """Command-line values merged into one nested dict, and `layers`: (source name, values), lowest
    first - the named flags, then each `--set` item."""

    layers: list[tuple[str, dict[str, Any]]]


def collect_overrides(flags: Mapping[str, Any], assignments: list[str] | None) -> Overrides:
    """Named flags (dotted keys, None = not given) and `--set` items as one nested dict.

    `--set` items come last so they win over a named flag for the same key."""
    named: dict[str, Any] = {}
    for key, value in flags.items():
        if value is not None:
            named = deep_merge(named, nest(key.split("."), value))
    merged = Overrides(named)
    merged.layers = [(COMMAND_LINE, named)]
    for item in assignments or []:
        path, value = parse_assignment(item)
        one = nest(path, value)
        merged.update(deep_merge(merged, one))
        merged.layers.append((f"{COMMAND_LINE} (--set {item})", one))
    return merged
