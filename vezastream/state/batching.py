"""Redis commands sent together: what many requests ask in one event-loop turn is one write.

With hundreds of uploads in flight, each chunk's claim and register are Redis
round trips of their own; redis-py spends some 60-70 µs of Python on each
(taking a connection from the pool, retry and timeout wrappers, packing,
parsing, giving the connection back), and that is most of what the event loop
does for a small chunk besides HTTP. :class:`CommandBatcher` queues the
commands issued while the loop runs its callbacks, and once they have run,
sends them as one pipeline on one pooled connection and hands each caller its
own reply (about 5-6 µs a command here, the caller's side included:
scripts/bench_batcher.py). Redis runs them one after the other, as it would
have run them from separate connections; each command (a Lua script, for
every change of state) stays atomic on its own. Nothing waits for a batch to
fill: a command goes out in the loop turn after it was issued.

This is client-side pipelining, which redis-py leaves to its users (its
``pipeline()`` batches the commands of one caller, not of many); it uses
redis-py's own connections and parsing, and packs the commands with hiredis's
C packer where ``hiredis`` is installed (the ``fast`` extra; redis-py's
asyncio connections pack in Python, about four times the CPU), else with
redis-py's.

``WAIT`` (replication acknowledgements) waits for what the server had
replicated up to the previous command *on the same connection*. So
:meth:`CommandBatcher.wait` is sent at the end of a pipeline, after its other
commands, or after a ``PING`` when it has none: every write whose reply its
callers had seen is covered. :meth:`CommandBatcher.execute_then_wait` sends a
write and its ``WAIT`` in one pipeline (a chunk's register and its
``redis.min_replica_acks``: one round trip, no ``PING``). The waits of one
batch share one ``WAIT``, so a lagging replica costs a pipeline one timeout,
not one per waiter.

On a Redis Cluster (:class:`ClusterBatcher`), each primary has a batcher of
its own, on its connections from redis-py's ``RedisCluster``: a command goes to
the primary that holds its key's slot in redis-py's slot map. One that comes
back redirected (MOVED, ASK: it did not run there) or finds the cluster
re-forming is sent again by ``RedisCluster`` itself, which follows the
redirection and refreshes its map; a lost connection refreshes the map too.
Sending each command through ``RedisCluster`` instead measured 6,000 scripts
a second from one process against 15,000-17,000 batched (3 primaries on this
2-core machine), and its per-node pools do not block: with 150 commands in
flight and ``max_connections = 64``, commands failed (MaxConnectionsError).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.exceptions import (AskError, ClusterDownError, DataError, MovedError, RedisClusterException, RedisError,
                              ResponseError, TryAgainError)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..tasks import stop
from . import refusals

try:
    from hiredis import pack_command as _c_pack
except ImportError:  # hiredis is optional (the ``fast`` extra)
    _c_pack = None

#: Commands in one pipeline at most; more go out in the next one, on another connection.
MAX_BATCH = 256
#: Pipelines in flight at once; commands issued meanwhile wait for one to finish, and go
#: out together then.
MAX_IN_FLIGHT = 4

#: Replies that say a command did not run where it was sent (a cluster re-forming, or its slot moved).
_REDIRECTED = (MovedError, AskError, TryAgainError, ClusterDownError)
Queued = tuple[tuple[Any, ...], Any]  # the command, and the future (or futures: _Shared) of its reply
_WAIT = "WAIT"


class NoReply(RedisConnectionError):
    """Redis gave no reply within ``redis.reply_timeout``: it hangs (stopped, a stalled disk, a
    network that drops packets), as opposed to refusing or closing the connection."""


def hangs(exc: BaseException) -> bool:
    """Whether ``exc`` is Redis's silence: a reply, or a new connection's handshake, that timed out."""
    return isinstance(exc, (NoReply, RedisTimeoutError)) or isinstance(exc.__cause__, (TimeoutError, RedisTimeoutError))


def failure_reason(exc: BaseException) -> str | None:
    """Why Redis failed a command, as a reason class: its refusal's (refusals.py: ``out-of-memory``,
    ``read-only``, ``auth-failed``...), ``timeout`` when it hangs, ``unreachable`` when it cannot be
    reached; None when ``exc`` is no such failure (a bug, a script's error reply)."""
    refused = refusals.reason(exc)
    if refused is not None:
        return refused
    if hangs(exc):
        return "timeout"
    if isinstance(exc, RedisConnectionError):
        return "unreachable"
    return None


class CommandBatcher:
    """Sends the commands given to :meth:`execute` in one loop turn as one pipeline."""

    #: Told the seconds of each pipeline's round trip (the metrics' histogram).
    on_round_trip: Callable[[float], None] | None = None

    def __init__(self, redis: Redis | None, max_in_flight: int = MAX_IN_FLIGHT, max_batch: int = MAX_BATCH,
                 pool: Any = None) -> None:
        self.pool = pool or redis.connection_pool  # type: ignore[union-attr]
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

    def wait(self, key: str, replicas: int, timeout_ms: int) -> asyncio.Future:
        """How many replicas hold every write whose reply was seen before this call (``WAIT``).

        ``key`` names the data (a cluster's primary is chosen by it; here there is one server)."""
        return self.execute(_WAIT, replicas, timeout_ms)

    def load(self, key: str, source: str) -> asyncio.Future:
        """``SCRIPT LOAD`` of a Lua script where ``key`` lives (here: the one server); its SHA1."""
        return self.execute("SCRIPT", "LOAD", source)

    async def execute_then_wait(self, key: str, args: tuple[Any, ...], replicas: int, timeout_ms: int
                                ) -> tuple[Any, int]:
        """(``args``' reply, how many replicas hold it): the command and its ``WAIT`` in one pipeline."""
        return await both(self.execute(*args), self.wait(key, replicas, timeout_ms))

    def _dispatch(self) -> None:
        self._scheduled = False
        while self._queue and len(self._flights) < self.max_in_flight:
            size = self.max_batch
            while size < len(self._queue) and self._queue[size][0][0] == _WAIT:
                size += 1  # a WAIT goes with the commands queued before it (execute_then_wait's write)
            batch, self._queue = self._queue[:size], self._queue[size:]
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
        demoted = False  # the server answered READONLY: a replica now (see the finally below)
        waits = [entry for entry in batch if entry[0][0] == _WAIT]
        if waits:  # one WAIT for all, last, after the other commands or a PING (see the module's docstring)
            batch = [entry for entry in batch if entry[0][0] != _WAIT]
            wait = (_WAIT, max(args[1] for args, _ in waits), max(args[2] for args, _ in waits))
            batch += [*([] if batch else [(("PING",), _Shared([]))]), (wait, _Shared(waits))]
        try:
            conn = await self.pool.get_connection()
            sent = time.perf_counter()
            try:
                data, batch = packed_apart(conn, batch)
                if not batch:
                    return
                await conn.send_packed_command(data, check_health=False)
                # One deadline (the connection's reply timeout) for all the pipeline's replies, not
                # redis-py's timer per reply (about half a command's CPU here; redis-py before 8.0
                # still makes an endless one). Past it, redis-py drops the connection it was
                # reading from, and the timeout is redis-py's own, as a reply's would have been.
                async with _replies_within(conn.socket_timeout):
                    for _, future in batch:
                        try:
                            reply: Any = await conn.read_response(timeout=math.inf)
                        except ResponseError as exc:  # an error reply: read whole, the stream goes on
                            # Without its traceback, which holds this frame, whose ``reply`` holds it.
                            reply = exc.with_traceback(None)
                        replied += 1
                        if future.done():  # its caller was cancelled meanwhile
                            continue
                        if isinstance(reply, ResponseError):
                            demoted = demoted or refusals.reason(reply) == "read-only"
                            future.set_exception(reply)
                        else:
                            future.set_result(reply)
                if self.on_round_trip is not None:
                    self.on_round_trip(time.perf_counter() - sent)
            finally:
                master = getattr(self.pool, "master_address", None)  # Sentinel: the master it last named
                if demoted or master is not None and (conn.host, conn.port) != master:  # a demoted master's
                    # A new connection reaches the master the address (or Sentinel) names now: after a
                    # failover behind one address (a managed Redis's endpoint, a virtual IP), an open
                    # one keeps reaching the old master, read-only, for as long as it stays open.
                    await conn.disconnect()
                await self.pool.release(conn)  # a connection that failed was disconnected by redis-py
        except BaseException as exc:  # no connection, a lost one, or cancelled (shutdown): the rest have no reply
            waited, error = batch[replied:], RedisConnectionError(f"no reply from Redis: {exc!r}")
            refused = refusals.refusal(exc)
            if refused is not None:  # refused while connecting (a password changed): said as Redis said it
                error = type(refused)(str(refused))
            elif hangs(exc):
                # The commands queued behind this pipeline (never sent) fail now too, so that a
                # request waits for a hung Redis at most redis.reply_timeout, not that long for
                # each round of pipelines ahead of it.
                waited += self._queue
                self._queue = []
                error = NoReply(f"no reply from Redis within redis.reply_timeout: {exc!r}")
            for _, future in waited:
                if not future.done():
                    future.set_exception(error)
            if not isinstance(exc, Exception):
                raise

    async def aclose(self) -> None:
        """Wait for the pipelines in flight (commands queued after this are still sent)."""
        while self._flights:
            flights = list(self._flights)
            await asyncio.gather(*flights, return_exceptions=True)
            # Not left to _landed: from Python 3.12 on, gathering tasks that are all done returns
            # without a turn of the loop, so a finished pipeline whose callback had not run yet
            # kept this loop spinning on the event loop for ever.
            self._flights.difference_update(flights)


@contextlib.asynccontextmanager
async def _replies_within(seconds: float | None) -> AsyncIterator[None]:
    """``asyncio.timeout(seconds)``, its expiry raised as redis-py's ``TimeoutError`` (what ``hangs`` knows)."""
    try:
        async with asyncio.timeout(seconds):
            yield
    except TimeoutError as exc:
        raise RedisTimeoutError(f"no reply within {seconds} s") from exc


def packed(conn: Any, commands: list[tuple[Any, ...]]) -> list[bytes]:
    """``commands`` in Redis's protocol, as ``conn`` sends them: hiredis's C packer when installed."""
    if _c_pack is not None:
        try:
            return [b"".join(map(_c_pack, commands))]
        except TypeError:  # an argument it does not take (a bytearray, a bool): redis-py's packer
            pass
    return conn.pack_commands(commands)


def packed_apart(conn: Any, batch: list[Queued]) -> tuple[list[bytes], list[Queued]]:
    """The batch packed, and its commands that were: one that no packer takes (a value Redis has no
    type for, a caller's mistake) fails alone with redis-py's ``DataError``, and is not sent; the
    other callers' commands go out as if it had not been asked."""
    try:
        return packed(conn, [args for args, _ in batch]), batch
    except (DataError, TypeError):
        pass
    data: list[bytes] = []
    kept: list[Queued] = []
    for args, future in batch:
        try:
            data += packed(conn, [args])
        except (DataError, TypeError) as exc:
            if not future.done():
                future.set_exception(exc if isinstance(exc, DataError) else DataError(str(exc)))
        else:
            kept.append((args, future))
    return data, kept


async def both(first: asyncio.Future, second: asyncio.Future) -> tuple[Any, Any]:
    """Both replies (the second is dropped if the first fails)."""
    try:
        reply = await first
    except BaseException:
        second.cancel()
        raise
    return reply, await second


class _Shared:
    """The future of one WAIT that several callers asked for: its reply goes to each of them."""

    def __init__(self, waits: list[Queued]) -> None:
        self.futures = [future for _, future in waits]

    def done(self) -> bool:
        return all(f.done() for f in self.futures)

    def set_result(self, reply: Any) -> None:
        for f in self.futures:
            if not f.done():
                f.set_result(reply)

    def set_exception(self, exc: BaseException) -> None:
        for f in self.futures:
            if not f.done():
                f.set_exception(exc)


class _NodePool:
    """A cluster primary's connections, as a batcher takes them."""

    def __init__(self, node: ClusterNode) -> None:
        self.node = node

    async def get_connection(self) -> Any:
        return self.node.acquire_connection()

    async def release(self, conn: Any) -> None:
        self.node.release(conn)


class ClusterBatcher:
    """One :class:`CommandBatcher` per primary of a Redis Cluster (see the module's docstring)."""

    #: Told the seconds of each pipeline's round trip, on any primary (the metrics' histogram).
    on_round_trip: Callable[[float], None] | None = None

    def __init__(self, cluster: RedisCluster) -> None:
        self.cluster = cluster
        self._batchers: dict[str, CommandBatcher] = {}
        self._refresh: asyncio.Task[None] | None = None

    def _for(self, key: Any) -> CommandBatcher:
        node = self.cluster.get_node_from_key(key)
        batcher = self._batchers.get(node.name)
        if batcher is None:
            batcher = self._batchers[node.name] = CommandBatcher(None, pool=_NodePool(node))
            batcher.on_round_trip = self._round_trip
        return batcher

    def _round_trip(self, seconds: float) -> None:
        if self.on_round_trip is not None:
            self.on_round_trip(seconds)

    def execute(self, *args: Any) -> asyncio.Future:
        key = args[3] if args[0] == "EVALSHA" else args[1]  # EVALSHA sha numkeys key...: every key in one slot
        return asyncio.ensure_future(self._run(key, args))

    def load(self, key: str, source: str) -> asyncio.Future:
        """``SCRIPT LOAD`` on the primary that holds ``key``'s slot, through its pipelines (a script missing
        on a fresh or restarted primary is loaded without a connection of its own per command)."""
        return asyncio.ensure_future(self._run(key, ("SCRIPT", "LOAD", source)))

    async def execute_then_wait(self, key: str, args: tuple[Any, ...], replicas: int, timeout_ms: int
                                ) -> tuple[Any, int]:
        """(``args``' reply, how many replicas hold it): the command and its ``WAIT`` in one pipeline
        to ``key``'s primary (one redirected is sent again, then waited for on its own)."""
        try:
            batcher = self._for(key)
            reply_future, waited = batcher.execute(*args), batcher.wait(key, replicas, timeout_ms)
            try:
                reply = await reply_future
            except BaseException:
                waited.cancel()
                raise
        except _REDIRECTED:  # the command did not run (its WAIT is dropped): as execute() does, then a WAIT
            return await resend(self.cluster, args), await self.wait(key, replicas, timeout_ms)
        except (RedisConnectionError, RedisClusterException) as exc:
            raise self._lost(key, exc) from None
        try:
            return reply, await waited
        except (RedisConnectionError, RedisClusterException) as exc:
            raise self._lost(key, exc) from None

    def wait(self, key: str, replicas: int, timeout_ms: int) -> asyncio.Future:
        """``WAIT`` on the primary that holds ``key``'s slot, last in its pipeline, after a ``PING``."""
        return asyncio.ensure_future(self._run(key, (_WAIT, replicas, timeout_ms)))

    async def _run(self, key: Any, args: tuple[Any, ...]) -> Any:
        try:
            batcher = self._for(key)
            if args[0] == _WAIT:
                return await batcher.wait(key, *args[1:])
            return await batcher.execute(*args)
        except _REDIRECTED:
            if args[0] == _WAIT:  # a WAIT must go where the writes went: no second try elsewhere
                raise
            return await resend(self.cluster, args)  # it did not run: redis-py follows the redirection
        except (RedisConnectionError, RedisClusterException) as exc:
            raise self._lost(key, exc) from None

    def _lost(self, key: Any, exc: Exception) -> RedisConnectionError:
        """A node gone, or no node for the slot: the map is refreshed (one refresh at a time)."""
        if self._refresh is None or self._refresh.done():
            self._refresh = asyncio.ensure_future(self._refresh_map())
        if isinstance(exc, RedisConnectionError):
            return exc
        return RedisConnectionError(f"no primary for the slot of {key!r}: {exc}")

    async def _refresh_map(self) -> None:
        with contextlib.suppress(RedisError):
            await self.cluster.nodes_manager.initialize()

    async def aclose(self) -> None:
        for batcher in list(self._batchers.values()):
            await batcher.aclose()
        if self._refresh is not None:
            await stop(self._refresh)


async def resend(cluster: RedisCluster, args: tuple[Any, ...]) -> Any:
    """``args`` sent through redis-py's ``RedisCluster``, which follows redirections and refreshes its map.

    A refresh of the map (redis-py's, or :meth:`ClusterBatcher._refresh_map` after a lost node)
    closes the connections of the nodes it replaces, even one a command is connecting on; redis-py
    (8.1) then lets that escape as ``AttributeError`` (the connection's writer gone) or, under
    uvloop, ``RuntimeError`` (its handle closed). Both are a lost connection: the caller answers
    503 and the client retries, as for any other.
    """
    try:
        return await cluster.execute_command(*args)
    except (AttributeError, RuntimeError) as exc:
        raise RedisConnectionError(f"connection closed while the cluster map changed: {exc}") from None


def batcher_for(redis: Redis | RedisCluster) -> CommandBatcher | ClusterBatcher:
    return ClusterBatcher(redis) if isinstance(redis, RedisCluster) else CommandBatcher(redis)
