"""The state store (vezastream/state/store.py) on its own, against the real Redis: its Lua scripts' outcomes."""

from __future__ import annotations

import asyncio
import json

from vezastream.models import ChunkRecord, UploadResult, UploadSpec, UploadStatus, new_upload_id
from vezastream.state.store import Outcome

from engine_parts import store  # noqa: F401  (fixture)

SHA_A, SHA_B = "a" * 64, "b" * 64
TTL = 3600


def new_spec(total_chunks: int = 3, chunk_size: int = 10) -> UploadSpec:
    return UploadSpec(id=new_upload_id(), owner="alice", filename="f.bin", total_size=total_chunks * chunk_size,
                      chunk_size=chunk_size, total_chunks=total_chunks, created_at=0.0)


async def test_create_then_load(store):
    spec = new_spec()
    created = await store.create(spec, TTL)
    assert created.status is UploadStatus.PENDING and created.received_count == 0
    upload, chunks = await store.load(spec.id, with_chunks=True)
    assert upload is not None and upload.spec == spec and chunks == []
    assert await store.spec(spec.id) == spec
    assert await store.load(new_upload_id()) == (None, [])


async def test_register_outcomes(store):
    spec = new_spec()
    await store.create(spec, TTL)
    first = await store.register_chunk(spec.id, ChunkRecord(2, 10, SHA_A), TTL)
    assert (first.outcome, first.received_count, first.bytes_received) == (Outcome.STORED, 1, 10)
    again = await store.register_chunk(spec.id, ChunkRecord(2, 10, SHA_A), TTL)
    assert (again.outcome, again.received_count) == (Outcome.SAME, 1)  # a retry counts once
    other = await store.register_chunk(spec.id, ChunkRecord(2, 10, SHA_B), TTL)
    assert other.outcome is Outcome.CONFLICT and other.existing == ChunkRecord(2, 10, SHA_A)
    assert await store.chunks(spec.id) == {2: ChunkRecord(2, 10, SHA_A)}  # the conflict changed nothing
    missing = await store.register_chunk(new_upload_id(), ChunkRecord(1, 10, SHA_A), TTL)
    assert missing.outcome is Outcome.MISSING


async def test_register_at_an_offset_only_there(store):
    spec = new_spec()
    await store.create(spec, TTL)
    assert (await store.register_chunk(spec.id, ChunkRecord(1, 10, SHA_A), TTL, expected_offset=0)).outcome \
        is Outcome.STORED
    late = await store.register_chunk(spec.id, ChunkRecord(2, 5, SHA_B), TTL, expected_offset=0)
    assert (late.outcome, late.bytes_received) == (Outcome.OFFSET, 10)
    assert (await store.register_chunk(spec.id, ChunkRecord(2, 5, SHA_B), TTL, expected_offset=10)).bytes_received == 15


async def test_claims(store):
    spec = new_spec()
    await store.create(spec, TTL)
    assert await store.claim_chunk(spec.id, 1, "node.1", TTL) == ("claimed", None)
    assert await store.claim_chunk(spec.id, 1, "node.2", TTL) == ("busy", None)  # never two writers of a range
    assert not await store.release_claim(spec.id, 1, "node.2")  # only its holder gives a claim back
    assert await store.release_claim(spec.id, 1, "node.1")
    assert await store.claim_chunk(spec.id, 1, "node.2", TTL) == ("claimed", None)
    await store.register_chunk(spec.id, ChunkRecord(3, 10, SHA_A), TTL, mark="staged")
    assert await store.claim_chunk(spec.id, 3, "node.3", TTL) == ("registered", None)
    assert await store.claims(spec.id) == {1: "node.2", 3: "staged"}
    assert await store.claim_chunk(new_upload_id(), 1, "node.1", TTL) == ("missing", None)


async def test_leases(store):
    key = store.lease_key(new_upload_id())
    assert await store.acquire_lease(key, "a.1", 5)
    assert not await store.acquire_lease(key, "b.1", 5)
    assert await store.holder(key) == "a.1"
    assert not await store.renew_lease(key, "b.1", 5) and await store.renew_lease(key, "a.1", 5)
    assert not await store.take_lease(key, "b.1", 5, dead="c.1")  # not held by that dead token
    assert await store.take_lease(key, "b.1", 5, dead="a.1")  # held by the dead one: taken over
    assert await store.holder(key) == "b.1"
    assert not await store.release_lease(key, "a.1") and await store.release_lease(key, "b.1")
    assert await store.holder(key) is None


async def test_a_lease_expires(store):
    key = store.lease_key(new_upload_id())
    assert await store.acquire_lease(key, "a.1", 0.2)
    await asyncio.sleep(0.4)
    assert await store.holder(key) is None and await store.acquire_lease(key, "b.1", 5)


async def test_heartbeats(store):
    await store.beat("n1", 5)
    assert await store.alive("n1") and not await store.alive("n2")
    await store.leave("n1")
    assert not await store.alive("n1")


async def test_completion_outcomes(store):
    spec = new_spec(total_chunks=1)
    await store.create(spec, TTL)
    assert await store.begin_complete(spec.id, "a.1", 30) == ("ok", None)
    assert await store.begin_complete(spec.id, "b.1", 30) == ("busy", "a.1")
    assert await store.delete(spec.id) == ("busy", None, None)  # never under a running completion
    assert await store.abort_complete(spec.id, "a.1")
    assert (await store.status(spec.id)) is UploadStatus.PENDING
    assert await store.begin_complete(spec.id, "b.1", 30) == ("ok", None)
    result = UploadResult(10, SHA_A, "local", "x/f.bin", 1.0)
    assert not await store.finish_complete(spec.id, "a.1", result, TTL)  # not the lease's holder
    assert await store.finish_complete(spec.id, "b.1", result, TTL)
    assert await store.begin_complete(spec.id, "c.1", 30) == ("completed", result)
    outcome, status, kept = await store.delete(spec.id)
    assert (outcome, status, kept) == ("deleted", UploadStatus.COMPLETED, result)
    assert await store.begin_complete(spec.id, "c.1", 30) == ("missing", None)


