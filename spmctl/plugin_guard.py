"""Third-party datasets and templates as spmctl uses them: their failures and wrong answers name the plugin.

A template's `prompt_settings()` or a dataset's `rows()` runs deep inside `train` and `sample`; a
plugin's bug there (an exception, a string where a list of settings belongs, a row that is not a
`PromptRow`) would otherwise surface as a traceback from spmctl's code. `Guarded` wraps such a
provider: every method call, and every row a returned iterator yields, is checked, and a failure
becomes one `SpmctlError` line naming the plugin, its package and the method.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from .errors import SpmctlError
from .providers import PromptRow


def _settings(value: Any) -> str | None:
    if isinstance(value, list) and all(isinstance(item, dict) for item in value):
        return None
    return "a list of prompt settings (dicts of the config's `prompt` keys)"


def _names(value: Any) -> str | None:
    if value is None or (isinstance(value, list) and all(isinstance(item, str) for item in value)):
        return None
    return "a list of names, or None"


# method -> what its answer must be (None when it is fine); rows are checked one by one as they come
CHECKS: dict[str, Callable[[Any], str | None]] = {"prompt_settings": _settings, "names": _names}


class Guarded:
    """`provider` (a `kind`), registered by the plugin `who` describes, with its failures named."""

    def __init__(self, provider: Any, kind: str, who: str) -> None:
        self._provider = provider
        self._where = f"{who}: {kind} {provider.name!r}"

    def __getattr__(self, attr: str) -> Any:
        value = getattr(self._provider, attr)
        if not callable(value):
            return value

        def call(*args: Any, **kwargs: Any) -> Any:
            result = self._run(attr, lambda: value(*args, **kwargs))
            problem = CHECKS[attr](result) if attr in CHECKS else None
            if problem:
                raise SpmctlError(f"{self._where}: {attr}() returned {type(result).__name__}, expected {problem}")
            return self._rows(attr, result) if attr == "rows" else result

        return call

    def _run(self, attr: str, code: Callable[[], Any]) -> Any:
        try:
            return code()
        except SpmctlError:
            raise  # already one line for the user (e.g. "data not found")
        except (Exception, SystemExit) as exc:  # a plugin's sys.exit must not end spmctl with its code
            from .errors import one_line

            raise SpmctlError(f"{self._where}: {attr}() failed: {one_line(exc, with_type=True)}") from None

    def _rows(self, attr: str, rows: Any) -> Iterator[PromptRow]:
        iterator = self._run(attr, lambda: iter(rows))
        while True:
            row = self._run(attr, lambda: next(iterator, StopIteration))
            if row is StopIteration:
                return
            if not isinstance(row, PromptRow):
                raise SpmctlError(f"{self._where}: {attr}() yielded {type(row).__name__}, expected "
                                  "spmctl.providers.PromptRow")
            yield row
