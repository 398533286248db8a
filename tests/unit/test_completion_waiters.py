"""A completion that waits for another node's: what it answers when that one fails.

Two engines on one Redis stand for two nodes. Node A holds the completion lease (its
process lives: it beats) while its sink assembles; node B's ``complete`` for the same
upload waits for it. When A's sink fails, B must not wait out ``limits.complete_wait``:
it answers at once, and says what the upload's state became.

And a completion that stalled past its lease, which another node took over: whichever
finishes first, both answer the same result, and the bytes stored are the upload's.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import pytest
from vezastream_local import make_local_sink

from vezastream import errors
from vezastream.engine.engine import UploadEngine
from vezastream.engine.leases import NODE_SECONDS
from vezastream.engine.plan import NewUpload
from vezastream.models import Upload, UploadStatus

from engine_parts import MemoryDirectSink, body, make_engine, staging, store  # noqa: F401  (fixtures)
from helpers import random_bytes, sha256


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
    upload, data, first = await completing_on(node_a, store)
    second = asyncio.create_task(node_b.complete("alice", upload.id))
    await asyncio.sleep(0.3)  # B is waiting now
    assert not second.done()
    return sink, node_a, upload, data, first, second


async def completing_on(node, store) -> tuple[Upload, bytes, asyncio.Task]:
    """An upload of 3 chunks sent to ``node``, and its completion there, under way (``completing``)."""
    data = random_bytes(300)
    upload = await node.create("alice", NewUpload("f.bin", len(data), 100))
    for n in (1, 2, 3):
        await node.put_chunk("alice", upload.id, n, body(data[(n - 1) * 100:n * 100]), 100)
    first = asyncio.create_task(node.complete("alice", upload.id))
    await until(lambda: _status_is(store, upload.id, UploadStatus.COMPLETING))
    return upload, data, first


async def _status_is(store, upload_id: str, status: UploadStatus) -> bool:
    return await store.status(upload_id) is status


async def b_answers_once_a_fails(sink: GatedSink, first: asyncio.Task, second: asyncio.Task,
                                 a_fails: type[Exception], b_answers: type[Exception]) -> pytest.ExceptionInfo:
    """Let A's sink go on (and fail with ``a_fails``); B must answer ``b_answers`` at once: not after
    ``limits.complete_wait`` (120 s), nor once A's heartbeat lapsed (NODE_SECONDS)."""
    started = time.monotonic()
    sink.gate.set()
    with pytest.raises(a_fails):
        await first
    with pytest.raises(b_answers) as raised:
        await asyncio.wait_for(second, 5)
    assert time.monotonic() - started < 2
    return raised


async def test_a_waiting_completion_answers_409_when_the_other_fails_and_the_upload_is_pending(make_engine, store):
    sink, node_a, upload, data, first, second = await a_waits_on_b(
        make_engine, store, errors.Unavailable("the store is down", retry_after=1))
    raised = await b_answers_once_a_fails(sink, first, second, errors.Unavailable, errors.Conflict)
    assert raised.value.detail == "a concurrent completion failed; the upload is pending again"
    assert await store.status(upload.id) is UploadStatus.PENDING
    sink.failure = None  # the store is back: completing again stores the bytes
    done, result = await node_a.complete("alice", upload.id)
    assert done.status is UploadStatus.COMPLETED and sink.objects[upload.id] == data


async def test_a_waiting_completion_answers_rejected_when_the_other_is_refused(make_engine, store):
    sink, _, upload, _, first, second = await a_waits_on_b(
        make_engine, store, errors.IntegrityError("the joined object's bytes are wrong"))
    raised = await b_answers_once_a_fails(sink, first, second, errors.IntegrityError, errors.UploadNotPending)
    assert raised.value.extra["upload_status"] == "rejected"
    assert raised.value.detail.startswith("the upload was rejected (") and "delete it and upload again" in \
        raised.value.detail
    assert await store.status(upload.id) is UploadStatus.REJECTED


def gated(sink) -> asyncio.Event:
    """Make ``sink``'s ``assemble`` wait for the gate returned: a node that stalls mid-completion."""
    gate, assemble = asyncio.Event(), sink.assemble

    async def waiting(upload, source):
        await gate.wait()
        return await assemble(upload, source)

    sink.assemble = waiting  # an instance attribute: this sink object only
    return gate


@dataclass
class TakenOver:
    """Node A's completion stalled past its lease in its sink; node B took it over and stalls in its own."""

    node_a: UploadEngine
    node_b: UploadEngine
    gate_a: asyncio.Event
    gate_b: asyncio.Event
    upload_id: str
    data: bytes
    first: asyncio.Task
    second: asyncio.Task


async def taken_over(settings, make_engine, store) -> TakenOver:
    sink_a, sink_b = make_local_sink({}, settings), make_local_sink({}, settings)
    gate_a, gate_b = gated(sink_a), gated(sink_b)
    node_a, node_b = make_engine(sink=sink_a), make_engine(sink=sink_b)
    upload, data, first = await completing_on(node_a, store)
    await store.redis.delete(store.lease_key(upload.id))  # A stalled past its lease: it expired
    second = asyncio.create_task(node_b.complete("alice", upload.id))  # B takes the completion over
    await until(lambda: _held_by(store, upload.id, node_b.leases.node))
    return TakenOver(node_a, node_b, gate_a, gate_b, upload.id, data, first, second)


async def _held_by(store, upload_id: str, node: str) -> bool:
    return (await store.holder(store.lease_key(upload_id)) or "").startswith(node + ".")


async def test_a_completion_that_outlived_its_lease_leaves_the_upload_to_the_one_that_took_over(
        settings, make_engine, store, staging, caplog):
    t = await taken_over(settings, make_engine, store)
    t.gate_a.set()
    _, result_a = await asyncio.wait_for(t.first, 5)
    assert "completion lease lost" in caplog.messages
    assert await store.status(t.upload_id) is UploadStatus.COMPLETING and staging.holds(t.upload_id)  # B's to finish
    t.gate_b.set()
    done, result_b = await asyncio.wait_for(t.second, 5)
    assert done.status is UploadStatus.COMPLETED and await store.status(t.upload_id) is UploadStatus.COMPLETED
    assert (result_a.size, result_a.sha256) == (result_b.size, result_b.sha256) == (len(t.data), sha256(t.data))
    assert (await t.node_b.content("alice", t.upload_id)).path.read_bytes() == t.data
    assert not staging.holds(t.upload_id)


async def test_a_completion_that_outlived_its_lease_answers_the_result_the_one_that_took_over_recorded(
        settings, make_engine, store):
    t = await taken_over(settings, make_engine, store)
    t.gate_b.set()
    _, result_b = await asyncio.wait_for(t.second, 5)  # B finishes first: it removes the staged chunks
    t.gate_a.set()
    done, result_a = await asyncio.wait_for(t.first, 5)  # not "resend the upload's chunks"
    assert done.status is UploadStatus.COMPLETED and result_a == result_b
    assert (result_a.size, result_a.sha256) == (len(t.data), sha256(t.data))
    assert (await t.node_a.content("alice", t.upload_id)).path.read_bytes() == t.data
