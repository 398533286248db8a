"""What the staged layouts share: handing the sink bytes that wait on local disk.

The chunk files, in-place and append layouts keep an upload's bytes under
``storage.data_dir`` until completion. Each builds the completion's
:class:`~vezastream.sinks.ChunkSource` its own way; this hands it to the sink
with the upload's SHA-256: the running digest when this process saw every byte
arrive in order (``staging/digests.py``), else the files read back and hashed
while the sink reads them.
"""

from __future__ import annotations

import asyncio

from ...staging import sha256_of_files
from ..services import EngineServices
from ..sinkcalls import naming_sink
from .interface import Assembling


async def assemble_staged(engine: EngineServices, job: Assembling) -> None:
    """Have the sink assemble ``job.source`` (local files); fill in the assembly, size and SHA-256."""
    source = job.source
    assert source is not None
    chained = engine.digests.take(job.upload.id, source.size)
    if chained is not None:
        with naming_sink(engine.sink.name):
            job.assembly = await engine.sink.assemble(job.upload, source)  # hashed on arrival already
        job.size, job.sha256 = source.size, chained
        return
    hashing = asyncio.create_task(asyncio.to_thread(sha256_of_files, [f.path for f in source.files],
                                                    [f.size for f in source.files]))
    try:
        with naming_sink(engine.sink.name):
            job.assembly = await engine.sink.assemble(job.upload, source)
    finally:
        job.size, job.sha256 = await hashing
