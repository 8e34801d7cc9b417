"""The plugin manager: spmctl's default plugins and third-party ones, loaded once, lazily.

spmctl's own providers (datasets, templates, metrics, model families) are default plugins: modules registered on the
same pluggy manager, with the same hooks, as a third-party package's entry point (`spmctl` group).
Whatever a plugin does wrong (raising anything, `SystemExit` and `KeyboardInterrupt` included, at
import or in a hook; registering an object of the wrong kind; reusing a taken name) is contained
and said in one line naming the plugin; the other plugins and every command keep working.

Duplicate names, one rule for every kind: a default (built-in) provider is never replaced; between
third-party plugins the first in pluggy's call order keeps the name. The refused one is named in a
warning, with the plugin keeping the name.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import pluggy

from . import hookspecs
from .errors import SpmctlError, one_line, unknown_message
from .providers import DatasetProvider, ImageClassifier, Metric, ModelFamilyProvider, TemplateProvider
from .version import __version__

ENTRY_POINT_GROUP = "spmctl"
ALLOW_ENV = "SPMCTL_PLUGINS"
PACKAGE = "spmctl"

# name -> module, registered in this order before any third-party plugin (as llm's default plugins).
DEFAULT_PLUGINS: dict[str, str] = {
    "unlearncanvas": "spmctl_plugins.unlearncanvas",
    "i2p": "spmctl_plugins.i2p",
    "prompts": "spmctl_plugins.prompts",
    "templates": "spmctl_plugins.templates",
    "eval-nudity": "spmctl.eval.nudity",
    "eval-unlearncanvas": "spmctl.eval.unlearncanvas",
    "eval-quality": "spmctl.eval.quality",
    "eval-cost": "spmctl.eval.cost",
    "family-sd1": "spmctl.families.sd1",
    "family-sdxl": "spmctl.families.sdxl",
    "family-sd3": "spmctl.families.sd3",
    "family-flux": "spmctl.families.flux",
}

pm = pluggy.PluginManager("spmctl")
pm.add_hookspecs(hookspecs)


@dataclass(frozen=True)
class PluginInfo:
    name: str
    package: str
    version: str
    builtin: bool
    error: str | None = None


@dataclass(frozen=True)
class Kind:
    """What one `register_*` hook registers, and the interface its objects must implement."""

    hook: str
    label: str
    interface: type
    needs: str  # the interface in words, for the one-line refusal


KINDS: dict[str, Kind] = {k.hook: k for k in (
    Kind("register_datasets", "dataset", DatasetProvider, "name, description and rows()"),
    Kind("register_templates", "template", TemplateProvider, "name, description, names() and prompt_settings()"),
    Kind("register_metrics", "metric", Metric, "name, description and evaluate()"),
    Kind("register_classifiers", "classifier", ImageClassifier, "name, kind, labels and predict()"),
    Kind("register_families", "model family", ModelFamilyProvider,
         "the spmctl.families.ModelFamily interface: name, tiny_names, detect(), load(), ..."),
)}

_loaded = False
_plugins: list[PluginInfo] = []
_owners: dict[str, dict[str, str]] = {}
_said: set[str] = set()


def warn(message: str) -> None:
    """A warning on stderr, once per process (providers are collected more than once per command)."""
    if message not in _said:
        _said.add(message)
        print(f"warning: {message}", file=sys.stderr)


def _allowed(name: str) -> bool:
    """SPMCTL_PLUGINS (comma-separated entry-point names) limits third-party plugins."""
    allow = os.environ.get(ALLOW_ENV)
    return allow is None or name in {n.strip() for n in allow.split(",") if n.strip()}


@contextlib.contextmanager
def _contained() -> Iterator[dict[str, bool]]:
    """While plugin code runs, tell the user's Ctrl-C apart from a plugin raising KeyboardInterrupt.

    A plugin's own KeyboardInterrupt is contained like any error; a real Ctrl-C must still stop
    spmctl. Only the main thread can take signals, so elsewhere every interrupt counts as the user's.
    """
    state = {"pressed": threading.current_thread() is not threading.main_thread()}
    previous = signal.getsignal(signal.SIGINT) if not state["pressed"] else None

    def pressed(signum: int, frame: Any) -> None:
        state["pressed"] = True
        raise KeyboardInterrupt

    own = previous not in (None, signal.SIG_IGN)  # None: a handler not set from Python, leave it alone
    if own:
        signal.signal(signal.SIGINT, pressed)
    try:
        yield state
    finally:
        if own:
            signal.signal(signal.SIGINT, previous)


def _contain(exc: BaseException, state: dict[str, bool]) -> None:
    if isinstance(exc, KeyboardInterrupt) and state["pressed"]:
        raise exc


def _register(name: str, package: str, version: str, builtin: bool, load: Callable[[], Any]) -> None:
    error = None
    with _contained() as state:
        try:
            if pm.get_plugin(name) is not None or pm.is_blocked(name):
                raise ValueError(f"another plugin (or spmctl's own) is already named {name!r}")
            pm.register(load(), name=name)
        except BaseException as exc:  # SystemExit/KeyboardInterrupt too: a plugin must not end spmctl
            _contain(exc, state)
            error = one_line(exc, with_type=True)
    _plugins.append(PluginInfo(name, package, version, builtin, error))
    if error:
        warn(f"plugin {name!r} ({package} {version}) failed to load: {error}")


def load_plugins() -> None:
    """Register the default plugins, then every allowed plugin of the entry-point group; once."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for name, module in DEFAULT_PLUGINS.items():
        _register(name, PACKAGE, __version__, True, lambda module=module: importlib.import_module(module))
    for ep in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        package = ep.dist.metadata["Name"] if ep.dist is not None else "?"
        if package == PACKAGE:
            continue  # spmctl's own plugins are the defaults above (older installs list them as entry points)
        if _allowed(ep.name):
            _register(ep.name, package, ep.dist.version if ep.dist is not None else "?", False, ep.load)


