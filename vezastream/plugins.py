"""Plugin manager factory and sink registry (no global plugin manager).

Every app builds a fresh :class:`pluggy.PluginManager` with
:func:`make_plugin_manager`: it registers the hookspecs, skips plugins the
config disables (``[plugins.<name>] enabled = false``; a disabled plugin is
never imported), imports the ``vezastream`` entry points one by one, hands
each plugin its own ``[plugins.<name>]`` table (``vezastream_configure_plugin``),
and calls ``check_pending()`` so that a misspelled hook fails at startup.
Anything wrong raises :class:`ConfigError` naming the plugin, in one line.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import pluggy

from . import hookspecs
from .config import ConfigError, Settings
from .hooks import CONFIGURED_SUFFIX
from .sinks import Sink, SinkFactory, StagesBytes

log = logging.getLogger("vezastream.plugins")

ENTRY_POINT_GROUP = "vezastream"
#: The one key of ``[plugins.<name>]`` the host reads itself (and removes).
ENABLED_KEY = "enabled"
#: Hooks that must be plain functions (startup hooks, and ``firstresult`` hooks pluggy cannot await).
SYNC_HOOKS = ("vezastream_register_sinks", "vezastream_configure_plugin", "vezastream_object_key")


class PluginManager(pluggy.PluginManager):
    """pluggy's manager plus what ``vezastream plugins`` shows: each plugin's version."""

    def __init__(self) -> None:
        super().__init__(hookspecs.PROJECT)
        self.versions: dict[str, str] = {}


def _one_line(exc: BaseException) -> str:
    text = str(exc) if isinstance(exc, (ConfigError, pluggy.PluginValidationError)) \
        else f"{exc.__class__.__name__}: {exc}"
    return " ".join(text.split())


def plugin_enabled(settings: Settings | None, name: str) -> bool:
    """False when ``[plugins.<name>] enabled = false``."""
    if settings is None:
        return True
    value = settings.plugins.get(name, {}).get(ENABLED_KEY, True)
    if not isinstance(value, bool):
        raise ConfigError(f"plugins.{name}.{ENABLED_KEY}: expected true or false, got {value!r}")
    return value


def _named(plugin: Any) -> tuple[str | None, Any]:
    if isinstance(plugin, tuple) and len(plugin) == 2 and isinstance(plugin[0], str):
        return plugin
    return None, plugin


def _owner(name: str) -> str:
    """The plugin's own name, as its author and its ``[plugins.<name>]`` table know it, also for
    the object its configure hook returned (registered as ``<name>.configured``)."""
    return name.removesuffix(CONFIGURED_SUFFIX)


def _register(pm: pluggy.PluginManager, plugin: Any, name: str | None) -> str:
    try:
        registered = pm.register(plugin, name=name)
    except pluggy.PluginValidationError as exc:
        raise ConfigError(f"plugin {_owner(name or pm.get_canonical_name(plugin))!r}: {_one_line(exc)}") from exc
    except ValueError as exc:  # a name registered twice
        raise ConfigError(f"plugin {_owner(name or pm.get_canonical_name(plugin))!r}: {exc}") from exc
    assert registered is not None
    return registered


def make_plugin_manager(extra_plugins: Iterable[Any] = (), load_entry_points: bool = True, *,
                        settings: Settings | None = None) -> PluginManager:
    """A fresh plugin manager: hookspecs, installed plugins, then ``extra_plugins``.

    ``extra_plugins`` holds plugin objects or ``(name, plugin)`` pairs (tests
    use them to add a plugin without installing it). With ``settings``,
    disabled plugins are skipped and every plugin is configured.
    """
    pm = PluginManager()
    pm.add_hookspecs(hookspecs)
    if load_entry_points:
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            if pm.has_plugin(ep.name) or pm.is_blocked(ep.name):
                continue  # one distribution seen twice on sys.path
            pm.versions[ep.name] = ep.dist.version if ep.dist else "?"
            if not plugin_enabled(settings, ep.name):
                pm.set_blocked(ep.name)
                continue
            try:
                plugin = ep.load()
            except Exception as exc:  # an import error inside somebody's plugin
                raise ConfigError(f"plugin {ep.name!r} failed to load: {_one_line(exc)}") from exc
            _register(pm, plugin, ep.name)
    for item in extra_plugins:
        name, plugin = _named(item)
        if name is not None and not plugin_enabled(settings, name):
            pm.set_blocked(name)
            continue
        _register(pm, plugin, name)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        name = pm.get_name(exc.plugin) or repr(exc.plugin)
        raise ConfigError(f"plugin {name!r}: {_one_line(exc)}") from exc
    _check_impls(pm)
    if settings is not None:
        configure_plugins(pm, settings)
    return pm


def _check_impls(pm: pluggy.PluginManager) -> None:
    for caller in pm.hook.__dict__.values():
        if not isinstance(caller, pluggy.HookCaller):
            continue
        for impl in caller.get_hookimpls():
            if impl.hookwrapper or impl.wrapper:
                raise ConfigError(f"plugin {_owner(impl.plugin_name)!r}: {caller.name} may not be a wrapper")
            if caller.name in SYNC_HOOKS and inspect.iscoroutinefunction(impl.function):
                raise ConfigError(f"plugin {_owner(impl.plugin_name)!r}: {caller.name} must be a plain function, "
                                  "not async")


def configure_plugins(pm: pluggy.PluginManager, settings: Settings) -> None:
    """Hand each plugin its ``[plugins.<name>]`` table; register what it returns."""
    names = {name for name, _ in pm.list_name_plugin()}
    blocked = {name for name, plugin in pm.list_name_plugin() if plugin is None}
    for name, table in sorted(settings.plugins.items()):
        if name not in names and set(table) != {ENABLED_KEY}:  # disabling an absent plugin is fine
            known = ", ".join(sorted(names - blocked)) or "none"
            raise ConfigError(f"plugins.{name}: no installed plugin is named {name!r} (installed: {known})")
    configurers = {impl.plugin_name: impl for impl in pm.hook.vezastream_configure_plugin.get_hookimpls()}
    for name, plugin in list(pm.list_name_plugin()):
        if plugin is None:
            continue
        table = {k: v for k, v in settings.plugins.get(name, {}).items() if k != ENABLED_KEY}
        impl = configurers.get(name)
        if impl is None:
            if table:
                raise ConfigError(f"plugins.{name}.{sorted(table)[0]}: plugin {name!r} reads no configuration")
            continue
        args = {"config": table, "settings": settings}
        try:
            configured = impl.function(*[args[a] for a in impl.argnames])
        except Exception as exc:
            raise ConfigError(f"plugin {name!r}: bad configuration: {_one_line(exc)}") from exc
        if configured is not None:
            _register(pm, configured, name + CONFIGURED_SUFFIX)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise ConfigError(f"plugin {_owner(pm.get_name(exc.plugin) or '?')!r}: {_one_line(exc)}") from exc
    _check_impls(pm)


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
    known = ", ".join(sorted(factories)) or "none"
    if name not in factories:
        raise ConfigError(f"storage.sink: unknown sink {name!r} (registered: {known})")
    # Only the configured sink's table is read (and checked key by key): one that names no sink
    # (a typo, [sinks.locla]) is said, not refused, as a file may hold tables for sinks installed elsewhere.
    for unused in sorted(set(settings.sinks) - set(factories)):
        log.warning("a [sinks] table names no registered sink; it is not used",
                    extra={"event": "unknown_sink_table", "table": f"sinks.{unused}", "registered": known})
    try:
        sink = factories[name](dict(settings.sinks.get(name, {})), settings)
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"storage.sink: sink {name!r} could not be built: {_one_line(exc)}") from exc
    if not isinstance(sink, Sink):
        raise ConfigError(f"storage.sink: sink {name!r} does not implement the Sink protocol")
    if settings.storage.staging == "sink" and not isinstance(sink, StagesBytes):
        raise ConfigError(f'storage.staging = "sink": sink {name!r} cannot hold unfinished uploads (it lacks the '
                          '"staging" capability); use a sink that can (e.g. "s3"), or storage.staging = "local" '
                          "with a data_dir every node shares")
    return sink


@dataclass(frozen=True)
class PluginInfo:
    name: str
    version: str
    hooks: list[str]
    enabled: bool = True


def describe(pm: pluggy.PluginManager) -> list[PluginInfo]:
    """What ``vezastream plugins`` prints: name, distribution version, hooks (or disabled)."""
    versions: Mapping[str, str] = getattr(pm, "versions", {})
    hooks: dict[str, set[str]] = {}
    for name, plugin in pm.list_name_plugin():
        owner = name.removesuffix(CONFIGURED_SUFFIX)
        hooks.setdefault(owner, set())
        if plugin is not None:
            hooks[owner].update(h.name for h in pm.get_hookcallers(plugin) or [])
    return [PluginInfo(name, versions.get(name, _own_version()), sorted(found),
                       enabled=not pm.is_blocked(name))
            for name, found in sorted(hooks.items())]


def _own_version() -> str:
    try:
        return metadata.version("vezastream")
    except metadata.PackageNotFoundError:
        return "dev"
