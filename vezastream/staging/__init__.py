"""The staging area: request bodies written to local files, read back and hashed.

Below the engine, above the filesystem. Other rooms import only the names
listed here:

- ``buffers.py``: ``BufferPool`` (the buffers bodies are received into), its sizes, and ``HeldBody``
  (a body kept in its buffers);
- ``writer.py``: ``ChunkStaging``, writing bodies to files, and the folder layout the GC lists;
- ``reader.py``: reading staged bytes back and hashing them;
- ``files.py``: opening, the writer lock (``flock``), ``fsync_dir``, ``check_folder`` (readiness);
- ``directio.py``: O_DIRECT writes; ``digests.py``: running SHA-256s; ``bodies.py``: what a body is;
- ``together.py``: small file calls (create, cut, remove) of many uploads in one thread trip;
- ``kernelio.py``: ``KernelIO``, small bodies and syncs by Linux native AIO from the event loop.
"""

from .buffers import (BUFFER_BUDGET, FILLING_MAX, KEPT_BYTES, READ_AHEAD, READ_BLOCK, WRITE_BUFFER, BufferPool,
                      HeldBody, StagedChunk)
from .files import check_folder, fsync_dir
from .kernelio import KernelIO
from .reader import hash_range, sha256_of_files
from .writer import ChunkStaging

__all__ = ["BUFFER_BUDGET", "FILLING_MAX", "KEPT_BYTES", "READ_AHEAD", "READ_BLOCK", "WRITE_BUFFER", "BufferPool",
           "ChunkStaging", "HeldBody", "check_folder", "KernelIO", "StagedChunk", "fsync_dir", "hash_range", "sha256_of_files"]