def plugin_infos() -> list[PluginInfo]:
    load_plugins()
    return list(_plugins)


def describe(plugin: str) -> str:
    """`plugin 'x' (package version)`, how every message names a plugin."""
    info = next((i for i in _plugins if i.name == plugin), None)
    return f"plugin {plugin!r} ({info.package} {info.version})" if info else f"plugin {plugin!r}"


def is_builtin(plugin: str) -> bool:
    return any(i.name == plugin and i.builtin for i in _plugins)


def run_plugin_code(owner: str, what: str, code: Callable[[], Any]) -> tuple[bool, Any]:
    """(True, what `code` returned), or (False, None) after one line naming the plugin when it raised."""
    with _contained() as state:
        try:
            return True, code()
        except BaseException as exc:  # SystemExit/KeyboardInterrupt too: a plugin must not end spmctl
            _contain(exc, state)
            warn(f"{describe(owner)} failed in {what}: {one_line(exc, with_type=True)}")
            return False, None


def call_each(hook_name: str, args: Callable[[str], dict[str, Any]]) -> list[tuple[str, Any]]:
    """Call each implementation of a hook on its own, in pluggy's order; [(plugin, returned)].

    Not `pm.hook.NAME(...)` in one call: there one plugin raising would stop the others, and the
    results would not say which plugin gave what. The implementations, their order (tryfirst,
    trylast, last registered first) and their owners are still pluggy's. A plugin that raises is
    left out, with one line naming it.
    """
    load_plugins()
    done: list[tuple[str, Any]] = []
    for impl in reversed(getattr(pm.hook, hook_name).get_hookimpls()):  # pluggy calls the last one first
        given = args(impl.plugin_name)

        def call(impl: Any = impl, given: dict[str, Any] = given) -> Any:
            if impl.hookwrapper or impl.wrapper:
                raise TypeError("register hooks take no hook wrappers")
            return impl.function(**{arg: given[arg] for arg in impl.argnames})

        ok, returned = run_plugin_code(impl.plugin_name, hook_name, call)
        if ok:
            done.append((impl.plugin_name, returned))
    return done


