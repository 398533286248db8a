"""The storage sink interface: what a sink must do, and what it may do.

A sink receives a completed upload's chunks, in order, and makes them one
stored object. It is two-phase, so that nothing half-written is ever visible:

1. ``assemble(upload, source)`` writes the object somewhere not yet final
   (a temporary file, an open S3 multipart upload) and returns an
   :class:`Assembly`;
2. the engine checks size and SHA-256 (and lets plugins inspect the bytes),
   then calls ``assembly.commit()`` to make it final, or
   ``assembly.discard()`` to leave nothing behind.

Optional capabilities are separate one-method protocols; the engine checks
them with ``isinstance`` and ``vezastream plugins`` lists them.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Mapping, Sequence
import asyncio
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import aiofiles

from . import errors
from .models import ChunkRecord, Upload, UploadResult, UploadSpec

if TYPE_CHECKING:
    from .config import Settings

READ_BLOCK = 1024 * 1024


@dataclass(frozen=True)
class ChunkFile:
    """One staged file on local disk: its first ``size`` bytes (readers never read past them).

    A file may hold one chunk, or a whole upload (an append or in-place upload's
    one data file: then ``number`` is 1 and ``sha256`` is empty, the file being
    hashed as a whole instead). Sinks must not assume one file per chunk.
    """

    number: int
    path: Path
    size: int
    sha256: str


@dataclass(frozen=True)
class ChunkSource:
    """The chunks of one upload, in order, as the engine hands them to a sink.

    Sinks that can copy files without reading them (``os.copy_file_range``)
    use :attr:`files`; the others read :meth:`iter_bytes`.
    """

    files: Sequence[ChunkFile]

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    async def iter_bytes(self, block: int = READ_BLOCK) -> AsyncIterator[bytes]:
        """The bytes in order: the first ``size`` bytes of each file (an append upload's file may hold more)."""
        for chunk in self.files:
            left = chunk.size
            async with aiofiles.open(chunk.path, "rb") as fh:
                while left > 0 and (data := await fh.read(min(block, left))):
                    left -= len(data)
                    yield data


@dataclass(frozen=True)
class JoinedSource(ChunkSource):
    """Direct mode: an upload's bytes read back from the sink's joined object (``files`` is empty)."""

    length: int = 0
    reader: Callable[[int], AsyncIterator[bytes]] | None = None

    @property
    def size(self) -> int:
        return self.length

    async def iter_bytes(self, block: int = READ_BLOCK) -> AsyncIterator[bytes]:
        assert self.reader is not None
        async for data in self.reader(block):
            yield data


@runtime_checkable
class Assembly(Protocol):
    """An assembled object that is not final yet."""

    #: Where the object will be once committed (a path, an S3 key...).
    location: str

    async def commit(self) -> None:
        """Make the object final and visible. Must be atomic."""

    async def discard(self) -> None:
        """Remove everything ``assemble`` wrote. Must not raise if already gone."""


@runtime_checkable
class Sink(Protocol):
    """The core interface every sink implements."""

    name: str

    async def assemble(self, upload: Upload, source: ChunkSource) -> Assembly:
        """Write the chunks of ``source`` in order into a not-yet-final object.

        May raise any exception: the engine discards, keeps the chunks and
        answers 502 (or 503 when it raises ``errors.Unavailable``).
        """

    async def check(self) -> None:
        """Raise when the sink cannot store (``/v1/health/deep``)."""

    async def aclose(self) -> None:
        """Release clients and connections; called once at shutdown."""


@dataclass(frozen=True)
class Content:
    """How to hand a stored object back to a client: one of the three."""

    size: int
    path: Path | None = None  # a local file; the server handles Range itself
    url: str | None = None  # answer 307 to this URL
    reader: Callable[[int, int], AsyncIterator[bytes]] | None = None  # (start, end_exclusive)


@runtime_checkable
class ServesContent(Protocol):
    """Capability: read a completed upload back."""

    async def open_content(self, upload: Upload, result: UploadResult) -> Content: ...


@runtime_checkable
class RemovesObjects(Protocol):
    """Capability: remove a stored object when its upload is deleted."""

    async def remove(self, upload: Upload, result: UploadResult) -> None: ...


@runtime_checkable
class AbortsUploads(Protocol):
    """Capability: drop sink-side state of an unfinished upload (an open S3 multipart)."""

    async def abort(self, upload: Upload) -> None: ...


@runtime_checkable
class DirectAssembly(Assembly, Protocol):
    """An assembly of chunks that went straight to the sink: it knows what it holds.

    It may also offer ``iter_bytes(block) -> AsyncIterator[bytes]``, the joined
    bytes in order: inspector plugins then read them (as a :class:`JoinedSource`).
    """

    size: int
    sha256: str


@runtime_checkable
class ReceivesChunks(Protocol):
    """Capability: chunks go straight to the sink as they arrive ("direct" mode).

    The engine asks at creation; an upload the sink takes keeps the sink's
    handle in ``UploadSpec.direct`` (an S3 multipart upload id), its chunks
    never touch local disk, so any node can take any chunk. ``abort`` (the
    ``AbortsUploads`` capability) receives such uploads on deletion too.
    """

    async def open_direct(self, spec: UploadSpec) -> str | None:
        """At creation: a handle when the sink takes this upload direct, else None (staged)."""

    async def put_direct(self, spec: UploadSpec, n: int, body: AsyncIterable[bytes], size: int,
                         sha256: str | None) -> ChunkRecord:
        """Stream chunk ``n`` (exactly ``size`` bytes) into the sink, hashing it on the way.

        Raises ``errors.TooLarge`` / ``ChunkTooShort`` / ``DigestMismatch`` for a
        bad body (whatever it sent is then never used), ``errors.Unavailable``
        when the sink is down. ``sha256`` is the client's declared digest, if any.
        """

    async def assemble_direct(self, upload: Upload, chunks: Sequence[ChunkRecord]) -> DirectAssembly:
        """Join the chunks (in order) into the object; the engine then checks and commits it.

        Joining may consume the chunks (S3's CompleteMultipartUpload does). So
        once it returns, a refusal (a declared SHA-256 that does not match, an
        inspector's 4xx) makes the engine discard the assembly and mark the
        upload ``rejected``; any other failure keeps the assembly, and a later
        call must find the object it left and read it back. Raise
        ``errors.IntegrityError`` only after joining, when the joined bytes differ
        from the records (the upload is then rejected too); any other error
        must leave the chunks as they were.
        """


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


#: ``is_live(upload_id, handle)``: the GC's answer to "does a live upload own this?".
LiveCheck = Callable[[str, str], Awaitable[bool]]


@runtime_checkable
class SweepsLeftovers(Protocol):
    """Capability: drop sink-side leftovers of dead uploads (open S3 multipart uploads)."""

    async def sweep(self, older_than: float, is_live: LiveCheck, dry_run: bool = False) -> list[str]:
        """Abort what started before ``older_than`` (epoch seconds) and no live upload owns.

        Returns a name for each thing aborted (or, with ``dry_run``, that would be).
        """


CAPABILITIES: Mapping[str, type] = {
    "content": ServesContent,
    "remove": RemovesObjects,
    "abort": AbortsUploads,
    "direct": ReceivesChunks,
    "sweep": SweepsLeftovers,
}


def capabilities(sink: Sink) -> list[str]:
    return [name for name, proto in CAPABILITIES.items() if isinstance(sink, proto)]


#: ``factory(config, settings) -> Sink``: ``config`` is the ``[sinks.<name>]`` table.
SinkFactory = Callable[[Mapping[str, Any], "Settings"], Sink]
