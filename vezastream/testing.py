"""The plugin author kit: pytest fixtures and a sink conformance suite.

A pytest plugin (entry point ``pytest11``: it loads by itself wherever
vezastream is installed with its ``test`` extra). It gives:

* fixtures: ``redis_url`` (one real ``redis-server`` per session on a unix
  socket, stopped by PID), ``make_settings(**dotted_overrides)``,
  ``settings``, ``make_client(settings, plugins=...)`` and ``client`` (the
  real app on a test server);
* client helpers a test calls like a real client would: :func:`create`,
  :func:`put_chunk`, :func:`upload`, :func:`content`;
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
import hashlib
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import redis
from aiohttp.test_utils import TestServer

from .app import AppRunner, create_app, engine_key, gc_key, sink_key
from .config import Settings, load_settings
from .errors import Rejected
from .hookspecs import hookimpl
from .models import UploadStatus
from .redis_server import redis_binary
from .sinks import CAPABILITIES, Sink, capabilities

__all__ = ["RejectOnce", "SinkConformance", "content", "create", "put_chunk", "random_bytes", "sha256", "split",
           "upload"]


# -- fixtures --------------------------------------------------------------------------
def _wait_for_redis(sock: Path, proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
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
        [redis_binary(), "--port", "0", "--unixsocket", str(sock), "--dir", str(folder),
         "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for_redis(sock, proc)
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


@pytest_asyncio.fixture
async def make_client(aiohttp_client):
    """Start the real app (real Redis, real sink, installed plugins) and return a test client.

    ``make_client(settings, plugins=[...])`` adds plugins that are not installed.
    """

    async def make(settings: Settings, **kwargs: Any):
        return await aiohttp_client(_TestServer(create_app(settings, **kwargs)))

    return make


class _TestServer(TestServer):
    """aiohttp's test server, run like ``vezastream serve`` (aiohttp's parser errors as problem+json)."""

    async def _make_runner(self, **kwargs: Any) -> AppRunner:
        return AppRunner(self.app, **kwargs)


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


@pytest.mark.asyncio
class SinkConformance:
    """What every sink must do, through the real app and the real engine.

    Subclass it in a test module and provide ``sink_settings`` (dotted
    overrides that select and configure the sink). Optionally override
    ``sink_plugins`` (plugins to add when the sink package is not installed
    in the test environment) and :meth:`stored_objects` (what the sink
    holds, so the suite can check that a failure leaves nothing behind).
    Sizes are class attributes a slow sink may shrink.
    """

    payload_size = 300_001
    chunk_size = 65_536

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
        """Every object (and unfinished object) the sink holds; None skips those checks."""
        return None

    # -- helpers
    @staticmethod
    def _sink(client) -> Sink:
        return client.server.app[sink_key]

    async def _upload(self, client, data: bytes, **body: Any) -> dict[str, Any]:
        return await upload(client, data, self.chunk_size, **body)

    async def _ready(self, client, data: bytes, **body: Any) -> str:
        state = await create(client, total_size=len(data), chunk_size=self.chunk_size, **body)
        await send_chunks(client, state["upload_id"], data, self.chunk_size)
        return state["upload_id"]

    # -- the contract
    async def test_sink_implements_protocol(self, sink_client):
        sink = self._sink(sink_client)
        assert isinstance(sink, Sink)
        assert isinstance(sink.name, str) and sink.name
        await sink.check()
        assert set(capabilities(sink)) <= set(CAPABILITIES)

    async def test_write_complete_read_back(self, sink_client):
        data = random_bytes(self.payload_size)
        before = await self.stored_objects(self._sink(sink_client))
        upload_id = await self._ready(sink_client, data)
        resp = await sink_client.post(f"/v1/uploads/{upload_id}/complete")
        result = await resp.json()
        assert resp.status == 200, result
        after = await self.stored_objects(self._sink(sink_client))
        if before is not None:
            assert after is not None and len(after - before) == 1, (before, after)
        assert result["size"] == len(data) and result["sha256"] == sha256(data)
        assert result["sink"] == self._sink(sink_client).name and result["location"]
        if "content" in capabilities(self._sink(sink_client)):
            status, body = await content(sink_client, upload_id)
            assert status == 200 and body == data

    async def test_empty_and_single_chunk_uploads(self, sink_client):
        for data in (b"", b"x", random_bytes(self.chunk_size)):
            result = await self._upload(sink_client, data)
            assert result["size"] == len(data) and result["sha256"] == sha256(data)
            if "content" in capabilities(self._sink(sink_client)):
                assert await content(sink_client, result["upload_id"]) == (200, data)

    async def test_complete_is_idempotent_and_concurrent_safe(self, sink_client):
        data = random_bytes(self.payload_size)
        upload_id = await self._ready(sink_client, data)
        responses = await asyncio.gather(*(sink_client.post(f"/v1/uploads/{upload_id}/complete")
                                           for _ in range(3)))
        bodies = [await r.json() for r in responses]
        assert [r.status for r in responses] == [200, 200, 200], bodies
        assert len({b["location"] for b in bodies}) == 1
        again = await sink_client.post(f"/v1/uploads/{upload_id}/complete")
        assert again.status == 200 and (await again.json())["location"] == bodies[0]["location"]

    async def test_retried_chunk_is_safe(self, sink_client):
        data = random_bytes(self.payload_size)
        state = await create(sink_client, total_size=len(data), chunk_size=self.chunk_size)
        first = split(data, self.chunk_size)[0]
        await put_chunk(sink_client, state["upload_id"], 1, first)
        await put_chunk(sink_client, state["upload_id"], 1, first, expect=200)
        await put_chunk(sink_client, state["upload_id"], 1, first[::-1], expect=409)

    async def test_declared_sha256_mismatch_stores_nothing(self, sink_client):
        data = random_bytes(self.payload_size)
        before = await self.stored_objects(self._sink(sink_client))
        upload_id = await self._ready(sink_client, data, sha256="0" * 64)
        resp = await sink_client.post(f"/v1/uploads/{upload_id}/complete")
        assert resp.status == 422, await resp.text()
        state = await (await sink_client.get(f"/v1/uploads/{upload_id}")).json()
        assert state["status"] == "pending" and state["received_count"] == state["total_chunks"]
        assert await self.stored_objects(self._sink(sink_client)) == before

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
        before = await self.stored_objects(self._sink(sink_client))
        upload_id = await self._ready(sink_client, data)
        reject_once.armed.add(upload_id)
        resp = await sink_client.post(f"/v1/uploads/{upload_id}/complete")
        assert resp.status == 422 and (await resp.json())["plugin"] == "conformance"
        assert await self.stored_objects(self._sink(sink_client)) == before  # assembly discarded
        resp = await sink_client.post(f"/v1/uploads/{upload_id}/complete")
        assert resp.status == 200, await resp.text()
        if "content" in capabilities(self._sink(sink_client)):
            assert await content(sink_client, upload_id) == (200, data)

    async def test_abort_pending_upload(self, sink_client):
        data = random_bytes(self.payload_size)
        before = await self.stored_objects(self._sink(sink_client))
        upload_id = await self._ready(sink_client, data)
        resp = await sink_client.delete(f"/v1/uploads/{upload_id}")
        assert resp.status == 204
        assert (await sink_client.get(f"/v1/uploads/{upload_id}")).status == 404
        assert not sink_client.server.app[engine_key].staging.upload_dir(upload_id).exists()
        assert await self.stored_objects(self._sink(sink_client)) == before

    async def test_delete_completed_upload(self, sink_client):
        before = await self.stored_objects(self._sink(sink_client))
        result = await self._upload(sink_client, random_bytes(self.payload_size))
        resp = await sink_client.delete(f"/v1/uploads/{result['upload_id']}")
        assert resp.status == 204
        assert (await sink_client.get(f"/v1/uploads/{result['upload_id']}/content")).status == 404
        if "remove" in capabilities(self._sink(sink_client)):
            assert await self.stored_objects(self._sink(sink_client)) == before

    async def test_gc_removes_what_an_expired_upload_left(self, sink_client):
        """Staged chunks go; so does anything the sink holds for it (swept when the sink can)."""
        app = sink_client.server.app
        before = await self.stored_objects(self._sink(sink_client))
        data = random_bytes(self.payload_size)
        upload_id = await self._ready(sink_client, data)
        store = app[engine_key].store
        await store.redis.delete(store.key(upload_id), store.chunks_key(upload_id))  # as if expired
        gc = app[gc_key]
        gc.clock = lambda: time.time() + app[gc_key].settings.gc.max_age + 60
        await gc.run_once()
        assert not app[engine_key].staging.upload_dir(upload_id).exists()
        assert await store.status(upload_id) is None
        assert await self.stored_objects(self._sink(sink_client)) == before

    async def test_completed_status_recorded(self, sink_client):
        result = await self._upload(sink_client, random_bytes(self.payload_size))
        state = await (await sink_client.get(f"/v1/uploads/{result['upload_id']}")).json()
        assert state["status"] == UploadStatus.COMPLETED
        assert state["result"]["sha256"] == result["sha256"]
