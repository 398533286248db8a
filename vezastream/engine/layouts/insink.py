"""The in-sink layout (``storage.staging = "sink"``): each native chunk a staging object in the sink.

Used for native uploads the sink does not take direct (the S3 sink: chunks
under its minimum part size). Nodes then keep nothing of an upload: chunk
``n`` streams into a staging object of its own, ``<n>.<token>``, named by the
request that wrote it (``sinkstaging.py``), and is registered with that name
as its mark once verified. Every request writes an object of its own, so none
replaces another: the first registered counts, and a retry (200 when
identical, 409 when not) or the loser of a race removes its own. Completion,
on any node, reads the registered objects back in order and hands them to the
sink as one source, hashed as they stream.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable

from ...metering import MeteredBody
from ...models import ChunkReceipt, ChunkRecord, Upload, UploadSpec
from ...state.store import Outcome
from ..services import EngineServices
from .interface import Assembling
from .sinkstaging import assemble_in_sink


class InSinkChunks:
    """The in-sink layout (a :class:`StorageLayout` taking :class:`NumberedChunks`)."""

    def __init__(self, engine: EngineServices) -> None:
        self.engine = engine

    async def put(self, spec: UploadSpec, n: int, body: AsyncIterable[bytes], expected: int,
                  expected_sha256: str | None) -> ChunkReceipt:
        """Chunk ``n`` as a staging object of its own, registered once verified.

        One Redis round trip per chunk (the register script): a retry of a stored
        chunk, which is rare, pays an S3 PUT and DELETE instead of every chunk a lookup.
        """
        e, staged = self.engine, self.engine.sink_staging
        name = f"{n}.{e.new_token()}"
        record = await staged.put(spec.id, name, MeteredBody(n, body, expected, expected_sha256), expected)
        # (Should the register script's answer be lost, the object stays: completion or the GC removes it.)
        reg = await e.store.register_chunk(spec.id, record, e.limits.upload_ttl, mark=name,
                                           replicate=True)
        if reg.outcome is not Outcome.STORED:
            await asyncio.shield(staged.drop(spec.id, name))
        return await e.receipt(spec, record, reg)

    async def ready(self, upload: Upload, records: dict[int, ChunkRecord]) -> Assembling:
        return Assembling(upload, records)

    async def assemble(self, job: Assembling) -> None:
        staged = self.engine.sink_staging
        job.source = staged.source(await staged.pieces(job.upload.id, job.records))
        await assemble_in_sink(self.engine.sink, job)

    def forget(self, upload_id: str) -> None:
        pass  # nothing kept in this process: the sink holds the chunks
