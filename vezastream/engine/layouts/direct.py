"""Direct mode: native chunks stream straight to a ``ReceivesChunks`` sink; nothing lands on local disk.

At creation the sink is asked whether it takes the upload direct (the S3
sink: chunks of at least its minimum part size become multipart parts); its
handle is kept as ``spec.direct``. Only one connection at a time sends chunk
``n`` (the part lease ``<p>:up:{id}:part:<n>``), and never once it is
registered: a retry or a conflicting body is then only hashed, to answer 200
or 409, so a registered part is never replaced. Completion asks the sink to
join the chunks (``assemble_direct``), which consumes them: from then on a
refusal rejects the upload (the engine's completion flow, ``job.consumed``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterable

from ... import errors
from ...models import ChunkReceipt, ChunkRecord, Upload, UploadSpec, UploadStatus
from ...metering import MeteredBody
from ...sinks import JoinedSource, ReceivesChunks
from ...staging.bodies import Watched
from ...staging.digests import HashedBody
from ...state.store import Outcome
from ..sinkcalls import call_sink, naming_sink
from ..services import EngineServices, check_whole, quietly, rejected
from .chunkfiles import chunk_files
from .interface import Assembling
from .sinkstaging import SINK

log = logging.getLogger("vezastream.engine")

#: The lease of the one connection that sends a chunk to the sink, renewed every third of it
#: while the chunk's bytes flow (and once they have all come, until it is registered).
#: A node that dies mid-chunk blocks that chunk for at most this long; a client that goes silent
#: mid-chunk, for ``server.body_idle_timeout`` (its connection is cut then, and the lease released).
PART_LEASE_SECONDS = 10.0


class DirectChunks:
    """The direct layout (a :class:`StorageLayout` taking :class:`NumberedChunks`)."""

    def __init__(self, engine: EngineServices) -> None:
        self.engine = engine
        #: Whether the sink takes chunks direct, checked once: a Protocol's ``isinstance`` walks
        #: its members each time (about 8 microseconds on Python 3.11).
        self.sink_receives = isinstance(engine.sink, ReceivesChunks)

    async def open_direct(self, spec: UploadSpec) -> UploadSpec:
        """Ask a ``ReceivesChunks`` sink whether it takes this upload direct; staged if not (or if it is down)."""
        sink = self.engine.sink
        if not self.sink_receives or spec.protocol != "native":
            return spec  # direct mode needs numbered chunks whose sizes are known up front
        if self.engine.hooks.implementations("vezastream_inspect_upload"):
            return spec  # inspectors read the bytes before the object is final: they must be staged
        try:
            handle = await call_sink(sink, "open_direct", spec)
        except errors.Unavailable as exc:
            if self.engine.settings.storage.staging == SINK:
                raise  # 503: no node keeps bytes, so there is nowhere else to stage it
            log.warning("sink unavailable, upload staged", extra={"upload_id": spec.id, "error": str(exc)})
            return spec
        return dataclasses.replace(spec, direct=handle) if handle else spec

    async def put(self, spec: UploadSpec, n: int, body: AsyncIterable[bytes], expected: int,
                  expected_sha256: str | None) -> ChunkReceipt:
        """The chunk streams to the sink under the part lease; a registered chunk's body is only hashed.

        With a declared whole-file SHA-256, chunks that reach this process in
        order continue its running digest (staging/digests.py): completion then knows
        the verdict before the sink joins the chunks, which consumes them.
        """
        engine = self.engine
        lease, token = engine.store.part_lease_key(spec.id, n), engine.new_token()
        # Its record if it has one, else its part lease if free: one round trip.
        leased, existing = await engine.store.claim_part(spec.id, n, token, PART_LEASE_SECONDS)
        offset, hashed, keeper = (n - 1) * spec.chunk_size, None, None
        try:
            if existing is None and not leased and await engine.take_lease(lease, token, PART_LEASE_SECONDS):
                leased = True  # its sender died (or it was given back meanwhile): it may have registered since
                existing = await engine.store.chunk(spec.id, n)
            if existing is None and not leased:
                raise errors.Conflict(f"chunk {n} is being received on another connection; retry later")
            if existing is None:
                running = engine.digests.resume(spec.id, offset) if spec.sha256 else None
                hashed = HashedBody(body, running) if running is not None else None
                lost = asyncio.Event()

                def check(_piece: object) -> None:
                    if lost.is_set():
                        raise errors.Conflict(f"chunk {n}'s lease was lost mid-body; retry")
                flowing = Watched(hashed or body, check)
                keeper = asyncio.create_task(engine.keep_lease(lease, token, PART_LEASE_SECONDS, lost, flowing))
                record = await self._send_part(spec, n, flowing, expected, expected_sha256)
                check(None)  # another connection may own the chunk now: these bytes are not registered
            else:
                record = await MeteredBody(n, body, expected, expected_sha256).drain()
            if keeper is not None:  # the part lease goes back with the register, whatever the outcome
                keeper.cancel()
            reg = await engine.store.register_chunk(spec.id, record, engine.limits.upload_ttl,
                                                    release=(lease, token) if leased else None, replicate=True)
            leased = False
        finally:
            if keeper is not None:
                keeper.cancel()
            if leased:  # not registered (an error): give it back now
                await quietly(engine.store.release_lease(lease, token))
        if hashed is not None and reg.outcome in (Outcome.STORED, Outcome.SAME) and hashed.size == record.size:
            engine.digests.advance(spec.id, offset + record.size, hashed.hasher)
        return await engine.receipt(spec, record, reg)

    async def _send_part(self, spec: UploadSpec, n: int, body: AsyncIterable[bytes], expected: int,
                         expected_sha256: str | None) -> ChunkRecord:
        try:
            return await call_sink(self.engine.sink, "put_direct", spec, n, body, expected, expected_sha256)
        except (errors.NotFound, errors.SinkFailed, errors.Unavailable):  # a rejected upload's is gone: say so
            upload = await self.engine.loaded(spec.id)
            if upload.status is UploadStatus.REJECTED:
                raise rejected(upload) from None
            raise

    async def ready(self, upload: Upload, records: dict[int, ChunkRecord]) -> Assembling:
        return Assembling(upload, records)

    async def assemble(self, job: Assembling) -> None:
        """The sink joins the chunks it holds already, consuming them."""
        spec, sink, digests = job.upload.spec, self.engine.sink, self.engine.digests
        assert isinstance(sink, ReceivesChunks)
        # Hashed on arrival here, in order? Then a mismatch is found while the chunks are still whole.
        known = digests.peek(spec.id, spec.total_size) if spec.sha256 else None
        if known is not None:
            check_whole(spec, spec.total_size, known)
        try:
            with naming_sink(sink.name):
                job.assembly = assembly = await sink.assemble_direct(job.upload,
                                                                     [r for _, r in sorted(job.records.items())])
        except errors.IntegrityError:  # the sink joined them, then found the bytes wrong
            job.consumed = True
            raise
        job.consumed = True
        digests.take(spec.id, 0)  # the chunks are joined: their chain has served
        job.size, job.sha256 = assembly.size, assembly.sha256
        if reader := getattr(assembly, "iter_bytes", None):  # for inspectors: nothing is staged
            job.source = JoinedSource((), job.size, reader)
        else:
            job.source = chunk_files(self.engine.staging, spec.id, job.records)

    def forget(self, upload_id: str) -> None:
        pass  # nothing kept in this process: the sink holds the chunks
