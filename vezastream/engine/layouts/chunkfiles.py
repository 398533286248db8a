"""The chunk files layout: each native chunk staged as a file of its own, ``<n>.<sha256>``.

Used with ``storage.in_place`` off, and by the in-place layout for a body
that may not write its range (another request holds the claim). A body is
written to a temporary file, hashed, checked, fdatasync'ed and only then
named ``<n>.<sha256>`` (``staging/writer.py``), then registered in Redis: a
file that lost the race (a conflicting or concurrent body) is removed again,
unless it is byte for byte the registered one. Completion hands the sink the
chunk files in order.
"""

from __future__ import annotations

from collections.abc import AsyncIterable

from ...models import ChunkReceipt, ChunkRecord, Upload, UploadSpec
from ...metering import check_chunk
from ...sinks import ChunkFile, ChunkSource
from ...staging import ChunkStaging
from ...state.store import Outcome
from ..services import EngineServices
from .interface import Assembling
from .staged import assemble_staged


def chunk_files(staging: ChunkStaging, upload_id: str, records: dict[int, ChunkRecord]) -> ChunkSource:
    """The registered chunks' staged files, in order."""
    return ChunkSource([ChunkFile(n, staging.chunk_path(upload_id, n, r.sha256), r.size, r.sha256)
                        for n, r in sorted(records.items())])


class ChunkFiles:
    """The chunk files layout (a :class:`StorageLayout` taking :class:`NumberedChunks`)."""

    def __init__(self, engine: EngineServices) -> None:
        self.engine = engine

    async def put(self, spec: UploadSpec, n: int, body: AsyncIterable[bytes], expected: int,
                  expected_sha256: str | None, mark: str = "") -> ChunkReceipt:
        """The body becomes its own staged file, ``<n>.<sha256>``; ``mark``: the claims' mark to record."""
        staging, upload_id = self.engine.staging, spec.id

        def check(size: int, sha256: str) -> None:  # once the bytes are durable, before the file is named
            check_chunk(n, expected, expected_sha256, size, sha256)

        staged = await staging.receive(upload_id, n, body, limit=expected, check=check,
                                       final_for=lambda sha256: staging.chunk_path(upload_id, n, sha256))
        record = ChunkRecord(n, staged.size, staged.sha256)
        reg = await self.engine.store.register_chunk(upload_id, record, self.engine.limits.upload_ttl, mark=mark,
                                                     replicate=True)
        recorded = reg.outcome in (Outcome.STORED, Outcome.SAME)
        if not recorded and (reg.existing is None or reg.existing.sha256 != staged.sha256):
            # Not recorded: drop our file, unless it is (byte for byte, same name) the stored one.
            await staging.discard(staged.path)
        return await self.engine.receipt(spec, record, reg)

    async def ready(self, upload: Upload, records: dict[int, ChunkRecord]) -> Assembling:
        return Assembling(upload, records)

    async def assemble(self, job: Assembling) -> None:
        job.source = job.source or chunk_files(self.engine.staging, job.upload.id, job.records)
        await assemble_staged(self.engine, job)

    def forget(self, upload_id: str) -> None:
        pass  # nothing kept in memory: the files go with the upload's folder
