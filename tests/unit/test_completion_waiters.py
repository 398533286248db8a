"""A completion that waits for another node's: what it answers when that one fails.

Two engines on one Redis stand for two nodes. Node A holds the completion lease (its
process lives: it beats) while its sink assembles; node B's ``complete`` for the same
upload waits for it. When A's sink fails, B must not wait out ``limits.complete_wait``:
it answers at once, and says what the upload's state became.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import pytest

from vezastream import errors
from vezastream.engine.leases import NODE_SECONDS
from vezastream.engine.plan import NewUpload
from vezastream.models import UploadStatus

from engine_parts import MemoryDirectSink, body, make_engine, staging, store  # noqa: F401  (fixtures)
from helpers import random_bytes


@dataclass
class GatedSink(MemoryDirectSink):
    """A direct-mode sink whose join waits for ``gate``, then raises ``failure`` (if any) as a broken store would."""

    gate: asyncio.Event = field(default_factory=asyncio.Event)
    failure: Exception | None = None

    async def assemble_direct(self, upload, chunks):
        await self.gate.wait()
        if self.failure is not None:
            raise self.failure
        return await super().assemble_direct(upload, chunks)


async def until(check, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not await check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def a_waits_on_b(make_engine, store, failure: Exception):
    """Node A's completion under way (its sink held at the join), node B's ``complete`` waiting for it."""
    sink = GatedSink(failure=failure)
    node_a, node_b = make_engine(sink=sink), make_engine(sink=MemoryDirectSink())
    await store.beat(node_a.leases.node, NODE_SECONDS)  # A's process is alive: B must not take over
    data = random_bytes(300)
    upload = await node_a.create("alice", NewUpload("f.bin", len(data), 100))
    for n in (1, 2, 3):
        await node_a.put_chunk("alice", upload.id, n, body(data[(n - 1) * 100:n * 100]), 100)
    first = asyncio.create_task(node_a.complete("alice", upload.id))
    await until(lambda: _status_is(store, upload.id, UploadStatus.COMPLETING))
    second = asyncio.create_task(node_b.complete("alice", upload.id))
    await asyncio.sleep(0.3)  # B is waiting now
    assert not second.done()
    return sink, node_a, upload, data, first, second


async def _status_is(store, upload_id: str, status: UploadStatus) -> bool:
    return await store.status(upload_id) is status


async def test_a_waiting_completion_answers_409_when_the_other_fails_and_the_upload_is_pending(make_engine, store):
    sink, node_a, upload, data, first, second = await a_waits_on_b(
        make_engine, store, errors.Unavailable("the store is down", retry_after=1))
    started = time.monotonic()
    sink.gate.set()
    with pytest.raises(errors.Unavailable):
        await first
    with pytest.raises(errors.Conflict) as raised:
        await asyncio.wait_for(second, 5)
    assert time.monotonic() - started < 2  # not limits.complete_wait (120 s), nor once A's heartbeat lapsed
    assert raised.value.detail == "a concurrent completion failed; the upload is pending again"
    assert await store.status(upload.id) is UploadStatus.PENDING
    sink.failure = None  # the store is back: completing again stores the bytes
    done, result = await node_a.complete("alice", upload.id)
    assert done.status is UploadStatus.COMPLETED and sink.objects[upload.id] == data


async def test_a_waiting_completion_answers_rejected_when_the_other_is_refused(make_engine, store):
    sink, _, upload, _, first, second = await a_waits_on_b(
        make_engine, store, errors.IntegrityError("the joined object's bytes are wrong"))
    started = time.monotonic()
    sink.gate.set()
    with pytest.raises(errors.IntegrityError):
        await first
    with pytest.raises(errors.UploadNotPending) as raised:
        await asyncio.wait_for(second, 5)
    assert time.monotonic() - started < 2  # not once A's heartbeat lapsed (NODE_SECONDS)
    assert raised.value.extra["upload_status"] == "rejected"
    assert raised.value.detail.startswith("the upload was rejected (") and "delete it and upload again" in \
        raised.value.detail
    assert await store.status(upload.id) is UploadStatus.REJECTED
