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

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import aiofiles

from .models import Upload, UploadResult

if TYPE_CHECKING:
    from .config import Settings

READ_BLOCK = 1024 * 1024


@dataclass(frozen=True)
class ChunkFile:
    """One staged chunk on local disk."""

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
        for chunk in self.files:
            async with aiofiles.open(chunk.path, "rb") as fh:
                while data := await fh.read(block):
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


CAPABILITIES: Mapping[str, type] = {
    "content": ServesContent,
    "remove": RemovesObjects,
    "abort": AbortsUploads,
}


def capabilities(sink: Sink) -> list[str]:
    return [name for name, proto in CAPABILITIES.items() if isinstance(sink, proto)]


#: ``factory(config, settings) -> Sink``: ``config`` is the ``[sinks.<name>]`` table.
SinkFactory = Callable[[Mapping[str, Any], "Settings"], Sink]
