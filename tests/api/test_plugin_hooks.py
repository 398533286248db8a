"""Every hookspec has a test here named ``test_hook_<hook name>`` (tests/unit/test_plugin_docs.py checks).

Plugins are objects handed to ``create_app(..., plugins=[(name, obj)])``: a fresh
plugin manager per app, real Redis, the real local sink.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
from pathlib import Path

import pluggy
import pytest
from multidict import CIMultiDict

from vezastream import errors, hookimpl
from vezastream.http.app import engine_key, gc_key, hooks_key, plugin_manager_key
from vezastream.config import ConfigError
from vezastream.hooks import Hooks
from vezastream.hookspecs import PROJECT
from vezastream.testing import (SinkConformance, content, create, drain_notifications, put_chunk, random_bytes,
                                send_chunks, sha256, upload)

from helpers import Quota


class MemoryAssembly:
    def __init__(self, sink: "MemorySink", key: str, data: bytes) -> None:
        self.sink, self.location, self.data = sink, key, data

    async def commit(self) -> None:
        self.sink.objects[self.location] = self.data

    async def discard(self) -> None:
        return None


class MemorySink:
    """A test double: objects are kept in a dict (fine for test-sized files only)."""

    name = "memory"

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}

    async def assemble(self, upload, source) -> MemoryAssembly:
        data = b"".join([block async for block in source.iter_bytes()])
        return MemoryAssembly(self, f"mem/{upload.id}", data)

    async def check(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    async def remove(self, upload, result) -> None:
        self.objects.pop(result.location, None)


class MemorySinkPlugin:
    @hookimpl
    def vezastream_register_sinks(self, register):
        register("memory", lambda config, settings: MemorySink())


async def _drained(client) -> None:
    await client.server.app[hooks_key].drain(timeout=5)


# -- registration and configuration ---------------------------------------------------
async def test_hook_vezastream_register_sinks(make_settings, make_client):
    client = await make_client(make_settings(**{"storage.sink": "memory"}),
                               plugins=[("memory", MemorySinkPlugin())])
    data = random_bytes(5000)
    result = await upload(client, data, chunk_size=1000)
    sink = client.server.app[engine_key].sink
    assert result["sink"] == "memory" and sink.objects[result["location"]] == data


class TestMemorySinkConformance(SinkConformance):
    """A sink that is not installed runs the kit through ``sink_plugins``."""

    honours_keys = False  # it names each object by its upload id, as the kit allows (plugins.md)

    @pytest.fixture
    def sink_settings(self):
        return {"storage.sink": "memory"}

    @pytest.fixture
    def sink_plugins(self):
        return [("memory", MemorySinkPlugin())]

    async def stored_objects(self, sink) -> set[str]:
        return set(sink.objects)


class QuotaPlugin:
    @hookimpl
    def vezastream_configure_plugin(self, config, settings):
        max_size = config.get("max_size")
        if not isinstance(max_size, int) or max_size < 0:
            raise ConfigError("plugins.quota.max_size: expected a size in bytes")
        return Quota(max_size)


async def test_hook_vezastream_configure_plugin(make_settings, make_client):
    settings = make_settings(**{"plugins.quota.max_size": 100})
    client = await make_client(settings, plugins=[("quota", QuotaPlugin())])
    await create(client, total_size=100)
    problem = await create(client, total_size=101, expect=413)
    assert problem["detail"] == "this server takes files up to 100 bytes" and problem["plugin"] == "quota"
    # Each app configures its own object: no state shared through the plugin module.
    other = await make_client(make_settings(**{"plugins.quota.max_size": 1000}),
                              plugins=[("quota", QuotaPlugin())])
    await create(other, total_size=1000)
    assert other.server.app[plugin_manager_key] is not client.server.app[plugin_manager_key]


@pytest.mark.parametrize("overrides, message", [
    ({"plugins.quota.max_size": "big"}, "plugin 'quota': bad configuration: plugins.quota.max_size: expected"),
    ({}, "plugin 'quota': bad configuration"),
    ({"plugins.quota.max_size": 1, "plugins.quota.enabled": "yes"}, "plugins.quota.enabled: expected true or false"),
    ({"plugins.quotta.max_size": 1}, "plugins.quotta: no installed plugin is named 'quotta'"),
    ({"plugins.quota.max_size": 1, "plugins.memory.x": 1}, "plugins.memory.x: plugin 'memory' reads no configuration"),
])
def test_bad_plugin_config_stops_startup_naming_the_plugin(make_settings, overrides, message):
    from vezastream.http.app import create_app

    settings = make_settings(**overrides)
    with pytest.raises(ConfigError) as info:
        create_app(settings, plugins=[("quota", QuotaPlugin()), ("memory", MemorySinkPlugin())])
    assert str(info.value).startswith(message), str(info.value)
    assert "\n" not in str(info.value)


def test_disabled_plugin_is_not_configured(make_settings):
    from vezastream.http.app import create_app

    create_app(make_settings(**{"plugins.quota.enabled": False}), plugins=[("quota", QuotaPlugin())])
    create_app(make_settings(**{"plugins.not_installed.enabled": False}))  # making sure it is off: fine


# -- request path ---------------------------------------------------------------------
class ApiKeys:
    def __init__(self) -> None:
        self.calls = 0

    @hookimpl
    async def vezastream_authenticate_request(self, request):
        self.calls += 1
        await asyncio.sleep(0)
        key = request.headers.get("X-Api-Key")
        if key == "revoked":
            raise errors.Unauthorized("this key was revoked")
        if key == "boom":
            raise RuntimeError("key store down")
        return {"k-alice": "alice", "k-bob": "bob"}.get(key or "")


class Everyone:
    @hookimpl(trylast=True)
    def vezastream_authenticate_request(self, request, settings):
        return "fallback-user" if "X-Fallback" in request.headers else None


async def test_hook_vezastream_authenticate_request(make_settings, make_client):
    keys = ApiKeys()
    client = await make_client(make_settings(), plugins=[("keys", keys), ("everyone", Everyone())])
    resp = await client.post("/v1/uploads", json={"filename": "a", "total_size": 1},
                             headers={"X-Api-Key": "k-alice"})
    alice_upload = (await resp.json())["upload_id"]
    assert resp.status == 201
    # Another user (and the built-in "anonymous" when every plugin declines) cannot see it.
    for headers in ({"X-Api-Key": "k-bob"}, {}, {"X-Fallback": "1"}):
        assert (await client.get(f"/v1/uploads/{alice_upload}", headers=headers)).status == 404
    assert (await client.get(f"/v1/uploads/{alice_upload}", headers={"X-Api-Key": "k-alice"})).status == 200
    # Raising Unauthorized refuses the request, but only where a user is needed.
    resp = await client.get(f"/v1/uploads/{alice_upload}", headers={"X-Api-Key": "revoked"})
    assert resp.status == 401 and (await resp.json())["detail"] == "this key was revoked"
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")  # RFC 9110: a 401 names a scheme
    assert resp.content_type == "application/problem+json"
    assert (await client.get("/v1/health", headers={"X-Api-Key": "revoked"})).status == 200
    # A crashing plugin fails closed.
    resp = await client.get(f"/v1/uploads/{alice_upload}", headers={"X-Api-Key": "boom"})
    assert resp.status == 503 and (await resp.json())["plugin"] == "keys"


async def test_authenticate_stops_at_the_first_answer(make_settings, make_client):
    keys = ApiKeys()

    class First:
        @hookimpl(tryfirst=True)
        def vezastream_authenticate_request(self):
            return "first"

    client = await make_client(make_settings(), plugins=[("keys", keys), ("first", First())])
    state = await create(client, total_size=1)
    assert keys.calls == 0 and state["upload_id"]


class BearerKeys:
    """Reads the Authorization header itself, as a plugin for its own tokens would."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    @hookimpl
    def vezastream_authenticate_request(self, request):
        sent = request.headers.get("Authorization", "")
        self.seen.append(sent)
        return {"Bearer k-alice": "alice", "Bearer k-bob": "bob"}.get(sent)


