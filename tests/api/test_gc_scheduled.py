"""The garbage collector as it runs in a server: on its own every ``gc.interval`` seconds, and on
one node at a time (docs/operations.md, "Garbage collection"). test_gc.py calls ``run_once()``
itself; here nobody does, or two nodes do at the same moment."""

from __future__ import annotations

import asyncio
import secrets
import time

import pytest
import redis.asyncio as aioredis

from vezastream.http.app import engine_key, gc_key
from vezastream.testing import EventRecorder, drain_notifications

from helpers import create, put_chunk


def staged(client, upload_id: str) -> bool:
    """Does anything of the upload wait in the staging area (its data file, its folder)?"""
    return client.server.app[engine_key].staging.holds(upload_id)


async def until(check, what: str, timeout: float) -> float:
    """Poll the async ``check`` until it is true; the seconds it took. AssertionError after ``timeout``."""
    started = time.monotonic()
    while not await check():
        assert time.monotonic() - started < timeout, f"{what}: not after {timeout} s"
        await asyncio.sleep(0.05)
    return time.monotonic() - started


async def keys_of(client, upload_id: str) -> list[str]:
    """The Redis keys the upload still has (its record, chunk records, leases...)."""
    store = client.server.app[engine_key].store
    return [k async for k in store.redis.scan_iter(match=f"{store.prefix}:*{upload_id}*")]


async def expired_upload(client) -> str:
    """An upload with a staged chunk, left alone until its record expired (``limits.upload_ttl``)."""
    upload_id = (await create(client, total_size=20, chunk_size=10))["upload_id"]
    await put_chunk(client, upload_id, 1, b"a" * 10)
    assert staged(client, upload_id)

    async def gone() -> bool:
        return (await client.get(f"/v1/uploads/{upload_id}")).status == 404
    await until(gone, "the upload's record expiring", 5)
    return upload_id


async def test_scheduled_passes_remove_an_expired_upload_without_anyone_asking(make_client, make_settings):
    """With ``gc.enabled`` the server runs passes itself: an abandoned upload's staged bytes go, the
    expiry is notified once, and nothing of it is left in Redis."""
    settings = make_settings(**{"gc.enabled": True, "gc.interval": 1, "gc.max_age": 1, "limits.upload_ttl": 1})
    events = EventRecorder()
    client = await make_client(settings, plugins=[("events", events)])
    upload_id = await expired_upload(client)

    async def swept() -> bool:
        return not staged(client, upload_id)
    await until(swept, "a scheduled pass removing the staged chunks", 6)
    await events.wait_for("expiry", upload_id, timeout=2)
    assert not any(p.name.startswith(upload_id) for p in settings.storage.chunks_dir.iterdir())
    assert await keys_of(client, upload_id) == []
    assert (await client.get(f"/v1/uploads/{upload_id}")).status == 404
    await asyncio.sleep(1.5)  # later passes find nothing more to do with it
    await drain_notifications(client)
    assert len(events.of("expiry", upload_id)) == 1


async def two_nodes(make_client, make_settings, **overrides):
    """Two apps sharing Redis (one key prefix) and the data folder: two nodes of one deployment."""
    shared = {"redis.key_prefix": "t" + secrets.token_hex(4), **overrides}
    recorders = (EventRecorder(), EventRecorder())
    clients = [await make_client(make_settings(**shared), plugins=[("events", r)]) for r in recorders]
    return clients, recorders


async def test_passes_started_on_two_nodes_at_once_run_one_at_a_time(make_client, make_settings):
    """The GC lease: of two passes started together, one runs and the other is skipped, so an
    expired upload is removed and its expiry notified (a webhook's ``upload.expired``) once."""
    (a, b), recorders = await two_nodes(make_client, make_settings, **{"gc.max_age": 1, "limits.upload_ttl": 1})
    upload_id = await expired_upload(a)
    await asyncio.sleep(1.1)  # its staged folder is older than gc.max_age
    reports = await asyncio.gather(a.server.app[gc_key].run_once(), b.server.app[gc_key].run_once())
    for client in (a, b):
        await drain_notifications(client)
    assert sum(len(r.of("expiry", upload_id)) for r in recorders) == 1, reports
    assert sorted(r.skipped for r in reports) == [False, True], reports
    ran = next(r for r in reports if not r.skipped)
    assert ran.removed == [upload_id]
    assert not staged(a, upload_id) and not staged(b, upload_id)
    # Once the pass is over, the lease is free: the other node's next pass runs.
    again = await b.server.app[gc_key].run_once()
    assert not again.skipped and again.removed == []


@pytest.mark.parametrize("interval, lease_ms", [(1, 60_000), (90, 90_000)])
async def test_a_pass_holds_the_lease_for_max_60_s_or_the_interval(make_client, make_settings, redis_url,
                                                                   interval, lease_ms):
    """docs/operations.md: a pass runs "under a lease (``max(60, gc.interval)`` seconds)", so a pass
    longer than a short interval is not joined by another node's. What the pass asks Redis for,
    seen by MONITOR."""
    settings = make_settings(**{"gc.interval": interval})
    client = await make_client(settings)
    lease_key = client.server.app[engine_key].store.gc_lease_key
    watcher = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        async with watcher.monitor() as monitor:
            report = await client.server.app[gc_key].run_once()
            assert not report.skipped
            seen: list[str] = []
            deadline = time.monotonic() + 5
            while not any(lease_key in c for c in seen):
                left = deadline - time.monotonic()
                assert left > 0, f"no command on {lease_key} seen"
                seen.append((await asyncio.wait_for(monitor.next_command(), left))["command"])
    finally:
        await watcher.aclose()
    taken = next(c for c in seen if lease_key in c).split()
    assert taken[:2] == ["SET", lease_key] and "NX" in taken, taken
    assert int(taken[taken.index("PX") + 1]) == lease_ms, taken
