"""A tus upload is one staged file written in place: each byte hits the disk once.

Real Redis, real files. What is checked: one writer at a time (the append
lease, on any node), a stale request never writes, garbage past the offset
never reaches the stored file, and the local sink links instead of copying.
"""

from __future__ import annotations

import asyncio
import base64
import fcntl
import hashlib
import os
import threading
import time
from pathlib import Path

import pytest
import vezastream_local
from vezastream.engine.layouts import append as append_mod
from vezastream.http import body as body_mod
from vezastream.staging import files as staging_files
from vezastream.http.app import engine_key
from vezastream.models import Upload, UploadSpec, UploadStatus, new_upload_id
from vezastream.sinks import ChunkFile, ChunkSource
from vezastream.staging import WRITE_BUFFER, sha256_of_files

from helpers import held_open, random_bytes, sha256
from tus_helpers import TUS, drop_mid_body, raw_answer, tus_create, tus_patch, tus_patch_head, upload_path


def engine(client):
    return client.server.app[engine_key]


def id_of(path: str) -> str:
    return path.rsplit("/", 1)[1]


def data_file(client, path: str) -> Path:
    return engine(client).staging.data_path(id_of(path))


def stored_file(client, path: str) -> Path:
    folder = engine(client).sink.directory / path.rsplit("/", 1)[1]
    (stored,) = [p for p in folder.iterdir() if not p.name.startswith(".")]
    return stored


async def result(client, path: str) -> dict:
    return await (await client.get("/v1/uploads/" + path.rsplit("/", 1)[1])).json()


