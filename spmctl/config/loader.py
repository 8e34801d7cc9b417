"""Load a command's configuration from defaults < YAML file < SPMCTL_* env < command line.

Each command has one pydantic-settings model. This module merges the sources,
remembers where every value came from (for `--print-config` and for error
messages), and turns any validation problem into one line naming the source,
the key, the bad value and what was expected.
"""

from __future__ import annotations

import contextvars
import difflib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from ..errors import ConfigError

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


class CommandSettings(BaseSettings):
    """Base of every command's configuration model."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", validate_default=True
    )

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
        raise ConfigError(f"config error: {path}: file not found")
    if path.is_dir():
        raise ConfigError(f"config error: {path}: is a directory, expected a YAML file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config error: {path}: cannot read: {exc}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"config error: {path}: invalid YAML{where}: {problem}") from None


def parse_assignment(text: str) -> tuple[list[str], Any]:
    """`section.key=value` (value in YAML syntax) -> (["section", "key"], value)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"config error: --set {text!r}: expected section.key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else raw
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def nest(path: list[str], value: Any) -> dict[str, Any]:
    out: Any = value
    for part in reversed(path):
        out = {part: out}
    return out


def deep_merge(low: Mapping[str, Any], high: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(low)
    for key, value in high.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _leaves(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(_leaves(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def env_values(model: type[CommandSettings]) -> dict[str, Any]:
    return EnvSettingsSource(model)()


def provenance(sources: list[tuple[str, Mapping[str, Any]]]) -> dict[str, str]:
    """Dotted key -> the name of the highest source that set it (sources lowest first)."""
    origin: dict[str, str] = {}
    for name, values in sources:
        for key in _leaves(values):
            origin[key] = name
            # a higher source that sets a whole section hides lower keys inside it
            for other in [k for k in origin if k.startswith(key + ".")]:
                origin[other] = name
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
    for key in candidates:  # a whole section set by one source, or a key inside the value
        for known in sorted(origin, key=len, reverse=True):
            if key.startswith(known + ".") or known.startswith(key + "."):
                return origin[known]
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
        close = difflib.get_close_matches(str(loc[-1]), keys, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else f"; valid keys here: {', '.join(keys)}"
        return f"config error: {source}: unknown key {dotted!r}{hint}{more}"
    msg = err["msg"]
    if not dotted:
        return f"config error: {source}: {msg}{more}"
    msg = msg.removeprefix("Value error, ")
    value = err.get("input")
    if isinstance(value, Mapping | list):  # a whole section: the message names the keys
        return f"config error: {source}: {dotted}: {msg}{more}"
    return f"config error: {source}: {dotted} = {value!r}: {msg[0].lower() + msg[1:]}{more}"


def build_config(
    model: type[C],
    file_values: Mapping[str, Any],
    file_label: str,
    cli_values: Mapping[str, Any],
    normalise: Callable[[dict[str, Any], str], dict[str, Any]] | None = None,
) -> tuple[C, dict[str, str]]:
    """Validate defaults < file < env < command line into `model`; return it and its provenance."""
    env = env_values(model)
    if normalise is not None:
        env = normalise(dict(env), "environment")
        cli_values = normalise(dict(cli_values), COMMAND_LINE)
    env_names = sorted(ENV_PREFIX + k.replace(".", "__").upper() for k in _leaves(env))
    env_label = "environment (" + ", ".join(env_names) + ")"
    origin = provenance([(file_label, file_values), (env_label, env), (COMMAND_LINE, cli_values)])
    token = _file_values.set(dict(file_values))
    try:
        config = model(**cli_values)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, model, origin)) from None
    finally:
        _file_values.reset(token)
    return config, origin