async def test_authorization_sent_twice_is_refused_before_a_plugin_reads_the_first(make_settings, make_client):
    """Which of two Authorization lines a proxy or a log acted on is a guess (built-in token auth
    refuses them): a plugin must not be handed the first one as if it were the only one."""
    keys = BearerKeys()
    client = await make_client(make_settings(), plugins=[("bearer", keys)])
    twice = CIMultiDict([("Authorization", "Bearer k-alice"), ("Authorization", "Bearer k-bob")])
    resp = await client.post("/v1/uploads", json={"filename": "a", "total_size": 1}, headers=twice)
    problem = await resp.json()
    assert resp.status == 400 and problem["type"].endswith("/bad-request"), problem
    assert "Authorization was sent 2 times" in problem["detail"], problem
    assert (await client.get("/v1/health", headers=twice)).status == 200  # refused where a user is needed only
    assert keys.seen == []
    once = await client.post("/v1/uploads", json={"filename": "a", "total_size": 1},
                             headers={"Authorization": "Bearer k-alice"})
    assert once.status == 201 and keys.seen == ["Bearer k-alice"]


async def test_plugin_user_overrides_token_auth(make_settings, make_client, monkeypatch):
    monkeypatch.setenv("VZ_TEST_TOKENS", "tok=carol")
    settings = make_settings(**{"auth.mode": "token", "auth.tokens_env": "VZ_TEST_TOKENS"})
    client = await make_client(settings, plugins=[("keys", ApiKeys())])
    assert (await client.post("/v1/uploads", json={"filename": "a", "total_size": 1})).status == 401
    ok = await client.post("/v1/uploads", json={"filename": "a", "total_size": 1},
                           headers={"Authorization": "Bearer tok"})
    assert ok.status == 201
    by_key = await client.post("/v1/uploads", json={"filename": "a", "total_size": 1},
                               headers={"X-Api-Key": "k-bob"})
    assert by_key.status == 201