async def slow_body(data: bytes, pieces: int, pause: float):
    step = -(-len(data) // pieces)
    for i in range(0, len(data), step):
        yield data[i:i + step]
        await asyncio.sleep(pause)


def slow_patch(client, path: str, offset: int, data: bytes, pieces: int = 8, pause: float = 0.05):
    headers = {**TUS, "Content-Type": "application/offset+octet-stream", "Upload-Offset": str(offset)}
    return client.patch(path, headers=headers, data=slow_body(data, pieces, pause))


async def leased(client, path: str):
    """Wait (bounded) until a request holds the upload's append lease; (store, lease key)."""
    store = engine(client).store
    lease = store.append_lease_key(path.rsplit("/", 1)[1])
    for _ in range(200):
        if await store.redis.exists(lease):
            return store, lease
        await asyncio.sleep(0.01)
    raise AssertionError("no request took the append lease")


async def test_two_nodes_same_offset_while_one_streams(make_client, settings):
    node_a, node_b = await make_client(settings), await make_client(settings)
    a, b = random_bytes(200_000), random_bytes(200_000)
    path = upload_path(await tus_create(node_a, 400_000))
    # (1.6 s: A still writes when B's wait for a writer that lets go, half a second, runs out)
    writing = asyncio.ensure_future(slow_patch(node_a, path, 0, a, pause=0.2))
    await leased(node_a, path)
    busy = await tus_patch(node_b, path, 0, b, expect=409)  # A holds the append lease
    assert (await busy.json())["type"].endswith("/append-busy")
    assert (await writing).status == 204
    assert data_file(node_a, path).read_bytes() == a
    # B retries at the now stale offset: answered before a byte is written.
    assert (await (await tus_patch(node_b, path, 0, b, expect=409)).json())["offset"] == 200_000
    assert data_file(node_a, path).read_bytes() == a
    await tus_patch(node_b, path, 200_000, b)
    assert await (await node_a.get(path)).read() == a + b


async def test_two_nodes_race_exactly_one_wins_and_the_file_holds_its_bytes(make_client, settings):
    node_a, node_b = await make_client(settings), await make_client(settings)
    for _ in range(5):
        path = upload_path(await tus_create(node_a, 300_000))
        a, b = random_bytes(150_000), random_bytes(150_000)
        ra, rb = await asyncio.gather(slow_patch(node_a, path, 0, a, pieces=3, pause=0.01),
                                      slow_patch(node_b, path, 0, b, pieces=3, pause=0.01))
        assert sorted([ra.status, rb.status]) == [204, 409]
        winner = a if ra.status == 204 else b
        assert data_file(node_a, path).read_bytes() == winner


async def test_interrupted_body_then_resumed_is_byte_identical(client):
    data = random_bytes(400_000)
    path = upload_path(await tus_create(client, len(data)))
    kept = await drop_mid_body(str(client.make_url("")).rstrip("/"), path, data, 150_000)
    assert 0 < kept <= 150_000
    await tus_patch(client, path, kept, data[kept:])
    assert await (await client.get(path)).read() == data
    assert (await result(client, path))["result"]["sha256"] == sha256(data)


async def test_a_failed_patch_leaves_garbage_that_is_overwritten_then_cut(client):
    data = random_bytes(300_000)
    path = upload_path(await tus_create(client, len(data)))
    await tus_patch(client, path, 0, data[:100_000])
    # A real failed request: its bytes are written, then its checksum fails; not registered.
    wrong = "sha1 " + base64.b64encode(hashlib.sha1(b"other").digest()).decode()
    await tus_patch(client, path, 100_000, random_bytes(150_000), expect=460, headers={"Upload-Checksum": wrong})
    # And a crashed one that wrote past the upload's end (as far as the file can tell).
    with open(data_file(client, path), "r+b") as fh:
        fh.seek(100_000)
        fh.write(random_bytes(500_000))
    head = await client.head(path, headers=TUS)
    assert head.headers["Upload-Offset"] == "100000"
    await tus_patch(client, path, 100_000, data[100_000:])
    stored = stored_file(client, path)
    assert stored.read_bytes() == data
    assert (await result(client, path))["result"]["sha256"] == sha256(data)


async def test_garbage_is_not_read_when_the_running_hash_is_unknown(make_client, settings):
    node_a, node_b = await make_client(settings), await make_client(settings)
    data = random_bytes(200_000)
    path = upload_path(await tus_create(node_a, len(data)))
    await tus_patch(node_a, path, 0, data[:120_000])
    with open(data_file(node_a, path), "ab") as fh:
        fh.write(random_bytes(300_000))
    await tus_patch(node_b, path, 120_000, data[120_000:])  # node B has no running hash: reads the file
    assert (await result(node_a, path))["result"]["sha256"] == sha256(data)
    assert stored_file(node_a, path).read_bytes() == data


async def test_a_late_patch_after_completion_changes_nothing(client):
    data = random_bytes(250_000)
    path = upload_path(await tus_create(client, len(data)))
    await tus_patch(client, path, 0, data)
    stored = stored_file(client, path)
    before = os.stat(stored)
    assert not engine(client).staging.holds(id_of(path))  # staging removed; the stored file keeps the inode
    await tus_patch(client, path, 0, random_bytes(1000), expect=409)
    await tus_patch(client, path, len(data), random_bytes(1000), expect=413)
    await tus_patch(client, path, len(data), b"", expect=204)
    after = os.stat(stored)
    assert stored.read_bytes() == data
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (before.st_ino, before.st_size, before.st_mtime_ns)
    assert not engine(client).staging.holds(id_of(path))


async def test_local_sink_links_the_data_file_instead_of_copying(client, monkeypatch):
    copies = []
    monkeypatch.setattr(vezastream_local, "_copy_into", lambda *a: copies.append(a))
    data = random_bytes(300_000)
    path = upload_path(await tus_create(client, len(data)))
    await tus_patch(client, path, 0, data[:100_000])
    inode = os.stat(data_file(client, path)).st_ino
    await tus_patch(client, path, 100_000, data[100_000:])
    stored = stored_file(client, path)
    assert os.stat(stored).st_ino == inode and os.stat(stored).st_nlink == 1
    assert copies == [] and stored.read_bytes() == data


async def test_lease_lost_mid_body_stops_the_request(client, monkeypatch):
    monkeypatch.setattr(append_mod, "APPEND_LEASE_SECONDS", 0.3)
    data = random_bytes(400_000)
    path = upload_path(await tus_create(client, len(data)))
    writing = asyncio.ensure_future(slow_patch(client, path, 0, data, pieces=10, pause=0.1))
    store, lease = await leased(client, path)
    await store.redis.delete(lease)  # as if it expired (another request may own the file now)
    resp = await writing
    assert resp.status == 409 and (await resp.json())["type"].endswith("/append-busy")
    assert (await client.head(path, headers=TUS)).headers["Upload-Offset"] == "0"
    await tus_patch(client, path, 0, data)
    assert await (await client.get(path)).read() == data


async def test_patches_of_whole_buffers_read_back_equal(client):
    """A body read into buffers that ends with a full one writes it in its last trip: no byte is lost."""
    data = random_bytes(4 * WRITE_BUFFER)
    path = upload_path(await tus_create(client, len(data)))
    await tus_patch(client, path, 0, data[:2 * WRITE_BUFFER])
    await tus_patch(client, path, 2 * WRITE_BUFFER, data[2 * WRITE_BUFFER:])
    assert await (await client.get(path)).read() == data


@pytest.mark.parametrize("rest", [100_000, WRITE_BUFFER + 100_000], ids=["small", "past-a-buffer"])
async def test_bytes_missing_on_this_node_answer_conflict_not_zeros(client, rest):
    """Also what an upload staged as segment files (before the data file) gets.

    A body past one buffer fails in its first writing trip (which opens the file)."""
    data = random_bytes(100_000 + rest)
    path = upload_path(await tus_create(client, len(data)))
    await tus_patch(client, path, 0, data[:100_000])
    data_file(client, path).unlink()
    resp = await tus_patch(client, path, 100_000, data[100_000:], expect=409)
    assert (await resp.json())["type"].endswith("/conflict")
    assert not data_file(client, path).exists()
    assert held_open(data_file(client, path).parent) == []


def test_readers_take_only_size_bytes_of_each_file(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"hello" + b"GARBAGE")
    b.write_bytes(b" world" + b"JUNK")
    files = [ChunkFile(1, a, 5, ""), ChunkFile(2, b, 6, "")]
    assert sha256_of_files([a, b], [5, 6]) == (11, sha256(b"hello world"))

    async def read() -> bytes:
        return b"".join([piece async for piece in ChunkSource(files).iter_bytes(block=4)])
    assert asyncio.run(read()) == b"hello world"
    sink = vezastream_local.LocalSink(tmp_path / "out", fsync=False)

    async def stored(source: ChunkSource) -> bytes:
        spec = UploadSpec(id=new_upload_id(), owner="u", filename="f", total_size=source.size, chunk_size=0,
                          total_chunks=0, created_at=0.0)
        assembly = await sink.assemble(Upload(spec, UploadStatus.COMPLETING, 0.0, 0.0, 0, 0), source)
        await assembly.commit()
        return (tmp_path / "out" / assembly.location).read_bytes()
    assert asyncio.run(stored(ChunkSource(files))) == b"hello world"
    assert asyncio.run(stored(ChunkSource(files[:1]))) == b"hello"  # too long to link: copied


async def test_concatenation_reads_only_each_partials_length(client):
    first, second = random_bytes(50_000), random_bytes(70_000)
    wrong = "sha1 " + base64.b64encode(hashlib.sha1(b"other").digest()).decode()

    async def partial_with_garbage() -> str:
        part = upload_path(await tus_create(client, None, headers={"Upload-Concat": "partial",
                                                                   "Upload-Defer-Length": "1"}))
        await tus_patch(client, part, 0, first)
        await tus_patch(client, part, 50_000, random_bytes(30_000), expect=460, headers={"Upload-Checksum": wrong})
        await tus_patch(client, part, 50_000, b"", headers={"Upload-Length": "50000"})  # garbage stays past it
        assert os.stat(data_file(client, part)).st_size == 80_000
        return part

    two = upload_path(await tus_create(client, len(second), headers={"Upload-Concat": "partial"}))
    await tus_patch(client, two, 0, second)
    for parts, want in ((["one"], first), (["one", two], first + second)):
        parts = [await partial_with_garbage() if p == "one" else p for p in parts]
        final = upload_path(await tus_create(client, None, filename=None,
                                             headers={"Upload-Concat": "final;" + " ".join(parts)}))
        assert await (await client.get(final)).read() == want
        assert (await result(client, final))["result"]["sha256"] == sha256(want)


async def test_a_writer_whose_lease_ran_out_still_fences_the_file(make_client, settings):
    """A PATCH whose lease is gone (as if its event loop had stalled past it) keeps
    the data file until it is done: a newer PATCH gets the lease but writes nothing."""
    node_a, node_b = await make_client(settings), await make_client(settings)
    a, b = random_bytes(200_000), random_bytes(200_000)
    path = upload_path(await tus_create(node_a, 400_000))
    writing = asyncio.ensure_future(slow_patch(node_a, path, 0, a, pieces=8, pause=0.2))  # (as above)
    store, lease = await leased(node_a, path)
    await store.redis.delete(lease)  # A's lease ran out; A is still writing
    busy = await tus_patch(node_b, path, 0, b, expect=409)
    assert (await busy.json())["type"].endswith("/append-busy")
    assert await store.redis.exists(lease) == 0  # B never took the lease
    assert (await writing).status == 204  # nobody else registered: A's bytes count
    assert data_file(node_a, path).read_bytes() == a
    await tus_patch(node_b, path, 200_000, b)  # the lock went with A's request
    assert await (await node_b.get(path)).read() == a + b
    assert (await result(node_b, path))["result"]["sha256"] == sha256(a + b)


async def test_a_large_body_cut_off_keeps_what_arrived_and_holds_nothing(client):
    data = random_bytes(2 * WRITE_BUFFER + 500_000)
    path = upload_path(await tus_create(client, len(data)))
    folder = data_file(client, path).parent
    sent = WRITE_BUFFER + 300_000  # past the first buffer: the file was open when the client went
    kept = await drop_mid_body(str(client.make_url("")).rstrip("/"), path, data, sent)
    assert 0 < kept <= sent
    assert held_open(folder) == []
    await tus_patch(client, path, kept, data[kept:])
    assert await (await client.get(path)).read() == data
    assert (await result(client, path))["result"]["sha256"] == sha256(data)


async def test_a_request_cancelled_while_it_takes_the_lock_does_not_keep_it(make_client, make_settings, monkeypatch):
    # The lock's thread trip (with storage.kernel_io, a local disk's lock is taken on the event loop).
    client = await make_client(make_settings(**{"storage.kernel_io": "off", "limits.min_chunk_size": 1}))
    path = upload_path(await tus_create(client, 1000))
    upload_id = path.rsplit("/", 1)[1]
    real, returned = staging_files.lock_data_file, threading.Event()

    def slow(data_path):  # still in the thread when the request is cancelled
        time.sleep(0.2)
        try:
            return real(data_path)
        finally:
            returned.set()

    monkeypatch.setattr(staging_files, "lock_data_file", slow)
    taking = asyncio.ensure_future(engine(client).staging.lock_data_file(upload_id))
    await asyncio.sleep(0.05)
    taking.cancel()
    try:
        await taking
    except asyncio.CancelledError:
        pass
    assert taking.cancelled()
    for _ in range(100):  # bounded: the thread returns after 0.2 s
        if returned.is_set():
            break
        await asyncio.sleep(0.01)
    assert returned.is_set()
    await asyncio.sleep(0.05)  # the thread's result reaches the event loop

    fd = os.open(data_file(client, path), os.O_WRONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError if the lock was kept
    finally:
        os.close(fd)
    assert held_open(data_file(client, path).parent) == []
    monkeypatch.undo()
    await tus_patch(client, path, 0, b"x" * 1000)


async def test_a_patch_costs_two_redis_round_trips_and_leaves_no_lease(client):
    """The lease and the state in one script, the register script (which also gives
    the lease back); a PATCH that completes the upload keeps the lease until it is done."""
    data = random_bytes(300_000)
    warm = upload_path(await tus_create(client, len(data)))
    await tus_patch(client, warm, 0, data[:100_000])  # Redis has loaded the scripts
    path = upload_path(await tus_create(client, len(data)))
    store = engine(client).store
    lease = store.append_lease_key(path.rsplit("/", 1)[1])

    async def scripts_run() -> int:
        stats = await store.redis.info("commandstats")
        return sum(v["calls"] for k, v in stats.items() if k in ("cmdstat_evalsha", "cmdstat_eval"))

    before = await scripts_run()
    await tus_patch(client, path, 0, data[:100_000])
    assert await scripts_run() - before == 2
    assert await store.redis.exists(lease) == 0
    await tus_patch(client, path, 100_000, data[100_000:])  # completes the upload
    assert await store.redis.exists(lease) == 0
    assert (await result(client, path))["result"]["sha256"] == sha256(data)


async def test_a_large_body_arrives_while_the_lock_and_the_lease_are_taken(make_client, make_settings, monkeypatch):
    """A large PATCH's body is received into its buffers while the writer lock is taken
    (a thread trip) and the lease (a Redis round trip), not only after them."""
    # The lock's thread trip (with storage.kernel_io, a local disk's lock is taken on the event loop).
    client = await make_client(make_settings(**{"storage.kernel_io": "off", "limits.min_chunk_size": 1}))
    data = random_bytes(WRITE_BUFFER + 500_000)
    path = upload_path(await tus_create(client, len(data)))
    staging, real, seen = engine(client).staging, staging_files.lock_data_file, []

    def watching(data_path):  # in the lock's thread: is the body being received yet?
        for _ in range(100):  # bounded: 1 s
            if staging.filling:
                break
            time.sleep(0.01)
        seen.append(staging.filling)
        return real(data_path)

    monkeypatch.setattr(staging_files, "lock_data_file", watching)
    await tus_patch(client, path, 0, data)
    assert seen == [1]
    assert await (await client.get(path)).read() == data
    assert (await result(client, path))["result"]["sha256"] == sha256(data)


async def test_a_refused_large_body_writes_nothing(make_client, settings):
    """Large bodies received before the lease: a PATCH refused for its offset or for a busy upload
    answers as before and leaves the data file as it was."""
    node_a, node_b = await make_client(settings), await make_client(settings)
    a, b = random_bytes(WRITE_BUFFER + 300_000), random_bytes(WRITE_BUFFER + 300_000)
    path = upload_path(await tus_create(node_a, len(a) + len(b)))
    await tus_patch(node_a, path, 0, a)
    stale = await tus_patch(node_b, path, 0, b, expect=409)
    assert (await stale.json())["offset"] == len(a)
    assert data_file(node_a, path).read_bytes() == a
    store = engine(node_a).store
    lease = store.append_lease_key(id_of(path))
    await store.redis.set(lease, "another-request", px=10_000)  # another request writes
    busy = await tus_patch(node_b, path, len(a), b, expect=409)
    assert (await busy.json())["type"].endswith("/append-busy")
    assert data_file(node_a, path).read_bytes() == a
    assert held_open(data_file(node_a, path).parent) == []
    await store.redis.delete(lease)
    await tus_patch(node_b, path, len(a), b)
    assert await (await node_a.get(path)).read() == a + b
    assert (await result(node_a, path))["result"]["sha256"] == sha256(a + b)


async def test_a_refused_large_body_read_to_its_end_keeps_the_connection(make_client, settings, monkeypatch):
    """A large PATCH refused for its offset answers once the rest of its body is read and thrown
    away, and the connection goes on: the client's next request is answered on it (docs/tus.md).
    A body whose rest does not come in time is answered with ``Connection: close``."""
    client = await make_client(settings)
    data = random_bytes(WRITE_BUFFER + 300_000)
    path = upload_path(await tus_create(client, 2 * len(data)))
    await tus_patch(client, path, 0, data)
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    try:
        writer.write(tus_patch_head(path, 0, len(data)).encode() + data)  # a stale offset, the whole body
        await writer.drain()
        status, headers, _ = await raw_answer(reader)
        assert (status, headers.get("connection")) == (409, None)
        writer.write(f"HEAD {path} HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\n\r\n".encode())
        status, headers, _ = await raw_answer(reader)
        assert (status, headers["upload-offset"]) == (200, str(len(data)))
    finally:
        writer.close()
    monkeypatch.setattr(body_mod, "LINGER", 0.3)
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    try:
        writer.write(tus_patch_head(path, 0, len(data)).encode() + data[:-1000])  # the rest never comes
        await writer.drain()
        status, headers, _ = await raw_answer(reader)
        assert (status, headers.get("connection")) == (409, "close")
        try:  # and the server closed it (a reset when it had not read all that was sent)
            rest = await asyncio.wait_for(reader.read(1), 5)
        except ConnectionResetError:
            rest = b""
        assert rest == b""
    finally:
        writer.close()
    assert data_file(client, path).read_bytes() == data
