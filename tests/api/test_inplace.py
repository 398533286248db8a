"""In-place uploads (``storage.in_place``, the default): who may write a chunk's range, and when it is copied."""

from __future__ import annotations

import asyncio
import os
import random

import pytest

from vezastream import staging
from vezastream.engine.layouts import inplace
from vezastream.http.app import engine_key

from helpers import content, create, put_chunk, random_bytes, sha256, split

MiB = 1024 * 1024


@pytest.fixture
def completion_reads(monkeypatch) -> list:
    """The files completion reads back to hash them (none when the running digest covered the upload)."""
    reads: list = []
    real = staging.sha256_of_files
    monkeypatch.setattr("vezastream.engine.layouts.staged.sha256_of_files",
                        lambda paths, *sizes: reads.append(paths) or real(paths, *sizes))
    return reads


async def _slow_put(client, uid: str, n: int, head: bytes, size: int):
    """Start a PUT of chunk ``n`` that sends only ``head`` of its ``size`` bytes; returns the open stream."""
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    writer.write((f"PUT /v1/uploads/{uid}/chunks/{n} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                  f"Content-Type: application/octet-stream\r\nContent-Length: {size}\r\n\r\n").encode() + head)
    await writer.drain()
    return reader, writer


async def _status_of(reader) -> int:
    line = await asyncio.wait_for(reader.readline(), 10)
    return int(line.split()[1])


async def test_a_chunk_that_is_being_written_elsewhere_is_staged_and_the_late_writer_never_counts(client):
    """A slow request holds chunk 1's range; a retry is staged on its own, and completion copies it."""
    data = random_bytes(4 * MiB)
    stray = random_bytes(3 * MiB)  # what the slow request sends for chunk 1
    uid = (await create(client, total_size=len(data), chunk_size=3 * MiB))["upload_id"]
    store = client.server.app[engine_key].store
    # More than one write buffer: the slow request opens the data file and writes into chunk 1's range.
    reader, writer = await _slow_put(client, uid, 1, stray[:2 * MiB], 3 * MiB)
    for _ in range(100):
        if await store.claims(uid):
            break
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.2)
    try:
        await put_chunk(client, uid, 1, data[:3 * MiB], expect=201)
        await put_chunk(client, uid, 2, data[3 * MiB:], expect=201)
        assert (await store.claims(uid))[1] == "staged"
        result = await (await client.post(f"/v1/uploads/{uid}/complete")).json()
        assert result["sha256"] == sha256(data)
        # The slow request now writes the rest of its body into the old data file, then learns it lost.
        writer.write(stray[2 * MiB:])
        await writer.drain()
        assert await _status_of(reader) == 409
    finally:
        writer.close()
    assert await content(client, uid) == (200, data)


async def test_a_claim_left_by_a_dead_node_costs_a_copy_not_a_chunk(client, settings):
    data = random_bytes(300_000)
    uid = (await create(client, total_size=len(data), chunk_size=100_000))["upload_id"]
    store = client.server.app[engine_key].store
    claim, _ = await store.claim_chunk(uid, 2, "a node that died mid-body", settings.limits.upload_ttl)
    assert claim == "claimed"
    for n, piece in enumerate(split(data, 100_000), 1):
        await put_chunk(client, uid, n, piece, expect=201)
    assert (await store.claims(uid))[2] == "staged"
    result = await (await client.post(f"/v1/uploads/{uid}/complete")).json()
    assert result["sha256"] == sha256(data)
    assert await content(client, uid) == (200, data)
    assert not client.server.app[engine_key].staging.holds(uid)


async def test_chunks_in_any_order_land_in_one_file_that_becomes_the_stored_file(client, settings):
    data = random_bytes(10 * 65536 + 17)
    pieces = split(data, 65536)
    uid = (await create(client, total_size=len(data), chunk_size=65536))["upload_id"]
    await asyncio.gather(*(put_chunk(client, uid, n, pieces[n - 1]) for n in reversed(range(1, len(pieces) + 1))))
    root = settings.storage.chunks_dir
    assert sorted(p.name for p in root.iterdir()) == [f"{uid}.data"]  # one flat file, nothing staged on its own
    inode = os.stat(root / f"{uid}.data").st_ino
    result = await (await client.post(f"/v1/uploads/{uid}/complete")).json()
    assert result["sha256"] == sha256(data)
    stored = [p for p in (settings.storage.data_dir / "files" / uid).iterdir() if not p.name.startswith(".")]
    assert [os.stat(p).st_ino for p in stored] == [inode]  # linked, not copied
    assert await content(client, uid) == (200, data)


async def test_a_registered_chunk_is_never_written_again(client, settings):
    data = random_bytes(200)
    uid = (await create(client, total_size=200, chunk_size=100))["upload_id"]
    await put_chunk(client, uid, 1, data[:100], expect=201)
    path = settings.storage.chunks_dir / f"{uid}.data"
    before = path.read_bytes()
    code, problem = await put_chunk(client, uid, 1, random_bytes(100), expect=409)
    assert problem["stored_sha256"] == sha256(data[:100])
    assert path.read_bytes() == before
    await put_chunk(client, uid, 2, data[100:], expect=201)
    await client.post(f"/v1/uploads/{uid}/complete")
    assert await content(client, uid) == (200, data)


@pytest.mark.parametrize("chunk_size", [70_000, 3 * MiB // 2], ids=["small", "large"])
@pytest.mark.parametrize("rejected", [None, 1, 2])
async def test_chunks_in_order_are_hashed_once_and_a_rejected_body_never_counts(client, completion_reads, rejected,
                                                                                 chunk_size):
    """Sent one after the other, the chunks feed the whole-file SHA-256: completion reads nothing back.

    A refused body was hashed into the running digest's copy (chunk 2) or into the running digest
    itself (chunk 1, whose own digest it is), and never counts."""
    data = random_bytes(4 * chunk_size + 5)
    uid = (await create(client, total_size=len(data), chunk_size=chunk_size, sha256=sha256(data)))["upload_id"]
    for n, piece in enumerate(split(data, chunk_size), 1):
        if n == rejected:
            await put_chunk(client, uid, n, random_bytes(chunk_size), expect=422,
                            headers={"X-Chunk-Sha256": sha256(piece)})
        _, answer = await put_chunk(client, uid, n, piece, expect=201)
        assert answer["sha256"] == sha256(piece)  # the chunk's own digest, not the upload's so far
    done = await client.post(f"/v1/uploads/{uid}/complete")
    assert done.status == 200 and (await done.json())["sha256"] == sha256(data)
    assert completion_reads == []
    assert await content(client, uid) == (200, data)


async def test_chunks_spread_over_two_processes_are_hashed_at_completion(make_client, settings, completion_reads):
    node_a, node_b = await make_client(settings), await make_client(settings)
    data = random_bytes(3 * 70_000)
    uid = (await create(node_a, total_size=len(data), chunk_size=70_000))["upload_id"]
    for n, node in ((1, node_a), (2, node_b), (3, node_a)):
        await put_chunk(node, uid, n, split(data, 70_000)[n - 1], expect=201)
    result = await (await node_a.post(f"/v1/uploads/{uid}/complete")).json()
    assert result["sha256"] == sha256(data) and len(completion_reads) == 1


async def test_chunks_sent_several_at_a_time_are_hashed_while_the_upload_runs(client, completion_reads):
    """Out of order, the chunks written here are read back into the running digest before completion."""
    data = random_bytes(12 * 65536 + 99)
    pieces = split(data, 65536)
    uid = (await create(client, total_size=len(data), chunk_size=65536))["upload_id"]
    order = [1, 3, 2, 6, 5, 4] + list(range(7, len(pieces) + 1))[::-1]
    for batch in (order[:3], order[3:6], order[6:]):
        await asyncio.gather(*(put_chunk(client, uid, n, pieces[n - 1]) for n in batch))
    result = await (await client.post(f"/v1/uploads/{uid}/complete")).json()
    assert result["sha256"] == sha256(data)
    assert completion_reads == []  # every chunk reached the running digest: completion read nothing
    assert await content(client, uid) == (200, data)


async def test_small_chunks_of_many_uploads_at_once_are_hashed_in_fours_and_stay_right(client, completion_reads):
    """Chunks after the first feed two digests each (their own, their upload's running one); such
    chunks of many uploads reach the event loop together, and two of them go in one pass of four
    digests (staging/digests.py). Every chunk's digest and every file's come out right."""
    chunk_staging = client.server.app[engine_key].staging
    if chunk_staging.kernel is None or staging.digests._Sha256x2 is None:
        pytest.skip("small bodies go to worker threads here, or the C module is not usable")
    files = [random_bytes(4 * 65_536 - 7 * i) for i in range(16)]

    async def send(data: bytes) -> str:
        uid = (await create(client, total_size=len(data), chunk_size=65_536))["upload_id"]
        for n, piece in enumerate(split(data, 65_536), start=1):
            _, receipt = await put_chunk(client, uid, n, piece)
            assert receipt["sha256"] == sha256(piece)
        done = await client.post(f"/v1/uploads/{uid}/complete")
        assert done.status == 200, await done.text()
        return (await done.json())["sha256"]
    assert await asyncio.gather(*map(send, files)) == [sha256(data) for data in files]
    assert completion_reads == []  # every file's digest came from its running digest
    pairs = chunk_staging.loop_pairs
    assert pairs.paired + pairs.alone == 4 * 16  # chunk 1 alone (one digest), chunks 2-4 in tees
    assert pairs.paired >= 32, (pairs.paired, pairs.alone)


async def test_a_chunk_staged_on_its_own_stops_the_running_digest(client, settings, completion_reads):
    data = random_bytes(4 * 65536)
    pieces = split(data, 65536)
    uid = (await create(client, total_size=len(data), chunk_size=65536))["upload_id"]
    store = client.server.app[engine_key].store
    await store.claim_chunk(uid, 2, "a node that died mid-body", settings.limits.upload_ttl)
    for n in (1, 3, 4, 2):
        await put_chunk(client, uid, n, pieces[n - 1])
    result = await (await client.post(f"/v1/uploads/{uid}/complete")).json()
    assert result["sha256"] == sha256(data) and len(completion_reads) == 1
    assert await content(client, uid) == (200, data)


async def test_the_catch_up_forgets_uploads_it_is_done_with(client):
    data = random_bytes(3 * 65536)
    pieces = split(data, 65536)
    uid = (await create(client, total_size=len(data), chunk_size=65536))["upload_id"]
    await asyncio.gather(*(put_chunk(client, uid, n, pieces[n - 1]) for n in (3, 2)))
    await put_chunk(client, uid, 1, pieces[0])
    catch_up = client.server.app[engine_key].catch_up
    for _ in range(100):
        if not catch_up.busy:
            break
        await asyncio.sleep(0.02)
    assert not catch_up.busy
    assert client.server.app[engine_key].digests.position(uid) == len(data)  # hashed before completion
    await client.post(f"/v1/uploads/{uid}/complete")
    assert catch_up.waiting == set()


# -- chunks kept in memory until the running digest reaches them ------------------------------------

@pytest.fixture
def disk_reads(monkeypatch) -> list:
    """The chunk ranges the catch-up reads back from the data file (offset, size)."""
    reads: list = []
    real = inplace.hash_range
    monkeypatch.setattr(inplace, "hash_range",
                        lambda path, offset, size, *rest: reads.append((offset, size)) or real(path, offset, size, *rest))
    return reads


async def _caught_up(catch_up) -> None:
    for _ in range(250):
        if not catch_up.busy:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the catch-up did not finish")


async def test_chunks_that_arrive_early_are_hashed_from_memory_and_their_buffers_go_back(
        client, disk_reads, completion_reads):
    """Large bodies (received straight into buffers) ahead of chunk 1 wait in memory, not on a re-read."""
    chunk = 2 * MiB
    data = random_bytes(3 * chunk + MiB + 12345)  # the last one too is large enough to be received into buffers
    pieces = split(data, chunk)
    uid = (await create(client, total_size=len(data), chunk_size=chunk))["upload_id"]
    engine = client.server.app[engine_key]
    for n in (4, 2, 3):
        await put_chunk(client, uid, n, pieces[n - 1], expect=201)
    assert engine.catch_up.held_bytes == len(data) - chunk  # chunks 2-4 wait for chunk 1
    await put_chunk(client, uid, 1, pieces[0], expect=201)
    await _caught_up(engine.catch_up)
    assert engine.catch_up.held_bytes == 0 and engine.staging.filling == 0
    assert disk_reads == []
    result = await (await client.post(f"/v1/uploads/{uid}/complete")).json()
    assert result["sha256"] == sha256(data) and completion_reads == []
    assert await content(client, uid) == (200, data)


async def test_fifteen_early_chunks_of_8_mib_wait_in_memory_not_on_disk(client, disk_reads, completion_reads):
    """A client sending 8 chunks of 8 MiB at a time (`P8`) leaves up to about two windows of chunks
    waiting for the slowest one before them; read back from the disk, they cost the upload about 13 % of
    its rate (docs/performance.md), so 120 MiB of them are held."""
    chunk = 2 * staging.WRITE_BUFFER
    data = random_bytes(16 * chunk)
    pieces = split(data, chunk)
    uid = (await create(client, total_size=len(data), chunk_size=chunk))["upload_id"]
    engine = client.server.app[engine_key]
    for n in range(2, 17):
        await put_chunk(client, uid, n, pieces[n - 1], expect=201)
    assert engine.catch_up.held_bytes == 15 * chunk
    await put_chunk(client, uid, 1, pieces[0], expect=201)
    await _caught_up(engine.catch_up)
    assert disk_reads == [] and engine.catch_up.held_bytes == 0
    result = await (await client.post(f"/v1/uploads/{uid}/complete")).json()
    assert result["sha256"] == sha256(data) and completion_reads == []


async def test_past_the_memory_budget_early_chunks_are_read_back(client, monkeypatch, disk_reads, completion_reads):
    chunk = 2 * MiB
    monkeypatch.setattr(inplace, "HELD_BUDGET", chunk)
    data = random_bytes(4 * chunk)
    pieces = split(data, chunk)
    uid = (await create(client, total_size=len(data), chunk_size=chunk))["upload_id"]
    engine = client.server.app[engine_key]
    for n in (2, 3, 4):
        await put_chunk(client, uid, n, pieces[n - 1], expect=201)
    assert engine.catch_up.held_bytes == chunk  # chunk 2 only; 3 and 4 are on disk alone
    await put_chunk(client, uid, 1, pieces[0], expect=201)
    await _caught_up(engine.catch_up)
    assert sorted(disk_reads) == [(2 * chunk, chunk), (3 * chunk, chunk)] and engine.catch_up.held_bytes == 0
    result = await (await client.post(f"/v1/uploads/{uid}/complete")).json()
    assert result["sha256"] == sha256(data) and completion_reads == []


async def test_a_body_larger_than_its_buffers_is_not_kept(client, disk_reads):
    """Past two write buffers the first is filled again, so the body is no longer all in memory."""
    chunk = 2 * staging.WRITE_BUFFER + 1
    data = random_bytes(2 * chunk)
    uid = (await create(client, total_size=len(data), chunk_size=chunk))["upload_id"]
    engine = client.server.app[engine_key]
    await put_chunk(client, uid, 2, data[chunk:], expect=201)
    assert engine.catch_up.held_bytes == 0
    await put_chunk(client, uid, 1, data[:chunk], expect=201)
    await _caught_up(engine.catch_up)
    assert disk_reads == [(chunk, chunk)]
    result = await (await client.post(f"/v1/uploads/{uid}/complete")).json()
    assert result["sha256"] == sha256(data)


async def _three_chunks_without_the_first(client, chunk: int) -> tuple[str, bytes]:
    """An upload of three chunks whose chunks 2 and 3 are sent (and held, waiting for chunk 1)."""
    data = random_bytes(3 * chunk)
    uid = (await create(client, total_size=len(data), chunk_size=chunk))["upload_id"]
    for n in (2, 3):
        await put_chunk(client, uid, n, split(data, chunk)[n - 1], expect=201)
    assert client.server.app[engine_key].catch_up.held_bytes == 2 * chunk
    return uid, data


async def test_a_deleted_upload_gives_back_the_chunks_it_kept(client):
    engine = client.server.app[engine_key]
    uid, _ = await _three_chunks_without_the_first(client, 2 * MiB)
    assert (await client.delete(f"/v1/uploads/{uid}")).status == 204
    assert engine.catch_up.held_bytes == 0 and engine.catch_up.waiting == set()


async def test_chunks_kept_too_long_make_room_for_another_upload(client, monkeypatch, completion_reads):
    """An upload whose chunk 1 never comes does not keep the memory from the uploads that go on."""
    chunk = 2 * MiB
    monkeypatch.setattr(inplace, "HELD_BUDGET", 2 * chunk)
    monkeypatch.setattr(inplace, "HELD_SECONDS", 0.0)
    monkeypatch.setattr(inplace.CatchUp, "_swept", lambda self: None)  # a new chunk comes before the sweep
    engine = client.server.app[engine_key]
    first, second = random_bytes(3 * chunk), random_bytes(2 * chunk)
    stalled = (await create(client, total_size=len(first), chunk_size=chunk))["upload_id"]
    going = (await create(client, total_size=len(second), chunk_size=chunk))["upload_id"]
    for n in (2, 3):
        await put_chunk(client, stalled, n, split(first, chunk)[n - 1], expect=201)
    assert engine.catch_up.held_bytes == 2 * chunk
    await put_chunk(client, going, 2, second[chunk:], expect=201)
    # The stalled upload's oldest chunk made room (only as much as needed) and is read back later.
    assert engine.catch_up.held == {(stalled, 3), (going, 2)} and engine.catch_up.held_bytes == 2 * chunk
    for uid, data in ((going, second), (stalled, first)):
        await put_chunk(client, uid, 1, data[:chunk], expect=201)
        await _caught_up(engine.catch_up)
        result = await (await client.post(f"/v1/uploads/{uid}/complete")).json()
        assert result["sha256"] == sha256(data) and await content(client, uid) == (200, data)
    assert completion_reads == [] and engine.catch_up.held_bytes == 0


async def test_many_large_chunks_at_once_in_any_order_keep_their_digests_apart(client, completion_reads):
    """Two uploads, their chunks shuffled and sent six at a time: kept buffers are reused, never shared."""
    chunk = 1536 * 1024
    files = [random_bytes(10 * chunk + 4321), random_bytes(9 * chunk)]
    uids = [(await create(client, total_size=len(d), chunk_size=chunk))["upload_id"] for d in files]
    puts = [(uid, n, piece) for uid, data in zip(uids, files) for n, piece in enumerate(split(data, chunk), 1)]
    random.Random(7).shuffle(puts)
    gate = asyncio.Semaphore(6)

    async def put(uid: str, n: int, piece: bytes) -> None:
        async with gate:
            await put_chunk(client, uid, n, piece, expect=201)
    await asyncio.gather(*(put(*p) for p in puts))
    engine = client.server.app[engine_key]
    await _caught_up(engine.catch_up)
    for uid, data in zip(uids, files):
        result = await (await client.post(f"/v1/uploads/{uid}/complete")).json()
        assert result["sha256"] == sha256(data) and await content(client, uid) == (200, data)
    assert completion_reads == [] and engine.catch_up.held_bytes == 0 and engine.staging.filling == 0


async def test_chunks_kept_too_long_let_their_memory_go_on_their_own(client, monkeypatch, completion_reads):
    """Chunk 1 is late (or went to another process): after HELD_SECONDS the held ones are read back instead."""
    chunk = 2 * MiB
    monkeypatch.setattr(inplace, "HELD_SECONDS", 0.2)
    engine = client.server.app[engine_key]
    uid, data = await _three_chunks_without_the_first(client, chunk)
    for _ in range(100):
        if not engine.catch_up.held_bytes:
            break
        await asyncio.sleep(0.02)
    assert engine.catch_up.held_bytes == 0 and not engine.catch_up.sweeping
    await put_chunk(client, uid, 1, data[:chunk], expect=201)
    await _caught_up(engine.catch_up)
    result = await (await client.post(f"/v1/uploads/{uid}/complete")).json()
    assert result["sha256"] == sha256(data) and completion_reads == []
