"""The upload engine on its own, built in-process: a real Redis, the staging area, the local sink (no HTTP)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest
from vezastream_local import make_local_sink

from vezastream import errors
from vezastream.config import LimitsSettings
from vezastream.engine.layouts.append import NewAppendUpload
from vezastream.engine.plan import NewUpload, plan
from vezastream.models import Layout, UploadStatus

from engine_parts import MemoryDirectSink, MemoryStagingSink, body, make_engine, staging, store  # noqa: F401  (fixtures)
from helpers import random_bytes, sha256

LIMITS = LimitsSettings(min_chunk_size=10, max_chunk_size=1000, default_chunk_size=100, max_upload_size=10_000,
                        max_chunks=50)


@pytest.mark.parametrize("total_size, chunk_size, total_chunks, planned", [
    (250, None, None, (100, 3)),  # the default chunk size
    (250, 100, None, (100, 3)),
    (250, None, 3, (84, 3)),  # chunk size from the count, rounded up
    (250, 100, 3, (100, 3)),
    (0, None, None, (100, 0)),  # an empty file has no chunks
    (5, 1000, None, (1000, 1)),  # one chunk may be smaller than min_chunk_size
])
def test_plan_sizes(total_size, chunk_size, total_chunks, planned):
    assert plan(LIMITS, NewUpload("f", total_size, chunk_size, total_chunks)) == planned


@pytest.mark.parametrize("total_size, chunk_size, total_chunks, error, field", [
    (10_001, None, None, errors.TooLarge, None),
    (250, 0, None, errors.Invalid, None),
    (250, None, -1, errors.Invalid, None),
    (250, None, 0, errors.Invalid, None),  # no chunks for a non-empty file
    (250, 100, 4, errors.Invalid, None),  # disagrees with ceil(250 / 100)
    (250, 1001, None, errors.Invalid, "chunk_size"),
    (250, 5, None, errors.Invalid, "chunk_size"),
    (5_000, 90, None, errors.Invalid, "total_chunks"),  # 56 chunks, more than max_chunks
])
def test_plan_errors(total_size, chunk_size, total_chunks, error, field):
    with pytest.raises(error) as raised:
        plan(LIMITS, NewUpload("f", total_size, chunk_size, total_chunks))
    assert raised.value.extra.get("field") == field


async def send(engine, owner: str, uid: str, data: bytes, chunk_size: int, order=None) -> None:
    count = -(-len(data) // chunk_size)
    for n in order or range(1, count + 1):
        piece = data[(n - 1) * chunk_size:n * chunk_size]
        receipt = await engine.put_chunk(owner, uid, n, body(piece), len(piece))
        assert receipt.created and receipt.record.sha256 == sha256(piece)


async def read_back(engine, owner: str, uid: str) -> bytes:
    content = await engine.content(owner, uid)
    assert content.path is not None
    return content.path.read_bytes()


def staged_names(staging, uid: str) -> list[str]:
    """What of the upload waits on disk: its data file, the files in its folder."""
    folder, data = staging.upload_dir(uid), staging.data_path(uid)
    return sorted(([data.name] if data.exists() else []) + ([p.name for p in folder.iterdir()] if folder.exists() else []))


@pytest.mark.parametrize("in_place", [True, False], ids=["in-place", "chunk-files"])
async def test_each_staged_layout_stores_the_bytes(make_settings, make_engine, staging, in_place):
    engine = make_engine(with_settings=make_settings(**{"storage.in_place": in_place}))
    data = random_bytes(250_000)
    upload = await engine.create("alice", NewUpload("f.bin", len(data), 100_000, sha256=sha256(data)))
    await send(engine, "alice", upload.id, data, 100_000, order=[3, 1, 2])
    chunk_files = [f"{n}.{sha256(data[(n - 1) * 100_000:n * 100_000])}" for n in (1, 2, 3)]
    assert staged_names(staging, upload.id) == ([f"{upload.id}.data"] if in_place else chunk_files)  # how they wait
    done, result = await engine.complete("alice", upload.id)
    assert done.status is UploadStatus.COMPLETED and (result.size, result.sha256) == (len(data), sha256(data))
    assert await read_back(engine, "alice", upload.id) == data
    assert staged_names(staging, upload.id) == []  # completion removed what waited


async def test_direct_mode_stages_nothing(make_engine, staging):
    sink = MemoryDirectSink()
    engine = make_engine(sink=sink)
    data = random_bytes(300_000)
    upload = await engine.create("alice", NewUpload("f.bin", len(data), 100_000))
    assert upload.spec.direct == f"h-{upload.id}"
    await send(engine, "alice", upload.id, data, 100_000, order=[2, 3, 1])
    assert staged_names(staging, upload.id) == [] and len(sink.parts) == 3
    _, result = await engine.complete("alice", upload.id)
    assert sink.objects[upload.id] == data and result.sha256 == sha256(data) and not sink.parts


async def test_a_declared_digest_refuses_a_direct_upload_before_the_join(make_engine):
    sink = MemoryDirectSink()
    engine = make_engine(sink=sink)
    data = random_bytes(200_000)
    upload = await engine.create("alice", NewUpload("f.bin", len(data), 100_000, sha256="0" * 64))
    await send(engine, "alice", upload.id, data, 100_000)
    with pytest.raises(errors.IntegrityError):
        await engine.complete("alice", upload.id)
    # Known from the running digest before the sink joined anything: the parts are whole, the upload pending.
    assert len(sink.parts) == 2 and upload.id not in sink.objects
    assert (await engine.loaded(upload.id)).status is UploadStatus.PENDING


async def test_append_layout(make_engine, staging):
    engine = make_engine()
    upload = await engine.appends.create_append("alice", NewAppendUpload("f.bin", 11))
    first = await engine.appends.append("alice", upload.id, 0, body(b"hello "), declared_size=6)
    assert (first.offset, first.completed) == (6, False)
    with pytest.raises(errors.OffsetMismatch):
        await engine.appends.append("alice", upload.id, 0, body(b"again"), declared_size=5)
    last = await engine.appends.append("alice", upload.id, 6, body(b"world"), declared_size=5)
    assert (last.offset, last.completed) == (11, True)
    assert await read_back(engine, "alice", upload.id) == b"hello world"
    with pytest.raises(errors.NotFound):  # an append upload has no numbered chunks
        await engine.put_chunk("alice", upload.id, 1, body(b"x"), 1)


async def test_in_sink_layout_keeps_chunks_as_staging_objects(make_settings, make_engine, staging):
    """storage.staging = "sink": native chunks wait in the sink, one object per chunk, none on local disk."""
    sink = MemoryStagingSink()
    engine = make_engine(sink=sink, with_settings=make_settings(**{"storage.staging": "sink"}))
    data = random_bytes(250_000)
    upload = await engine.create("alice", NewUpload("f.bin", len(data), 100_000, sha256=sha256(data)))
    assert (upload.spec.layout, upload.spec.staging) == (Layout.IN_SINK, "sink")
    await send(engine, "alice", upload.id, data, 100_000, order=[3, 1, 2])
    retry = await engine.put_chunk("alice", upload.id, 2, body(data[100_000:200_000]), 100_000)
    assert not retry.created  # a retry of the same bytes: 200, and its own object is removed again
    with pytest.raises(errors.ChunkConflict):
        await engine.put_chunk("alice", upload.id, 1, body(bytes(100_000)), 100_000)
    assert sorted(name.split(".")[0] for uid, name in sink.staged if uid == upload.id) == ["1", "2", "3"]
    assert staged_names(staging, upload.id) == []  # nothing on the node's disk
    _, result = await engine.complete("alice", upload.id)
    assert sink.objects[upload.id] == data and (result.size, result.sha256) == (len(data), sha256(data))
    assert not sink.staged  # completion removed the staging objects


@dataclass
class WholeBodiesSeen(MemoryStagingSink):
    """As an S3 server does, a staging object lands once all its bytes came, whatever the client does next."""

    whole: list[str] = field(default_factory=list)

    async def put_staged(self, upload_id, name, body, size) -> None:
        pieces = []
        async for piece in body:
            pieces.append(piece)
            if sum(map(len, pieces)) == size:
                self.whole.append(name)  # a DELETE sent now could reach the server before this lands
        self.staged[upload_id, name] = b"".join(pieces)


async def test_a_refused_body_never_reaches_the_sink_whole(make_settings, make_engine):
    """A chunk whose declared digest does not match is refused before its last byte is sent to the sink.

    (Before: its object could land after the request had deleted it; a refused tus PATCH's bytes were
    left in the bucket on SeaweedFS, tests/integration/test_stateless_nodes.py.)"""
    sink = WholeBodiesSeen()
    engine = make_engine(sink=sink, with_settings=make_settings(**{"storage.staging": "sink"}))
    data = random_bytes(200_000)
    upload = await engine.create("alice", NewUpload("f.bin", len(data), 100_000))
    with pytest.raises(errors.DigestMismatch):
        await engine.put_chunk("alice", upload.id, 1, body(data[:100_000]), 100_000, sha256(b"other"))
    assert sink.whole == [] and not sink.staged
    await engine.put_chunk("alice", upload.id, 1, body(data[:100_000]), 100_000, sha256(data[:100_000]))
    assert len(sink.whole) == 1


async def test_append_layout_with_sink_staging(make_settings, make_engine, staging):
    """tus with storage.staging = "sink": each PATCH body a staging object, no data file, removed at completion."""
    sink = MemoryStagingSink()
    engine = make_engine(sink=sink, with_settings=make_settings(**{"storage.staging": "sink"}))
    upload = await engine.appends.create_append("alice", NewAppendUpload("f.bin", 11))
    assert (upload.spec.layout, upload.spec.staging) == (Layout.APPEND, "sink")
    await engine.appends.append("alice", upload.id, 0, body(b"hello "), declared_size=6)
    with pytest.raises(errors.OffsetMismatch):
        await engine.appends.append("alice", upload.id, 0, body(b"again"), declared_size=5)
    assert [name.split(".")[0] for _, name in sink.staged] == ["0"] and staged_names(staging, upload.id) == []
    last = await engine.appends.append("alice", upload.id, 6, body(b"world"))  # unknown length: spooled
    assert (last.offset, last.completed) == (11, True)
    assert sink.objects[upload.id] == b"hello world" and not sink.staged


async def test_deleting_an_in_sink_upload_removes_its_staging_objects(make_settings, make_engine):
    sink = MemoryStagingSink()
    engine = make_engine(sink=sink, with_settings=make_settings(**{"storage.staging": "sink"}))
    upload = await engine.create("alice", NewUpload("f.bin", 200, 100))
    await send(engine, "alice", upload.id, random_bytes(100), 100)  # chunk 1 of 2
    assert sink.staged
    await engine.delete("alice", upload.id)
    assert not sink.staged


async def test_missing_chunks_are_named(make_engine):
    engine = make_engine()
    data = random_bytes(300)
    upload = await engine.create("alice", NewUpload("f.bin", len(data), 100))
    await send(engine, "alice", upload.id, data, 100, order=[2])
    with pytest.raises(errors.MissingChunks) as raised:
        await engine.complete("alice", upload.id)
    assert raised.value.extra["missing_chunks"] == [1, 3]


async def test_concurrent_completions_assemble_once(make_engine):
    engine = make_engine()
    data = random_bytes(1000)
    upload = await engine.create("alice", NewUpload("f.bin", len(data), 100))
    await send(engine, "alice", upload.id, data, 100)
    results = await asyncio.gather(*(engine.complete("alice", upload.id) for _ in range(5)))
    assert len({result for _, result in results}) == 1
    assert await read_back(engine, "alice", upload.id) == data


async def test_a_dead_processs_completion_is_taken_over(make_engine, store):
    engine = make_engine()
    data = random_bytes(500)
    upload = await engine.create("alice", NewUpload("f.bin", len(data), 100))
    await send(engine, "alice", upload.id, data, 100)
    # A process (no heartbeat: dead) began completing it and vanished, its lease still held.
    assert (await store.begin_complete(upload.id, "0123456789abcdef.7", 30))[0] == "ok"
    done, result = await asyncio.wait_for(engine.complete("alice", upload.id), 10)
    assert done.status is UploadStatus.COMPLETED and result.sha256 == sha256(data)
    assert await store.holder(store.lease_key(upload.id)) is None


class FailsOnce:
    """The local sink, whose first ``assemble`` fails as a broken disk or network would."""

    def __init__(self, sink) -> None:
        self.sink, self.name, self.failed = sink, sink.name, False

    async def assemble(self, upload, source):
        if not self.failed:
            self.failed = True
            raise OSError("the storage went away")
        return await self.sink.assemble(upload, source)

    async def open_content(self, upload, result):
        return await self.sink.open_content(upload, result)

    async def check(self) -> None:
        pass

    async def aclose(self) -> None:
        pass


async def test_a_failed_assembly_leaves_the_upload_pending_and_the_lease_free(settings, make_engine, store):
    engine = make_engine(sink=FailsOnce(make_local_sink({}, settings)))
    data = random_bytes(300)
    upload = await engine.create("alice", NewUpload("f.bin", len(data), 100))
    await send(engine, "alice", upload.id, data, 100)
    with pytest.raises(errors.SinkFailed):
        await engine.complete("alice", upload.id)
    assert (await engine.loaded(upload.id)).status is UploadStatus.PENDING
    assert await store.holder(store.lease_key(upload.id)) is None
    _, result = await engine.complete("alice", upload.id)  # the chunks were kept: a retry completes
    assert result.sha256 == sha256(data) and await read_back(engine, "alice", upload.id) == data
