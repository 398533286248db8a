"""Bodies written with O_DIRECT for whole blocks and the page cache for the rest, and read back
for hashing the same way: the bytes and digests are the same as through the page cache."""

from __future__ import annotations

import asyncio
import os
import random
import threading
from pathlib import Path

import pytest

from vezastream.staging import (BUFFER_BUDGET, KEPT_BYTES, READ_BLOCK, WRITE_BUFFER, BufferPool, ChunkStaging,
                                sha256_of_files)
from vezastream.staging import buffers as buffers_module
from vezastream.staging.directio import BLOCK, BUFFER, BodyFile, is_aligned, page_buffer
from vezastream.staging.writer import gather_pieces

from helpers import content, create, put_chunk, random_bytes, sha256, split


def _pieces(data: bytes, rng: random.Random) -> list[list[bytes]]:
    """``data`` cut into trips of pieces of awkward sizes (1 byte to over a buffer)."""
    trips, trip, at = [], [], 0
    while at < len(data):
        n = rng.choice([1, 7, BLOCK - 1, BLOCK, BLOCK + 1, 65536, 300_001, BUFFER + 5])
        trip.append(data[at:at + n])
        at += n
        if rng.random() < 0.3:
            trips.append(trip)
            trip = []
    return trips + [trip]


def _write(path: Path, offset: int, trips: list[list[bytes]], direct: bool) -> BodyFile:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    os.lseek(fd, offset, os.SEEK_SET)
    out = BodyFile(fd, path, direct)
    for trip in trips:
        out.write(trip)
    out.finish()
    os.fdatasync(out.fd)
    out.close()
    return out


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "page-cache"])
@pytest.mark.parametrize("offset", [0, 1, BLOCK - 1, BLOCK, 3 * BLOCK + 17])
def test_any_pieces_at_any_offset_land_byte_for_byte(tmp_path, direct, offset):
    rng = random.Random(offset)
    data = os.urandom(3 * BUFFER + 12345)
    path = tmp_path / "data"
    path.write_bytes(b"k" * offset)  # what lies before the body stays as it was
    _write(path, offset, _pieces(data, rng), direct)
    assert path.read_bytes() == b"k" * offset + data


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "page-cache"])
@pytest.mark.parametrize("offset", [0, BLOCK, 5])
@pytest.mark.parametrize("tail", [0, 1, BLOCK - 1])
def test_buffers_a_body_was_received_into_land_byte_for_byte(tmp_path, direct, offset, tail):
    """Page-aligned buffers (a body read straight from the socket) are written from where they are."""
    data = os.urandom(2 * WRITE_BUFFER + tail)
    path = tmp_path / "data"
    path.write_bytes(b"k" * offset)
    buffers = [page_buffer(WRITE_BUFFER) for _ in range(2)]  # as the staging area makes them
    # Such buffers are written without a copy; anything else goes through the thread's aligned one.
    assert is_aligned(memoryview(buffers[0])) and not is_aligned(memoryview(buffers[0])[5:])
    assert not is_aligned(memoryview(bytes(BLOCK)))
    fd = os.open(path, os.O_WRONLY)
    os.lseek(fd, offset, os.SEEK_SET)
    out = BodyFile(fd, path, direct)
    for i, at in enumerate(range(0, len(data), WRITE_BUFFER)):  # filled in turn, each written before refilled
        view = memoryview(buffers[i % 2])[:len(data[at:at + WRITE_BUFFER])]
        view[:] = data[at:at + WRITE_BUFFER]
        out.write([view])
    out.finish()
    out.close()
    assert path.read_bytes() == b"k" * offset + data


