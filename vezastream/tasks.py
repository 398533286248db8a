"""Stopping background tasks for good, at shutdown and wherever a task is cancelled and awaited.

On Python 3.11, ``asyncio.wait_for`` drops a cancellation that arrives as the call it waits on
completes (CPython issue gh-86296, fixed in 3.12 by building ``wait_for`` on ``asyncio.timeout``).
redis-py sends every command through it whenever a socket timeout is set, and vezastream always
sets one (``redis.reply_timeout``). A loop cancelled while it talks to Redis then goes on as if
nothing had been asked (a loop of PINGs cancelled at random moments ran on after 126 of 200
cancels), and a shutdown that awaits it waits for ever. :func:`stop` cancels again until the task
has ended.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

log = logging.getLogger("vezastream")

#: Seconds a cancelled task is given to end before it is cancelled again: long enough for what it
#: does as it ends (a GC pass gives its lease back), which another cancel would cut short.
AGAIN_AFTER = 0.5
#: Cancels at most: a task that outlives them all (about 10 s) is left running, and a warning names it.
TRIES = 20


async def stop(*tasks: asyncio.Future[Any]) -> None:
    """Cancel ``tasks`` and wait until each has ended, cancelling again those that go on. What a task
    raised is taken and dropped, as ``asyncio.gather(..., return_exceptions=True)`` does."""
    pending = {task for task in tasks if not task.done()}
    for _ in range(TRIES):
        if not pending:
            break
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=AGAIN_AFTER)
    if pending:
        log.warning("background tasks still running after being cancelled",
                    extra={"event": "tasks_not_stopped", "tasks": sorted(task.get_name() for task in pending
                                                                         if isinstance(task, asyncio.Task))})
    for task in tasks:
        if task.done() and not task.cancelled():
            task.exception()  # taken: no "exception was never retrieved" at exit
