"""The in-place layout's catch-up (engine/layouts/inplace.py) keeps out-of-order chunks of a bounded
number of uploads: past CATCH_UP_UPLOADS, the oldest upload's are let go (their held bytes with
them), and that upload still completes with the right SHA-256, hashed from its file instead."""

from __future__ import annotations

from vezastream.engine.layouts import inplace
from vezastream.engine.plan import NewUpload

from engine_parts import body, make_engine, staging, store  # noqa: F401  (fixtures)
from helpers import random_bytes, sha256


async def test_the_uploads_waiting_for_the_digest_are_bounded(make_engine, monkeypatch):
    monkeypatch.setattr(inplace, "CATCH_UP_UPLOADS", 1)
    engine = make_engine()
    datas, ids = [random_bytes(200), random_bytes(200)], []
    for data in datas:
        upload = await engine.create("alice", NewUpload("f.bin", len(data), 100, sha256=sha256(data)))
        await engine.put_chunk("alice", upload.id, 2, body(data[100:]), 100)  # out of order: it waits
        ids.append(upload.id)
    assert engine.catch_up.waiting == {ids[1]}  # the older upload's chunk was let go
    assert {uid for uid, _ in engine.catch_up.held} <= {ids[1]}
    for uid, data in zip(ids, datas):
        await engine.put_chunk("alice", uid, 1, body(data[:100]), 100)
        done, result = await engine.complete("alice", uid)
        assert result.sha256 == sha256(data)
        assert (await engine.content("alice", uid)).path.read_bytes() == data
    assert engine.catch_up.waiting == set() and engine.catch_up.held_bytes == 0
