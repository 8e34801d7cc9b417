"""The plugin manager: built-in and third-party plugins, loaded once, lazily.

Every provider, built-in or not, comes through the `spmctl` entry-point group.
A plugin that fails to import is reported by name (a warning on stderr and in
`spmctl plugins list`) and the rest of the CLI keeps working.
"""

from __future__ import annotations

import difflib
import os
import sys
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import pluggy

from . import hookspecs
from .errors import SpmctlError

ENTRY_POINT_GROUP = "spmctl"
ALLOW_ENV = "SPMCTL_PLUGINS"

pm = pluggy.PluginManager("spmctl")
pm.add_hookspecs(hookspecs)


@dataclass(frozen=True)
class PluginInfo:
    name: str
    package: str
    version: str
    builtin: bool
    error: str | None = None


_loaded = False
_plugins: list[PluginInfo] = []
_owners: dict[str, dict[str, str]] = {}


def _allowed(name: str, builtin: bool) -> bool:
    """Built-ins always load; SPMCTL_PLUGINS (comma-separated) limits third-party plugins."""
    allow = os.environ.get(ALLOW_ENV)
    if builtin or allow is None:
        return True
    return name in {n.strip() for n in allow.split(",") if n.strip()}


def load_plugins() -> None:
    """Import every plugin of the entry-point group, once."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for ep in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        dist = ep.dist
        package = dist.metadata["Name"] if dist is not None else "?"
        version = dist.version if dist is not None else "?"
        builtin = package == "spmctl"
        if not _allowed(ep.name, builtin):
            continue
        try:
            module = ep.load()
            if pm.get_plugin(ep.name) is None:
                pm.register(module, name=ep.name)
        except Exception as exc:  # a broken plugin must not take the CLI down
            reason = f"{type(exc).__name__}: {exc}"
            _plugins.append(PluginInfo(ep.name, package, version, builtin, reason))
            print(f"warning: plugin {ep.name!r} ({package} {version}) failed to load: {reason}", file=sys.stderr)
            continue
        _plugins.append(PluginInfo(ep.name, package, version, builtin))


def plugin_infos() -> list[PluginInfo]:
    load_plugins()
    return list(_plugins)


def _collect(hook_name: str) -> dict[str, Any]:
    load_plugins()
    found: dict[str, Any] = {}
    owners: dict[str, str] = {}

    for plugin_name, plugin in pm.list_name_plugin():
        impl = getattr(plugin, hook_name, None)
        if impl is None:
            continue

        def register(provider: Any, _owner: str = plugin_name) -> None:
            found[provider.name] = provider
            owners[provider.name] = _owner

        try:
            impl(register=register)
        except Exception as exc:
            print(f"warning: plugin {plugin_name!r} failed in {hook_name}: {exc}", file=sys.stderr)
    _owners[hook_name] = owners
    return found


def provider_owner(hook_name: str, provider_name: str) -> str:
    """Which plugin registered a provider (for `spmctl plugins list`)."""
    return _owners.get(hook_name, {}).get(provider_name, "?")


def get_datasets() -> dict[str, Any]:
    return _collect("register_datasets")


def get_templates() -> dict[str, Any]:
    return _collect("register_templates")


def get_metrics() -> dict[str, Any]:
    return _collect("register_metrics")


def _lookup(kind: str, name: str, table: dict[str, Any]) -> Any:
    if name in table:
        return table[name]
    close = difflib.get_close_matches(name, list(table), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise SpmctlError(f"unknown {kind} {name!r}{hint}; known: {', '.join(sorted(table)) or 'none'}")


def get_dataset(name: str) -> Any:
    return _lookup("dataset_type", name, get_datasets())


def get_template(name: str) -> Any:
    return _lookup("template", name, get_templates())
