"""User-facing errors: one line on stderr, a non-zero exit, never a traceback."""

from __future__ import annotations

from collections.abc import Iterable


class SpmctlError(Exception):
    """An error a user can fix; its message is the one line they see."""

    exit_code = 1


class ConfigError(SpmctlError):
    """Bad configuration (file, key, value): exit code 2, like a usage error."""

    exit_code = 2


CONFIG_PREFIX = "config error"  # the CLI prints messages that start with it as they are


def config_message(detail: str) -> str:
    """The one line for bad configuration: "config error: <file/key/value>: <what was expected>"."""
    return f"{CONFIG_PREFIX}: {detail}"


def config_error(detail: str) -> ConfigError:
    return ConfigError(config_message(detail))


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the closest of `choices`, or '' where none is close: the hint every
    "unknown name" message ends with."""
    import difflib

    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def unknown_message(what: str, name: str, known: Iterable[str]) -> str:
    """"unknown WHAT 'name' (did you mean ...?); known: a, b": a name looked up in a table."""
    names = sorted(known)
    return f"unknown {what} {name!r}{did_you_mean(name, names)}; known: {', '.join(names) or 'none'}"


def error_line(exc: SpmctlError) -> str:
    """What the CLI prints for a user error: config errors as they are, others after "error: "."""
    message = str(exc)
    return message if message.startswith((CONFIG_PREFIX, "error")) else f"error: {message}"


def one_line(exc: BaseException, *, limit: int | None = None, with_type: bool = False, last: bool = False) -> str:
    """The first non-blank line of an exception's message, for a one-line diagnostic.

    Libraries raise multi-paragraph messages (and sometimes empty ones, where `splitlines()[0]`
    would itself raise IndexError): an empty message falls back to the exception's class name.
    `limit` cuts very long lines; `with_type` prefixes the class name ("ValueError: ...");
    `last` takes the last line instead (a failed compiler's log ends with its error).
    """
    lines = str(exc).strip().splitlines()
    text = lines[-1 if last else 0].strip() if lines else ""
    if limit is not None:
        text = text[:limit]
    if not text:
        return type(exc).__name__
    return f"{type(exc).__name__}: {text}" if with_type else text
