"""The upload engine: every rule about uploads, whatever door they came in by.

Protocol adapters (``http/``) parse HTTP and call the engine; the engine
owns sizes, offsets, safe retries, conflicts, the completion lease and the
completed record; it talks to the state store (Redis), the chunk staging area
(local disk) and the storage sink, and to nothing else.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import AsyncIterable
from dataclasses import dataclass, field

from redis.exceptions import RedisError

from .. import errors
from .append import AppendUploads
from ..staging.bodies import Watched
from ..config import Settings
from ..staging.digests import HashedBody, RunningDigests
from ..hooks import Hooks
from .inplace import CatchUp, InPlaceChunks
from .insink import SINK, SinkStaging, StagedInSink, in_sink
from ..models import (DEFAULT_CONTENT_TYPE, SHA256_HEX, ChunkReceipt, ChunkRecord, Layout, Upload, UploadResult, UploadSpec, UploadStatus,
                      chunk_count, is_upload_id, new_upload_id)
from .quotas import Quotas
from ..sinks import (AbortsUploads, ChunkFile, ChunkSource, Content, JoinedSource, MeteredBody, ReceivesChunks,
                    check_chunk, RemovesObjects, ServesContent, Sink, call_sink, checked_content, sink_failed)
from ..staging import ChunkStaging, sha256_of_files
from ..state.store import Outcome, Registration, StateStore

log = logging.getLogger("vezastream.engine")

#: How long a completion lease lasts without renewal, and how often it is renewed.
LEASE_SECONDS = 30.0
SPEC_CACHE_SIZE = 10_000
#: Direct mode: the lease of the one connection that sends a chunk to the sink, renewed every
#: third of it while the chunk's bytes flow (and once they have all come, until it is registered).
#: A node that dies mid-chunk blocks that chunk for at most this long; a client that goes silent
#: mid-chunk, for ``server.body_idle_timeout`` (its connection is cut then, and the lease released).
PART_LEASE_SECONDS = 10.0
#: A server process's heartbeat (state/store.py ``<p>:node:<node>``) lasts this long and is renewed
#: every NODE_BEAT_SECONDS: this long after a process dies, its leases may be taken over.
NODE_SECONDS = 5.0
NODE_BEAT_SECONDS = 1.0


@dataclass(frozen=True)
class NewUpload:
    """A validated-at-the-door request to start an upload."""

    filename: str
    total_size: int
    chunk_size: int | None = None
    total_chunks: int | None = None
    sha256: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    protocol: str = "native"
    content_type: str = DEFAULT_CONTENT_TYPE


@dataclass(frozen=True)
class UploadView:
    upload: Upload
    chunks_received: list[int]


class UploadEngine:
    def __init__(self, settings: Settings, store: StateStore, staging: ChunkStaging, sink: Sink,
                 clock=time.time, hooks: Hooks | None = None) -> None:
        self.settings = settings
        #: Plugin hooks: validate, inspect, notifications (none when not given).
        self.hooks = hooks or Hooks(None, settings)
        self.limits = settings.limits
        self.store = store
        self.quotas = Quotas(store, settings.limits)
        self.staging = staging
        self.sink = sink
        self.clock = clock
        # Specs never change once written, so each node may keep them: after the
        # first chunk, a chunk costs one Redis round trip (the register script).
        self._specs: OrderedDict[str, UploadSpec] = OrderedDict()
        # Uploads whose bytes all came through this process, in order: the SHA-256 of
        # everything so far, so completion need not read the bytes again (staging/digests.py).
        self.digests = RunningDigests()
        # Lease and claim tokens need only be unique (they are never shown to clients): a
        # random prefix per process and a counter cost far less than os.urandom per request.
        self._token_prefix = secrets.token_hex(8)
        self._token_count = itertools.count()
        # The layouts besides the chunk files: collaborators that call back only what EngineServices names.
        self.appends = AppendUploads(self)
        self.in_place = InPlaceChunks(self)
        self.in_sink = SinkStaging(self)  # storage.staging = "sink": the bytes wait in the sink

    # -- creation -------------------------------------------------------------
    def plan(self, req: NewUpload) -> tuple[int, int]:
        """(chunk_size, total_chunks) for a request, or ``Invalid``/``TooLarge``."""
        lim = self.limits
        size = req.total_size
        if size > lim.max_upload_size:
            raise errors.TooLarge(f"total_size {size} exceeds the maximum upload size {lim.max_upload_size}",
                                  max_upload_size=int(lim.max_upload_size))
        cs, tc = req.chunk_size, req.total_chunks
        if cs is None and tc is None:
            cs = lim.default_chunk_size
        if cs is not None and cs < 1:
            raise errors.Invalid("chunk_size must be >= 1")
        if tc is not None and tc < 0:
            raise errors.Invalid("total_chunks must be >= 0")
        if cs is None:
            assert tc is not None
            if tc == 0 and size:
                raise errors.Invalid("total_chunks must be >= 1 for a non-empty file")
            cs = -(-size // tc) if tc else lim.default_chunk_size
        expected = chunk_count(size, cs)
        if tc is not None and tc != expected:
            raise errors.Invalid(f"total_chunks {tc} disagrees with ceil(total_size / chunk_size) = {expected}")
        tc = expected
        if cs > lim.max_chunk_size or (tc > 1 and cs < lim.min_chunk_size):
            raise errors.Invalid(f"chunk_size {cs} is outside {lim.min_chunk_size}..{lim.max_chunk_size}",
                                 field="chunk_size", min_chunk_size=int(lim.min_chunk_size), max_chunk_size=int(lim.max_chunk_size))
        if tc > lim.max_chunks:
            raise errors.Invalid(f"total_chunks {tc} exceeds the maximum of {lim.max_chunks}",
                                 field="total_chunks", max_chunks=lim.max_chunks)
        return cs, tc

    async def create(self, owner: str, req: NewUpload) -> Upload:
        if req.sha256 is not None and not SHA256_HEX.match(req.sha256):
            raise errors.Invalid("sha256 must be 64 lowercase hex digits")
        chunk_size, total_chunks = self.plan(req)
        spec = UploadSpec(
            id=new_upload_id(), owner=owner, filename=req.filename, total_size=req.total_size,
            chunk_size=chunk_size, total_chunks=total_chunks, created_at=self.clock(),
            sha256=req.sha256, metadata=dict(req.metadata), protocol=req.protocol, content_type=req.content_type,
        )
        await self.hooks.validate_upload(spec)
        spec = dataclasses.replace(spec, key=self.hooks.object_key(spec))
        async with self.quotas.holding(spec):  # 429 before anything is created
            spec = await self._open_direct(spec)
            if not spec.direct and self.settings.storage.staging == SINK:  # engine/insink.py
                spec = dataclasses.replace(spec, staging=SINK)
            elif not spec.direct and self.settings.storage.in_place:  # chunks written into one file: engine/inplace.py
                spec = dataclasses.replace(spec, layout=Layout.IN_PLACE)
                if spec.total_size:
                    await self.staging.create_data_file(spec.id)
            upload = await self.store.create(spec, self.limits.upload_ttl)
        self.remember(spec)
        log.info("upload created", extra={"event": "created", "upload_id": spec.id, "owner": owner,
                                          "total_size": spec.total_size, "total_chunks": total_chunks})
        return upload

    async def _open_direct(self, spec: UploadSpec) -> UploadSpec:
        """Ask a ``ReceivesChunks`` sink whether it takes this upload direct; staged if not (or if it is down)."""
        if not isinstance(self.sink, ReceivesChunks) or spec.protocol != "native":
            return spec  # direct mode needs numbered chunks whose sizes are known up front
        if self.hooks.implementations("vezastream_inspect_upload"):
            return spec  # inspectors read the bytes before the object is final: they must be staged
        try:
            handle = await call_sink(self.sink, "open_direct", spec)
        except errors.Unavailable as exc:
            if self.settings.storage.staging == SINK:
                raise  # 503: no node keeps bytes, so there is nowhere else to stage it
            log.warning("sink unavailable, upload staged", extra={"upload_id": spec.id, "error": str(exc)})
            return spec
        return dataclasses.replace(spec, direct=handle) if handle else spec

    @property
    def catch_up(self) -> CatchUp:
        """The in-place layout's out-of-order chunks, which completion waits for."""
        return self.in_place.catch_up

    def new_token(self) -> str:
        """A token for a lease or a claim, unique across processes and nodes: ``<node>.<n>``."""
        return f"{self._token_prefix}.{next(self._token_count)}"

    # -- the dead holders' leases (state/store.py: the heartbeat) ---------------------------
    @property
    def node(self) -> str:
        """This process, as its lease tokens and its heartbeat name it."""
        return self._token_prefix

    async def keep_alive(self) -> None:
        """Beat every NODE_BEAT_SECONDS until cancelled (the app runs it from start-up to shutdown)."""
        failing = False
        while True:
            try:
                await self.store.beat(self.node, NODE_SECONDS)
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

    async def take_lease(self, key: str, token: str, seconds: float) -> bool:
        """The lease ``key``, if it is free or its holder is dead."""
        if await self.store.acquire_lease(key, token, seconds):
            return True
        dead = await self.dead_holder(key)
        if not dead:
            return False
        log.warning("lease of a dead process taken over", extra={"lease": key, "holder": dead})
        return await self.store.take_lease(key, token, seconds, dead)

    # -- lookups --------------------------------------------------------------
    def remember(self, spec: UploadSpec) -> None:
        self._specs[spec.id] = spec
        self._specs.move_to_end(spec.id)
        while len(self._specs) > SPEC_CACHE_SIZE:
            self._specs.popitem(last=False)

    def forget(self, upload_id: str) -> None:
        """The upload is gone (deleted, or expired): nothing of it is kept in this process."""
        self._specs.pop(upload_id, None)
        self.catch_up.forget(upload_id)

    async def spec(self, owner: str, upload_id: str) -> UploadSpec:
        """The spec of an upload ``owner`` may touch, else ``NotFound``."""
        if not is_upload_id(upload_id):
            raise errors.NotFound("no such upload")
        spec = self._specs.get(upload_id)
        if spec is None:
            spec = await self.store.spec(upload_id)
            if spec is None:
                raise errors.NotFound("no such upload")
            self.remember(spec)
        if spec.owner != owner:  # never 403: another user's upload does not exist for you
            raise errors.NotFound("no such upload")
        return spec

    async def view(self, owner: str, upload_id: str) -> UploadView:
        """The upload's state; a completion a dead process left is finished first."""
        await self.spec(owner, upload_id)
        upload, chunks = await self.store.load(upload_id, with_chunks=True)
        if upload is not None and upload.status is UploadStatus.COMPLETING:
            try:
                await self.finish_abandoned(owner, upload)
            except errors.NotFound:
                pass
            except errors.UploadError as exc:  # the state says what is left to do
                log.warning("abandoned completion not finished", extra={"upload_id": upload_id, "error": str(exc)})
            upload, chunks = await self.store.load(upload_id, with_chunks=True)
        if upload is None:
            self.forget(upload_id)
            raise errors.NotFound("no such upload")
        return UploadView(upload, chunks)

    async def chunk(self, owner: str, upload_id: str, n: int) -> ChunkRecord:
        spec = await self.spec(owner, upload_id)
        self._check_number(spec, n)
        record = await self.store.chunk(upload_id, n)
        if record is None:
            raise errors.NotFound(f"chunk {n} is not stored")
        return record

    @staticmethod
    def _check_number(spec: UploadSpec, n: int) -> None:
        if not 1 <= n <= spec.total_chunks:
            raise errors.NotFound(f"chunk {n} is outside 1..{spec.total_chunks}", total_chunks=spec.total_chunks)

    # -- chunks -----------------------------------------------------------------
    async def put_chunk(self, owner: str, upload_id: str, n: int, body: AsyncIterable[bytes],
                        declared_size: int | None = None, expected_sha256: str | None = None) -> ChunkReceipt:
        """Stream chunk ``n`` to disk, verify it, and register it atomically."""
        spec = await self.spec(owner, upload_id)
        self._check_number(spec, n)
        expected = spec.expected_chunk_size(n)
        if declared_size is not None and declared_size > expected:
            raise errors.TooLarge(f"chunk {n} must be {expected} bytes, Content-Length says {declared_size}",
                                  expected_size=expected)
        if spec.direct:
            return await self._put_direct(spec, n, body, expected, expected_sha256)
        if in_sink(spec):
            return await self.in_sink.put_chunk(spec, n, body, expected, expected_sha256)
        if spec.layout == Layout.IN_PLACE:
            return await self.in_place.put(spec, n, body, expected, expected_sha256)
        return await self.put_staged(spec, n, body, expected, expected_sha256)

    async def put_staged(self, spec: UploadSpec, n: int, body: AsyncIterable[bytes], expected: int,
                         expected_sha256: str | None, mark: str = "") -> ChunkReceipt:
        """The chunk layout: the body becomes its own staged file, ``<n>.<sha256>``."""
        upload_id = spec.id

        def check(size: int, sha256: str) -> None:  # once the bytes are durable, before the file is named
            check_chunk(n, expected, expected_sha256, size, sha256)

        staged = await self.staging.receive(upload_id, n, body, limit=expected, check=check,
                                            final_for=lambda sha256: self.staging.chunk_path(upload_id, n, sha256))
        record = ChunkRecord(n, staged.size, staged.sha256)
        reg = await self.store.register_chunk(upload_id, record, self.limits.upload_ttl, mark=mark)
        recorded = reg.outcome in (Outcome.STORED, Outcome.SAME)
        if not recorded and (reg.existing is None or reg.existing.sha256 != staged.sha256):
            # Not recorded: drop our file, unless it is (byte for byte, same name) the stored one.
            await self.staging.discard(staged.path)
        return await self.receipt(spec, record, reg)

    async def receipt(self, spec: UploadSpec, record: ChunkRecord, reg: Registration) -> ChunkReceipt:
        """What registering ``record`` means for the client: a receipt, or the error to answer."""
        if reg.outcome is Outcome.STORED:
            self.hooks.chunk_stored(spec, record, reg.received_count)
        if reg.outcome in (Outcome.STORED, Outcome.SAME):
            await self.store.replicated(spec.id)  # redis.min_replica_acks: else 503
            return ChunkReceipt(record, reg.outcome is Outcome.STORED, reg.received_count, spec.total_chunks)
        if reg.outcome is Outcome.CONFLICT:
            raise errors.ChunkConflict(f"chunk {record.number} is already stored with different bytes",
                                       stored_sha256=reg.existing.sha256 if reg.existing else None)
        if reg.outcome is Outcome.STATUS:
            raise errors.UploadNotPending(f"upload is {reg.status}", upload_status=str(reg.status))
        self.forget(spec.id)
        raise errors.NotFound("no such upload")

    async def _put_direct(self, spec: UploadSpec, n: int, body: AsyncIterable[bytes], expected: int,
                          expected_sha256: str | None) -> ChunkReceipt:
        """Direct mode: the chunk streams to the sink, nothing lands on local disk.

        Only one connection at a time sends chunk ``n`` (a lease), and never
        once it is registered: a retry or a conflicting body is then only
        hashed, to answer 200 or 409, so a registered part is never replaced.

        With a declared whole-file SHA-256, chunks that reach this process in
        order continue its running digest (staging/digests.py): completion then knows
        the verdict before the sink joins the chunks, which consumes them.
        """
        assert isinstance(self.sink, ReceivesChunks)
        lease, token = self.store.part_lease_key(spec.id, n), self.new_token()
        leased = await self.take_lease(lease, token, PART_LEASE_SECONDS)  # free, or its sender died
        offset, hashed, keeper = (n - 1) * spec.chunk_size, None, None
        try:
            existing = await self.store.chunk(spec.id, n)
            if existing is None and not leased:
                raise errors.Conflict(f"chunk {n} is being received on another connection; retry later")
            if existing is None:
                running = self.digests.resume(spec.id, offset) if spec.sha256 else None
                hashed = HashedBody(body, running) if running is not None else None
                lost = asyncio.Event()

                def check(_piece: object) -> None:
                    if lost.is_set():
                        raise errors.Conflict(f"chunk {n}'s lease was lost mid-body; retry")
                flowing = Watched(hashed or body, check)
                keeper = asyncio.create_task(self.keep_lease(lease, token, PART_LEASE_SECONDS, lost, flowing))
                record = await self._send_part(spec, n, flowing, expected, expected_sha256)
                check(None)  # another connection may own the chunk now: these bytes are not registered
            else:
                record = await MeteredBody(n, body, expected, expected_sha256).drain()
            reg = await self.store.register_chunk(spec.id, record, self.limits.upload_ttl)
        finally:
            if keeper is not None:
                keeper.cancel()
            if leased:
                await _quietly(self.store.release_lease(lease, token))
        if hashed is not None and reg.outcome in (Outcome.STORED, Outcome.SAME) and hashed.size == record.size:
            self.digests.advance(spec.id, offset + record.size, hashed.hasher)
        return await self.receipt(spec, record, reg)

    async def _send_part(self, spec: UploadSpec, n: int, body: AsyncIterable[bytes], expected: int,
                         expected_sha256: str | None) -> ChunkRecord:
        assert isinstance(self.sink, ReceivesChunks)
        try:
            return await call_sink(self.sink, "put_direct", spec, n, body, expected, expected_sha256)
        except (errors.NotFound, errors.SinkFailed, errors.Unavailable):  # a rejected upload's is gone: say so
            upload = await self.loaded(spec.id)
            if upload.status is UploadStatus.REJECTED:
                raise _rejected(upload) from None
            raise

    # -- completion -------------------------------------------------------------
    async def complete(self, owner: str, upload_id: str) -> tuple[Upload, UploadResult]:
        """Assemble into the sink once; every later or concurrent call gets the same result."""
        spec = await self.spec(owner, upload_id)
        upload, records = await self.store.load_records(upload_id)
        if upload is None:
            raise errors.NotFound("no such upload")
        if upload.status is UploadStatus.COMPLETED and upload.result:
            return upload, upload.result
        if upload.status is UploadStatus.REJECTED:
            raise _rejected(upload)
        source = None
        if spec.layout == Layout.APPEND:  # segments appended in order (tus): see engine/append.py
            upload, source = await self.appends.source(upload, records)
            records = {}
        missing = [n for n in range(1, spec.total_chunks + 1) if n not in records]
        if missing:
            raise errors.MissingChunks(f"{len(missing)} of {spec.total_chunks} chunks are missing",
                                       missing_chunks=missing)
        token = self.new_token()
        outcome, result = await self.store.begin_complete(upload_id, token, LEASE_SECONDS)
        if outcome == "busy":
            assert isinstance(result, str)
            outcome, result = await self._await_completion(upload_id, token, result)
        if outcome == "missing":
            raise errors.NotFound("no such upload")
        if outcome == "rejected":
            raise _rejected(await self.loaded(upload_id))
        if outcome == "completed":
            assert isinstance(result, UploadResult)
            return await self.loaded(upload_id), result
        return await self._assemble(upload, records, token, source)

    async def loaded(self, upload_id: str) -> Upload:
        upload, _ = await self.store.load(upload_id)
        if upload is None:
            raise errors.NotFound("no such upload")
        return upload

    async def _await_completion(self, upload_id: str, token: str, holder: str
                                ) -> tuple[str, UploadResult | str | None]:
        """Wait for the completion ``holder`` runs; take it over (``token``) if its process is gone.

        Returns what :meth:`StateStore.begin_complete` does: "completed" (with the
        result), "ok" (taken over: ours to finish) or "missing".
        """
        deadline = time.monotonic() + self.limits.complete_wait
        looked = 0.0
        while True:
            if time.monotonic() - looked >= NODE_BEAT_SECONDS:  # is the holder still there?
                looked = time.monotonic()
                if await self.dead(holder):
                    log.warning("completion of a dead process taken over",
                                extra={"upload_id": upload_id, "holder": holder})
                    outcome, result = await self.store.begin_complete(upload_id, token, LEASE_SECONDS, holder)
                    if outcome != "busy":
                        return outcome, result
                    assert isinstance(result, str)
                    holder = result  # someone else took it over first: wait for them
            if time.monotonic() >= deadline:
                raise errors.Conflict("the upload is still being completed; try again later",
                                      upload_status="completing")
            await asyncio.sleep(0.1)
            upload = await self.loaded(upload_id)
            if upload.status is UploadStatus.COMPLETED and upload.result:
                return "completed", upload.result
            if upload.status is UploadStatus.PENDING:
                raise errors.Conflict("a concurrent completion failed; the upload is pending again")
            if upload.status is UploadStatus.REJECTED:
                raise _rejected(upload)

    async def finish_abandoned(self, owner: str, upload: Upload) -> Upload:
        """``upload`` as it is, or completed if a dead process left its completion half done.

        A completion whose lease holder is gone (or whose lease expired) is taken
        over; one that cannot finish leaves the upload pending again (the error is
        the caller's).
        """
        if upload.status is not UploadStatus.COMPLETING:
            return upload
        dead = await self.dead_holder(self.store.lease_key(upload.id))
        if dead is None:
            return upload  # its completion runs (here or on another node)
        try:
            upload, _ = await self.complete(owner, upload.id)
        except errors.NotFound:
            raise
        except BaseException:
            # It could not even begin (e.g. its staged bytes are not here): pending again, so
            # that a client may send what is missing. A running takeover is left alone.
            await asyncio.shield(_quietly(self.store.abort_complete(upload.id, dead, gone=True)))
            raise
        return upload

    async def keep_lease(self, key: str, token: str, seconds: float = LEASE_SECONDS,
                         lost: asyncio.Event | None = None, flow: Watched | None = None) -> None:
        """Renew a lease every third of its life; set ``lost`` (and stop) once it cannot be.

        ``flow``: the body the lease is for, which keeps it only while its bytes flow. A body
        awaited without a byte for ``server.body_idle_timeout`` has its connection cut (and
        its request releases the lease); should it still be awaited a lease later, the lease
        is left to expire, and a request that finds it so may take it over.
        """
        stalled = self.settings.server.body_idle_timeout + seconds
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

    async def _assemble(self, upload: Upload, records: dict[int, ChunkRecord], token: str,
                        source: ChunkSource | None = None) -> tuple[Upload, UploadResult]:
        spec = upload.spec
        started = time.monotonic()
        keeper = asyncio.create_task(self.keep_lease(self.store.lease_key(spec.id), token))
        assembly = None
        direct = bool(spec.direct) and isinstance(self.sink, ReceivesChunks)
        joining = False  # direct mode: the sink is joining the chunks, consuming them
        try:
            if source is None and in_sink(spec):
                source = self.in_sink.source(await self.in_sink.pieces(spec.id, records))
            if source is None and spec.layout == Layout.IN_PLACE:
                source = await self.in_place.source(upload, records)
            source = source or ChunkSource([
                ChunkFile(n, self.staging.chunk_path(spec.id, n, r.sha256), r.size, r.sha256)
                for n, r in sorted(records.items())
            ])
            chained = None
            if not direct:  # the running digest, if this process saw every byte arrive (staging/digests.py)
                await self.catch_up.settle(spec)
                chained = self.digests.take(spec.id, source.size)
            if direct:  # the chunks are at the sink already
                assert isinstance(self.sink, ReceivesChunks)
                # Hashed on arrival here, in order? Then a mismatch is found while the chunks are still whole.
                known = self.digests.peek(spec.id, spec.total_size) if spec.sha256 else None
                if known is not None:
                    _check_whole(spec, spec.total_size, known)
                joining = True
                assembly = await self.sink.assemble_direct(upload, [r for _, r in sorted(records.items())])
                self.digests.take(spec.id, 0)  # the chunks are joined: their chain has served
                size, sha256 = assembly.size, assembly.sha256
                if reader := getattr(assembly, "iter_bytes", None):  # for inspectors: nothing is staged
                    source = JoinedSource((), size, reader)
            elif isinstance(source, StagedInSink):  # hashed as it streams from the staging objects to the sink
                assembly = await self.sink.assemble(upload, source)
                size, sha256 = source.size, await source.sha256()
            elif chained is not None:
                assembly = await self.sink.assemble(upload, source)  # hashed on arrival already
                size, sha256 = source.size, chained
            else:
                hashing = asyncio.create_task(asyncio.to_thread(sha256_of_files, [f.path for f in source.files],
                                                                [f.size for f in source.files]))
                try:
                    assembly = await self.sink.assemble(upload, source)
                finally:
                    size, sha256 = await hashing
            _check_whole(spec, size, sha256)
            await self.hooks.inspect_upload(upload, source)
            await assembly.commit()
        except BaseException as exc:
            keeper.cancel()
            # Direct mode: once the sink joined the chunks they live only in the assembled object.
            # A refusal (4xx) then deletes it and the upload is rejected: it can no longer complete.
            # Any other failure keeps the object, so that a later complete reads it back.
            consumed = direct and (assembly is not None or (joining and isinstance(exc, errors.IntegrityError)))
            refused = isinstance(exc, errors.UploadError) and 400 <= exc.status < 500

            async def undo() -> None:
                if assembly is not None and (refused or not consumed):
                    await _quietly(assembly.discard())
                if consumed and refused:
                    assert isinstance(exc, errors.UploadError)
                    await _quietly(self.store.reject(spec.id, token, exc.detail))
                else:
                    await _quietly(self.store.abort_complete(spec.id, token))
            await asyncio.shield(undo())  # to its end, even if the request is cancelled meanwhile
            # The state store's own failures (reading staging-object names, a failover) are not the
            # sink's: they go up as they are, and the error middleware answers 503 with Retry-After.
            if isinstance(exc, (errors.UploadError, RedisError, asyncio.CancelledError)) \
                    or not isinstance(exc, Exception):
                raise
            if isinstance(exc, FileNotFoundError):
                log.error("staged chunk missing", extra={"upload_id": spec.id, "error": repr(exc)})
                raise errors.Conflict("a staged chunk is missing on this node; resend the upload's chunks") from exc
            full = errors.disk_full(exc)
            if full is not None:  # the local sink's disk: the upload stays pending, complete again later
                log.error("disk full", extra={"event": "sink_failed", "upload_id": spec.id})
                raise full from None
            log.exception("sink failed", extra={"event": "sink_failed", "upload_id": spec.id})
            raise sink_failed(self.sink.name, "assemble", exc) from exc
        keeper.cancel()
        result = UploadResult(size, sha256, self.sink.name, assembly.location, self.clock())
        if await self.store.finish_complete(spec.id, token, result, self.limits.completed_ttl):
            await self.quotas.forget(spec)
            await self.staging.remove_upload(spec.id)
            if in_sink(spec):
                await self.in_sink.clear(spec.id)
        else:
            # Our lease expired and another completion took over: it may be reading the chunks
            # right now, so they stay; it records the (identical) result and removes them.
            log.warning("completion lease lost", extra={"upload_id": spec.id})
        log.info("upload completed", extra={
            "event": "completed", "upload_id": spec.id, "size": size, "sha256": sha256,
            "sink": self.sink.name, "location": assembly.location,
            "seconds": round(time.monotonic() - started, 3)})
        done = dataclasses.replace(upload, status=UploadStatus.COMPLETED, result=result, updated_at=result.completed_at,
                                   expires_at=result.completed_at + self.limits.completed_ttl)
        self.hooks.completed(done, result)
        return done, result

    async def recover(self, upload_id: str, dry_run: bool = False) -> bool:
        """Finish (or set back to pending) a completion a dead process left; False if there was none."""
        upload, _ = await self.store.load(upload_id)
        if upload is None or upload.status is not UploadStatus.COMPLETING:
            return False
        if await self.dead_holder(self.store.lease_key(upload_id)) is None:
            return False
        if not dry_run:
            try:
                await self.finish_abandoned(upload.spec.owner, upload)
            except errors.UploadError as exc:
                log.warning("abandoned completion not finished", extra={"upload_id": upload_id, "error": str(exc)})
        return True

    # -- deletion and content -------------------------------------------------------
    async def delete(self, owner: str, upload_id: str, reason: str = "deleted") -> None:
        spec = await self.spec(owner, upload_id)
        outcome, status, result = await self.store.delete(upload_id)
        if outcome == "busy" and (dead := await self.dead_holder(self.store.lease_key(upload_id))):
            outcome, status, result = await self.store.delete(upload_id, dead)  # its holder is gone
        if outcome == "busy":
            raise errors.Conflict("the upload is being completed", upload_status="completing")
        self.forget(upload_id)
        if outcome == "missing":
            raise errors.NotFound("no such upload")
        await self.quotas.forget(spec)
        upload = Upload(spec, status or UploadStatus.PENDING, self.clock(), self.clock(), 0, 0, result)
        try:
            if result is not None and isinstance(self.sink, RemovesObjects):
                await call_sink(self.sink, "remove", upload, result)
            if result is None and isinstance(self.sink, AbortsUploads):
                # A sink that fails now does not keep the upload alive: what it holds for
                # an upload no one owns any more is the GC's to sweep (SweepsLeftovers).
                await _quietly(call_sink(self.sink, "abort", upload))
        finally:
            await self.staging.remove_upload(upload_id)
            if in_sink(spec):
                await self.in_sink.clear(upload_id)
        log.info("upload deleted", extra={"event": "deleted", "upload_id": upload_id})
        self.hooks.aborted(upload, reason)

    async def content(self, owner: str, upload_id: str) -> Content:
        await self.spec(owner, upload_id)
        upload = await self.finish_abandoned(owner, await self.loaded(upload_id))
        if upload.status is not UploadStatus.COMPLETED or upload.result is None:
            raise errors.NotCompleted(f"upload is {upload.status}", upload_status=str(upload.status))
        if not isinstance(self.sink, ServesContent):
            raise errors.NotImplementedBySink(f"sink {self.sink.name!r} cannot serve content")
        return await checked_content(self.sink.name, await call_sink(self.sink, "open_content", upload,
                                                                     upload.result))


def _check_whole(spec: UploadSpec, size: int, sha256: str) -> None:
    """Raise ``IntegrityError`` when the assembled bytes are not what the upload declared."""
    problems = []
    if size != spec.total_size:
        problems.append(f"size {size} != total_size {spec.total_size}")
    if spec.sha256 and sha256 != spec.sha256:
        problems.append(f"sha256 {sha256} != declared {spec.sha256}")
    if problems:
        raise errors.IntegrityError("; ".join(problems), size=size, sha256=sha256)


def _rejected(upload: Upload) -> errors.UploadError:
    return errors.UploadNotPending(f"the upload was rejected ({upload.reason}); delete it and upload again",
                                   upload_status=str(UploadStatus.REJECTED), reason=upload.reason)


async def _quietly(aw) -> None:
    try:
        await aw
    except Exception:
        log.exception("cleanup step failed")