def _refusal(kind: Kind, provider: Any) -> str | None:
    """Why `provider` is not a `kind` (None when it is)."""
    if not isinstance(provider, kind.interface):
        return f"not a {kind.label} (needs {kind.needs})"
    name = getattr(provider, "name", None)
    if not isinstance(name, str) or not name.strip():
        return f"its name is {name!r}, not a non-empty string"
    if kind.label == "classifier" and getattr(provider, "kind", None) not in ("style", "object"):
        return f"its kind is {provider.kind!r}, not 'style' or 'object'"
    return None


def _shown(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:60] + '…' if len(text) > 60 else text}"


def collect(hook_name: str) -> dict[str, Any]:
    """Every provider a hook registers, by name, checked and de-duplicated (see the module's rule)."""
    kind = KINDS[hook_name]
    registered: dict[str, list[Any]] = {}

    def args(owner: str) -> dict[str, Any]:
        return {"register": registered.setdefault(owner, []).append}

    found: dict[str, Any] = {}
    owners: dict[str, str] = {}
    for owner, returned in call_each(hook_name, args):
        if returned is not None:
            warn(f"{describe(owner)}: {hook_name} returned {_shown(returned)}; it must call register(...) "
                 f"for each {kind.label} and return nothing (ignored)")
        for provider in registered.get(owner, []):
            problem = _refusal(kind, provider)
            if problem:
                warn(f"{describe(owner)}: {hook_name} registered {_shown(provider)}: {problem} (ignored)")
                continue
            name = provider.name
            holder = owners.get(name)
            if holder is not None and (is_builtin(holder) or not is_builtin(owner)):
                warn(f"{describe(owner)}: {kind.label} {name!r} ignored: {describe(holder)} provides it")
                continue
            if holder is not None:  # a built-in registered after a plugin of the same name still wins
                warn(f"{describe(holder)}: {kind.label} {name!r} ignored: {describe(owner)} provides it")
            found[name] = provider
            owners[name] = owner
    _owners[hook_name] = owners
    return found


def provider_owner(hook_name: str, provider_name: str) -> str:
    """Which plugin registered a provider (for `spmctl plugins list` and messages)."""
    return _owners.get(hook_name, {}).get(provider_name, "?")


def get_datasets() -> dict[str, Any]:
    return collect("register_datasets")


def get_templates() -> dict[str, Any]:
    return collect("register_templates")


def get_metrics() -> dict[str, Any]:
    return collect("register_metrics")


def get_classifiers() -> dict[str, Any]:
    return collect("register_classifiers")


def _lookup(kind: str, name: str, table: dict[str, Any]) -> Any:
    if name in table:
        return table[name]
    raise SpmctlError(unknown_message(kind, name, table))


def _guarded(hook_name: str, provider: Any) -> Any:
    """A third-party provider whose failures name its plugin (see `plugin_guard`); built-ins as they are."""
    from .plugin_guard import Guarded

    owner = provider_owner(hook_name, provider.name)
    return provider if is_builtin(owner) else Guarded(provider, KINDS[hook_name].label, describe(owner))


def get_dataset(name: str) -> Any:
    return _guarded("register_datasets", _lookup("dataset_type", name, get_datasets()))


def get_template(name: str) -> Any:
    return _guarded("register_templates", _lookup("template", name, get_templates()))


def templates_having(name: str) -> list[str]:
    """The templates that know `name` (case, spaces, `_` and `-` ignored, as they resolve it)."""
    from .providers import resolve_name, template_names

    found = []
    for key, template in sorted(get_templates().items()):
        names = template_names(template)
        if not names:
            continue
        try:
            resolve_name("name", name, names)
        except Exception:  # noqa: S112 - "not there" is the answer here
            continue
        found.append(key)
    return found
