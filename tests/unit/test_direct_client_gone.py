"""Direct mode: a client that goes away mid-chunk is not the sink's failure.

The body a direct-mode sink reads raises ``ConnectionResetError`` when its client is gone;
the sink lets it go up. The engine must not turn that into a 502 "sink failed" logged with a
traceback (an operator would be paged for a client's dropped connection), and the chunk
stays unregistered, so the client's retry stores it.
"""

from __future__ import annotations

import logging

import pytest

from vezastream.engine.plan import NewUpload

from engine_parts import MemoryDirectSink, body, make_engine, staging, store  # noqa: F401  (fixtures)
from helpers import random_bytes


async def cut_off(data: bytes):
    """A request body whose client went away after its first half."""
    yield data[:len(data) // 2]
    raise ConnectionResetError(104, "Connection reset by peer")


async def test_a_client_gone_mid_chunk_is_not_a_sink_failure(make_engine, store, caplog):
    sink = MemoryDirectSink()
    engine = make_engine(sink=sink)
    data = random_bytes(100)
    upload = await engine.create("alice", NewUpload("f.bin", len(data), 100))
    assert upload.spec.direct  # the sink takes the chunks itself
    with caplog.at_level(logging.ERROR), pytest.raises(ConnectionResetError):
        await engine.put_chunk("alice", upload.id, 1, cut_off(data), 100)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]  # no "sink failed"
    assert await store.chunk(upload.id, 1) is None
    assert (await engine.put_chunk("alice", upload.id, 1, body(data), 100)).created  # the retry
    _, result = await engine.complete("alice", upload.id)
    assert sink.objects[upload.id] == data and result.size == len(data)