async def test_a_dead_completion_is_taken_over(store):
    spec = new_spec(total_chunks=1)
    await store.create(spec, TTL)
    assert (await store.begin_complete(spec.id, "dead.1", 30))[0] == "ok"
    assert await store.begin_complete(spec.id, "b.1", 30, dead="dead.1") == ("ok", None)
    assert await store.holder(store.lease_key(spec.id)) == "b.1"


async def test_reject_drops_the_chunk_records(store):
    spec = new_spec(total_chunks=1)
    await store.create(spec, TTL)
    await store.register_chunk(spec.id, ChunkRecord(1, 10, SHA_A), TTL)
    await store.begin_complete(spec.id, "a.1", 30)
    assert await store.reject(spec.id, "a.1", "refused")
    upload, chunks = await store.load(spec.id, with_chunks=True)
    assert upload is not None and upload.status is UploadStatus.REJECTED and upload.reason == "refused"
    assert chunks == [] and upload.received_count == 0
    assert await store.begin_complete(spec.id, "b.1", 30) == ("rejected", None)
    assert (await store.register_chunk(spec.id, ChunkRecord(1, 10, SHA_A), TTL)).status is UploadStatus.REJECTED


async def test_deferred_length_is_declared_once(store):
    spec = new_spec()
    await store.create(spec, TTL)
    await store.register_chunk(spec.id, ChunkRecord(1, 10, SHA_A), TTL, expected_offset=0)
    assert await store.declare_length(spec.id, 5) == ("short", 10)
    assert await store.declare_length(spec.id, 20) == ("ok", None)
    assert await store.declare_length(spec.id, 30) == ("already", 20)
    assert await store.declare_length(new_upload_id(), 30) == ("missing", None)


async def test_an_upload_expires_with_its_chunks(store):
    spec = new_spec()
    await store.create(spec, 1)
    await store.register_chunk(spec.id, ChunkRecord(1, 10, SHA_A), 1)
    await asyncio.sleep(1.3)
    assert await store.load(spec.id) == (None, [])
    assert await store.chunks(spec.id) == {}


async def test_a_retried_chunk_is_activity(store):
    """A retry of a stored chunk keeps the upload alive for another upload_ttl, as a new chunk does
    (and so writes, which the WAIT after it needs on Redis 7 to cover the writes before it)."""
    spec = new_spec()
    await store.create(spec, 2)
    await store.register_chunk(spec.id, ChunkRecord(1, 10, SHA_A), 2)
    await asyncio.sleep(1.2)
    again = await store.register_chunk(spec.id, ChunkRecord(1, 10, SHA_A), 2)
    assert again.outcome is Outcome.SAME
    await asyncio.sleep(1.2)  # 2.4 s after the chunk was stored: alive only because the retry renewed it
    upload, chunks = await store.load(spec.id, with_chunks=True)
    assert upload is not None and chunks == [1]


async def test_a_stored_spec_is_parsed_once_and_a_rewritten_one_again(store, monkeypatch):
    from vezastream.state import store as store_module

    parsed: list[str] = []
    real = UploadSpec.from_json.__func__
    monkeypatch.setattr(UploadSpec, "from_json", classmethod(lambda cls, data: (parsed.append(data["id"]),
                                                                                  real(cls, data))[1]))
    spec = new_spec()
    await store.create(spec, TTL)
    await store.register_chunk(spec.id, ChunkRecord(1, 10, SHA_A), TTL)
    for _ in range(3):  # what a PATCH, a HEAD and a completion read: no JSON parsed again
        assert (await store.load(spec.id))[0].spec == spec
        assert (await store.load_records(spec.id))[0].spec == spec
        assert await store.spec(spec.id) == spec
    assert parsed == []
    # Another node wrote it: parsed once here. The same id written again with another spec: parsed anew.
    other = store_module.StateStore(store.redis, store.prefix)
    assert await other.spec(spec.id) == spec and await other.spec(spec.id) == spec and parsed == [spec.id]
    await store.delete(spec.id)
    renamed = UploadSpec(**{**spec.to_json(), "filename": "g.bin"})
    await other.create(renamed, TTL)
    assert (await store.load(spec.id))[0].spec.filename == "g.bin" and parsed == [spec.id, spec.id]
    await other.aclose()
    for n in range(store_module.SPECS_PARSED + 5):  # bounded
        store._keep_parsed(f"{n}", spec)
    assert len(store._parsed) == store_module.SPECS_PARSED


async def test_a_spec_written_by_a_newer_version_reads_back(store):
    """Fields this version does not know (a newer node wrote them) are left out, the rest read back."""
    spec = new_spec()
    await store.create(spec, TTL)
    raw = json.loads(await store.redis.hget(store.key(spec.id), "spec"))
    await store.redis.hset(store.key(spec.id), "spec", json.dumps({**raw, "from_the_future": 1}))
    upload, _ = await store.load(spec.id)
    assert upload is not None and upload.spec == spec and await store.spec(spec.id) == spec
