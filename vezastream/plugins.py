"""Plugin manager factory and sink registry (no global plugin manager)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import pluggy

from . import hookspecs
from .config import ConfigError, Settings
from .sinks import Sink, SinkFactory

ENTRY_POINT_GROUP = "vezastream"


def make_plugin_manager(extra_plugins: Iterable[Any] = (), load_entry_points: bool = True) -> pluggy.PluginManager:
    """A fresh plugin manager: hookspecs, installed plugins, then ``extra_plugins``."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    if load_entry_points:
        try:
            pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
        except Exception as exc:  # an import error inside somebody's plugin
            raise ConfigError(f"plugin failed to load: {exc!r}") from exc
    for plugin in extra_plugins:
        pm.register(plugin)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise ConfigError(f"plugin {exc.plugin!r}: {exc}") from exc
    return pm


def registered_sinks(pm: pluggy.PluginManager) -> dict[str, SinkFactory]:
    sinks: dict[str, SinkFactory] = {}

    def register(name: str, factory: SinkFactory) -> None:
        if name in sinks:
            raise ConfigError(f"sink {name!r} is registered twice")
        sinks[name] = factory

    pm.hook.vezastream_register_sinks(register=register)
    return sinks


def build_sink(pm: pluggy.PluginManager, settings: Settings) -> Sink:
    name = settings.storage.sink
    factories = registered_sinks(pm)
    if name not in factories:
        known = ", ".join(sorted(factories)) or "none"
        raise ConfigError(f"storage.sink: unknown sink {name!r} (registered: {known})")
    sink = factories[name](dict(settings.sinks.get(name, {})), settings)
    if not isinstance(sink, Sink):
        raise ConfigError(f"storage.sink: sink {name!r} does not implement the Sink protocol")
    return sink


@dataclass(frozen=True)
class PluginInfo:
    name: str
    version: str
    hooks: list[str]


def describe(pm: pluggy.PluginManager) -> list[PluginInfo]:
    """What ``vezastream plugins`` prints: name, distribution version, hooks."""
    versions = {}
    for plugin, dist in pm.list_plugin_distinfo():
        versions[id(plugin)] = dist.version if dist else "?"
    out = []
    for name, plugin in pm.list_name_plugin():
        hooks = sorted(h.name for h in pm.get_hookcallers(plugin) or [])
        out.append(PluginInfo(name, versions.get(id(plugin), _own_version()), hooks))
    return out


def _own_version() -> str:
    try:
        return metadata.version("vezastream")
    except metadata.PackageNotFoundError:
        return "dev"
