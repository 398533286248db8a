"""The engine's parts, built in-process for unit tests: the state store on the real Redis, the staging area, an engine.

Two in-memory sinks stand in for S3 where a test needs what only S3 does: :class:`MemoryDirectSink`
(direct mode) and :class:`MemoryStagingSink` (``StagesBytes``: staging objects, ``storage.staging = "sink"``).

Fixtures (import them into a test module): ``store`` (a :class:`StateStore` with its own key
prefix), ``staging`` (a :class:`ChunkStaging` in the test's folder) and ``make_engine``
(an :class:`UploadEngine` over both, with the local sink unless another is given).
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterable, AsyncIterator, Sequence
from dataclasses import dataclass, field

import pytest
from vezastream_local import make_local_sink

from vezastream import ChunkRecord, ChunkSource, MeteredBody, Upload, UploadSpec, errors
from vezastream.config import Settings
from vezastream.engine.engine import UploadEngine
from vezastream.engine.plan import NewUpload
from vezastream.staging import ChunkStaging
from vezastream.state import topology
from vezastream.state.store import StateStore

from helpers import DEAD


@pytest.fixture
async def store(settings: Settings):
    async with topology.connect(settings.redis, settings.redis.url) as client:
        state = StateStore(client, settings.redis.key_prefix)
        yield state
        await state.aclose()


@pytest.fixture
def staging(settings: Settings) -> ChunkStaging:
    area = ChunkStaging(settings.storage.chunks_dir, durable=settings.storage.durable,
                        direct_io=settings.storage.direct_io)
    settings.storage.chunks_dir.mkdir(parents=True, exist_ok=True)
    yield area
    area.close()


@pytest.fixture
async def make_engine(settings: Settings, store: StateStore, staging: ChunkStaging):
    """``make_engine(sink=None, settings=None)``: an engine on the test's store and staging area."""
    engines: list[UploadEngine] = []

    def make(sink=None, with_settings: Settings | None = None) -> UploadEngine:
        chosen = with_settings or settings
        engine = UploadEngine(chosen, store, staging, sink or make_local_sink({}, chosen))
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        await engine.close()


async def body(data: bytes, piece: int = 64 * 1024) -> AsyncIterable[bytes]:
    """``data`` as a request body streams it: in pieces."""
    for at in range(0, len(data), piece):
        yield data[at:at + piece]


@dataclass
class _Joined:
    location: str
    size: int
    sha256: str
    parts: dict[str, bytes]
    committed: bool = False

    async def commit(self) -> None:
        self.committed = True

    async def discard(self) -> None:
        self.parts.pop(self.location, None)


@dataclass
class _MemorySink:
    """What the in-memory sinks share: finished objects in ``objects``, assembled from a staged source."""

    objects: dict[str, bytes] = field(default_factory=dict)

    async def assemble(self, upload: Upload, source: ChunkSource) -> _Joined:
        data = b"".join([piece async for piece in source.iter_bytes()])
        self.objects[upload.id] = data
        return _Joined(upload.id, len(data), hashlib.sha256(data).hexdigest(), self.objects)

    async def check(self) -> None:
        pass

    async def aclose(self) -> None:
        pass


@dataclass
class MemoryDirectSink(_MemorySink):
    """A sink that takes every native upload direct and keeps its parts and objects in memory.

    It implements ``Sink`` and ``ReceivesChunks`` as a plugin would: what the engine hands a
    direct-mode sink is what ends up in ``objects``.
    """

    name: str = "memory-direct"
    parts: dict[tuple[str, int], bytes] = field(default_factory=dict)

    async def open_direct(self, spec: UploadSpec) -> str | None:
        return f"h-{spec.id}"

    async def put_direct(self, spec: UploadSpec, n: int, stream: AsyncIterable[bytes], size: int,
                         sha256: str | None) -> ChunkRecord:
        metered = MeteredBody(n, stream, size, sha256)
        data = b"".join([piece async for piece in metered])
        self.parts[spec.id, n] = data
        return metered.record()

    async def assemble_direct(self, upload: Upload, chunks: Sequence[ChunkRecord]) -> _Joined:
        data = b"".join(self.parts.pop((upload.id, c.number)) for c in chunks)
        self.objects[upload.id] = data
        return _Joined(upload.id, len(data), hashlib.sha256(data).hexdigest(), self.objects)


@dataclass
class MemoryStagingSink(_MemorySink):
    """A sink that holds unfinished uploads' bytes (``StagesBytes``) and finished objects in memory.

    ``staged[(upload id, name)]`` are the staging objects the engine wrote and has not removed.
    """

    name: str = "memory-staging"
    staged: dict[tuple[str, str], bytes] = field(default_factory=dict)

    async def put_staged(self, upload_id: str, name: str, body: AsyncIterable[bytes], size: int) -> None:
        data = b"".join([piece async for piece in body])
        if len(data) != size:
            raise errors.SinkFailed(f"staging object {name}: {len(data)} of {size} bytes")
        self.staged[upload_id, name] = data

    async def read_staged(self, upload_id: str, name: str, size: int) -> AsyncIterator[bytes]:
        if (upload_id, name) not in self.staged:
            raise errors.Conflict(f"staging object {name} is missing")
        yield self.staged[upload_id, name][:size]

    async def remove_staged(self, upload_id: str, name: str) -> None:
        self.staged.pop((upload_id, name), None)

    async def clear_staged(self, upload_id: str) -> None:
        for key in [k for k in self.staged if k[0] == upload_id]:
            del self.staged[key]


async def stranded(engine, store, data: bytes) -> str:
    """An upload whose completion a dead process began and left (its lease still held)."""
    upload = await engine.create("alice", NewUpload("f.bin", len(data), len(data)))
    await engine.put_chunk("alice", upload.id, 1, body(data), len(data))
    await store.redis.hset(store.key(upload.id), "status", "completing")
    await store.redis.set(store.lease_key(upload.id), DEAD, px=30_000)
    return upload.id
