"""The plugin author kit's public helpers (``vezastream.testing``) and its conformance rules."""

from __future__ import annotations

import asyncio

import pytest

import vezastream_local
from vezastream import Rejected, hookimpl
from vezastream.testing import (RULES, EventRecorder, SinkConformance, configured_plugin, drain_notifications,
                                create, random_bytes, running_app, sink_of, upload)


class SlowObserver:
    def __init__(self) -> None:
        self.finished: list[str] = []

    @hookimpl
    async def vezastream_observe_completion(self, upload):
        await asyncio.sleep(0.3)
        self.finished.append(upload.id)


class Configured:
    @hookimpl
    def vezastream_configure_plugin(self, config):
        return SlowObserver()


async def test_drain_waits_for_notifications_and_configured_plugin_finds_the_object(make_settings, make_client):
    client = await make_client(make_settings(), plugins=[("slow", Configured())])
    result = await upload(client, b"abc", chunk_size=3)
    observer = configured_plugin(client, "slow")
    assert isinstance(observer, SlowObserver) and observer.finished == []
    await drain_notifications(client)
    assert observer.finished == [result["upload_id"]]


async def test_drain_says_when_notifications_outlast_the_timeout(make_settings, make_client):
    client = await make_client(make_settings(), plugins=[("slow", Configured())])
    await upload(client, b"abc", chunk_size=3)
    with pytest.raises(AssertionError, match="1 plugin notifications still running after 0.05 s"):
        await drain_notifications(client, timeout=0.05)


async def test_event_recorder_captures_every_notification(make_settings, make_client):
    events = EventRecorder()
    client = await make_client(make_settings(), plugins=[("events", events)])
    result = await upload(client, random_bytes(3000), chunk_size=1000)
    upload_id = result["upload_id"]
    assert len(await events.wait_for("chunk", upload_id, count=3)) == 3
    (done,) = await events.wait_for("completion", upload_id)
    assert done.args["result"].sha256 == result["sha256"]
    assert (await client.delete(f"/v1/uploads/{upload_id}")).status == 204
    (gone,) = await events.wait_for("abort", upload_id)
    assert gone.args["reason"] == "deleted"
    with pytest.raises(AssertionError, match="0 of 1 'expiry' events"):
        await events.wait_for("expiry", timeout=0.05)


async def test_running_app_with_only_the_given_plugins(make_settings):
    events = EventRecorder()
    settings = make_settings()
    async with running_app(settings, plugins=[("local", vezastream_local), ("events", events)],
                           installed=False) as client:
        assert sink_of(client).name == "local"
        assert configured_plugin(client, "webhook") is None
        result = await upload(client, b"hello", chunk_size=5)
        await events.wait_for("completion", result["upload_id"])


class LeakySink(vezastream_local.LocalSink):
    """Its discard leaves the temporary file behind: the 'discard' rule must say so."""

    async def assemble(self, upload, source):
        assembly = await super().assemble(upload, source)

        async def keep() -> None:
            return None
        assembly.discard = keep
        return assembly


class LeakyKit(SinkConformance):
    async def stored_objects(self, sink):
        return {str(p.relative_to(sink.directory)) for p in sink.directory.rglob("*") if p.is_file()}


async def test_a_broken_rule_is_named_in_the_failure(make_settings, make_client, tmp_path):
    class Plugin:
        @hookimpl
        def vezastream_register_sinks(self, register):
            register("leaky", lambda config, settings: LeakySink(tmp_path / "objects", fsync=False))

    client = await make_client(make_settings(**{"storage.sink": "leaky"}), plugins=[("leaky", Plugin())])
    with pytest.raises(AssertionError, match=r"conformance rule 'discard' broken: a refused completion .*added \['"):
        await LeakyKit().test_declared_sha256_mismatch_stores_nothing(client)
    assert set(RULES) >= {"stores", "discard", "abort", "remove", "gc"}


class KeylessSink(vezastream_local.LocalSink):
    """Stores every object under its upload id, whatever key a plugin chose: the 'keys' rule must say so."""

    def path_for(self, upload):
        location = f"{upload.id}/object"
        return self.directory / location, location


class OverwritingSink(vezastream_local.LocalSink):
    """Honours the key but replaces a taken one: the 'keys' rule must say so."""

    async def assemble(self, upload, source):
        assembly = await super().assemble(upload, source)
        assembly.owned = True  # os.replace: the first upload's object is overwritten
        return assembly


def _registering(name, sink_class, folder):
    class Plugin:
        @hookimpl
        def vezastream_register_sinks(self, register):
            register(name, lambda config, settings: sink_class(folder, fsync=False))
    return [(name, Plugin())]


@pytest.mark.parametrize("sink_class, seen", [(KeylessSink, r"location '[\w-]+/object', key 'conformance/"),
                                              (OverwritingSink, r"'location': 'conformance/\w+/taken.bin'")])
async def test_the_keys_rule_catches_a_sink_that_ignores_or_overwrites_a_key(make_settings, make_client, tmp_path,
                                                                             sink_class, seen):
    plugins = _registering("keyed", sink_class, tmp_path / "objects")
    with pytest.raises(AssertionError, match=r"conformance rule 'keys' broken: .*" + seen):
        await LeakyKit().test_object_key_is_honoured_and_never_overwritten(
            make_settings, make_client, {"storage.sink": "keyed"}, plugins)


async def test_a_kit_for_a_sink_that_ignores_keys_skips_the_keys_rule(make_settings, make_client, tmp_path):
    class ContentAddressedKit(LeakyKit):
        honours_keys = False

    with pytest.raises(pytest.skip.Exception, match="honours_keys = False"):
        await ContentAddressedKit().test_object_key_is_honoured_and_never_overwritten(
            make_settings, make_client, {"storage.sink": "keyed"}, _registering("keyed", KeylessSink, tmp_path))


# -- what docs/plugins.md says of make_settings and make_client ------------------------------------
def test_make_settings_ignores_the_environment(make_settings, monkeypatch):
    monkeypatch.setenv("VEZASTREAM_LIMITS__MIN_CHUNK_SIZE", "5000")
    monkeypatch.setenv("VEZASTREAM_GC__ENABLED", "true")
    settings = make_settings()
    assert (settings.limits.min_chunk_size, settings.gc.enabled) == (1, False)


async def test_every_installed_plugin_loads_unless_disabled(make_settings, make_client):
    from vezastream.http.app import plugin_manager_key

    loaded = await make_client(make_settings())
    assert loaded.server.app[plugin_manager_key].get_plugin("webhook") is not None
    disabled = await make_client(make_settings(**{"plugins.webhook.enabled": False}))
    assert disabled.server.app[plugin_manager_key].get_plugin("webhook") is None


class RefuseAll:
    @hookimpl
    def vezastream_validate_upload(self, upload):
        return Rejected("no")


@pytest.mark.parametrize("plugin, named", [(RefuseAll(), str.isdigit), (("policy", RefuseAll()), "policy".__eq__)])
async def test_a_bare_plugin_object_gets_a_numeric_name(make_settings, make_client, plugin, named):
    client = await make_client(make_settings(), plugins=[plugin])
    problem = await create(client, total_size=1, expect=422)
    assert named(problem["plugin"]), problem
