"""A lease whose renewal Redis no longer answers is reported lost at once (engine/leases.py).

The body a lease guards (a tus PATCH, a direct-mode chunk) stops as soon as its lease is
lost, so that it never claims bytes another request may own by then. A Redis that went
away is such a loss: the keeper must say so, not retry until the lease has expired.
"""

from __future__ import annotations

import asyncio
import logging
import time

from vezastream.engine.leases import Leases
from vezastream.state import topology
from vezastream.state.store import StateStore

from redis_topologies import _start


async def test_a_lease_that_cannot_be_renewed_is_reported_lost(tmp_path, make_settings, caplog):
    redis = _start(tmp_path / "redis")
    try:
        settings = make_settings(**{"redis.url": f"redis://{redis.address}"})
        async with topology.connect(settings.redis, settings.redis.url) as client:
            store = StateStore(client, settings.redis.key_prefix)
            leases = Leases(store, body_idle_timeout=30)
            key, token, lost = store.append_lease_key("A" * 22), leases.new_token(), asyncio.Event()
            assert await leases.take(key, token, 0.6)
            keeper = asyncio.create_task(leases.keep(key, token, 0.6, lost))
            await asyncio.sleep(0.5)  # renewed at least once while Redis runs
            assert not lost.is_set() and not keeper.done()
            redis.kill()  # by its PID
            started = time.monotonic()
            await asyncio.wait_for(lost.wait(), 5)
            assert time.monotonic() - started < 2
            await asyncio.wait_for(keeper, 1)  # the keeper stopped
            assert ("vezastream.engine", logging.WARNING, "lease lost") in [
                (r.name, r.levelno, r.getMessage()) for r in caplog.records]
            await store.aclose()
    finally:
        redis.stop()
