"""The upload engine: every rule about uploads, whatever door they came in by.

Protocol adapters (``http/``) parse HTTP and call the engine; the engine
owns sizes, offsets, safe retries, conflicts, the completion lease and the
completed record; it talks to the state store (Redis), the chunk staging area
(local disk) and the storage sink, and to nothing else. How an upload's bytes
wait until completion is its storage layout (``layouts/``): the engine picks
one per upload in :meth:`UploadEngine.layout_for` and dispatches to it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterable, Awaitable
from dataclasses import dataclass
from typing import Any, cast

from redis.exceptions import RedisError

from .. import errors
from ..config import Settings
from ..hooks import Hooks
from ..models import (SHA256_HEX, ChunkReceipt, ChunkRecord, Layout, Upload, UploadResult, UploadSpec, UploadStatus,
                      is_upload_id, new_upload_id)
from ..sinks import AbortsUploads, Content, RemovesObjects, ServesContent, Sink
from ..staging import ChunkStaging
from ..staging.bodies import Watched
from ..staging.digests import RunningDigests
from ..state.store import Outcome, Registration, StateStore
from .layouts.append import AppendUploads
from .layouts.chunkfiles import ChunkFiles
from .layouts.direct import DirectChunks
from .layouts.inplace import CatchUp, InPlaceChunks
from .layouts.insink import InSinkChunks
from .layouts.interface import Assembling, NumberedChunks, StorageLayout
from .layouts.sinkstaging import SINK, SinkStaging, in_sink
from .leases import LEASE_SECONDS, NODE_BEAT_SECONDS, GiveBack, Leases
from .plan import NewUpload, plan
from .quotas import Quotas
from .services import check_whole, quietly, rejected
from .sinkcalls import call_sink, checked_content, naming_sink, sink_failed

log = logging.getLogger("vezastream.engine")

SPEC_CACHE_SIZE = 10_000


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
        #: This process's heartbeat and lease tokens; taking and keeping leases (leases.py).
        self.leases = Leases(store, settings.server.body_idle_timeout)
        self.give_back = GiveBack()
        # The storage layouts (layouts/): they call back only what services.EngineServices names.
        self.chunk_files = ChunkFiles(self)
        self.in_place = InPlaceChunks(self, self.chunk_files)
        self.appends = AppendUploads(self)
        self.direct = DirectChunks(self)
        #: Staging objects in the sink (``storage.staging = "sink"``), for the in-sink and append layouts.
        self.sink_staging = SinkStaging(self)
        self.in_sink = InSinkChunks(self)
        self._layouts: dict[str, StorageLayout] = {
            Layout.CHUNKS: self.chunk_files, Layout.IN_PLACE: self.in_place, Layout.APPEND: self.appends,
            Layout.IN_SINK: self.in_sink}
        self._takes_direct = self.direct.sink_receives
        #: The layouts that take numbered chunks, found once (see DirectChunks.sink_receives).
        self._numbered = {layout for layout in (*self._layouts.values(), self.direct)
                          if isinstance(layout, NumberedChunks)}

    def layout_for(self, spec: UploadSpec) -> StorageLayout:
        """The one place an upload's layout is picked: direct mode, else ``spec.layout``."""
        if spec.direct and self._takes_direct:
            return self.direct
        return self._layouts[spec.layout]

    def readiness_checks(self) -> dict[str, Awaitable[Any]]:
        """What readiness asks (http/health.py): Redis, the staging folder (where bodies are staged on
        this node's disk: ``storage.staging = "local"``) and the sink, each by its name."""
        checks: dict[str, Awaitable[Any]] = {"redis": self.store.ready()}
        if self.settings.storage.staging != SINK:
            checks["staging"] = self.staging.check()
        checks[f"sink:{self.sink.name}"] = self.sink.check()
        return checks

    # -- creation -------------------------------------------------------------
    async def create(self, owner: str, req: NewUpload) -> Upload:
        if req.sha256 is not None and not SHA256_HEX.fullmatch(req.sha256):
            raise errors.Invalid("sha256 must be 64 lowercase hex digits")
        chunk_size, total_chunks = plan(self.limits, req)
        spec = UploadSpec(
            id=new_upload_id(), owner=owner, filename=req.filename, total_size=req.total_size,
            chunk_size=chunk_size, total_chunks=total_chunks, created_at=self.clock(),
            sha256=req.sha256, metadata=dict(req.metadata), protocol=req.protocol, content_type=req.content_type,
        )
        await self.hooks.validate_upload(spec)
        spec = dataclasses.replace(spec, key=self.hooks.object_key(spec))
        async with self.quotas.holding(spec):  # 429 before anything is created
            spec = await self.direct.open_direct(spec)
            if not spec.direct and self.settings.storage.staging == SINK:  # layouts/insink.py
                spec = dataclasses.replace(spec, layout=Layout.IN_SINK, staging=SINK)
            elif not spec.direct and self.settings.storage.in_place:  # chunks written into one file: layouts/inplace.py
                spec = dataclasses.replace(spec, layout=Layout.IN_PLACE)
                if spec.total_size:
                    await self.staging.create_data_file(spec.id)
            upload = await self.store.create(spec, self.limits.upload_ttl)
        self.remember(spec)
        log.info("upload created", extra={"event": "created", "upload_id": spec.id, "owner": owner,
                                          "total_size": spec.total_size, "total_chunks": total_chunks})
        return upload

    @property
    def catch_up(self) -> CatchUp:
        """The in-place layout's out-of-order chunks, which completion waits for."""
        return self.in_place.catch_up

    async def close(self) -> None:
        """At shutdown: stop the background work (the running digests' catch-up, leases and claims
        given back once a hung Redis answers again)."""
        await self.catch_up.close()
        await self.give_back.close()

    # -- leases, as the layouts ask for them (leases.py) --------------------------------
    def new_token(self) -> str:
        """A token for a lease or a claim, unique across processes and nodes."""
        return self.leases.new_token()

    async def take_lease(self, key: str, token: str, seconds: float) -> bool:
        """The lease ``key``, if it is free or its holder is dead."""
        return await self.leases.take(key, token, seconds)

    async def keep_lease(self, key: str, token: str, seconds: float = LEASE_SECONDS,
                         lost: asyncio.Event | None = None, flow: Watched | None = None) -> None:
        """Renew a lease until cancelled; set ``lost`` once it cannot be (see :meth:`Leases.keep`)."""
        await self.leases.keep(key, token, seconds, lost, flow)

    # -- lookups --------------------------------------------------------------
    def remember(self, spec: UploadSpec) -> None:
        self._specs[spec.id] = spec
        self._specs.move_to_end(spec.id)
        while len(self._specs) > SPEC_CACHE_SIZE:
            self._specs.popitem(last=False)

    def forget(self, upload_id: str) -> None:
        """The upload is gone (deleted, or expired): nothing of it is kept in this process."""
        self._specs.pop(upload_id, None)
        for layout in self._layouts.values():
            layout.forget(upload_id)

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
        return UploadView(self._counted(upload, chunks), chunks)

    def _counted(self, upload: Upload, chunks: list[int]) -> Upload:
        """A pending upload of numbered chunks, its counters as its chunk records say. Redis may evict
        the records (one key) and keep the upload's hash, whose counters then still count chunks the
        client must send again; the register script counts afresh only when a chunk comes. The sizes
        are the spec's: a chunk is recorded only at its expected size. No chunk is lost for good
        (each is sent again), so unlike a tus upload's segments this is never a 410 upload-lost."""
        spec = upload.spec
        if upload.status is not UploadStatus.PENDING or self.layout_for(spec) not in self._numbered:
            return upload
        return dataclasses.replace(upload, received_count=len(chunks),
                                   bytes_received=sum(spec.expected_chunk_size(n) for n in chunks))

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
        layout = self.layout_for(spec)
        if layout not in self._numbered:  # an append upload has none (and total_chunks 0)
            raise errors.NotFound(f"chunk {n} is outside 1..{spec.total_chunks}", total_chunks=spec.total_chunks)
        return await cast(NumberedChunks, layout).put(spec, n, body, expected, expected_sha256)

    async def receipt(self, spec: UploadSpec, record: ChunkRecord, reg: Registration) -> ChunkReceipt:
        """What registering ``record`` means for the client: a receipt, or the error to answer."""
        if reg.outcome is Outcome.STORED:
            self.hooks.chunk_stored(spec, record, reg.received_count)
        if reg.outcome in (Outcome.STORED, Outcome.SAME):
            await self.store.replicated(spec.id, reg.acks)  # redis.min_replica_acks: else 503
            return ChunkReceipt(record, reg.outcome is Outcome.STORED, reg.received_count, spec.total_chunks)
        if reg.outcome is Outcome.CONFLICT:
            raise errors.ChunkConflict(f"chunk {record.number} is already stored with different bytes",
                                       stored_sha256=reg.existing.sha256 if reg.existing else None)
        if reg.outcome is Outcome.STATUS:
            raise errors.UploadNotPending(f"upload is {reg.status}", upload_status=str(reg.status))
        self.forget(spec.id)
        raise errors.NotFound("no such upload")

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
            raise rejected(upload)
        try:
            job = await self.layout_for(spec).ready(upload, records)
        except errors.UploadLost as exc:  # what is left of it cannot complete: it goes, so that nothing waits
            await self._drop_lost(owner, exc.extra.get("upload_id", upload_id))
            raise
        missing = [n for n in range(1, spec.total_chunks + 1) if n not in job.records]
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
            raise rejected(await self.loaded(upload_id))
        if outcome == "completed":
            assert isinstance(result, UploadResult)
            return await self.loaded(upload_id), result
        return await self._assemble(job, token)

    async def _drop_lost(self, owner: str, upload_id: str) -> None:
        """Remove an upload whose state Redis partly lost (its staged bytes, its records, its quota)."""
        log.warning("upload state lost", extra={"event": "upload-lost", "upload_id": upload_id})
        try:
            await self.delete(owner, upload_id, reason="lost")
        except errors.NotFound:  # another request removed it first
            pass

    async def _drop_assembled(self, upload: Upload, result: UploadResult) -> None:
        """An upload assembled for a record Redis lost: no record can say it completed, nor let a DELETE
        remove its object later, so the object goes now, with the staged bytes."""
        log.warning("upload state lost", extra={"event": "upload-lost", "upload_id": upload.id})
        self.forget(upload.id)
        if isinstance(self.sink, RemovesObjects):
            await quietly(call_sink(self.sink, "remove", upload, result))
        self.hooks.aborted(dataclasses.replace(upload, received_count=0, bytes_received=0), "lost")
        await self.quotas.forget(upload.spec)  # an eviction may have left the owner's counters
        await self._remove_staged(upload.spec)

    async def refuse_if_gone(self, upload_id: str) -> None:
        """404 (the upload forgotten here) if it was deleted or expired meanwhile, as while a body
        streamed into a data file that went with it; nothing if it is still there."""
        if await self.store.status(upload_id) is None:
            self.forget(upload_id)
            raise errors.NotFound("no such upload")

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
                if await self.leases.dead(holder):
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
                raise rejected(upload)

    async def finish_abandoned(self, owner: str, upload: Upload) -> Upload:
        """``upload`` as it is, or completed if a dead process left its completion half done.

        A completion whose lease holder is gone (or whose lease expired) is taken
        over; one that cannot finish leaves the upload pending again (the error is
        the caller's).
        """
        if upload.status is not UploadStatus.COMPLETING:
            return upload
        dead = await self.leases.dead_holder(self.store.lease_key(upload.id))
        if dead is None:
            return upload  # its completion runs (here or on another node)
        try:
            upload, _ = await self.complete(owner, upload.id)
        except errors.NotFound:
            raise
        except BaseException:
            # It could not even begin (e.g. its staged bytes are not here): pending again, so
            # that a client may send what is missing. A running takeover is left alone.
            await asyncio.shield(quietly(self.store.abort_complete(upload.id, dead, gone=True)))
            raise
        return upload

    async def _assemble(self, job: Assembling, token: str) -> tuple[Upload, UploadResult]:
        """Under the completion lease: the layout has the sink assemble, then size, SHA-256, inspectors, commit."""
        upload = job.upload
        spec = upload.spec
        started = time.monotonic()
        keeper = asyncio.create_task(self.keep_lease(self.store.lease_key(spec.id), token))
        try:
            await self.layout_for(spec).assemble(job)
            assert job.assembly is not None
            check_whole(spec, job.size, job.sha256)
            await self.hooks.inspect_upload(upload, job.source)
            with naming_sink(self.sink.name):
                await job.assembly.commit()
        except BaseException as exc:
            keeper.cancel()
            # Direct mode: once the sink joined the chunks they live only in the assembled object.
            # A refusal (4xx) then deletes it and the upload is rejected: it can no longer complete.
            # Any other failure keeps the object, so that a later complete reads it back.
            assembly, consumed = job.assembly, job.consumed
            refused = isinstance(exc, errors.UploadError) and 400 <= exc.status < 500

            async def undo() -> None:
                if assembly is not None and (refused or not consumed):
                    await quietly(assembly.discard())
                if consumed and refused:
                    assert isinstance(exc, errors.UploadError)
                    await quietly(self.store.reject(spec.id, token, exc.detail))
                else:
                    await quietly(self.store.abort_complete(spec.id, token))
            await asyncio.shield(undo())  # to its end, even if the request is cancelled meanwhile
            # The state store's own failures (reading staging-object names, a failover) are not the
            # sink's: they go up as they are, and the error middleware answers 503 with Retry-After.
            if isinstance(exc, (errors.UploadError, RedisError, asyncio.CancelledError)) \
                    or not isinstance(exc, Exception):
                raise
            if isinstance(exc, FileNotFoundError):
                now, _ = await self.store.load(spec.id)
                if now is not None and now.status is UploadStatus.COMPLETED and now.result:
                    # Our lease expired and the completion that took over finished first (removing
                    # the chunks we were reading): the same result, as for any later call.
                    log.warning("completion lease lost", extra={"upload_id": spec.id})
                    return now, now.result
                log.error("staged chunk missing", extra={"upload_id": spec.id, "error": repr(exc)})
                raise errors.Conflict("a staged chunk is missing on this node; resend the upload's chunks") from exc
            full = errors.exhausted(exc)
            if full is not None:  # the local sink's disk, or open files: the upload stays pending, complete again later
                log.error(full.detail, extra={"event": "sink_failed", "upload_id": spec.id, "sink": self.sink.name})
                raise full from None
            log.exception("sink failed", extra={"event": "sink_failed", "upload_id": spec.id, "sink": self.sink.name})
            raise sink_failed(self.sink.name, "assemble", exc) from exc
        keeper.cancel()
        size, sha256, location = job.size, job.sha256, job.assembly.location
        result = UploadResult(size, sha256, self.sink.name, location, self.clock())
        if await self.store.finish_complete(spec.id, token, result, self.limits.completed_ttl):
            await self.quotas.forget(spec)
            await self._remove_staged(spec)
        elif await self.store.status(spec.id) is None:  # Redis lost the upload meanwhile (emptied, evicted)
            await self._drop_assembled(upload, result)
            raise errors.UploadLost("the server lost this upload's state while completing it (its Redis was "
                                    "emptied); nothing was kept: upload the file again")
        else:
            # Our lease expired and another completion took over: it may be reading the chunks
            # right now, so they stay; it records the (identical) result and removes them.
            log.warning("completion lease lost", extra={"upload_id": spec.id})
        log.info("upload completed", extra={
            "event": "completed", "upload_id": spec.id, "size": size, "sha256": sha256,
            "sink": self.sink.name, "location": location,
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
        if await self.leases.dead_holder(self.store.lease_key(upload_id)) is None:
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
        removed = await self._remove_object_first(upload_id)
        outcome, status, result = await self.store.delete(upload_id)
        if outcome == "busy" and (dead := await self.leases.dead_holder(self.store.lease_key(upload_id))):
            outcome, status, result = await self.store.delete(upload_id, dead)  # its holder is gone
        if outcome == "busy":
            raise errors.Conflict("the upload is being completed", upload_status="completing")
        self.forget(upload_id)
        if outcome == "missing":
            raise errors.NotFound("no such upload")
        await self.quotas.forget(spec)
        upload = Upload(spec, status or UploadStatus.PENDING, self.clock(), self.clock(), 0, 0, result)
        try:
            if isinstance(removed, errors.UploadError):
                raise removed
            if result is not None and not removed and isinstance(self.sink, RemovesObjects):
                await call_sink(self.sink, "remove", upload, result)
            if result is None and isinstance(self.sink, AbortsUploads):
                # A sink that fails now does not keep the upload alive: what it holds for
                # an upload no one owns any more is the GC's to sweep (SweepsLeftovers).
                await quietly(call_sink(self.sink, "abort", upload))
        finally:
            # Forgotten by now, whatever the sink does: its observers (and the metrics) are told.
            log.info("upload deleted", extra={"event": "deleted", "upload_id": upload_id})
            self.hooks.aborted(upload, reason)
            await self._remove_staged(spec)

    async def _remove_object_first(self, upload_id: str) -> bool | errors.UploadError:
        """A completed upload's object removed before the upload is forgotten: True once it is.

        Storage that is down (503) raises, and the upload stays as it was, for the DELETE's retry
        (forgetting first would leave the object where no one could remove it). Any other refusal
        is returned, to answer the DELETE once the upload is forgotten; False when there was no
        completed upload to remove an object of."""
        if not isinstance(self.sink, RemovesObjects):
            return False
        upload, _ = await self.store.load(upload_id)
        if upload is None or upload.status is not UploadStatus.COMPLETED or upload.result is None:
            return False
        try:
            await call_sink(self.sink, "remove", upload, upload.result)
        except errors.UploadError as exc:
            if exc.status == 503:
                raise
            return exc
        return True

    async def _remove_staged(self, spec: UploadSpec) -> None:
        """Remove what of the upload waited for completion: its local files, its staging objects in the sink.

        The upload is recorded completed or forgotten by now: local files that cannot go yet (their
        folder read-only or immutable) are logged and left to the GC, not answered as a failure."""
        await self.staging.remove_or_leave(spec.id)
        if in_sink(spec):
            await self.sink_staging.clear(spec.id)

    async def content(self, owner: str, upload_id: str) -> Content:
        await self.spec(owner, upload_id)
        upload = await self.finish_abandoned(owner, await self.loaded(upload_id))
        if upload.status is not UploadStatus.COMPLETED or upload.result is None:
            raise errors.NotCompleted(f"upload is {upload.status}", upload_status=str(upload.status))
        if not isinstance(self.sink, ServesContent):
            raise errors.NotImplementedBySink(f"sink {self.sink.name!r} cannot serve content")
        return await checked_content(self.sink.name, await call_sink(self.sink, "open_content", upload,
                                                                     upload.result))