class FilePolicy:
    def __init__(self) -> None:
        self.seen = []

    @hookimpl
    async def vezastream_validate_upload(self, upload, settings):
        self.seen.append(upload)
        await asyncio.sleep(0)
        if upload.filename.endswith(".exe"):
            return errors.Rejected("executables are not accepted")
        if upload.metadata.get("crash"):
            raise RuntimeError("policy store down")
        return None


async def _keys(client) -> list[str]:
    store = client.server.app[engine_key].store
    return await store.redis.keys(f"{store.prefix}:*")


async def test_hook_vezastream_validate_upload(make_settings, make_client):
    policy = FilePolicy()
    client = await make_client(make_settings(), plugins=[("policy", policy)])
    ok = await create(client, filename="song.mp3", total_size=10, metadata={"album": "x"})
    assert policy.seen[0].filename == "song.mp3" and policy.seen[0].owner == "anonymous"
    assert policy.seen[0].total_chunks == 1 and policy.seen[0].metadata == {"album": "x"}
    before = await _keys(client)
    resp = await client.post("/v1/uploads", json={"filename": "setup.exe", "total_size": 10})
    problem = await resp.json()
    assert resp.status == 422 and resp.content_type == "application/problem+json"
    assert problem["detail"] == "executables are not accepted" and problem["plugin"] == "policy"
    assert problem["type"].endswith("/rejected")
    resp = await client.post("/v1/uploads", json={"filename": "a", "total_size": 1, "metadata": {"crash": "1"}})
    assert resp.status == 503 and (await resp.json())["plugin"] == "policy"
    assert await _keys(client) == before  # nothing was stored
    # The engine's own checks run first: an invalid plan never reaches the plugin.
    seen = len(policy.seen)
    await create(client, total_size=10, chunk_size=3, total_chunks=2, expect=422)
    assert len(policy.seen) == seen and ok["upload_id"]


