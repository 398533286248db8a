"""A chunk's body checked on its way: counted, hashed, and held to its size and declared SHA-256.

Part of the public plugin API (re-exported by :mod:`vezastream`): a sink that
receives chunks itself (``ReceivesChunks.put_direct``) iterates a
:class:`MeteredBody`; the engine uses :func:`check_chunk` for staged chunks.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterable, AsyncIterator, Sequence

from . import errors
from .models import ChunkRecord


def check_chunk(n: int, expected_size: int, declared_sha256: str | None, size: int, sha256: str) -> None:
    """Raise ``ChunkTooShort`` or ``DigestMismatch`` for a chunk body that ended at ``size`` bytes.

    (A body running past ``expected_size`` is cut off with ``TooLarge`` while it streams.)
    """
    if size < expected_size:
        raise errors.ChunkTooShort(f"chunk {n} must be {expected_size} bytes, got {size}",
                                   expected_size=expected_size, received_size=size)
    if declared_sha256 is not None and sha256 != declared_sha256:
        raise errors.DigestMismatch(f"chunk {n} has SHA-256 {sha256}, the request declared {declared_sha256}",
                                    sha256=sha256)


class MeteredBody:
    """A chunk body on its way somewhere other than the staging area (direct mode).

    Iterating it yields the body's pieces while counting and hashing them;
    it raises ``TooLarge`` as soon as the body runs past ``size`` and, once the
    body ends, ``ChunkTooShort`` or ``DigestMismatch``. The error raised is
    also kept in :attr:`failure`, for when an HTTP client wraps it.
    """

    def __init__(self, n: int, body: AsyncIterable[bytes], size: int, declared: str | None = None,
                 also: Sequence["hashlib._Hash"] = ()) -> None:
        self.n, self.body, self.size, self.declared = n, body, size, declared
        self.sha256 = hashlib.sha256()
        self.also = also
        self.received = 0
        self.failure: errors.UploadError | None = None

    def _fail(self, exc: errors.UploadError) -> errors.UploadError:
        self.failure = exc
        return exc

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for piece in self.body:
            self.received += len(piece)
            if self.received > self.size:
                raise self._fail(errors.TooLarge(f"body runs past the {self.size} bytes expected", limit=self.size))
            # hashlib releases the GIL: hashing in a worker thread keeps the event loop free.
            await asyncio.to_thread(self._update, piece)
            yield piece
        try:
            check_chunk(self.n, self.size, self.declared, self.received, self.sha256.hexdigest())
        except errors.UploadError as exc:
            raise self._fail(exc) from None

    def _update(self, piece: bytes) -> None:
        self.sha256.update(piece)
        for hasher in self.also:
            hasher.update(piece)

    async def drain(self) -> ChunkRecord:
        """Read the whole body (hashing only) and return its record."""
        async for _ in self:
            pass
        return self.record()

    def record(self) -> ChunkRecord:
        return ChunkRecord(self.n, self.received, self.sha256.hexdigest())
