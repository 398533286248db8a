"""A plugin set the server cannot run stops start-up with a ``ConfigError`` naming the plugin or
the sink (docs/plugins.md), before anything starts: ``create_app`` raises, ``vezastream serve``
prints the one line and exits 2.
"""

from __future__ import annotations

import pytest

from vezastream import hookimpl
from vezastream.config import ConfigError
from vezastream.http.app import create_app


class Pet:
    @hookimpl
    def vezastream_observe_expiry(self, upload_id):
        return None


class NotASink:
    name = "notasink"


class SinkMaker:
    """Registers sink ``name``, built by ``factory``."""

    def __init__(self, name: str, factory=lambda config, settings: NotASink()) -> None:
        self.name, self.factory = name, factory

    @hookimpl
    def vezastream_register_sinks(self, register):
        register(self.name, self.factory)


class Configures:
    """A configure hook that returns ``made``: the object that holds the plugin's hooks."""

    def __init__(self, made: object) -> None:
        self.made = made

    @hookimpl
    def vezastream_configure_plugin(self, config):
        return self.made


class Misspelt:
    @hookimpl
    def vezastream_observe_completed(self, upload, result):  # the hook is vezastream_observe_completion
        return None


class WrongArgument:
    @hookimpl
    def vezastream_observe_completion(self, upload, outcome):  # the argument is result
        return None


class AsyncKey:
    @hookimpl
    async def vezastream_object_key(self, upload):  # a plain function, by the hookspec
        return None


def refusal(settings, plugins) -> str:
    with pytest.raises(ConfigError) as info:
        create_app(settings, plugins=plugins)
    return str(info.value)


def test_two_plugins_under_one_name_are_refused(make_settings):
    message = refusal(make_settings(), [("pets", Pet()), ("pets", Pet())])
    assert message.startswith("plugin 'pets': ") and "already registered" in message


def test_two_plugins_registering_one_sink_name_are_refused(make_settings):
    message = refusal(make_settings(), [("a", SinkMaker("twin")), ("b", SinkMaker("twin"))])
    assert message == "sink 'twin' is registered twice"


def test_a_sink_that_does_not_implement_the_protocol_is_refused(make_settings):
    message = refusal(make_settings(**{"storage.sink": "notasink"}), [("maker", SinkMaker("notasink"))])
    assert message == "storage.sink: sink 'notasink' does not implement the Sink protocol"


@pytest.mark.parametrize("made,detail", [
    (Misspelt(), "unknown hook 'vezastream_observe_completed'"),
    (WrongArgument(), "'outcome'"),
    (AsyncKey(), "vezastream_object_key must be a plain function"),
], ids=["unknown-hook", "unknown-argument", "async-sync-hook"])
def test_a_bad_hook_on_what_a_configure_hook_returns_names_the_plugin(make_settings, made, detail):
    """The plugin's own name, as its author and its ``[plugins.<name>]`` table know it (the
    object is registered under an internal name, ``<name>.configured``)."""
    message = refusal(make_settings(), [("typo", Configures(made))])
    assert message.startswith("plugin 'typo': ") and detail in message, message