class AudioOnly:
    """Reads the assembled bytes; accepts only what starts with ``fLaC``."""

    def __init__(self) -> None:
        self.digests: list[str] = []
        self.down = False

    @hookimpl
    async def vezastream_inspect_upload(self, upload, source):
        if self.down:
            raise ConnectionError("scanner unreachable")
        h = hashlib.sha256()
        head = b""
        async for block in source.iter_bytes(block=1000):
            head = head or block[:4]
            h.update(block)
        self.digests.append(h.hexdigest())
        if head != b"fLaC":
            raise errors.Rejected("not a FLAC file")


async def test_hook_vezastream_inspect_upload(make_settings, make_client, tmp_path: Path):
    inspector = AudioOnly()
    settings = make_settings(**{"sinks.local.directory": str(tmp_path / "files")})
    client = await make_client(settings, plugins=[("audio", inspector)])
    flac = b"fLaC" + random_bytes(4500)
    result = await upload(client, flac, chunk_size=1000)
    assert inspector.digests == [sha256(flac)]
    assert await content(client, result["upload_id"]) == (200, flac)

    data = random_bytes(4500)
    state = await create(client, total_size=len(data), chunk_size=1000)
    upload_id = state["upload_id"]
    await send_chunks(client, upload_id, data, 1000)
    resp = await client.post(f"/v1/uploads/{upload_id}/complete")
    problem = await resp.json()
    assert resp.status == 422 and problem["detail"] == "not a FLAC file" and problem["plugin"] == "audio"
    # Rejected: nothing reached the sink; the upload is pending with every chunk kept.
    assert not list((tmp_path / "files").glob(f"{upload_id}/*"))
    state = await (await client.get(f"/v1/uploads/{upload_id}")).json()
    assert state["status"] == "pending" and state["received_count"] == 5
    assert (await client.delete(f"/v1/uploads/{upload_id}")).status == 204

    # A failing inspector answers 503 and keeps the upload for a later complete.
    inspector.down = True
    state = await create(client, total_size=len(flac), chunk_size=1000)
    await send_chunks(client, state["upload_id"], flac, 1000)
    resp = await client.post(f"/v1/uploads/{state['upload_id']}/complete")
    assert resp.status == 503 and (await resp.json())["plugin"] == "audio"
    inspector.down = False
    resp = await client.post(f"/v1/uploads/{state['upload_id']}/complete")
    assert resp.status == 200


# -- notifications --------------------------------------------------------------------
class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple] = []

    @hookimpl
    async def vezastream_observe_chunk(self, upload, chunk, received_count):
        self.events.append(("chunk", upload.id, chunk.number, chunk.size, received_count))

    @hookimpl
    def vezastream_observe_completion(self, upload, result):
        self.events.append(("completed", upload.id, str(upload.status), result.sha256, result.location))

    @hookimpl
    async def vezastream_observe_abort(self, upload, reason):
        self.events.append(("aborted", upload.id, str(upload.status), reason))

    @hookimpl
    async def vezastream_observe_expiry(self, upload_id):
        self.events.append(("expired", upload_id))


async def test_hook_vezastream_observe_chunk(make_settings, make_client):
    rec = Recorder()
    client = await make_client(make_settings(), plugins=[("rec", rec)])
    state = await create(client, total_size=15, chunk_size=10)
    await put_chunk(client, state["upload_id"], 2, b"x" * 5)
    await put_chunk(client, state["upload_id"], 2, b"x" * 5, expect=200)  # a retry: no new event
    await put_chunk(client, state["upload_id"], 1, b"y" * 10)
    await _drained(client)
    assert sorted(rec.events) == [("chunk", state["upload_id"], 1, 10, 2), ("chunk", state["upload_id"], 2, 5, 1)]


async def test_hook_vezastream_observe_completion(make_settings, make_client):
    rec = Recorder()
    client = await make_client(make_settings(), plugins=[("rec", rec)])
    data = random_bytes(3000)
    result = await upload(client, data, chunk_size=1000)
    assert (await client.post(f"/v1/uploads/{result['upload_id']}/complete")).status == 200  # idempotent
    await _drained(client)
    done = [e for e in rec.events if e[0] == "completed"]
    assert done == [("completed", result["upload_id"], "completed", sha256(data), result["location"])]


