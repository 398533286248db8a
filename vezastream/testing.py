"""The plugin author kit: pytest fixtures and a sink conformance suite.

A pytest plugin that a test suite opts into (it needs the ``test`` extra):
``pytest_plugins = ["vezastream.testing"]`` in the suite's top-level
``conftest.py``, or ``addopts = "-p vezastream.testing"`` in its pytest
config. Installing vezastream alone never changes an unrelated pytest run.
It gives:

* fixtures: ``redis_url`` (one real ``redis-server`` per session on a unix
  socket, stopped by PID; the binary ``VEZASTREAM_REDIS__SERVER_BINARY``
  names, as it names the bundled server's for ``vezastream serve``), ``make_settings(**dotted_overrides)``,
  ``settings``, ``make_client(settings, plugins=..., installed=True)`` and
  ``client`` (the real app on a test server);
* :func:`running_app`, the same outside pytest's fixtures;
* client helpers a test calls like a real client would: :func:`create`,
  :func:`put_chunk`, :func:`upload`, :func:`content`;
* what the app holds, without reaching into it: :func:`sink_of`,
  :func:`configured_plugin`, :func:`drain_notifications` (wait for the
  ``vezastream_observe_*`` hooks to finish), and :class:`EventRecorder` (a
  plugin that captures every notification);
* :class:`SinkConformance`, the contract every sink must pass. A sink package
  runs it against its own sink in a few lines::

      from vezastream.testing import SinkConformance

      class TestMemorySink(SinkConformance):
          @pytest.fixture
          def sink_settings(self):
              return {"storage.sink": "memory"}

See ``docs/plugins.md`` ("Testing a plugin").
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import secrets
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import redis
from aiohttp.test_utils import TestClient, TestServer

from .http.app import AppRunner, create_app, engine_key, gc_key, hooks_key, plugin_manager_key, sink_key
from .config import Settings, load_settings
from .errors import Rejected
from .hooks import CONFIGURED_SUFFIX
from .hookspecs import hookimpl
from .models import ChunkRecord, Upload, UploadResult, UploadSpec, UploadStatus
from .plugins import make_plugin_manager
from .state.redis_server import redis_binary
from .sinks import CAPABILITIES, Sink, capabilities

__all__ = ["RULES", "ChooseKey", "Event", "EventRecorder", "RejectOnce", "SinkConformance", "configured_plugin",
           "content", "create", "drain_notifications", "put_chunk", "random_bytes", "running_app", "send_chunks",
           "sha256", "sink_of", "split", "upload"]


# -- fixtures --------------------------------------------------------------------------
def server_binary() -> str:
    """The ``redis-server`` the tests start: the one ``VEZASTREAM_REDIS__SERVER_BINARY`` names (the
    environment's ``redis.server_binary``, which a ``vezastream serve`` started by a test inherits),
    else the bundled one."""
    return redis_binary(os.environ.get("VEZASTREAM_REDIS__SERVER_BINARY", ""))


def wait_for_redis(sock: Path, proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """Return once the redis-server ``proc`` answers on the unix socket ``sock``; raise if it exits or times out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"redis-server exited with {proc.returncode}")
        try:
            if sock.exists() and redis.Redis(unix_socket_path=str(sock)).ping():
                return
        except redis.ConnectionError:
            pass
        time.sleep(0.05)
    raise RuntimeError("redis-server did not start")


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One real redis-server for the session, on a unix socket; stopped by PID."""
    folder = tmp_path_factory.mktemp("redis")
    sock = folder / "redis.sock"
    proc = subprocess.Popen(
        [server_binary(), "--port", "0", "--unixsocket", str(sock), "--dir", str(folder),
         "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_redis(sock, proc)
        yield f"unix://{sock}"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def make_settings(tmp_path: Path, redis_url: str):
    """Settings for one test: its own data folder and Redis key prefix.

    Takes dotted overrides: ``make_settings(**{"storage.sink": "memory"})``.
    """

    def make(**overrides: Any) -> Settings:
        base: dict[str, Any] = {
            "storage.data_dir": str(tmp_path / "data"),
            "redis.url": redis_url,
            "redis.key_prefix": "t" + secrets.token_hex(4),
            "limits.min_chunk_size": 1,
            "gc.enabled": False,
            "log.format": "text",
        }
        base.update(overrides)
        return load_settings(None, environ={}, overrides=base)

    return make


@pytest.fixture
def settings(make_settings) -> Settings:
    return make_settings()


def _app(settings: Settings, plugins: Iterable[Any], installed: bool):
    pm = make_plugin_manager(plugins, load_entry_points=installed, settings=settings)
    return create_app(settings, plugin_manager=pm)


@pytest_asyncio.fixture
async def make_client(aiohttp_client):
    """Start the real app (real Redis, real sink, installed plugins) and return a test client.

    ``make_client(settings, plugins=[...])`` adds plugins that are not installed
    (plugin objects or ``(name, object)`` pairs); ``installed=False`` loads only
    those (then include a sink: ``("local", vezastream_local)``). The app stops
    when the test ends.
    """

    async def make(settings: Settings, plugins: Iterable[Any] = (), installed: bool = True) -> TestClient:
        return await aiohttp_client(_TestServer(_app(settings, plugins, installed)))

    return make


class _TestServer(TestServer):
    """aiohttp's test server, run like ``vezastream serve``: aiohttp's parser errors as problem+json, and
    a request whose client goes away runs to its end (aiohttp's test server cancels its handler)."""

    async def _make_runner(self, **kwargs: Any) -> AppRunner:
        kwargs["handler_cancellation"] = False
        return AppRunner(self.app, **kwargs)


@contextlib.asynccontextmanager
async def running_app(settings: Settings, plugins: Iterable[Any] = (), installed: bool = True
                      ) -> AsyncIterator[TestClient]:
    """``make_client`` outside pytest's fixtures: ``async with running_app(settings) as client:``.

    The real app on 127.0.0.1 with the given settings and plugins (as for
    ``make_client``); it stops, its notifications drained, when the block ends.
    """
    client = TestClient(_TestServer(_app(settings, plugins, installed), host="127.0.0.1"))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


@pytest_asyncio.fixture
async def client(make_client, settings):
    return await make_client(settings)


# -- client helpers ----------------------------------------------------------------------
def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def random_bytes(n: int) -> bytes:
    return os.urandom(n)


def split(data: bytes, chunk_size: int) -> list[bytes]:
    return [data[i:i + chunk_size] for i in range(0, len(data), chunk_size)] or []


async def create(client, filename: str = "file.bin", expect: int = 201, **body: Any) -> dict[str, Any]:
    resp = await client.post("/v1/uploads", json={"filename": filename, **body})
    payload = await resp.json(content_type=None)
    assert resp.status == expect, payload
    return payload


async def put_chunk(client, upload_id: str, n: int, data: bytes, expect: int | None = 201,
                    headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    resp = await client.put(f"/v1/uploads/{upload_id}/chunks/{n}", data=data, headers=headers or {})
    payload = await resp.json(content_type=None)
    if expect is not None:
        assert resp.status == expect, payload
    return resp.status, payload


async def send_chunks(client, upload_id: str, data: bytes, chunk_size: int, concurrency: int = 4) -> None:
    """Send every chunk, ``concurrency`` at once, in any order."""
    sem = asyncio.Semaphore(concurrency)

    async def send(n: int, piece: bytes) -> None:
        async with sem:
            await put_chunk(client, upload_id, n, piece)

    await asyncio.gather(*(send(n, p) for n, p in enumerate(split(data, chunk_size), 1)))


async def upload(client, data: bytes, chunk_size: int, concurrency: int = 4, **body: Any) -> dict[str, Any]:
    """Create, send every chunk (``concurrency`` at once, any order), complete."""
    state = await create(client, total_size=len(data), chunk_size=chunk_size, **body)
    await send_chunks(client, state["upload_id"], data, chunk_size, concurrency)
    resp = await client.post(f"/v1/uploads/{state['upload_id']}/complete")
    result = await resp.json(content_type=None)
    assert resp.status == 200, result
    return result


async def content(client, upload_id: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    resp = await client.get(f"/v1/uploads/{upload_id}/content", headers=headers or {}, allow_redirects=True)
    return resp.status, await resp.read()


# -- what the app holds -------------------------------------------------------------------------
def sink_of(client: TestClient) -> Sink:
    """The sink object the app built (``storage.sink``), to look at what it stored."""
    return client.server.app[sink_key]


def configured_plugin(client: TestClient, name: str) -> Any:
    """The object plugin ``name``'s ``vezastream_configure_plugin`` returned for this app (None if none)."""
    return client.server.app[plugin_manager_key].get_plugin(name + CONFIGURED_SUFFIX)


async def drain_notifications(client: TestClient, timeout: float = 10.0) -> None:
    """Wait until every running ``vezastream_observe_*`` notification has finished.

    A notification starts in the background after the request that caused it
    answered; call this before asserting on what an observer did. Raises
    ``AssertionError`` when some are still running after ``timeout`` seconds.
    """
    hooks = client.server.app[hooks_key]
    deadline = time.monotonic() + timeout
    while hooks.pending:
        if time.monotonic() > deadline:
            raise AssertionError(f"{hooks.pending} plugin notifications still running after {timeout} s")
        await asyncio.sleep(0.01)


@dataclass(frozen=True)
class Event:
    """One notification an :class:`EventRecorder` saw."""

    #: "chunk", "completion", "abort" or "expiry" (the hook's name without ``vezastream_observe_``).
    kind: str
    upload_id: str
    #: The hook's arguments: ``upload``, ``chunk``, ``received_count``, ``result``, ``reason``...
    args: Mapping[str, Any]


class EventRecorder:
    """A plugin that records every notification, in the order they ran.

    ``events = EventRecorder()``, then ``make_client(settings, plugins=[("events",
    events)])``; ``await events.wait_for("completion", upload_id)`` returns the
    matching events once they arrived.
    """

    def __init__(self) -> None:
        self.events: list[Event] = []

    def of(self, kind: str | None = None, upload_id: str | None = None) -> list[Event]:
        """The events seen so far, of one kind and/or for one upload."""
        return [e for e in self.events
                if (kind is None or e.kind == kind) and (upload_id is None or e.upload_id == upload_id)]

    async def wait_for(self, kind: str, upload_id: str | None = None, count: int = 1,
                       timeout: float = 10.0) -> list[Event]:
        """Wait until ``count`` matching events arrived; ``AssertionError`` after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while len(found := self.of(kind, upload_id)) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(found)} of {count} {kind!r} events after {timeout} s "
                                     f"(seen: {[e.kind for e in self.events]})")
            await asyncio.sleep(0.01)
        return found

    @hookimpl
    async def vezastream_observe_chunk(self, upload: UploadSpec, chunk: ChunkRecord, received_count: int) -> None:
        self.events.append(Event("chunk", upload.id, {"upload": upload, "chunk": chunk,
                                                      "received_count": received_count}))

    @hookimpl
    async def vezastream_observe_completion(self, upload: Upload, result: UploadResult) -> None:
        self.events.append(Event("completion", upload.id, {"upload": upload, "result": result}))

    @hookimpl
    async def vezastream_observe_abort(self, upload: Upload, reason: str) -> None:
        self.events.append(Event("abort", upload.id, {"upload": upload, "reason": reason}))

    @hookimpl
    async def vezastream_observe_expiry(self, upload_id: str) -> None:
        self.events.append(Event("expiry", upload_id, {"upload_id": upload_id}))


# -- the sink conformance suite ------------------------------------------------------------
class RejectOnce:
    """An inspector that rejects the next completion of each armed upload (to exercise ``discard()``)."""

    def __init__(self) -> None:
        self.armed: set[str] = set()

    @hookimpl
    def vezastream_inspect_upload(self, upload):
        if upload.id in self.armed:
            self.armed.discard(upload.id)
            return Rejected("conformance: rejected once")
        return None


class ChooseKey:
    """A ``vezastream_object_key`` plugin that gives every upload the same ``key`` (so the second finds it taken)."""

    def __init__(self, key: str) -> None:
        self.key = key

    @hookimpl
    def vezastream_object_key(self, upload: UploadSpec) -> str:
        return self.key


#: The sink contract, rule by rule: what :class:`SinkConformance` checks, and names when a check fails.
RULES: Mapping[str, str] = {
    "protocol": "the sink implements Sink (a non-empty name, assemble, check, aclose) and check() passes",
    "result": "a completion answers the upload's size and SHA-256, the sink's name and a location",
    "read-back": "with the content capability, GET /content returns exactly the bytes uploaded",
    "stores": "a completed upload adds at least one name to stored_objects() (its object; side files may add more)",
    "idempotent": "repeated and concurrent completions of one upload all answer the same location",
    "retry-safe": "a re-sent chunk answers 200, a different body for a stored chunk 409",
    "discard": "a refused completion (integrity check, inspector) leaves stored_objects() as it was: "
               "discard() removes everything assemble() wrote",
    "retry-after-refusal": "a completion after a refused one succeeds and reads back the same bytes",
    "abort": "deleting a pending upload leaves stored_objects() as it was",
    "remove": "with the remove capability, deleting a completed upload leaves stored_objects() as it was "
              "and its content answers 404",
    "gc": "a GC pass over an expired upload leaves stored_objects() as it was (the sink's sweep, if any, "
          "drops its leftovers) and removes its staged chunks",
    "keys": "unless the kit says honours_keys = False, the object is stored at UploadSpec.key when a plugin "
            "chose one (the location ends with it), and a second upload with a taken key answers 409 key-exists, "
            "stays pending and leaves the first object as it was",
}


def _broke(rule: str, detail: Any = "") -> str:
    """An assertion message: which rule of :data:`RULES` broke, and what was seen."""
    return f"conformance rule {rule!r} broken: {RULES[rule]}" + (f"; seen: {detail}" if detail != "" else "")


@pytest.mark.asyncio
class SinkConformance:
    """What every sink must do, through the real app and the real engine (the rules: :data:`RULES`).

    Subclass it in a test module and provide ``sink_settings`` (dotted
    overrides that select and configure the sink). Optionally override
    ``sink_plugins`` (plugins to add when the sink package is not installed
    in the test environment) and :meth:`stored_objects`. Sizes are class
    attributes a slow sink may shrink. A failure names the rule it broke.
    """

    payload_size = 300_001
    chunk_size = 65_536
    #: False for a sink that names its objects itself (content-addressed) and ignores ``UploadSpec.key``:
    #: the "keys" rule is skipped. Say so in the sink's docstring.
    honours_keys = True

    @pytest.fixture
    def sink_settings(self) -> dict[str, Any]:
        raise NotImplementedError("define a sink_settings fixture returning dotted overrides "
                                  "such as {'storage.sink': 'memory'}")

    @pytest.fixture
    def sink_plugins(self) -> Iterable[Any]:
        return ()

    @pytest_asyncio.fixture
    async def sink_client(self, make_settings, make_client, sink_settings, sink_plugins):
        return await make_client(make_settings(**sink_settings), plugins=sink_plugins)

    async def stored_objects(self, sink: Sink) -> set[str] | None:
        """A snapshot of everything the sink holds; ``None`` (the default) skips the rules that need it.

        Return one name (any string: a relative path, a key) per thing the
        sink keeps for this test's uploads: finished objects, unfinished ones
        (temporary files, open multipart uploads: an orphan must show), and
        side files (indexes, reference counts). The suite only compares
        snapshots: a completion must add at least one name ("stores"); a
        refusal, an abort, a deletion (with ``remove``) and a GC pass must
        leave the set exactly as it was before the upload ("discard",
        "abort", "remove", "gc"). So a side file shared by uploads keeps one
        stable name, and whatever an upload added must go with it.
        """
        return None

    # -- helpers
    @staticmethod
    def _sink(client) -> Sink:
        return sink_of(client)

    async def _snapshot(self, client) -> set[str] | None:
        return await self.stored_objects(self._sink(client))

    async def _unchanged(self, client, before: set[str] | None, rule: str) -> None:
        if before is None:
            return
        after = await self._snapshot(client)
        assert after == before, _broke(rule, f"added {sorted(after - before)}, removed {sorted(before - after)}"
                                       if after is not None else "stored_objects() returned None")

    async def _upload(self, client, data: bytes, **body: Any) -> dict[str, Any]:
        return await upload(client, data, self.chunk_size, **body)

    async def _ready(self, client, data: bytes, **body: Any) -> str:
        state = await create(client, total_size=len(data), chunk_size=self.chunk_size, **body)
        await send_chunks(client, state["upload_id"], data, self.chunk_size)
        return state["upload_id"]

    async def _reads_back(self, client, upload_id: str, data: bytes, rule: str = "read-back") -> None:
        if "content" in capabilities(self._sink(client)):
            status, body = await content(client, upload_id)
            assert (status, body == data) == (200, True), _broke(rule, f"status {status}, {len(body)} bytes")

    def _result_ok(self, client, result: dict[str, Any], data: bytes) -> None:
        assert result["size"] == len(data) and result["sha256"] == sha256(data), _broke("result", result)
        assert result["sink"] == self._sink(client).name and result["location"], _broke("result", result)

    # -- the contract
    async def test_sink_implements_protocol(self, sink_client):
        sink = self._sink(sink_client)
        assert isinstance(sink, Sink), _broke("protocol", type(sink).__name__)
        assert isinstance(sink.name, str) and sink.name, _broke("protocol", f"name {sink.name!r}")
        await sink.check()
        assert set(capabilities(sink)) <= set(CAPABILITIES)

    async def test_write_complete_read_back(self, sink_client):
        data = random_bytes(self.payload_size)
        before = await self._snapshot(sink_client)
        upload_id = await self._ready(sink_client, data)
        resp = await sink_client.post(f"/v1/uploads/{upload_id}/complete")
        result = await resp.json()
        assert resp.status == 200, _broke("result", result)
        after = await self._snapshot(sink_client)
        if before is not None:
            assert after is not None and len(after - before) >= 1, _broke("stores", f"before {before}, after {after}")
        self._result_ok(sink_client, result, data)
        await self._reads_back(sink_client, upload_id, data)

    async def test_empty_and_single_chunk_uploads(self, sink_client):
        for data in (b"", b"x", random_bytes(self.chunk_size)):
            result = await self._upload(sink_client, data)
            self._result_ok(sink_client, result, data)
            await self._reads_back(sink_client, result["upload_id"], data)

    async def test_complete_is_idempotent_and_concurrent_safe(self, sink_client):
        data = random_bytes(self.payload_size)
        upload_id = await self._ready(sink_client, data)
        responses = await asyncio.gather(*(sink_client.post(f"/v1/uploads/{upload_id}/complete")
                                           for _ in range(3)))
        bodies = [await r.json() for r in responses]
        assert [r.status for r in responses] == [200, 200, 200], _broke("idempotent", bodies)
        assert len({b["location"] for b in bodies}) == 1, _broke("idempotent", bodies)
        again = await sink_client.post(f"/v1/uploads/{upload_id}/complete")
        again_body = await again.json()
        assert again.status == 200 and again_body["location"] == bodies[0]["location"], _broke("idempotent", again_body)

    async def test_retried_chunk_is_safe(self, sink_client):
        data = random_bytes(self.payload_size)
        state = await create(sink_client, total_size=len(data), chunk_size=self.chunk_size)
        first = split(data, self.chunk_size)[0]
        await put_chunk(sink_client, state["upload_id"], 1, first)
        for body, expect in ((first, 200), (first[::-1], 409)):
            status, answer = await put_chunk(sink_client, state["upload_id"], 1, body, expect=None)
            assert status == expect, _broke("retry-safe", (status, answer))

    async def test_declared_sha256_mismatch_stores_nothing(self, sink_client):
        """After the 422 the state says what the next requests find; once deleted, nothing is left.

        The upload stays pending with its chunks; or, when a direct-mode sink had to join
        them (consuming them) to find the mismatch, it is rejected with none.
        """
        sink = self._sink(sink_client)
        data = random_bytes(self.payload_size)
        before = await self._snapshot(sink_client)
        upload_id = await self._ready(sink_client, data, sha256="0" * 64)
        resp = await sink_client.post(f"/v1/uploads/{upload_id}/complete")
        assert resp.status == 422, _broke("discard", await resp.text())
        state = await (await sink_client.get(f"/v1/uploads/{upload_id}")).json()
        again = await sink_client.post(f"/v1/uploads/{upload_id}/complete")
        if state["status"] == "pending":
            assert state["received_count"] == state["total_chunks"] and again.status == 422, _broke("discard", state)
        else:
            assert "direct" in capabilities(sink) and state["status"] == "rejected" and state["reason"], \
                _broke("discard", state)
            assert state["chunks_received"] == [] and again.status == 409, _broke("discard", state)
        if state["status"] == "rejected" or "direct" not in capabilities(sink):  # else the parts are kept
            await self._unchanged(sink_client, before, "discard")
        assert (await sink_client.delete(f"/v1/uploads/{upload_id}")).status == 204
        await self._unchanged(sink_client, before, "abort")

    async def test_failed_completion_discards_then_retry_succeeds(self, make_settings, make_client, sink_settings,
                                                                  sink_plugins):
        """A refused completion must leave nothing in the sink, and a later one must succeed.

        The refusal comes from an inspector plugin; with an inspector installed the
        engine stages chunks (inspectors read bytes before they are final), so a sink's
        direct mode is not used in this test.
        """
        reject_once = RejectOnce()
        sink_client = await make_client(make_settings(**sink_settings),
                                        plugins=[*sink_plugins, ("conformance", reject_once)])
        data = random_bytes(self.payload_size)
        before = await self._snapshot(sink_client)
        upload_id = await self._ready(sink_client, data)
        reject_once.armed.add(upload_id)
        resp = await sink_client.post(f"/v1/uploads/{upload_id}/complete")
        assert resp.status == 422 and (await resp.json())["plugin"] == "conformance", _broke("discard", resp.status)
        await self._unchanged(sink_client, before, "discard")
        resp = await sink_client.post(f"/v1/uploads/{upload_id}/complete")
        assert resp.status == 200, _broke("retry-after-refusal", await resp.text())
        await self._reads_back(sink_client, upload_id, data, "retry-after-refusal")

    async def test_abort_pending_upload(self, sink_client):
        data = random_bytes(self.payload_size)
        before = await self._snapshot(sink_client)
        upload_id = await self._ready(sink_client, data)
        resp = await sink_client.delete(f"/v1/uploads/{upload_id}")
        assert resp.status == 204, _broke("abort", await resp.text())
        assert (await sink_client.get(f"/v1/uploads/{upload_id}")).status == 404
        assert not sink_client.server.app[engine_key].staging.holds(upload_id)
        await self._unchanged(sink_client, before, "abort")

    async def test_delete_completed_upload(self, sink_client):
        before = await self._snapshot(sink_client)
        result = await self._upload(sink_client, random_bytes(self.payload_size))
        resp = await sink_client.delete(f"/v1/uploads/{result['upload_id']}")
        assert resp.status == 204, _broke("remove", await resp.text())
        status = (await sink_client.get(f"/v1/uploads/{result['upload_id']}/content")).status
        assert status == 404, _broke("remove", f"content answers {status}")
        if "remove" in capabilities(self._sink(sink_client)):
            await self._unchanged(sink_client, before, "remove")

    async def test_gc_removes_what_an_expired_upload_left(self, sink_client):
        """Staged chunks go; so does anything the sink holds for it (swept when the sink can)."""
        app = sink_client.server.app
        before = await self._snapshot(sink_client)
        data = random_bytes(self.payload_size)
        upload_id = await self._ready(sink_client, data)
        store = app[engine_key].store
        await store.redis.delete(store.key(upload_id), store.chunks_key(upload_id))  # as if expired
        gc = app[gc_key]
        gc.clock = lambda: time.time() + app[gc_key].settings.gc.max_age + 60
        await gc.run_once()
        assert not app[engine_key].staging.holds(upload_id), _broke("gc", "staged chunks left")
        assert await store.status(upload_id) is None
        await self._unchanged(sink_client, before, "gc")

    async def test_object_key_is_honoured_and_never_overwritten(self, make_settings, make_client, sink_settings,
                                                                sink_plugins):
        """A plugin's key (``vezastream_object_key``) names the object; a taken key is refused, never overwritten."""
        if not self.honours_keys:
            pytest.skip("the sink names its objects itself (honours_keys = False)")
        key = f"conformance/{secrets.token_hex(4)}/taken.bin"
        client = await make_client(make_settings(**sink_settings),
                                   plugins=[*sink_plugins, ("conformance_keys", ChooseKey(key))])
        data = random_bytes(self.payload_size)
        result = await self._upload(client, data)
        assert result["location"].endswith(key), _broke("keys", f"location {result['location']!r}, key {key!r}")
        stored = await self._snapshot(client)
        upload_id = await self._ready(client, random_bytes(self.payload_size))
        resp = await client.post(f"/v1/uploads/{upload_id}/complete")
        problem = await resp.json(content_type=None)
        assert resp.status == 409 and problem.get("type", "").endswith("key-exists"), _broke("keys", problem)
        state = await (await client.get(f"/v1/uploads/{upload_id}")).json()
        assert state["status"] == UploadStatus.PENDING, _broke("keys", state)
        await self._reads_back(client, result["upload_id"], data, "keys")
        assert (await client.delete(f"/v1/uploads/{upload_id}")).status == 204
        await self._unchanged(client, stored, "keys")

    async def test_completed_status_recorded(self, sink_client):
        result = await self._upload(sink_client, random_bytes(self.payload_size))
        state = await (await sink_client.get(f"/v1/uploads/{result['upload_id']}")).json()
        assert state["status"] == UploadStatus.COMPLETED, _broke("result", state)
        assert state["result"]["sha256"] == result["sha256"], _broke("result", state)
