"""The staging area: request bodies written to local files, read back and hashed.

Below the engine, above the filesystem. The names other rooms use are the ones
listed here; the modules inside are this room's own business.
"""

from .writer import (BUFFER_BUDGET, FILLING_MAX, KEPT_BUFFERS, READ_AHEAD, READ_BLOCK, WRITE_BUFFER, ChunkStaging,
                     HeldBody, StagedChunk, fsync_dir, hash_range, sha256_of_files)

__all__ = ["BUFFER_BUDGET", "FILLING_MAX", "KEPT_BUFFERS", "READ_AHEAD", "READ_BLOCK", "WRITE_BUFFER", "ChunkStaging",
           "HeldBody", "StagedChunk", "fsync_dir", "hash_range", "sha256_of_files"]