async def test_hook_vezastream_observe_abort(make_settings, make_client):
    rec = Recorder()
    client = await make_client(make_settings(), plugins=[("rec", rec)])
    pending = await create(client, total_size=10)
    completed = await upload(client, b"z" * 10, chunk_size=10)
    for upload_id in (pending["upload_id"], completed["upload_id"]):
        assert (await client.delete(f"/v1/uploads/{upload_id}")).status == 204
    await _drained(client)
    assert [e for e in rec.events if e[0] == "aborted"] == [
        ("aborted", pending["upload_id"], "pending", "deleted"),
        ("aborted", completed["upload_id"], "completed", "deleted")]


async def test_hook_vezastream_observe_expiry(make_settings, make_client):
    rec = Recorder()
    client = await make_client(make_settings(), plugins=[("rec", rec)])
    app = client.server.app
    state = await create(client, total_size=10)
    await put_chunk(client, state["upload_id"], 1, b"q" * 10)
    store = app[engine_key].store
    await store.redis.delete(store.key(state["upload_id"]), store.chunks_key(state["upload_id"]))
    gc = app[gc_key]
    assert (await gc.run_once()).removed == []  # too young yet
    gc.clock = lambda: time.time() + gc.settings.gc.max_age + 1
    assert (await gc.run_once(dry_run=True)).removed == [state["upload_id"]]
    await _drained(client)
    assert not [e for e in rec.events if e[0] == "expired"]  # a dry run tells nobody
    assert (await gc.run_once()).removed == [state["upload_id"]]
    await _drained(client)
    assert ("expired", state["upload_id"]) in rec.events


class Troublemakers:
    """Observers that fail or hang must not fail or slow an upload."""

    def __init__(self) -> None:
        self.hung = asyncio.Event()
        self.cancelled = False

    @hookimpl(tryfirst=True)
    def vezastream_observe_chunk(self):
        raise RuntimeError("sync observer bug")

    @hookimpl
    async def vezastream_observe_completion(self):
        self.hung.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            self.cancelled = True
            raise

    @hookimpl
    async def vezastream_observe_abort(self):
        raise RuntimeError("async observer bug")


async def test_failing_or_slow_observers_neither_block_nor_lose_uploads(make_settings, make_client, caplog):
    bad, rec = Troublemakers(), Recorder()
    client = await make_client(make_settings(), plugins=[("bad", bad), ("rec", rec)])
    hooks: Hooks = client.server.app[hooks_key]
    hooks.notify_timeout = 0.3
    data = random_bytes(3000)
    started = time.monotonic()
    with caplog.at_level(logging.ERROR, logger="vezastream.plugins"):
        result = await upload(client, data, chunk_size=1000)
        assert time.monotonic() - started < 5
        await asyncio.wait_for(bad.hung.wait(), 5)
        assert (await client.delete(f"/v1/uploads/{result['upload_id']}")).status == 204
        await hooks.drain(timeout=5)
    assert bad.cancelled and hooks.pending == 0
    # The other plugin's observers still ran, for every event.
    assert len([e for e in rec.events if e[0] == "chunk"]) == 3
    # (in either order: plain-def observers run in a pool of threads; plugins.md says so)
    assert sorted(e[0] for e in rec.events if e[0] != "chunk") == ["aborted", "completed"]
    messages = {(r.getMessage(), getattr(r, "plugin", None)) for r in caplog.records}
    assert {("notification failed", "bad"), ("notification timed out", "bad")} <= messages


class Blocking:
    """An observer written as a plain function that blocks (a call without asyncio, ``time.sleep``)."""

    def __init__(self) -> None:
        self.go, self.began, self.calls = threading.Event(), threading.Event(), []

    @hookimpl
    def vezastream_observe_chunk(self, chunk):
        self.began.set()
        self.go.wait(5)  # bounded: the test sets it
        self.calls.append((chunk.number, threading.current_thread().name))


