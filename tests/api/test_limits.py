"""Per-user limits (issue 15, finding 9): pending uploads, bytes pending, creates a minute, tus segments.

Past a limit a request answers 429 problem+json with Retry-After, and nothing is
created or changed: no record in Redis, no folder on disk, no offset moved.
"""

from __future__ import annotations

import asyncio
import time

import pytest
import redis.asyncio as aioredis

from vezastream.config import ConfigError, load_settings
from vezastream.engine import quotas
from vezastream.engine.quotas import QUOTA_GRACE
from vezastream.http.app import engine_key, gc_key
from vezastream.models import Layout, UploadSpec, UploadStatus, new_upload_id

from helpers import create, random_bytes, upload
from tus_helpers import TUS, tus_create, tus_patch, upload_path


async def records(settings) -> int:
    """Upload records in Redis under this test's prefix."""
    r = aioredis.from_url(settings.redis.url)
    try:
        return len([k async for k in r.scan_iter(f"{settings.redis.key_prefix}:up:*") if k.count(b":") == 2])
    finally:
        await r.aclose()


def folders(settings) -> int:
    root = settings.storage.chunks_dir
    return len(list(root.iterdir())) if root.exists() else 0


async def assert_limited(resp, limit: str) -> None:
    assert resp.status == 429, await resp.text()
    assert resp.headers["Content-Type"].startswith("application/problem+json")
    body = await resp.json(content_type=None)
    assert body["status"] == 429 and body["limit"] == limit
    assert body["type"].endswith("/limit-exceeded")
    assert 1 <= int(resp.headers["Retry-After"]) <= 60


async def not_near_a_minute_boundary() -> None:
    """The creates-per-minute window is the wall clock's minute: keep the test inside one."""
    left = 60 - time.time() % 60
    if left < 5:
        await asyncio.sleep(left + 0.1)


async def test_creates_per_minute_answers_429_and_creates_nothing(make_settings, make_client):
    settings = make_settings(**{"limits.max_creates_per_minute": 4})
    client = await make_client(settings)
    await not_near_a_minute_boundary()
    for _ in range(2):
        await create(client, total_size=10)
        await tus_create(client, length=10)
    before = (await records(settings), folders(settings))
    await assert_limited(await client.post("/v1/uploads", json={"filename": "a", "total_size": 10}),
                         "max_creates_per_minute")
    await assert_limited(await client.post("/files/", headers={**TUS, "Upload-Length": "10"}),
                         "max_creates_per_minute")
    assert (await records(settings), folders(settings)) == before == (4, 4)


async def test_pending_uploads_limit_is_freed_by_delete_and_complete(make_settings, make_client):
    client = await make_client(make_settings(**{"limits.max_pending_uploads": 2}))
    first = await create(client, total_size=10)
    data = random_bytes(10)
    second = await tus_create(client, length=len(data))
    resp = await client.post("/v1/uploads", json={"filename": "a", "total_size": 10})
    await assert_limited(resp, "max_pending_uploads")
    await tus_create(client, length=10, expect=429)

    resp = await client.delete(f"/v1/uploads/{first['upload_id']}")
    assert resp.status in (200, 204)
    third = await create(client, total_size=10)  # the delete freed a place
    await create(client, total_size=10, expect=429)

    await tus_patch(client, upload_path(second), 0, data)  # completes the tus upload
    await create(client, total_size=10)  # the completion freed a place
    await create(client, total_size=10, expect=429)
    assert third["upload_id"]


async def test_a_completed_native_upload_frees_its_place(make_settings, make_client):
    client = await make_client(make_settings(**{"limits.max_pending_uploads": 1}))
    await upload(client, random_bytes(100), chunk_size=50)
    await upload(client, random_bytes(100), chunk_size=50)


async def test_bytes_pending_limit(make_settings, make_client):
    settings = make_settings(**{"limits.max_upload_size": 1000, "limits.max_pending_bytes": 1500})
    client = await make_client(settings)
    big = await create(client, total_size=1000)
    before = (await records(settings), folders(settings))
    await assert_limited(await client.post("/v1/uploads", json={"filename": "a", "total_size": 501}),
                         "max_pending_bytes")
    await tus_create(client, length=501, expect=429)
    assert (await records(settings), folders(settings)) == before
    await create(client, total_size=500)  # exactly at the limit
    await client.delete(f"/v1/uploads/{big['upload_id']}")
    await create(client, total_size=1000)


