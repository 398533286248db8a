"""Redis commands sent together: what many requests ask in one event-loop turn is one write.

With hundreds of uploads in flight, each chunk's claim and register are Redis
round trips of their own; redis-py spends some 60-70 µs of Python on each
(taking a connection from the pool, retry and timeout wrappers, packing,
parsing, giving the connection back), and that is most of what the event loop
does for a small chunk besides HTTP. :class:`CommandBatcher` queues the
commands issued while the loop runs its callbacks, and once they have run,
sends them as one pipeline on one pooled connection and hands each caller its
own reply (about 20 µs a command). Redis runs them one after the other, as it
would have run them from separate connections; each command (a Lua script, for
every change of state) stays atomic on its own. Nothing waits for a batch to
fill: a command goes out in the loop turn after it was issued.

This is client-side pipelining, which redis-py leaves to its users (its
``pipeline()`` batches the commands of one caller, not of many); it uses
redis-py's own connections, packing and parsing.
"""

from __future__ import annotations

import asyncio
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

#: Commands in one pipeline at most; more go out in the next one, on another connection.
MAX_BATCH = 256
#: Pipelines in flight at once; commands issued meanwhile wait for one to finish, and go
#: out together then.
MAX_IN_FLIGHT = 4

Queued = tuple[tuple[Any, ...], asyncio.Future]


class CommandBatcher:
    """Sends the commands given to :meth:`execute` in one loop turn as one pipeline."""

    def __init__(self, redis: Redis, max_in_flight: int = MAX_IN_FLIGHT, max_batch: int = MAX_BATCH) -> None:
        self.pool = redis.connection_pool
        self.max_in_flight = max_in_flight
        self.max_batch = max_batch
        self._queue: list[Queued] = []
        self._scheduled = False
        self._flights: set[asyncio.Task[None]] = set()

    def execute(self, *args: Any) -> asyncio.Future:
        """Queue one command (``"EVALSHA", sha, 2, key1, key2, arg``...); await its reply.

        An error reply raises its ``ResponseError`` (``NoScriptError`` for an unknown
        script); a lost connection raises ``ConnectionError`` in every command of its
        pipeline that had no reply yet (it may or may not have run).
        """
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.append((args, future))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._dispatch)
        return future

    def _dispatch(self) -> None:
        self._scheduled = False
        while self._queue and len(self._flights) < self.max_in_flight:
            batch, self._queue = self._queue[:self.max_batch], self._queue[self.max_batch:]
            batch = [(args, future) for args, future in batch if not future.done()]  # callers gone
            if batch:
                task = asyncio.get_running_loop().create_task(self._send(batch))
                self._flights.add(task)
                task.add_done_callback(self._landed)

    def _landed(self, task: asyncio.Task[None]) -> None:
        self._flights.discard(task)
        if self._queue and not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._dispatch)

    async def _send(self, batch: list[Queued]) -> None:
        replied = 0
        try:
            conn = await self.pool.get_connection()
            try:
                await conn.send_packed_command(conn.pack_commands([args for args, _ in batch]), check_health=False)
                for _, future in batch:
                    try:
                        reply: Any = await conn.read_response()
                    except ResponseError as exc:  # an error reply: read whole, the stream goes on
                        # Without its traceback, which holds this frame, whose ``reply`` holds it.
                        reply = exc.with_traceback(None)
                    replied += 1
                    if future.done():  # its caller was cancelled meanwhile
                        continue
                    if isinstance(reply, ResponseError):
                        future.set_exception(reply)
                    else:
                        future.set_result(reply)
            finally:
                await self.pool.release(conn)  # a connection that failed was disconnected by redis-py
        except BaseException as exc:  # no connection, a lost one, or cancelled (shutdown): the rest have no reply
            for _, future in batch[replied:]:
                if not future.done():
                    future.set_exception(RedisConnectionError(f"no reply from Redis: {exc!r}"))
            if not isinstance(exc, Exception):
                raise

    async def aclose(self) -> None:
        """Wait for the pipelines in flight (commands queued after this are still sent)."""
        while self._flights:
            await asyncio.gather(*self._flights, return_exceptions=True)