async def test_an_observer_that_blocks_in_plain_python_holds_no_request(make_settings, make_client):
    """plugins.md: observers run in the background; a plain function's runs in a thread, so while
    it blocks, the chunk that caused it is answered and other requests are served."""
    blocking = Blocking()
    client = await make_client(make_settings(), plugins=[("blocking", blocking)])
    state = await create(client, total_size=3000, chunk_size=1000)
    try:
        started = time.monotonic()
        for n in range(1, 4):
            await put_chunk(client, state["upload_id"], n, b"z" * 1000)
        assert (await client.get("/v1/health")).status == 200
        answered = time.monotonic() - started
        assert await asyncio.to_thread(blocking.began.wait, 5)
        assert blocking.calls == [] and answered < 2.5  # answered while the observer is still blocked
    finally:
        blocking.go.set()
    await drain_notifications(client)
    assert sorted(index for index, _ in blocking.calls) == [1, 2, 3]
    assert all(name.startswith("vezastream-notify") for _, name in blocking.calls)


async def test_plain_observers_run_four_at_a_time_and_the_rest_wait_their_turn(make_settings, make_client):
    """plugins.md: plain observers share 4 threads; while 4 block, the next ones wait, then run."""
    running, most, go, lock = [0], [0], threading.Event(), threading.Lock()

    class Counting:
        @hookimpl
        def vezastream_observe_chunk(self, chunk):
            with lock:
                running[0] += 1
                most[0] = max(most[0], running[0])
            go.wait(5)
            with lock:
                running[0] -= 1

    client = await make_client(make_settings(), plugins=[("counting", Counting())])
    state = await create(client, total_size=6000, chunk_size=1000)
    try:
        for n in range(1, 7):
            await put_chunk(client, state["upload_id"], n, b"c" * 1000)
        for _ in range(100):  # until 4 block (5 s at most), then a little more: no fifth joins them
            if running[0] == 4:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        assert running[0] == most[0] == 4
    finally:
        go.set()
    await drain_notifications(client)
    assert running[0] == 0 and most[0] == 4


async def test_notifications_beyond_max_pending_are_dropped_not_queued(settings, caplog):
    hung = asyncio.Event()

    class Slow:
        @hookimpl
        async def vezastream_observe_expiry(self, upload_id):
            await hung.wait()

    pm = pluggy.PluginManager(PROJECT)
    from vezastream import hookspecs
    pm.add_hookspecs(hookspecs)
    pm.register(Slow(), name="slow")
    hooks = Hooks(pm, settings, max_pending=2)
    for n in range(5):
        hooks.expired(f"id{n}")
    assert hooks.pending == 2 and hooks.dropped == 3
    assert "notifications dropped: too many running" in caplog.text
    hung.set()
    await hooks.drain(timeout=5)
    assert hooks.pending == 0


async def test_drain_cancels_what_outlives_shutdown(settings):
    gate, cancelled = asyncio.Event(), asyncio.Event()

    class Forever:
        @hookimpl
        async def vezastream_observe_expiry(self, upload_id):
            gate.set()
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                cancelled.set()
                raise

    pm = pluggy.PluginManager(PROJECT)
    from vezastream import hookspecs
    pm.add_hookspecs(hookspecs)
    pm.register(Forever(), name="forever")
    hooks = Hooks(pm, settings, notify_timeout=3600)
    hooks.expired("id")
    await asyncio.wait_for(gate.wait(), 5)
    await hooks.drain(timeout=0.05)
    assert cancelled.is_set() and hooks.pending == 0