async def test_fill_buffers_are_bounded_and_reused(tmp_path, monkeypatch):
    monkeypatch.setattr(buffers_module, "TRIM_AFTER", 0.5)
    pool = BufferPool()
    pairs = BUFFER_BUDGET // (2 * WRITE_BUFFER)
    taken = [pool.take(pair=True) for _ in range(pairs)]  # bodies kept for the running digest: two each
    assert pool.take() is None  # past the budget, a body is iterated instead
    for pair in taken[1:]:
        pool.give(pair)
    assert len(pool.idle()) == 2 * (pairs - 1)  # kept while bodies still fill
    pool.give(taken[0], reuse=False)  # the first body's thread may still use its buffers: they are let go
    assert pool.filling == 0 and len(pool.idle()) == 2 * (pairs - 1)
    # Every body ended at once, as concurrent uploads' requests often do: the next round reuses them all.
    kept = {id(buf) for pair in taken[1:] for buf in pair}
    again = [pool.take(pair=True) for _ in range(pairs - 1)]
    assert {id(buf) for pair in again for buf in pair} == kept  # no fresh buffer (a fault per page)
    assert not kept & {id(buf) for buf in taken[0]}
    await asyncio.sleep(0.6)  # a trim that came due while bodies filled lets nothing go
    assert not pool.idle() and pool.filling == pairs - 1
    for pair in again:
        pool.give(pair)
    await asyncio.sleep(0.1)  # (0.4 s to spare on a loaded machine)
    assert len(pool.idle()) == 2 * (pairs - 1)  # not quiet for long enough yet
    await asyncio.sleep(0.6)
    assert sum(len(buf) for buf in pool.idle()) == KEPT_BYTES  # quiet: what the burst needed beyond those goes
    assert {id(buf) for buf in pool.idle()} <= kept


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "page-cache"])
def test_neighbouring_bodies_written_at_once_keep_each_others_bytes(tmp_path, direct):
    """Native chunks in place: ranges that share a block, written from two threads at the same time."""
    path = tmp_path / "data"
    path.write_bytes(b"")
    size = 5 * BLOCK + 123  # not a multiple of the block: every boundary is shared
    bodies = [os.urandom(size) for _ in range(8)]
    rng = random.Random(1)
    errors = []

    def run(i: int) -> None:
        try:
            _write(path, i * size, _pieces(bodies[i], random.Random(rng.random())), direct)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    assert path.read_bytes() == b"".join(bodies)


def test_a_filesystem_without_o_direct_gets_the_page_cache():
    shm = Path("/dev/shm")
    if not shm.is_dir() or not os.access(shm, os.W_OK):
        pytest.skip("no writable tmpfs at /dev/shm")
    path = shm / f"vezastream-test-{os.getpid()}"
    try:
        data = os.urandom(2 * BUFFER + 99)
        out = _write(path, 0, [[data]], direct=True)
        assert out.direct_fd == -1  # tmpfs refuses O_DIRECT
        assert path.read_bytes() == data
    finally:
        path.unlink(missing_ok=True)


@pytest.mark.parametrize("direct_io", [True, False], ids=["direct", "page-cache"])
async def test_uploads_read_back_identical_either_way(make_client, make_settings, direct_io):
    client = await make_client(make_settings(**{"storage.direct_io": direct_io}))
    data = random_bytes(3 * 100_000 + 4097)
    uid = (await create(client, total_size=len(data), chunk_size=100_000))["upload_id"]
    for n, piece in reversed(list(enumerate(split(data, 100_000), 1))):
        await put_chunk(client, uid, n, piece)
    result = await (await client.post(f"/v1/uploads/{uid}/complete")).json()
    assert result["sha256"] == sha256(data)
    assert await content(client, uid) == (200, data)


@pytest.mark.parametrize("size", [0, 1, READ_BLOCK - 1, READ_BLOCK, READ_BLOCK + 1, 3 * READ_BLOCK + 5])
@pytest.mark.parametrize("limit", [-1, 0, 1, READ_BLOCK, 2 * READ_BLOCK + 3])
def test_files_are_hashed_from_their_blocks_up_to_the_limit(tmp_path, size, limit):
    data = os.urandom(size)
    path = tmp_path / "f"
    path.write_bytes(data)
    expected = data if limit < 0 else data[:limit]
    assert sha256_of_files([path], [limit] if limit >= 0 else None) == (len(expected), sha256(expected))


def test_several_files_hash_as_one_stream_from_tmpfs_or_disk(tmp_path):
    folders = [tmp_path] + ([Path("/dev/shm")] if os.access("/dev/shm", os.W_OK) else [])
    parts = [os.urandom(n) for n in (READ_BLOCK + 7, 5, 2 * READ_BLOCK)]
    paths = []
    try:
        for i, part in enumerate(parts):
            path = folders[i % len(folders)] / f"vezastream-part-{os.getpid()}-{i}"
            path.write_bytes(part + b"garbage past the size")
            paths.append(path)
        assert sha256_of_files(paths, [len(p) for p in parts]) == (sum(map(len, parts)), sha256(b"".join(parts)))
    finally:
        for path in paths:
            path.unlink(missing_ok=True)


def test_small_pieces_are_joined_before_a_thread_hashes_them_and_large_ones_are_not():
    """hashlib keeps the GIL for small updates: a trickled body goes to its thread as one piece."""
    small = [b"s" * 1024] * 32
    assert gather_pieces(small, 32 * 1024) == [b"".join(small)]
    large = [os.urandom(256 * 1024) for _ in range(4)]
    gathered = gather_pieces(large, 1024 * 1024)
    assert len(gathered) == 4 and all(a is b for a, b in zip(gathered, large))  # passed on, never copied
