"""The public plugin API of vezastream.

A plugin is a module or object with functions marked ``@vezastream.hookimpl``
whose names match the specs below. Plugins are found through the
``vezastream`` entry-point group (the built-in sinks are found the same way).

Stability promise: hookspecs only grow. A new release may add a hook or add
an argument to one (pluggy passes a hook only the arguments it names), but
never renames or removes either.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from .sinks import SinkFactory

PROJECT = "vezastream"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def vezastream_register_sinks(register: Callable[[str, "SinkFactory"], None]) -> None:
    """Register storage sinks by name.

    Runs once, while the app starts (and for ``vezastream plugins``). Call
    ``register(name, factory)`` for each sink the plugin offers. ``factory``
    is called with ``(config, settings)`` only when ``storage.sink`` names
    it: ``config`` is the ``[sinks.<name>]`` table (a dict, possibly empty),
    ``settings`` the whole :class:`vezastream.config.Settings`. It returns an
    object implementing :class:`vezastream.sinks.Sink`, and should raise
    :class:`vezastream.config.ConfigError` for a bad setting. Synchronous:
    open connections lazily or in the sink's first call.

    Example::

        @hookimpl
        def vezastream_register_sinks(register):
            register("memory", lambda config, settings: MemorySink())
    """