async def test_tus_segments_limit_keeps_the_offset(make_settings, make_client):
    client = await make_client(make_settings(**{"limits.max_segments": 3}))
    data = random_bytes(10)
    path = upload_path(await tus_create(client, length=len(data)))
    for offset in range(3):
        await tus_patch(client, path, offset, data[offset:offset + 1])
    resp = await tus_patch(client, path, 3, data[3:4], expect=None)
    await assert_limited(resp, "max_segments")
    head = await client.head(path, headers=TUS)
    assert head.headers["Upload-Offset"] == "3"
    await tus_patch(client, path, 3, data[3:])  # the PATCH that ends the upload is let in
    resp = await client.get(path, headers=TUS)
    assert resp.status == 200 and await resp.read() == data


async def test_tus_patches_are_not_counted_against_max_chunks(make_settings, make_client):
    """docs/tus.md: the number of PATCHes is limited by max_segments, never by max_chunks."""
    client = await make_client(make_settings(**{"limits.max_chunks": 2}))
    data = random_bytes(5)
    path = upload_path(await tus_create(client, length=len(data)))
    for offset in range(len(data)):
        await tus_patch(client, path, offset, data[offset:offset + 1])
    resp = await client.get(path, headers=TUS)
    assert resp.status == 200 and await resp.read() == data


async def test_two_nodes_enforce_one_limit(make_settings, make_client):
    settings = make_settings(**{"limits.max_pending_uploads": 3})  # one Redis prefix and disk for both
    a, b = await make_client(settings), await make_client(settings)
    await create(a, total_size=10)
    await tus_create(b, length=10)
    await create(b, total_size=10)
    await create(a, total_size=10, expect=429)
    await tus_create(b, length=10, expect=429)
    assert await records(settings) == 3


async def test_an_expired_upload_stops_counting(make_settings, make_client):
    client = await make_client(make_settings(**{"limits.max_pending_uploads": 1, "limits.upload_ttl": 1}))
    await create(client, total_size=10)
    await create(client, total_size=10, expect=429)
    await asyncio.sleep(1.2)  # the first upload's record expires: nothing has to delete it
    await create(client, total_size=10)


async def test_a_gc_pass_gives_back_the_places_of_uploads_a_killed_process_forgot(make_settings, make_client):
    """A DELETE (or a completion) killed between forgetting the upload and giving back its place left
    the reservation: the next GC pass gives it back, instead of the user waiting ``upload_ttl``."""
    settings = make_settings(**{"limits.max_pending_uploads": 2, "limits.max_upload_size": 25,
                                 "limits.max_pending_bytes": 25})
    client = await make_client(settings)
    gone = [(await create(client, total_size=10))["upload_id"] for _ in range(2)]
    r = aioredis.from_url(settings.redis.url)
    try:
        for uid in gone:  # what such a process leaves: the upload's keys gone, its place still held
            await r.delete(*[k async for k in r.scan_iter(f"{settings.redis.key_prefix}:up:{{{uid}}}*")])
    finally:
        await r.aclose()
    await assert_limited(await client.post("/v1/uploads", json={"filename": "f", "total_size": 10}),
                         "max_pending_uploads")
    gc = client.server.app[gc_key]
    young = await gc.run_once()  # a reservation this new may be a create still under way: kept
    assert young.quota_released == []
    gc.clock = lambda: time.time() + QUOTA_GRACE + 1
    assert sorted((await gc.run_once()).quota_released) == sorted(f"anonymous/{uid}" for uid in gone)
    await create(client, total_size=10)
    await create(client, total_size=10)  # the bytes given back too: 20 of 25


