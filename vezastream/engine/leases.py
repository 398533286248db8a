"""Leases, and the server processes that hold them.

A lease is a Redis key (``state/store.py``) that one request holds for a
while, renewed as long as its work goes on: the completion lease, tus's
append lease, direct mode's part lease, the GC's. Its token names the process
that took it (``<node>.<n>``). Every process beats (``<p>:node:<node>``,
renewed every NODE_BEAT_SECONDS, lasting NODE_SECONDS); a lease whose holder
stopped beating may be taken over at once instead of waiting for it to expire.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
from collections.abc import Awaitable, Callable

from ..staging.bodies import Watched
from ..state.store import StateStore
from ..tasks import stop

log = logging.getLogger("vezastream.engine")

#: How long a completion lease lasts without renewal, and how often it is renewed.
LEASE_SECONDS = 30.0
#: A server process's heartbeat (state/store.py ``<p>:node:<node>``) lasts this long and is renewed
#: every NODE_BEAT_SECONDS: this long after a process dies, its leases may be taken over.
NODE_SECONDS = 5.0
NODE_BEAT_SECONDS = 1.0
#: Seconds between two tries of :class:`GiveBack`.
GIVE_BACK_PAUSE = 0.8


class GiveBack:
    """Leases and claims a request could not give back because Redis gave no reply in time
    (``state.batching.hangs``): the request answers without waiting for Redis a second time, and
    they are given back here, in the background, once Redis answers again, for at most ``within``
    seconds (a lease expires by then anyway). Also what else a request leaves to be tried again
    in the background for a while (a whole upload seen through: layouts/append.py).
    :meth:`close` stops them at shutdown."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        """How many are still being tried."""
        return len(self._tasks)

    def later(self, what: str, call: Callable[[], Awaitable[object]], within: float, *,
              done: str = "given back once Redis answered again", undone: str = "not given back; it expires",
              then: Callable[[], object] | None = None) -> None:
        """Try ``call`` until it returns (an exception: again, after GIVE_BACK_PAUSE), for at most
        ``within`` seconds; log ``done`` (info) or ``undone`` (warning), then call ``then``."""
        task = asyncio.create_task(self._retry(what, call, within, done, undone))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if then is not None:
            task.add_done_callback(lambda _: then())

    async def _retry(self, what: str, call: Callable[[], Awaitable[object]], within: float,
                     done: str, undone: str) -> None:
        loop = asyncio.get_running_loop()
        until = loop.time() + within
        while loop.time() < until:
            try:
                await call()
                log.info(done, extra={"what": what})
                return
            except Exception:
                await asyncio.sleep(GIVE_BACK_PAUSE)
        log.warning(undone, extra={"what": what})

    async def close(self) -> None:
        await stop(*self._tasks)


class Leases:
    """This process's heartbeat, its lease tokens, and taking and keeping leases.

    ``body_idle_timeout``: ``server.body_idle_timeout``, after which a body that
    sends nothing no longer keeps its lease.
    """

    def __init__(self, store: StateStore, body_idle_timeout: float) -> None:
        self.store = store
        self.body_idle_timeout = body_idle_timeout
        # Lease and claim tokens need only be unique (they are never shown to clients): a
        # random prefix per process and a counter cost far less than os.urandom per request.
        self._token_prefix = secrets.token_hex(8)
        self._token_count = itertools.count()

    def new_token(self) -> str:
        """A token for a lease or a claim, unique across processes and nodes: ``<node>.<n>``."""
        return f"{self._token_prefix}.{next(self._token_count)}"

    @property
    def node(self) -> str:
        """This process, as its lease tokens and its heartbeat name it."""
        return self._token_prefix

    async def keep_alive(self, value: str = "1") -> None:
        """Beat every NODE_BEAT_SECONDS until cancelled (the app runs it from start-up to shutdown);
        ``value``: what the heartbeat holds (engine/nodes.py: the data_dir's identity)."""
        failing = False
        while True:
            try:
                await self.store.beat(self.node, NODE_SECONDS, value)
            except Exception as exc:  # the state store is down: nothing can be taken over meanwhile
                if not failing:
                    log.warning("heartbeat failed", extra={"error": repr(exc)})
                failing = True
            else:
                if failing:
                    log.info("heartbeat back")
                failing = False
            await asyncio.sleep(NODE_BEAT_SECONDS)

    async def dead(self, token: str) -> bool:
        """Is the process holding ``token`` gone? (a token not of the ``<node>.<n>`` form never is)"""
        node, dot, _ = token.rpartition(".")
        if not dot or not node or node == self.node:
            return False
        return not await self.store.alive(node)

    async def dead_holder(self, key: str) -> str | None:
        """``key``'s holder's token if that process is gone ("" if the lease is free); None if it lives."""
        holder = await self.store.holder(key)
        if holder is None:
            return ""
        return holder if await self.dead(holder) else None

    async def take(self, key: str, token: str, seconds: float) -> bool:
        """The lease ``key``, if it is free or its holder is dead."""
        if await self.store.acquire_lease(key, token, seconds):
            return True
        dead = await self.dead_holder(key)
        if not dead:
            return False
        log.warning("lease of a dead process taken over", extra={"lease": key, "holder": dead})
        return await self.store.take_lease(key, token, seconds, dead)

    async def keep(self, key: str, token: str, seconds: float = LEASE_SECONDS,
                         lost: asyncio.Event | None = None, flow: Watched | None = None) -> None:
        """Renew a lease every third of its life; set ``lost`` (and stop) once it cannot be.

        ``flow``: the body the lease is for, which keeps it only while its bytes flow. A body
        awaited without a byte for ``server.body_idle_timeout`` has its connection cut (and
        its request releases the lease); should it still be awaited a lease later, the lease
        is left to expire, and a request that finds it so may take it over.
        """
        stalled = self.body_idle_timeout + seconds
        while True:
            await asyncio.sleep(seconds / 3)
            if flow is not None and flow.quiet_for() >= stalled:
                log.warning("lease left to expire: its body stalled", extra={"lease": key})
                kept = False
            else:
                try:
                    kept = await self.store.renew_lease(key, token, seconds)
                except Exception:  # the state store is unreachable: the lease may expire
                    kept = False
            if not kept:
                log.warning("lease lost", extra={"lease": key})
                if lost is not None:
                    lost.set()
                return
