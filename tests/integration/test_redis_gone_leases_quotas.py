"""Leases and quotas when Redis goes away, with a redis-server of the test's own, killed by its PID.

A lease whose renewal Redis no longer answers is reported lost at once: the body it guards (a
tus PATCH, a direct-mode chunk) stops, so that it never claims bytes another request may own
by then. What is left to give back once Redis answers again does not hold up a shutdown. And a
quota reservation that cannot be given back (after a completion or a delete that did happen)
is only logged: it expires with the upload's TTL, and the request's answer stays what it was.
"""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from vezastream.engine.leases import GiveBack, Leases
from vezastream.engine.quotas import Quotas
from vezastream.models import UploadSpec, new_upload_id
from vezastream.state import topology
from vezastream.state.store import StateStore

from redis_topologies import _start


@pytest.fixture
async def own_redis(tmp_path, make_settings):
    """(the redis-server process, a StateStore on it, the settings that name it)."""
    redis = _start(tmp_path / "redis")
    try:
        settings = make_settings(**{"redis.url": f"redis://{redis.address}"})
        async with topology.connect(settings.redis, settings.redis.url) as client:
            store = StateStore(client, settings.redis.key_prefix)
            yield redis, store, settings
            await store.aclose()
    finally:
        redis.stop()


async def test_a_lease_that_cannot_be_renewed_is_reported_lost(own_redis, caplog):
    redis, store, _ = own_redis
    leases = Leases(store, body_idle_timeout=30)
    key, token, lost = store.append_lease_key("A" * 22), leases.new_token(), asyncio.Event()
    assert await leases.take(key, token, 0.6)
    keeper = asyncio.create_task(leases.keep(key, token, 0.6, lost))
    await asyncio.sleep(0.5)  # renewed at least once while Redis runs
    assert not lost.is_set() and not keeper.done()
    redis.kill()
    started = time.monotonic()
    await asyncio.wait_for(lost.wait(), 5)
    assert time.monotonic() - started < 2
    await asyncio.wait_for(keeper, 1)  # the keeper stopped
    assert ("vezastream.engine", logging.WARNING, "lease lost") in [
        (r.name, r.levelno, r.getMessage()) for r in caplog.records]


async def test_what_waits_to_be_given_back_does_not_hold_up_a_shutdown(own_redis):
    redis, store, _ = own_redis
    key = store.append_lease_key("A" * 22)
    assert await store.acquire_lease(key, "a1b2c3d4e5f6a7b8.1", 10)
    redis.kill()
    give_back = GiveBack()
    give_back.later(f"append lease {key}", lambda: store.release_lease(key, "a1b2c3d4e5f6a7b8.1"), 10)
    await asyncio.sleep(0.3)  # it has tried, and waits to try again
    assert len(give_back) == 1
    started = time.monotonic()
    await asyncio.wait_for(give_back.close(), 5)
    assert time.monotonic() - started < 1 and len(give_back) == 0


async def test_a_quota_that_cannot_be_given_back_is_only_logged(own_redis, caplog):
    redis, store, settings = own_redis
    quotas = Quotas(store, settings.limits)
    spec = UploadSpec(new_upload_id(), "alice", "f.bin", 4, 4, 1, time.time())
    assert await quotas.reserve(spec)
    redis.kill()
    await asyncio.wait_for(quotas.forget(spec), 5)  # does not raise
    assert "quota not released" in caplog.messages
