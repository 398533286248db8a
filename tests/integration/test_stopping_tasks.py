"""Background tasks that talk to Redis stop when they are told to, at shutdown and at a refused start.

On Python 3.11 a cancel that lands while redis-py sends a command can be lost (``asyncio.wait_for``,
vezastream/tasks.py). A heartbeat or GC loop that lost its cancel ran on, and the shutdown that
awaited it never ended: the process had to be killed.
"""

from __future__ import annotations

import asyncio
import random

from vezastream.state import topology
from vezastream.tasks import stop
from vezastream.testing import running_app

#: Stops of the app (before the fix, the first one found the start-up recovery's lost cancel).
ROUNDS = 6


async def test_a_loop_of_redis_commands_ends_at_each_stop(settings):
    async with topology.connect(settings.redis, settings.redis.url) as client:
        async def talks() -> None:  # a background loop's shape: a command, a pause (short here)
            while True:
                await client.ping()
                await asyncio.sleep(0.001)

        for _ in range(12):  # this loop lost 21 of 100 plain cancels: 12 stops meet one 94 times in 100
            task = asyncio.create_task(talks())
            await asyncio.sleep(random.random() * 0.005)
            began = asyncio.get_running_loop().time()
            await asyncio.wait_for(stop(task), 10)  # (whose own cancel, at 10 s, would reach the task)
            assert task.cancelled() and asyncio.get_running_loop().time() - began < 3


async def test_an_app_stopped_as_it_starts_ends_at_once(make_settings):
    """A stop right after the start finds the start-up recovery reading Redis (its SCAN): a lost cancel
    left it to sleep 6 s before its second try, and the shutdown waited for it."""
    settings = make_settings()
    for _ in range(ROUNDS):
        began = asyncio.get_running_loop().time()
        async with running_app(settings):
            pass
        assert asyncio.get_running_loop().time() - began < 3
