"""Upload state in Redis: key layout, TTLs and every atomic change.

Layout (``<p>`` is ``redis.key_prefix``; ``{id}`` is a Redis Cluster hash tag,
so all keys of one upload live on one shard)::

    <p>:up:{id}          HASH  spec (JSON), status, updated_at, expires_at,
                               received_count, bytes_received, result (JSON)
    <p>:up:{id}:chunks   HASH  chunk number -> "size:sha256"
    <p>:up:{id}:lease    STR   completion lease: a token with an expiry
    <p>:up:{id}:part:<n> STR   direct mode: lease of the connection sending chunk n to the sink
    <p>:up:{id}:append   STR   append uploads (tus): lease of the one request writing the data file
    <p>:up:{id}:claims   HASH  in-place uploads: chunk number -> token of the request that may write
                               its range of the data file, or "staged" (see engine/layouts/inplace.py)
    <p>:gc:lease         STR   the garbage collector's lease (one node a pass)
    <p>:user:{<owner>}:* the per-user limits' counters: see engine/quotas.py
    <p>:node:<node>      STR   a server process's heartbeat: it exists while the process lives; it holds
                               "dir:<identity>" of its data_dir when nodes must share it (engine/nodes.py)

A lease's token is ``<node>.<n>``: whoever finds a lease whose node has no
heartbeat knows its holder is dead, and may take the lease over (compare and
swap on the dead holder's token, so two survivors never both win).

Every change that touches more than one field is one Lua script, so two
chunks of one upload arriving together on two nodes can never erase each
other, and registering a chunk costs one round trip. The commands of all
requests go through one :class:`~vezastream.state.batching.CommandBatcher`: those
issued in one event-loop turn share one pipeline (on a Redis Cluster, one per
primary). Nothing spans uploads in one command:
:meth:`StateStore.scan` asks every primary.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError

from .. import errors
from . import scripts, topology
from .batching import ClusterBatcher, CommandBatcher, batcher_for, both
from ..models import ChunkRecord, Upload, UploadResult, UploadSpec, UploadStatus

#: Parsed specs one store keeps (:meth:`StateStore._spec`): well above the uploads one process runs at once.
SPECS_PARSED = 1_000


class Outcome(StrEnum):
    """What registering a chunk or a segment did (the register script's first reply)."""

    STORED = "stored"  # recorded now
    SAME = "same"  # already recorded with the same bytes (a retry)
    CONFLICT = "conflict"  # already recorded with other bytes
    OFFSET = "offset"  # a segment not at the upload's offset
    STATUS = "status"  # the upload is no longer pending
    MISSING = "missing"  # no such upload


class UploadExists(Exception):
    """:meth:`StateStore.create` found an upload with the spec's id: nothing was written. Only ids
    that derive from the request (a tus final upload's) can meet one: a second try of the same create."""


@dataclass(frozen=True)
class Registration:
    """Outcome of :meth:`StateStore.register_chunk`."""

    outcome: Outcome
    received_count: int = 0
    bytes_received: int = 0
    status: UploadStatus | None = None
    existing: ChunkRecord | None = None
    #: Replicas that held the registration (``replicate=True`` with ``redis.min_replica_acks``), else None.
    acks: int | None = None


def as_text(value: Any) -> str:
    """A Redis reply (bytes, or str where the client decodes) as text."""
    return value.decode() if isinstance(value, bytes) else str(value)


def _status(raw: Any) -> UploadStatus | None:
    return UploadStatus(as_text(raw)) if raw else None


def _hash(reply: Any) -> dict[Any, Any]:
    """An HGETALL reply as a dict: RESP3 sends a map, RESP2 a flat list."""
    if isinstance(reply, dict):
        return reply
    return dict(zip(reply[::2], reply[1::2]))


class _Script:
    """A Lua script sent through the batcher (EVALSHA), and loaded through it where Redis lacks it
    (a fresh or restarted server, a new cluster primary): a burst of requests then shares pipelines
    instead of taking a connection each, which a cluster's per-node pool refuses past
    ``redis.max_connections``. Should it still be missing (the slot moved meanwhile), redis-py loads it."""

    def __init__(self, redis: Redis, batcher: CommandBatcher | ClusterBatcher, source: str) -> None:
        self.script = redis.register_script(source)
        self.batcher = batcher

    async def __call__(self, keys: list[str], args: list[Any] | None = None) -> Any:
        args = args or []
        command = ("EVALSHA", self.script.sha, len(keys), *keys, *args)
        for load in (True, False):
            try:
                return await self.batcher.execute(*command)
            except NoScriptError as exc:  # it did not run: load it, and run it again
                exc.__traceback__ = None  # (it held this frame, which waits below: no reference cycle)
            if load:
                await self.batcher.load(keys[0], self.script.script)
        return await self.script(keys=keys, args=args)

    async def then_wait(self, keys: list[str], args: list[Any], replicas: int, timeout_ms: int) -> tuple[Any, int]:
        """(the script's reply, how many replicas hold its writes): its ``WAIT`` in the same pipeline."""
        try:
            return await self.batcher.execute_then_wait(keys[0], ("EVALSHA", self.script.sha, len(keys), *keys, *args),
                                                        replicas, timeout_ms)
        except NoScriptError as exc:  # it did not run: loaded and run on its own, then a WAIT of its own
            exc.__traceback__ = None
        reply = await self(keys, args)
        return reply, int(await self.batcher.wait(keys[0], replicas, timeout_ms))


class StateStore:
    """All reads and atomic writes of upload state."""

    def __init__(self, redis: Redis, prefix: str = "vz", clock=time.time, replica_acks: tuple[int, int] = (0, 0)
                 ) -> None:
        self.redis = redis
        self.prefix = prefix
        self.clock = clock
        #: (replicas, milliseconds): what :meth:`replicated` waits for (``redis.min_replica_acks``).
        self.replica_acks = replica_acks
        self.batcher = batcher_for(redis)
        self._execute = self.batcher.execute
        script = lambda source: _Script(redis, self.batcher, source)  # noqa: E731
        self._create = script(scripts.CREATE)
        self._register = script(scripts.REGISTER_CHUNK)
        self._begin = script(scripts.BEGIN_COMPLETE)
        self._finish = script(scripts.FINISH_COMPLETE)
        self._abort = script(scripts.ABORT_COMPLETE)
        self._reject = script(scripts.REJECT)
        self._renew = script(scripts.RENEW_LEASE)
        self._take = script(scripts.TAKE_LEASE)
        self._release = script(scripts.RELEASE_LEASE)
        self._delete = script(scripts.DELETE)
        self._declare_length = script(scripts.DECLARE_LENGTH)
        self._claim = script(scripts.CLAIM_CHUNK)
        self._lease_and_load = script(scripts.LEASE_AND_LOAD)
        self._claim_part = script(scripts.CLAIM_PART)
        self._release_claim = script(scripts.RELEASE_CLAIM)
        #: Specs parsed, by their JSON as stored: a spec is never written again, yet every load of
        #: its upload (each PATCH's, each completion's) reads it. The oldest go first past SPECS_PARSED.
        self._parsed: dict[str, UploadSpec] = {}

    async def aclose(self) -> None:
        """Let the commands in flight finish (before the Redis client closes)."""
        await self.batcher.aclose()

    # -- keys ---------------------------------------------------------------
    def key(self, upload_id: str) -> str:
        return f"{self.prefix}:up:{{{upload_id}}}"

    def chunks_key(self, upload_id: str) -> str:
        return f"{self.key(upload_id)}:chunks"

    def claims_key(self, upload_id: str) -> str:
        return f"{self.key(upload_id)}:claims"

    def lease_key(self, upload_id: str) -> str:
        return f"{self.key(upload_id)}:lease"

    def part_lease_key(self, upload_id: str, n: int) -> str:
        return f"{self.key(upload_id)}:part:{n}"

    def append_lease_key(self, upload_id: str) -> str:
        return f"{self.key(upload_id)}:append"

    def node_key(self, node: str) -> str:
        return f"{self.prefix}:node:{node}"

    @property
    def gc_lease_key(self) -> str:
        return f"{self.prefix}:gc:lease"

    @property
    def unfinished_key(self) -> str:
        """The set of whole uploads a process watches until they are completed (engine/layouts/append.py)."""
        return f"{self.prefix}:unfinished"

    async def note_unfinished(self, upload_id: str) -> None:
        await self._execute("SADD", self.unfinished_key, upload_id)

    async def unfinished(self) -> list[str]:
        return sorted(as_text(raw) for raw in await self._execute("SMEMBERS", self.unfinished_key))

    async def forget_unfinished(self, upload_id: str) -> None:
        await self._execute("SREM", self.unfinished_key, upload_id)

    # -- reads --------------------------------------------------------------
    async def create(self, spec: UploadSpec, ttl: int) -> Upload:
        now = spec.created_at
        raw = json.dumps(spec.to_json(), separators=(",", ":"))
        fields = {
            "spec": raw,
            "status": UploadStatus.PENDING.value,
            "updated_at": repr(now),
            "expires_at": repr(now + ttl),
            "received_count": 0,
            "bytes_received": 0,
        }
        if not await self._create(keys=[self.key(spec.id)], args=[ttl, *(x for kv in fields.items() for x in kv)]):
            raise UploadExists(spec.id)
        self._keep_parsed(raw, spec)
        return Upload(spec, UploadStatus.PENDING, now, now + ttl, 0, 0)

    def _spec(self, raw: Any) -> UploadSpec:
        """The spec stored as ``raw``, parsed once."""
        raw = as_text(raw)
        spec = self._parsed.get(raw)
        if spec is None:
            spec = UploadSpec.from_json(json.loads(raw))
            self._keep_parsed(raw, spec)
        return spec

    def _keep_parsed(self, raw: str, spec: UploadSpec) -> None:
        self._parsed[raw] = spec
        if len(self._parsed) > SPECS_PARSED:
            del self._parsed[next(iter(self._parsed))]

    async def spec(self, upload_id: str) -> UploadSpec | None:
        raw = await self._execute("HGET", self.key(upload_id), "spec")
        return self._spec(raw) if raw else None

    async def load(self, upload_id: str, with_chunks: bool = False) -> tuple[Upload | None, list[int]]:
        """The upload and (optionally) its received chunk numbers, one round trip."""
        state = self._execute("HGETALL", self.key(upload_id))
        if not with_chunks:
            return self._upload(_hash(await state)), []
        state, numbers = await both(state, self._execute("HKEYS", self.chunks_key(upload_id)))
        upload = self._upload(_hash(state))
        return upload, sorted(int(n) for n in numbers) if upload else []

    async def load_records(self, upload_id: str) -> tuple[Upload | None, dict[int, ChunkRecord]]:
        """The upload and its chunk records, one round trip (what completion needs)."""
        state, raw = await both(self._execute("HGETALL", self.key(upload_id)),
                                 self._execute("HGETALL", self.chunks_key(upload_id)))
        return self._upload(_hash(state)), {int(n): ChunkRecord.decode(int(n), as_text(v)) for n, v in _hash(raw).items()}

    async def chunks(self, upload_id: str) -> dict[int, ChunkRecord]:
        raw = _hash(await self._execute("HGETALL", self.chunks_key(upload_id)))
        return {int(n): ChunkRecord.decode(int(n), as_text(v)) for n, v in raw.items()}

    async def chunk(self, upload_id: str, n: int) -> ChunkRecord | None:
        raw = await self._execute("HGET", self.chunks_key(upload_id), str(n))
        return ChunkRecord.decode(n, as_text(raw)) if raw else None

    async def status(self, upload_id: str) -> UploadStatus | None:
        return _status(await self._execute("HGET", self.key(upload_id), "status"))

    async def statuses(self, upload_ids: Sequence[str]) -> list[UploadStatus | None]:
        """Each upload's status: the look-ups go out together (they share pipelines), with no task each."""
        replies = await asyncio.gather(*(self._execute("HGET", self.key(u), "status") for u in upload_ids))
        return [_status(raw) for raw in replies]

    def _upload(self, h: dict[Any, Any]) -> Upload | None:
        if not h or "spec" not in h:
            return None
        result = json.loads(h["result"]) if h.get("result") else None
        return Upload(
            spec=self._spec(h["spec"]),
            status=UploadStatus(h["status"]),
            updated_at=float(h["updated_at"]),
            expires_at=float(h["expires_at"]),
            received_count=int(h.get("received_count", 0)),
            bytes_received=int(h.get("bytes_received", 0)),
            result=UploadResult(**result) if result else None,
            declared_length=int(h["length"]) if h.get("length") else None,
            reason=h.get("reason"),
        )

    # -- atomic writes ------------------------------------------------------
    async def register_chunk(self, upload_id: str, record: ChunkRecord, ttl: int,
                             expected_offset: int = -1, mark: str = "",
                             release: tuple[str, str] | None = None, replicate: bool = False) -> Registration:
        """Record a received chunk, one round trip; ``mark``: set as its claim when stored (in-place uploads).

        ``release``: (lease key, token) of one of the upload's leases, given back in the
        same round trip whatever the outcome (if it still holds that token).
        ``replicate``: with ``redis.min_replica_acks``, its ``WAIT`` goes in the same round trip
        (``acks``, for :meth:`replicated`).
        """
        lease, token = release or (self.append_lease_key(upload_id), "")
        keys = [self.key(upload_id), self.chunks_key(upload_id), self.claims_key(upload_id), lease]
        args = [record.number, record.encode(), record.size, repr(self.clock()), ttl * 1000, expected_offset, mark,
                token]
        acks = None
        if replicate and self.replica_acks[0]:
            reply, acks = await self._register.then_wait(keys, args, *self.replica_acks)
            acks = int(acks)
        else:
            reply = await self._register(keys=keys, args=args)
        outcome = Outcome(as_text(reply[0]))
        if outcome in (Outcome.STORED, Outcome.SAME):
            return Registration(outcome, int(reply[1]), int(reply[2]), acks=acks)
        if outcome is Outcome.CONFLICT:
            return Registration(outcome, existing=ChunkRecord.decode(record.number, as_text(reply[1])))
        if outcome is Outcome.OFFSET:
            return Registration(outcome, bytes_received=int(reply[1]))
        if outcome is Outcome.STATUS:
            existing = as_text(reply[2])
            return Registration(outcome, status=UploadStatus(as_text(reply[1])),
                                existing=ChunkRecord.decode(record.number, existing) if existing else None)
        return Registration(Outcome.MISSING)

    async def replicated(self, upload_id: str, acks: int | None = None) -> None:
        """Called before a chunk or an offset is acknowledged: with ``redis.min_replica_acks``, wait
        (``WAIT``, on the upload's primary) until that many replicas hold the upload's writes so far.
        Fewer in time: 503 (the record stays on the master, but a failover now could lose it).
        ``acks``: what a WAIT sent with the registration (``Registration.acks``) found already."""
        replicas, timeout_ms = self.replica_acks
        if not replicas:
            return
        if acks is None:
            acks = int(await self.batcher.wait(self.key(upload_id), replicas, timeout_ms))
        if acks < replicas:
            # Sentinel may have promoted a replica meanwhile: asking it moves idle connections to the
            # new master (a demoted one would keep taking writes that no replica acknowledges).
            get_master_address = getattr(getattr(self.redis, "connection_pool", None), "get_master_address", None)
            if get_master_address is not None:
                with contextlib.suppress(RedisError):
                    await get_master_address()
            raise errors.Unavailable(f"the state store confirmed {acks} of {replicas} replica(s) in {timeout_ms} ms; "
                                     "the request was recorded but is not known to be replicated: retry later",
                                     retry_after=1)

    async def begin_complete(self, upload_id: str, token: str, lease: float, dead: str = ""
                             ) -> tuple[str, UploadResult | str | None]:
        """("ok"|"busy"|"completed"|"missing", the result when completed, the lease holder's token when busy).

        ``dead``: the token of a holder known to be dead, whose completion this one takes over.
        """
        reply = await self._begin(keys=[self.key(upload_id), self.lease_key(upload_id)],
                                  args=[token, int(lease * 1000), dead])
        outcome = as_text(reply[0])
        if outcome == "completed":
            return outcome, UploadResult(**json.loads(reply[1]))
        if outcome == "busy":
            return outcome, as_text(reply[1])
        return outcome, None

    async def finish_complete(self, upload_id: str, token: str, result: UploadResult, ttl: int) -> bool:
        payload = json.dumps(result.__dict__, separators=(",", ":"))
        keys = [self.key(upload_id), self.chunks_key(upload_id), self.lease_key(upload_id),
                self.claims_key(upload_id)]
        return bool(await self._finish(keys=keys, args=[token, payload, repr(self.clock()), ttl * 1000]))

    async def abort_complete(self, upload_id: str, token: str, gone: bool = False) -> bool:
        """Set the upload back to pending and drop the completion lease, if ``token`` holds it.

        ``gone``: ``token`` is a dead holder's (or "" for a lease that expired); only a
        ``completing`` upload is set back then.
        """
        return bool(await self._abort(keys=[self.key(upload_id), self.lease_key(upload_id)],
                                      args=[token, "1" if gone else "0"]))

    async def reject(self, upload_id: str, token: str, reason: str) -> bool:
        """Under the completion lease ``token``: the upload is ``rejected`` for ``reason``, its chunk records gone."""
        keys = [self.key(upload_id), self.chunks_key(upload_id), self.lease_key(upload_id),
                self.claims_key(upload_id)]
        return bool(await self._reject(keys=keys, args=[token, reason, repr(self.clock())]))

    async def claim_chunk(self, upload_id: str, n: int, token: str, ttl: int) -> tuple[str, UploadStatus | None]:
        """Claim chunk ``n``'s range of an in-place upload: (claimed|registered|busy|status|missing, status)."""
        reply = await self._claim(keys=[self.key(upload_id), self.chunks_key(upload_id), self.claims_key(upload_id)],
                                  args=[n, token, ttl * 1000])
        outcome = as_text(reply[0])
        return outcome, UploadStatus(as_text(reply[1])) if outcome == "status" else None

    async def release_claim(self, upload_id: str, n: int, token: str) -> bool:
        return bool(await self._release_claim(keys=[self.claims_key(upload_id)], args=[n, token]))

    async def claims(self, upload_id: str) -> dict[int, str]:
        """An in-place upload's claims: chunk number -> token or "staged"."""
        raw = _hash(await self._execute("HGETALL", self.claims_key(upload_id)))
        return {int(n): as_text(v) for n, v in raw.items()}

    async def acquire_lease(self, key: str, token: str, seconds: float) -> bool:
        return bool(await self._execute("SET", key, token, "NX", "PX", int(seconds * 1000)))

    async def lease_and_load(self, upload_id: str, key: str, token: str, seconds: float
                             ) -> tuple[bool, Upload | None]:
        """Take the lease ``key`` and, if taken, read the upload under it: (leased, upload or None)."""
        reply = await self._lease_and_load(keys=[key, self.key(upload_id)], args=[token, int(seconds * 1000)])
        if as_text(reply[0]) != "ok":
            return False, None
        flat = reply[1]
        return True, self._upload({as_text(flat[i]): as_text(flat[i + 1]) for i in range(0, len(flat), 2)})

    async def claim_part(self, upload_id: str, n: int, token: str, seconds: float
                         ) -> tuple[bool, ChunkRecord | None]:
        """Direct mode, one round trip: (False, chunk ``n``'s record) if it has one; else (whether its
        part lease was free and is now held by ``token``, None)."""
        reply = await self._claim_part(keys=[self.part_lease_key(upload_id, n), self.chunks_key(upload_id)],
                                       args=[n, token, int(seconds * 1000)])
        outcome = as_text(reply[0])
        if outcome == "registered":
            return False, ChunkRecord.decode(n, as_text(reply[1]))
        return outcome == "leased", None

    async def take_lease(self, key: str, token: str, seconds: float, dead: str) -> bool:
        """The lease ``key``, if it is free or still held by ``dead`` (a dead holder's token)."""
        return bool(await self._take(keys=[key], args=[token, int(seconds * 1000), dead]))

    async def holder(self, key: str) -> str | None:
        """The token holding the lease ``key`` (None: free)."""
        raw = await self._execute("GET", key)
        return as_text(raw) if raw else None

    async def beat(self, node: str, seconds: float, value: str = "1") -> None:
        """This process is alive for ``seconds`` more; ``value``: what its heartbeat holds."""
        await self._execute("SET", self.node_key(node), value, "PX", int(seconds * 1000))

    async def beats(self) -> dict[str, str]:
        """Every live process's heartbeat: node -> value (SCAN asks every primary; one GET per node)."""
        head = f"{self.prefix}:node:"
        names = [as_text(raw)[len(head):] async for raw in self.redis.scan_iter(match=head + "*", count=1000)]
        values = await asyncio.gather(*(self._execute("GET", self.node_key(n)) for n in names))
        return {n: as_text(v) for n, v in zip(names, values) if v is not None}

    async def alive(self, node: str) -> bool:
        return bool(await self._execute("EXISTS", self.node_key(node)))

    async def leave(self, node: str) -> None:
        """This process stops: its leases may be taken over at once."""
        await self._execute("DEL", self.node_key(node))

    async def renew_lease(self, key: str, token: str, seconds: float) -> bool:
        return bool(await self._renew(keys=[key], args=[token, int(seconds * 1000)]))

    async def release_lease(self, key: str, token: str) -> bool:
        return bool(await self._release(keys=[key], args=[token]))

    async def delete(self, upload_id: str, dead: str = "") -> tuple[str, UploadStatus | None, UploadResult | None]:
        """``dead``: the token of a dead completion holder: its completion is no reason to refuse."""
        keys = [self.key(upload_id), self.chunks_key(upload_id), self.lease_key(upload_id),
                self.claims_key(upload_id)]
        reply = await self._delete(keys=keys, args=[dead])
        outcome = as_text(reply[0])
        if outcome != "deleted":
            return outcome, None, None
        result = as_text(reply[2])
        return outcome, UploadStatus(as_text(reply[1])), UploadResult(**json.loads(result)) if result else None

    async def declare_length(self, upload_id: str, length: int) -> tuple[str, int | None]:
        """Set a deferred length once: ("ok"|"already"|"short"|"status"|"missing", detail)."""
        reply = await self._declare_length(keys=[self.key(upload_id)], args=[length])
        outcome = as_text(reply[0])
        if outcome in ("already", "short"):
            return outcome, int(reply[1])
        return outcome, None

    async def scan(self) -> AsyncIterator[tuple[str, str]]:
        """(upload id, what: "" for the record, else the key's suffix, e.g. ":append") of every upload key."""
        head = f"{self.prefix}:up:{{"
        async for raw in self.redis.scan_iter(match=head + "*", count=1000):
            key = as_text(raw)
            upload_id, _, rest = key[len(head):].partition("}")
            yield upload_id, rest

    async def ping(self) -> None:
        """Ask Redis for ``PONG``; a connection the server had closed is replaced once.

        A pooled connection the server closed (a restart, ``CLIENT KILL``, a changed password)
        is found at checkout only once the event loop has read its end. On Python 3.12 and
        later aiohttp starts a request's handler eagerly, before the loop looks at its sockets
        again, so a readiness check right after such a close met the dead connection and read
        "unreachable" where a new one would show why (``auth-failed``) or succeed. ``PING``
        changes nothing, so a second try on a new connection is safe.
        """
        try:
            await self.redis.ping()
        except RedisConnectionError:
            await self.redis.ping()

    async def ready(self) -> dict[str, list[str]]:
        """Readiness: :meth:`ping`; then that Redis takes writes (each primary of a Cluster), else its
        refusal is raised (out of memory, a read-only replica: state/refusals.py); then, with
        ``redis.min_replica_acks``, enough replicas connected to the master (each primary) for a
        chunk's WAIT to succeed (else :class:`~.topology.TooFewReplicas`). Returns what is wrong but
        does not stop uploads: ``{"warnings": ["may-evict"]}`` when Redis may evict keys to make room."""
        await self.ping()
        await topology.check_writes(self.redis, f"{self.prefix}:probe")
        await topology.check_replicas(self.redis, self.replica_acks[0])
        return {"warnings": ["may-evict"]} if await topology.evicting(self.redis) else {}

    def script(self, source: str) -> _Script:
        """A Lua script run through this store's batcher, for a module that keeps its own keys (engine/quotas.py)."""
        return _Script(self.redis, self.batcher, source)