async def test_a_gc_pass_reads_many_users_places_together(make_settings, make_client, monkeypatch):
    """The pass reads users' places ``RECONCILE_BATCH`` users at a time: in each batch, the places of
    uploads gone or completed are given back, and those of pending uploads and of reservations younger
    than ``QUOTA_GRACE`` are kept, each user's apart from the others'. A dry run lists the same."""
    monkeypatch.setattr(quotas, "RECONCILE_BATCH", 3)  # 8 users: batches of 3, 3 and 2
    settings = make_settings(**{"limits.max_pending_uploads": 4})
    client = await make_client(settings)
    engine, gc = client.server.app[engine_key], client.server.app[gc_key]
    now, ttl = time.time(), settings.limits.upload_ttl

    def spec(owner: str, created_at: float) -> UploadSpec:
        return UploadSpec(id=new_upload_id(), owner=owner, filename="f", total_size=10, chunk_size=10,
                          total_chunks=1, created_at=created_at, layout=Layout.IN_PLACE)

    given: list[str] = []
    for n in range(8):
        owner = f"user{n}"
        pending, done, gone = (spec(owner, now - QUOTA_GRACE - 5) for _ in range(3))
        young = spec(owner, now)
        places = [pending, done, gone, young][:4 - n % 2]  # every other user has no young place
        for held in places:
            assert await engine.quotas.reserve(held)
        for kept in (pending, done):  # the young one: a create still under way, its record not yet made
            await engine.store.create(kept, ttl)
        await engine.store.redis.hset(engine.store.key(done.id), "status", UploadStatus.COMPLETED)
        given += [f"{owner}/{done.id}", f"{owner}/{gone.id}"]
    assert sorted((await gc.run_once(dry_run=True)).quota_released) == sorted(given)
    assert sorted((await gc.run_once()).quota_released) == sorted(given)
    assert (await gc.run_once()).quota_released == []
    for n in range(8):  # what is left: the pending upload's place, and the young one's
        assert await engine.store.redis.zcard(engine.quotas._key(f"user{n}", "pending")) == 2 - n % 2


@pytest.mark.parametrize("overrides, key", [
    ({"limits.max_pending_uploads": -1}, "limits.max_pending_uploads"),
    ({"limits.max_creates_per_minute": -5}, "limits.max_creates_per_minute"),
    ({"limits.max_segments": -1}, "limits.max_segments"),
    ({"limits.max_upload_size": "2GiB", "limits.max_pending_bytes": "1GiB"}, "limits.max_pending_bytes"),
])
def test_limits_are_validated(overrides, key):
    with pytest.raises(ConfigError, match=key):
        load_settings(None, environ={}, overrides=overrides)


async def test_zero_turns_a_limit_off(make_settings, make_client):
    """reliability.md: 0 is no limit (not a limit of 0 or 1): five pending uploads, five creates a
    minute, five segments of one tus upload, all taken."""
    client = await make_client(make_settings(**{
        "limits.max_pending_uploads": 0, "limits.max_pending_bytes": 0,
        "limits.max_creates_per_minute": 0, "limits.max_segments": 0}))
    await not_near_a_minute_boundary()
    for _ in range(4):
        await create(client, total_size=10)
    path = upload_path(await tus_create(client, length=5))
    for offset in range(5):
        await tus_patch(client, path, offset, b"x")


async def test_limits_are_per_user(make_settings, make_client, monkeypatch):
    """reliability.md: a limit bounds one token's user; another user is not held by it."""
    monkeypatch.setenv("LIMIT_TEST_TOKENS", "tok-alice=alice,tok-bob=bob")
    client = await make_client(make_settings(**{"auth.mode": "token", "auth.tokens_env": "LIMIT_TEST_TOKENS",
                                                "limits.max_pending_uploads": 1}))
    alice, bob = {"Authorization": "Bearer tok-alice"}, {"Authorization": "Bearer tok-bob"}
    body = {"filename": "a", "total_size": 10}
    assert (await client.post("/v1/uploads", json=body, headers=alice)).status == 201
    await assert_limited(await client.post("/v1/uploads", json=body, headers=alice), "max_pending_uploads")
    assert (await client.post("/v1/uploads", json=body, headers=bob)).status == 201
    await assert_limited(await client.post("/v1/uploads", json=body, headers=bob), "max_pending_uploads")
