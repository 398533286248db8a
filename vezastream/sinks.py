"""The storage sink interface: what a sink must do, and what it may do.

A sink receives a completed upload's chunks, in order, and makes them one
stored object. It is two-phase, so that nothing half-written is ever visible:

1. ``assemble(upload, source)`` writes the object somewhere not yet final
   (a temporary file, an open S3 multipart upload) and returns an
   :class:`Assembly`;
2. the engine checks size and SHA-256 (and lets plugins inspect the bytes),
   then calls ``assembly.commit()`` to make it final, or
   ``assembly.discard()`` to leave nothing behind.

Optional capabilities are separate protocols; the engine checks them with
``isinstance`` (an object has a capability when it has the methods) and
``vezastream plugins --check`` lists them.

Every sink method is a coroutine (``async def``); each one is called at the
host's boundary (``engine/sinkcalls.py``), which turns what it raises into
problem+json: an :class:`~vezastream.errors.UploadError` keeps its status
(``Rejected`` 422, ``TooLarge`` 413, ``ObjectNotFound`` 404,
``BackendUnavailable`` 503...), anything else is logged in full and answers
502 ``sink-failed`` naming the sink, never the error's text. This module is
part of the public plugin API (re-exported by :mod:`vezastream`).

Beside it: ``metering.py`` (a chunk body counted, hashed and checked on its
way to a sink: ``MeteredBody``) and ``naming.py`` (object keys and download
names: ``KeyTemplate``, ``safe_key``, ``content_disposition``).
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import aiofiles

from . import errors
from .models import ChunkRecord, Upload, UploadResult, UploadSpec
from .staging import READ_BLOCK

if TYPE_CHECKING:
    from .config import Settings


@dataclass(frozen=True)
class ChunkFile:
    """One staged file on local disk: its first ``size`` bytes (readers never read past them).

    A file may hold one chunk, or a whole upload (an append or in-place upload's
    one data file: then ``number`` is 1 and ``sha256`` is empty, the file being
    hashed as a whole instead). Sinks must not assume one file per chunk.
    The files belong to the engine: read them (or hard-link, or copy them),
    never write, move or delete them.
    """

    #: The chunk's number, from 1.
    number: int
    #: The staged file, on this node's local disk.
    path: Path
    #: How many bytes of the file belong to the upload (the file may hold more: read no further).
    size: int
    #: The SHA-256 (hex) of those bytes, or "" when the file is hashed as a whole.
    sha256: str


@dataclass(frozen=True)
class ChunkSource:
    """The chunks of one upload, in order, as the engine hands them to a sink.

    Sinks that can copy files without reading them (``os.copy_file_range``)
    use :attr:`files`; the others read :meth:`iter_bytes`. Never read a whole
    upload into memory: uploads may be many gigabytes.
    """

    #: The upload's files, in order (one per chunk, or one for the whole upload).
    files: Sequence[ChunkFile]

    @property
    def size(self) -> int:
        """The upload's size in bytes: the sum of the files' ``size``."""
        return sum(f.size for f in self.files)

    async def iter_bytes(self, block: int = READ_BLOCK) -> AsyncIterator[bytes]:
        """The bytes in order: the first ``size`` bytes of each file (an append upload's file may hold more).

        A file holding fewer raises ``IntegrityError`` (422) once its bytes run out: never a short object."""
        for chunk in self.files:
            left = chunk.size
            async with aiofiles.open(chunk.path, "rb") as fh:
                while left > 0 and (data := await fh.read(min(block, left))):
                    left -= len(data)
                    yield data
            if left > 0:
                raise errors.cut_short(chunk.size - left, chunk.size)


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
    """What ``Sink.assemble`` returns: an object written, but not final yet.

    Between ``assemble`` and ``commit`` the engine checks size and SHA-256
    and runs the inspectors; then ``commit`` or ``discard`` follows (``discard``
    also after a ``commit`` that raised).
    """

    #: Where the object will be once committed, relative to the sink (a path, an S3 key...):
    #: it becomes ``UploadResult.location``, which ``open_content`` and ``remove`` get back.
    #: A client sees it: never put a server path here.
    location: str

    async def commit(self) -> None:
        """Make the object final and visible, atomically (a rename, CompleteMultipartUpload).

        Async. After it returns, the upload is completed and its result recorded.
        Raising leaves the upload pending with its chunks (a later complete retries).
        """

    async def discard(self) -> None:
        """Remove everything ``assemble`` wrote. Async; must not raise if it is already gone.

        Called when a check or an inspector refused the bytes, or anything after
        ``assemble`` failed. What it raises is logged, never shown to a client.
        """


@runtime_checkable
class Sink(Protocol):
    """The core interface every sink implements: ``name``, ``assemble``, ``check``, ``aclose``."""

    #: The sink's name: the name it is registered under, shown as ``UploadResult.sink``.
    name: str

    async def assemble(self, upload: Upload, source: ChunkSource) -> Assembly:
        """Write ``source``'s bytes, in order, into an object that is not visible yet.

        Async. Receives the :class:`~vezastream.models.Upload` being completed
        (``upload.id``, ``upload.spec.filename``, ``upload.spec.sha256``...) and
        its bytes as a :class:`ChunkSource`. Returns an :class:`Assembly`. The
        engine verifies size and SHA-256 itself (a sink never needs to).
        Raise ``BackendUnavailable`` when storage is down (503); anything else
        answers 502. Either way the chunks are kept and a later complete retries.
        """

    async def check(self) -> None:
        """Raise when the sink cannot store right now. Async; ``GET /v1/health/deep`` calls it."""

    async def aclose(self) -> None:
        """Release clients and connections. Async; called once, at shutdown."""


@dataclass(frozen=True)
class Content:
    """What ``ServesContent.open_content`` returns: how to hand a stored object back.

    ``size`` and exactly one of ``path``, ``url`` or ``reader``:

    * ``path``: a local file the server sends itself (``Range`` included). A
      missing file answers 404 ``object-not-found``;
    * ``url``: the client is redirected there (307), e.g. a presigned URL;
    * ``reader(start, end)``: an async iterator of the bytes from ``start`` to
      ``end`` (exclusive); the server answers ``Range`` requests through it.
    """

    #: The object's size in bytes.
    size: int
    path: Path | None = None
    url: str | None = None
    reader: Callable[[int, int], AsyncIterator[bytes]] | None = None

    def __post_init__(self) -> None:
        given = [name for name in ("path", "url", "reader") if getattr(self, name) is not None]
        if len(given) != 1:
            raise TypeError(f"Content takes exactly one of path, url or reader (got {', '.join(given) or 'none'})")
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 0:
            raise TypeError(f"Content.size must be a byte count, got {self.size!r}")


@runtime_checkable
class ServesContent(Protocol):
    """Capability ``content``: read a completed upload back (``GET /v1/uploads/{id}/content``, tus GET).

    Without it, those requests answer 501 ``not-implemented``.
    """

    async def open_content(self, upload: Upload, result: UploadResult) -> Content:
        """Async. Receives the completed upload and its result (``result.location`` is what
        ``Assembly.location`` was); returns a :class:`Content`. Raise ``ObjectNotFound`` (404)
        when the object is gone, ``BackendUnavailable`` (503) when storage is down."""


@runtime_checkable
class RemovesObjects(Protocol):
    """Capability ``remove``: delete a completed upload's stored object.

    Without it, ``DELETE`` of a completed upload forgets the upload and leaves
    the object in storage.
    """

    async def remove(self, upload: Upload, result: UploadResult) -> None:
        """Async. Receives the deleted upload and its result; removes the object. Must not
        raise when it is already gone; an error answers the DELETE (the upload is forgotten anyway)."""


@runtime_checkable
class AbortsUploads(Protocol):
    """Capability ``abort``: drop sink-side state of a deleted unfinished upload.

    For sinks that hold something before completion (an open S3 multipart
    upload, a direct-mode upload's parts). Without it, nothing is called: staged
    chunks are the engine's and it removes them itself.
    """

    async def abort(self, upload: Upload) -> None:
        """Async. Receives the deleted pending upload (``upload.spec.direct`` is the sink's
        handle in direct mode). Must not raise when there is nothing to drop."""


@runtime_checkable
class DirectAssembly(Assembly, Protocol):
    """What ``ReceivesChunks.assemble_direct`` returns: an assembly that knows what it holds.

    It may also offer ``iter_bytes(block) -> AsyncIterator[bytes]``, the joined
    bytes in order: inspector plugins then read them (as a :class:`JoinedSource`).
    """

    #: Bytes in the assembled object.
    size: int
    #: Their SHA-256 (hex), which the engine compares with the declared one.
    sha256: str


@runtime_checkable
class ReceivesChunks(Protocol):
    """Capability ``direct``: chunks go straight to the sink as they arrive ("direct" mode).

    All three methods are async. Without the capability, chunks are staged
    on local disk and the sink sees them at completion (``Sink.assemble``).

    The engine asks at creation; an upload the sink takes keeps the sink's
    handle in ``UploadSpec.direct`` (an S3 multipart upload id), its chunks
    never touch local disk, so any node can take any chunk. ``abort`` (the
    ``AbortsUploads`` capability) receives such uploads on deletion too.
    """

    async def open_direct(self, spec: UploadSpec) -> str | None:
        """At creation: a handle (a str the sink understands) when it takes this upload direct,
        else None (staged). Raising ``BackendUnavailable`` stages the upload too."""

    async def put_direct(self, spec: UploadSpec, n: int, body: AsyncIterable[bytes], size: int,
                         sha256: str | None) -> ChunkRecord:
        """Stream chunk ``n`` (exactly ``size`` bytes) into the sink, hashing it on the way.

        Raises ``errors.TooLarge`` / ``ChunkTooShort`` / ``DigestMismatch`` for a
        bad body (whatever it sent is then never used), ``errors.Unavailable``
        when the sink is down. ``sha256`` is the client's declared digest, if any.
        :class:`~vezastream.metering.MeteredBody` does the counting, hashing and checking: iterate
        ``MeteredBody(n, body, size, sha256)`` and return its ``record()``.
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


#: ``await is_live(upload_id, handle)``: the GC's answer to "does a live upload own this?".
#: True while the upload is pending with this direct-mode ``handle`` (``UploadSpec.direct``),
#: or while it is being completed (whatever the handle: pass "" for a staged sink's leftovers).
LiveCheck = Callable[[str, str], Awaitable[bool]]


@runtime_checkable
class SweepsLeftovers(Protocol):
    """Capability ``sweep``: the garbage collector drops sink-side leftovers of dead uploads.

    Leftovers are what a crash or a lost client leaves in the sink: an open
    S3 multipart upload, a temporary file an ``assemble`` never committed or
    discarded. Each GC pass (``[gc]``, and ``vezastream gc``) calls ``sweep``
    after removing expired staged chunks. Without it, such leftovers stay.
    """

    async def sweep(self, older_than: float, is_live: LiveCheck, dry_run: bool = False) -> list[str]:
        """Remove what started before ``older_than`` (epoch seconds) and no live upload owns.

        Async. Ask ``await is_live(upload_id, handle)`` before removing anything
        that belongs to an upload. Returns a name for each thing removed (or, with
        ``dry_run``, that would be, removing nothing). What it raises is logged and
        the pass goes on.
        """


#: The handle a ``SweepsLeftovers`` sink passes to ``is_live`` for an upload's staging objects
#: (``StagesBytes``): they are live while the upload exists and is not completed.
STAGED_IN_SINK = "staged-in-sink"


@runtime_checkable
class StagesBytes(Protocol):
    """Capability ``staging``: the sink holds unfinished uploads' bytes (``storage.staging = "sink"``).

    Nodes then share only the state store and the sink: every native chunk
    (unless the sink takes the upload direct) and every tus PATCH body becomes
    one *staging object* of the upload, named by the engine (``name``: unique
    per request, so a late or refused write never replaces a registered one).
    At completion the engine reads them back in order (:meth:`read_staged`),
    hashes them and hands them to ``Sink.assemble`` as one source; then it
    removes them. Without the capability, ``storage.staging = "sink"`` is a
    configuration error. All four methods are async.
    """

    async def put_staged(self, upload_id: str, name: str, body: AsyncIterable[bytes], size: int) -> None:
        """Store exactly ``size`` bytes of ``body`` as staging object ``name`` of the upload.

        The object must appear whole or not at all. ``body`` may raise (a client's bad or
        short body): then let the error through and store nothing that could be read as whole.
        Raise ``errors.Unavailable`` when the storage is down.
        """

    def read_staged(self, upload_id: str, name: str, size: int) -> AsyncIterator[bytes]:
        """The first ``size`` bytes of staging object ``name`` (an async iterator).

        Raise ``errors.Conflict`` when the object is missing."""

    async def remove_staged(self, upload_id: str, name: str) -> None:
        """Delete one staging object (a body that was never registered). Must not raise when it is gone."""

    async def clear_staged(self, upload_id: str) -> None:
        """Delete every staging object of the upload (completed, deleted). Must not raise when there are none."""


CAPABILITIES: Mapping[str, type] = {
    "content": ServesContent,
    "remove": RemovesObjects,
    "abort": AbortsUploads,
    "direct": ReceivesChunks,
    "sweep": SweepsLeftovers,
    "staging": StagesBytes,
}


def capabilities(sink: Sink) -> list[str]:
    return [name for name, proto in CAPABILITIES.items() if isinstance(sink, proto)]


#: ``factory(config, settings) -> Sink``: ``config`` is the ``[sinks.<name>]`` table.
SinkFactory = Callable[[Mapping[str, Any], "Settings"], Sink]
