"""Per-user limits, enforced across nodes through Redis: key layout, TTLs and scripts.

Layout (``<p>`` is ``redis.key_prefix``; ``{<owner>}`` is a Redis Cluster hash
tag, so all of one user's counters live on one shard)::

    <p>:user:{<owner>}:pending       ZSET  upload id -> when its record expires (created_at + upload_ttl)
    <p>:user:{<owner>}:sizes         HASH  upload id -> the bytes it declared (0: a deferred length)
    <p>:user:{<owner>}:bytes         STR   the sum of ``sizes``
    <p>:user:{<owner>}:creates:<m>   STR   creates in minute ``m`` (since the epoch), kept 2 minutes

An upload's own keys carry the upload's ``{id}`` tag, a user's these, so no
script touches both: a create first *reserves* on the user's keys (one
script: prune, check every limit, count), then creates the upload; a create
that fails after its reservation gives it back. Completion and deletion give
it back too. An upload that expires is pruned from ``pending`` when its user
next creates (its score has passed): nothing has to notice the expiry. A
process killed between forgetting an upload (deleted, completed) and giving
its place back leaves a reservation with no upload: each GC pass gives back
those older than ``QUOTA_GRACE`` (:meth:`Quotas.reconcile`), so such a place is
held at most ``gc.interval`` + ``QUOTA_GRACE``, not ``upload_ttl``. An
upload kept alive by activity for longer than ``upload_ttl`` after its
creation is pruned as well (it then stops counting: the limits err on the
side of letting a client work).

The owner is who the engine already works for: a token's user, or, with
``auth.mode = "none"``, the one shared ``anonymous`` owner, so then the limits
hold for the whole service (a proxy's address is all a node would see anyway).

The segments a tus upload may take need no key of their own: the append path
reads the upload's ``received_count`` under its append lease (engine/layouts/append.py) and
asks :meth:`Quotas.check_segments` before it writes a byte.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncIterator

from .. import errors
from ..config import LimitsSettings
from ..models import UploadSpec, UploadStatus
from ..state.store import StateStore, as_text

log = logging.getLogger("vezastream.quotas")

#: Seconds a client is told to wait when its pending uploads (count or bytes) are at the limit:
#: one of them may complete any moment, so this is a polling interval, not a promise.
PENDING_RETRY_AFTER = 60
#: The creates-per-minute window; its counter outlives it by one window.
WINDOW = 60
#: Seconds a reservation may wait for its upload's record (a create under way) before a GC pass
#: takes it for one a killed process left (:meth:`Quotas.reconcile`).
QUOTA_GRACE = 60
#: Users whose places a GC pass reads together (:meth:`Quotas.reconcile`), and places whose uploads'
#: statuses it looks up together: the look-ups share pipelines. Small, as the pass's own batches
#: (gc.PASS_BATCH), since a serving process's requests queue behind them for the same pipelines.
RECONCILE_BATCH = 128

# KEYS: pending, sizes, bytes, creates. ARGV: id, bytes, now, expires_at, max_pending, max_bytes,
# max_creates, key_ttl_s (0 = no limit for the max_*)
# -> {"ok", 1} | {"ok", 0} (the id holds a reservation already: counted once) | {"creates", count}
#    | {"pending", count, oldest_expiry} | {"bytes", total}
_RESERVE = """
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then return {'ok', 0} end
local now = tonumber(ARGV[3])
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
for _, id in ipairs(expired) do
  local size = redis.call('HGET', KEYS[2], id)
  if size then
    redis.call('DECRBY', KEYS[3], size)
    redis.call('HDEL', KEYS[2], id)
  end