def test_hooks_call_implementations_in_pluggy_order(settings):
    order: list[str] = []

    def plugin(name: str, **opts):
        class P:
            @hookimpl(**opts)
            def vezastream_observe_expiry(self, upload_id):
                order.append(name)
        return P()

    pm = pluggy.PluginManager(PROJECT)
    from vezastream import hookspecs
    pm.add_hookspecs(hookspecs)
    for name, opts in [("a", {}), ("last", {"trylast": True}), ("b", {}), ("first", {"tryfirst": True})]:
        pm.register(plugin(name, **opts), name=name)
    pm.hook.vezastream_observe_expiry(upload_id="x")
    assert [impl.plugin_name for impl in Hooks(pm, settings).implementations("vezastream_observe_expiry")] == order
    assert order == ["first", "b", "a", "last"]


# -- the tus front door runs the same hooks -------------------------------------------
async def test_tus_uploads_run_the_same_hooks(make_settings, make_client):
    from tus_helpers import tus_create, tus_patch, upload_path

    rec, policy, audio = Recorder(), FilePolicy(), AudioOnly()
    client = await make_client(make_settings(), plugins=[("rec", rec), ("policy", policy), ("audio", audio)])
    resp = await tus_create(client, 10, filename="setup.exe", expect=422)
    assert (await resp.json())["plugin"] == "policy"

    flac = b"fLaC" + random_bytes(96)
    path = upload_path(await tus_create(client, len(flac), filename="a.flac"))
    await tus_patch(client, path, 0, flac[:60])
    await tus_patch(client, path, 60, flac[60:])
    upload_id = path.rsplit("/", 1)[1]
    assert policy.seen[-1].protocol == "tus" and policy.seen[-1].total_size == len(flac)
    assert audio.digests == [sha256(flac)]

    # A refused tus upload stays pending, as a native one does.
    junk = upload_path(await tus_create(client, 5, filename="b.flac"))
    resp = await tus_patch(client, junk, 0, b"nope!", expect=None)
    assert resp.status == 422 and (await resp.json())["detail"] == "not a FLAC file"

    # Concatenation: the partials are absorbed ("concatenated"), the final upload completes.
    parts = []
    for piece in (flac[:50], flac[50:]):
        part = upload_path(await tus_create(client, len(piece), headers={"Upload-Concat": "partial"}))
        await tus_patch(client, part, 0, piece)
        parts.append(part)
    final = upload_path(await tus_create(client, None, headers={"Upload-Concat": f"final;{' '.join(parts)}"}))
    await _drained(client)
    chunks = [e for e in rec.events if e[0] == "chunk" and e[1] == upload_id]
    assert sorted(e[2:] for e in chunks) == [(1, 60, 1), (2, 40, 2)]
    completed = {e[1] for e in rec.events if e[0] == "completed"}
    assert {upload_id, final.rsplit("/", 1)[1]} <= completed
    assert sorted(e[1:] for e in rec.events if e[0] == "aborted") == sorted(
        (p.rsplit("/", 1)[1], "pending", "concatenated") for p in parts)


class SlowScanner:
    """Takes its time over each upload, then accepts it."""

    @hookimpl
    async def vezastream_inspect_upload(self, upload, source):
        await asyncio.sleep(0.5)


async def test_a_completion_whose_client_went_away_still_completes(make_settings, make_client):
    """As under ``vezastream serve``, the test server lets a request whose client went away run to its
    end: the completion finishes, and the next complete answers its result. (aiohttp's own test server
    cancelled the handler, so plugin tests saw the completion undone, the upload pending again.)"""
    client = await make_client(make_settings(), plugins=[("scanner", SlowScanner())])
    data = random_bytes(3000)
    upload_id = (await create(client, total_size=len(data), chunk_size=1000))["upload_id"]
    await send_chunks(client, upload_id, data, 1000)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.1):
            await client.post(f"/v1/uploads/{upload_id}/complete")
    status = ""
    for _ in range(50):  # at most 5 s
        status = (await (await client.get(f"/v1/uploads/{upload_id}")).json())["status"]
        if status != "completing":
            break
        await asyncio.sleep(0.1)
    assert status == "completed"
    resp = await client.post(f"/v1/uploads/{upload_id}/complete")
    assert resp.status == 200 and (await resp.json())["sha256"] == sha256(data)
    assert await content(client, upload_id) == (200, data)
