"""Guards of the engine a plugin, a client or a long-running node can reach.

A sink plugin whose joined object has the wrong size is caught (no object is kept, the upload
is rejected: its chunks are consumed); the specs a node keeps in memory are bounded, and an
upload whose spec was let go is read back from Redis as before.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from vezastream import errors
from vezastream.engine import engine as engine_module
from vezastream.engine.plan import NewUpload
from vezastream.models import UploadStatus, is_upload_id

from engine_parts import MemoryDirectSink, _Joined, body, make_engine, staging, store  # noqa: F401  (fixtures)
from helpers import random_bytes, sha256


@dataclass
class LosesTheLastByte(MemoryDirectSink):
    """A direct-mode sink plugin whose join drops the last byte (and says so in its size)."""

    async def assemble_direct(self, upload, chunks):
        joined = await super().assemble_direct(upload, chunks)
        self.objects[upload.id] = data = self.objects[upload.id][:-1]
        return _Joined(joined.location, len(data), sha256(data), self.objects)


async def test_an_object_of_the_wrong_size_is_refused_and_not_kept(make_engine, store):
    sink = LosesTheLastByte()
    engine = make_engine(sink=sink)
    data = random_bytes(300)
    upload = await engine.create("alice", NewUpload("f.bin", len(data), 100))  # no SHA-256 declared
    for n in (1, 2, 3):
        await engine.put_chunk("alice", upload.id, n, body(data[(n - 1) * 100:n * 100]), 100)
    with pytest.raises(errors.IntegrityError) as raised:
        await engine.complete("alice", upload.id)
    assert raised.value.detail == "size 299 != total_size 300"
    assert upload.id not in sink.objects  # discarded
    assert await store.status(upload.id) is UploadStatus.REJECTED  # its chunks were consumed by the join


async def test_the_specs_a_node_keeps_are_bounded(make_engine, monkeypatch):
    monkeypatch.setattr(engine_module, "SPEC_CACHE_SIZE", 2)
    engine = make_engine()
    uploads = [await engine.create("alice", NewUpload("f.bin", 4, 4)) for _ in range(3)]
    assert list(engine._specs) == [u.id for u in uploads[1:]]  # the oldest let go
    receipt = await engine.put_chunk("alice", uploads[0].id, 1, body(b"abcd"), 4)  # read back from Redis
    assert receipt.created and list(engine._specs) == [uploads[2].id, uploads[0].id]
    with pytest.raises(errors.NotFound):  # still only its owner's
        await engine.put_chunk("bob", uploads[1].id, 1, body(b"abcd"), 4)


async def test_a_trailing_newline_is_no_part_of_an_id_or_a_digest(make_engine):
    """Both patterns ended in "$", which also matches before a final newline."""
    engine = make_engine()
    upload = await engine.create("alice", NewUpload("f.bin", 4, 4))
    assert is_upload_id(upload.id) and not is_upload_id(upload.id + "\n")
    with pytest.raises(errors.Invalid):
        await engine.create("alice", NewUpload("f.bin", 4, 4, sha256=sha256(b"abcd") + "\n"))


async def test_a_cleanup_step_that_meets_redis_gone_is_one_line_without_a_traceback(caplog):
    """A lease's release after a request when Redis has just failed over (seen in the several-nodes
    drill's node log): the request's own answer is one "state store error" line, and its cleanup step
    added a full traceback at error level for the same outage. Now one warning naming the error; an
    unexpected failure keeps its traceback."""
    import logging

    from redis.exceptions import ConnectionError as RedisConnectionError

    from vezastream.engine.services import quietly

    async def fails(exc: Exception) -> None:
        raise exc

    with caplog.at_level(logging.INFO, logger="vezastream"):
        await quietly(fails(RedisConnectionError("no reply from Redis: network:ConnectionError")))
        await quietly(fails(KeyError("a bug")))
    gone, bug = caplog.records
    assert (gone.levelname, gone.exc_info, gone.error) == (
        "WARNING", None, "ConnectionError: no reply from Redis: network:ConnectionError")
    assert bug.levelname == "ERROR" and bug.exc_info is not None