end
if #expired > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now) end
local max_creates = tonumber(ARGV[7])
local creates = tonumber(redis.call('GET', KEYS[4]) or '0')
if max_creates > 0 and creates >= max_creates then return {'creates', creates} end
local max_pending = tonumber(ARGV[5])
local count = redis.call('ZCARD', KEYS[1])
if max_pending > 0 and count >= max_pending then
  return {'pending', count, redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')[2]}
end
local max_bytes = tonumber(ARGV[6])
local total = tonumber(redis.call('GET', KEYS[3]) or '0')
if max_bytes > 0 and total + tonumber(ARGV[2]) > max_bytes then return {'bytes', total} end
redis.call('INCR', KEYS[4])
redis.call('EXPIRE', KEYS[4], 120)
redis.call('ZADD', KEYS[1], ARGV[4], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('INCRBY', KEYS[3], ARGV[2])
for i = 1, 3 do redis.call('EXPIRE', KEYS[i], ARGV[8]) end
return {'ok', 1}
"""

# KEYS: pending, sizes, bytes. ARGV: id -> 1 | 0 (it held no reservation)
_RELEASE = """
local size = redis.call('HGET', KEYS[2], ARGV[1])
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 and not size then return 0 end
if size then
  redis.call('DECRBY', KEYS[3], size)
  redis.call('HDEL', KEYS[2], ARGV[1])
end
return 1
"""


class Quotas:
    """Reserve and release a user's share: pending uploads, bytes pending, creates per minute."""

    def __init__(self, store: StateStore, limits: LimitsSettings) -> None:
        self.store = store
        self.limits = limits
        self._reserve = store.script(_RESERVE)
        self._release = store.script(_RELEASE)

    def _key(self, owner: str, name: str) -> str:
        return f"{self.store.prefix}:user:{{{owner}}}:{name}"

    def _pending_keys(self, owner: str) -> list[str]:
        return [self._key(owner, "pending"), self._key(owner, "sizes"), self._key(owner, "bytes")]

    async def reserve(self, spec: UploadSpec) -> bool:
        """Count ``spec`` against its owner's limits, or raise ``LimitExceeded`` (nothing counted).

        False when its id holds a reservation already (a second try of a create whose id derives
        from the request): it is counted once, and this call added nothing."""
        lim = self.limits
        now = spec.created_at
        minute = int(now // WINDOW)
        declared = max(spec.total_size, 0)  # a deferred length counts as 0 until the upload completes
        reply = await self._reserve(
            keys=[*self._pending_keys(spec.owner), self._key(spec.owner, f"creates:{minute}")],
            args=[spec.id, declared, repr(now), repr(now + lim.upload_ttl), lim.max_pending_uploads,
                  int(lim.max_pending_bytes), lim.max_creates_per_minute, lim.upload_ttl + WINDOW])
        outcome = as_text(reply[0])
        if outcome == "ok":
            return bool(int(reply[1]))
        if outcome == "creates":
            wait = max(1, math.ceil((minute + 1) * WINDOW - now))
            raise errors.LimitExceeded(
                f"at most {lim.max_creates_per_minute} uploads may be created a minute; retry in {wait} s",
                limit="max_creates_per_minute", max_creates_per_minute=lim.max_creates_per_minute,
                retry_after=wait)
        if outcome == "pending":
            wait = max(1, min(PENDING_RETRY_AFTER, math.ceil(float(reply[2]) - now)))
            raise errors.LimitExceeded(
                f"you have {lim.max_pending_uploads} unfinished uploads, the most allowed: "
                "complete or delete one first", limit="max_pending_uploads",
                max_pending_uploads=lim.max_pending_uploads, retry_after=wait)
        raise errors.LimitExceeded(
            f"your unfinished uploads declare {int(reply[1])} bytes; {declared} more would pass the "
            f"limit of {int(lim.max_pending_bytes)}: complete or delete one first", limit="max_pending_bytes",
            max_pending_bytes=int(lim.max_pending_bytes), retry_after=PENDING_RETRY_AFTER)

    def check_segments(self, count: int) -> None:
        """``LimitExceeded`` when an append upload that holds ``count`` segments may take no more."""
        cap = self.limits.max_segments
        if cap and count >= cap:
            raise errors.LimitExceeded(
                f"this upload already holds {cap} segments, the most allowed: send the rest in one PATCH "
                "(with a Content-Length that ends the upload)", limit="max_segments", max_segments=cap,
                retry_after=PENDING_RETRY_AFTER)

    async def release(self, owner: str, upload_id: str) -> bool:
        """The upload no longer counts (completed, deleted, or never created)."""
        return bool(await self._release(keys=self._pending_keys(owner), args=[upload_id]))

    async def reconcile(self, now: float, dry_run: bool = False) -> list[str]:
        """Give back every reservation made over ``QUOTA_GRACE`` s before ``now`` whose upload is gone
        or completed (its process killed before it gave the place back): ``<owner>/<id>`` of each.

        The users found by the SCAN are read ``RECONCILE_BATCH`` at a time (:meth:`_reconcile`)."""
        head, tail = f"{self.store.prefix}:user:{{", "}:pending"
        given: list[str] = []
        owners: list[str] = []
        async for raw in self.store.redis.scan_iter(match=head + "*" + tail, count=1000):
            owners.append(as_text(raw)[len(head):-len(tail)])
            if len(owners) == RECONCILE_BATCH:
                given += await self._reconcile(owners, now, dry_run)
                owners = []
        return given + await self._reconcile(owners, now, dry_run) if owners else given

    async def _reconcile(self, owners: list[str], now: float, dry_run: bool) -> list[str]:
        """:meth:`reconcile` for ``owners``: their reservations read together (the look-ups share
        pipelines, each sent to its user's shard), then ``RECONCILE_BATCH`` places at a time their
        uploads' statuses, and the places to give back given back together."""
        upto = repr(now - QUOTA_GRACE + self.limits.upload_ttl)  # a reservation's score is its creation + upload_ttl
        held = await asyncio.gather(*(self.store.batcher.execute("ZRANGEBYSCORE", self._key(owner, "pending"),
                                                                 "-inf", upto) for owner in owners))
        places = [(owner, as_text(upload_id)) for owner, ids in zip(owners, held) for upload_id in ids]
        given: list[str] = []
        for i in range(0, len(places), RECONCILE_BATCH):
            some = places[i:i + RECONCILE_BATCH]
            statuses = await self.store.statuses([upload_id for _, upload_id in some])
            gone = [place for place, status in zip(some, statuses) if status in (None, UploadStatus.COMPLETED)]
            if not dry_run:
                released = await asyncio.gather(*(self.release(owner, upload_id) for owner, upload_id in gone))
                gone = [place for place, done in zip(gone, released) if done]
            given += [f"{owner}/{upload_id}" for owner, upload_id in gone]
        return given

    @contextlib.asynccontextmanager
    async def holding(self, spec: UploadSpec) -> AsyncIterator[None]:
        """Reserve for ``spec`` around its creation; give the reservation back if the creation fails
        (unless the reservation was there before: another try's)."""
        added = await self.reserve(spec)
        try:
            yield
        except BaseException:
            if added:
                await asyncio.shield(self.forget(spec))
            raise

    async def forget(self, spec: UploadSpec) -> None:
        """:meth:`release`, logged instead of raised: a reservation left behind expires with its upload's TTL."""
        try:
            await self.release(spec.owner, spec.id)
        except Exception as exc:
            log.warning("quota not released", extra={"upload_id": spec.id, "error": repr(exc)})
