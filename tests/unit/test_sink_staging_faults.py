"""Staging objects in the sink (``storage.staging = "sink"``) when the sink or the client misbehaves.

What a user must never get: an object assembled from bytes that changed in the bucket, a
refused body kept as a staging object, a body past the upload's end half stored, or a delete
that fails because the sink could not tidy up (what it leaves is the GC's sweep's).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pytest

from vezastream import errors
from vezastream.engine.layouts.append import NewAppendUpload
from vezastream.engine.plan import NewUpload
from vezastream.models import UploadStatus

from engine_parts import MemoryStagingSink, body, make_engine, staging, store  # noqa: F401  (fixtures)
from helpers import random_bytes, sha256


@pytest.fixture
def in_sink(make_settings, make_engine):
    """``in_sink(sink)``: an engine whose uploads wait as staging objects in ``sink``."""
    settings = make_settings(**{"storage.staging": "sink"})
    return lambda sink: make_engine(sink=sink, with_settings=settings)


async def test_a_staged_piece_changed_in_the_sink_is_never_assembled(in_sink, store):
    sink = MemoryStagingSink()
    engine = in_sink(sink)
    data = random_bytes(200)
    upload = await engine.create("alice", NewUpload("f.bin", len(data), 100))  # no declared SHA-256
    for n in (1, 2):
        await engine.put_chunk("alice", upload.id, n, body(data[(n - 1) * 100:n * 100]), 100)
    (key,) = [k for k in sink.staged if k[1].startswith("2.")]
    sink.staged[key] = bytes(100)  # the bucket's object changed behind the server's back (same size)
    with pytest.raises(errors.IntegrityError) as raised:
        await engine.complete("alice", upload.id)
    assert raised.value.status == 422 and "changed in the sink" in raised.value.detail
    assert upload.id not in sink.objects  # no object of the wrong bytes
    assert await store.status(upload.id) is UploadStatus.PENDING


@dataclass
class Swallows(MemoryStagingSink):
    """A sink plugin whose ``put_staged`` stores what it read even when reading the body raised."""

    async def put_staged(self, upload_id, name, body, size) -> None:
        data = b""
        try:
            async for piece in body:
                data += piece
        except Exception:  # the plugin's bug: it should let the error go up
            pass
        self.staged[upload_id, name] = data


async def test_a_refused_body_is_not_kept_even_if_the_sink_swallows_the_refusal(in_sink, store):
    sink = Swallows()
    engine = in_sink(sink)
    upload = await engine.create("alice", NewUpload("f.bin", 100, 100))
    with pytest.raises(errors.DigestMismatch):
        await engine.put_chunk("alice", upload.id, 1, body(random_bytes(100)), 100, sha256(b"other bytes"))
    assert not sink.staged
    assert await store.chunk(upload.id, 1) is None


async def test_a_tus_body_without_a_length_past_the_upload_end_is_413_and_stores_nothing(in_sink, store):
    sink = MemoryStagingSink()
    engine = in_sink(sink)
    upload = await engine.appends.create_append("alice", NewAppendUpload("f.bin", 4))
    with pytest.raises(errors.TooLarge) as raised:
        await engine.appends.append("alice", upload.id, 0, body(b"abcdefgh"))  # spooled: no Content-Length
    assert raised.value.extra["limit"] == 4
    assert not sink.staged
    assert (await engine.appends.append_state("alice", upload.id)).bytes_received == 0
    empty = await engine.appends.append("alice", upload.id, 0, body(b""))  # nothing at all: nothing stored
    assert (empty.offset, empty.completed, sink.staged) == (0, False, {})
    done = await engine.appends.append("alice", upload.id, 0, body(b"abcd"))
    assert done.completed and sink.objects[upload.id] == b"abcd"


@dataclass
class CannotRemove(MemoryStagingSink):
    """A sink whose store takes objects but, right now, refuses to remove any."""

    async def remove_staged(self, upload_id, name) -> None:
        raise ConnectionRefusedError(111, "Connection refused")

    async def clear_staged(self, upload_id) -> None:
        raise ConnectionRefusedError(111, "Connection refused")


async def test_a_sink_that_cannot_remove_staging_objects_fails_no_request(in_sink, store, caplog):
    sink = CannotRemove()
    engine = in_sink(sink)
    data = random_bytes(100)
    upload = await engine.create("alice", NewUpload("f.bin", 200, 100))
    assert (await engine.put_chunk("alice", upload.id, 1, body(data), 100)).created
    with caplog.at_level(logging.WARNING, logger="vezastream.engine"):
        again = await engine.put_chunk("alice", upload.id, 1, body(data), 100)  # a retry: its own object is extra
        assert not again.created
        await engine.delete("alice", upload.id)
    assert await store.status(upload.id) is None
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "staging object not removed" in warned and "staging objects not removed" in warned
