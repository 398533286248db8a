"""What the sink-staged layouts share (``storage.staging = "sink"``): unfinished uploads wait in the sink.

Each native chunk (unless the sink takes the upload direct: ``insink.py``) and
each tus PATCH body (``append.py``) becomes one *staging object* of the upload
(``StagesBytes``), streamed with its length known (a body of unknown length is
spooled to a temporary file first, one without a name, gone with the request).
An object is named by the request that wrote it (``<n>.<token>``,
``<offset>.<token>``), so a late write (a stalled writer whose lease expired)
or a refused one never replaces a registered object: the register script
records the name (as the chunk's *mark*, in the upload's claims hash) only
when the chunk or segment counts, and a write that does not count removes its
object (the GC sweeps what a crash leaves).

Completion, on any node, reads the objects back in order through
:class:`StagedInSink`, which hashes them whole and each against its record, so
the SHA-256 is known before the sink makes the object final
(:func:`assemble_in_sink`); then the engine removes them. Nothing is read from
or left on local disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import tempfile
from collections.abc import AsyncIterable, AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from ... import errors
from ...metering import MeteredBody
from ...models import ChunkRecord, UploadSpec
from ...sinks import ChunkSource, StagesBytes
from ...staging import READ_BLOCK
from ..sinkcalls import call_sink, naming_sink
from .interface import Assembling

if TYPE_CHECKING:
    from ...config import Settings
    from ...sinks import Sink
    from ...state.store import StateStore

log = logging.getLogger("vezastream.engine")

#: ``UploadSpec.staging`` of an upload whose bytes wait in the sink.
SINK = "sink"


def in_sink(spec: UploadSpec) -> bool:
    return spec.staging == SINK


@dataclass(frozen=True)
class Piece:
    """One staging object: ``size`` bytes whose SHA-256 is ``sha256``."""

    upload_id: str
    name: str
    size: int
    sha256: str


@dataclass(frozen=True)
class StagedInSink(ChunkSource):
    """An upload's staging objects, in order, read back from the sink (``files`` is empty).

    Reading hashes the bytes whole (:meth:`sha256`, once a pass has ended) and each
    piece against its record: a piece that differs raises ``IntegrityError``.
    """

    sink: Any = None
    pieces: Sequence[Piece] = ()
    _digest: list[str] = field(default_factory=list, repr=False)

    @property
    def size(self) -> int:
        return sum(p.size for p in self.pieces)

    async def sha256(self) -> str:
        """The SHA-256 of every piece, in order: the first whole read's (one now, if none was made)."""
        if not self._digest:
            async for _ in self.iter_bytes():  # the sink did not read them (an empty upload)
                pass
        return self._digest[0]

    async def iter_bytes(self, block: int = READ_BLOCK) -> AsyncIterator[bytes]:
        whole = hashlib.sha256()
        for piece in self.pieces:
            own, got = hashlib.sha256(), 0
            async for data in self.sink.read_staged(piece.upload_id, piece.name, piece.size):
                got += len(data)
                await asyncio.to_thread(_update, (whole, own), data)
                yield data
            if got != piece.size or own.hexdigest() != piece.sha256:
                raise errors.IntegrityError(f"a staged piece of upload {piece.upload_id} changed in the sink "
                                            f"({got} bytes, {piece.size} registered); delete the upload and "
                                            "upload it again")
        if not self._digest:
            self._digest.append(whole.hexdigest())


async def assemble_in_sink(sink: Sink, job: Assembling) -> None:
    """Have ``sink`` assemble ``job.source`` (staging objects), hashed as it streams from them to the sink."""
    source = job.source
    assert isinstance(source, StagedInSink)
    with naming_sink(sink.name):
        job.assembly = await sink.assemble(job.upload, source)
    job.size, job.sha256 = source.size, await source.sha256()


def _update(hashers: Sequence[Any], data: bytes) -> None:
    for hasher in hashers:
        hasher.update(data)


class _Engine(Protocol):
    """What sink staging asks of the engine (a part of ``EngineServices``, which names this module)."""

    settings: Settings
    store: StateStore
    sink: Sink


class SinkStaging:
    """Staging objects in the sink: written per request, read back at completion, then removed."""

    def __init__(self, engine: _Engine) -> None:
        self.engine = engine

    @property
    def sink(self) -> StagesBytes:
        sink = self.engine.sink
        assert isinstance(sink, StagesBytes)
        return sink

    # -- writing ------------------------------------------------------------------------
    async def put(self, upload_id: str, name: str, body: MeteredBody, size: int,
                  after: Callable[[MeteredBody], None] | None = None) -> ChunkRecord:
        """Stream ``body`` (exactly ``size`` bytes) into staging object ``name``; its record.

        ``after`` runs once the body has ended, before its last byte is acknowledged by the
        sink, and may raise to refuse it. A refused or failed body leaves no object that counts.
        What the body raised (the client's side: too short, a bad digest, gone) is raised as it
        is, whatever the sink made of it; the sink's own failure as the sink raised it (502 or
        503), even when the sink had read only part of the body by then.
        """
        failure: list[Exception] = []  # what reading the body raised (this request's only)

        async def flow() -> AsyncIterator[bytes]:
            # The last piece is held back until ``after`` passed: a refused body never reaches the
            # sink whole, so no object can land (a delete racing a finished PutObject could lose).
            try:
                held = b""
                async for piece in body:
                    if held:
                        yield held
                    held = piece
                if after is not None:
                    after(body)
                if held:
                    yield held
            except Exception as exc:
                failure.append(exc)
                raise

        try:
            await call_sink(self.sink, "put_staged", upload_id, name, flow(), size)
        except BaseException:
            # It may have landed all the same (the refusal came after the last byte): never registered.
            await asyncio.shield(self.drop(upload_id, name))
            if failure:
                raise failure[0] from None
            if body.failure is not None:
                raise body.failure from None
            raise  # the sink's: a body it did not read to its end is not the client's fault
        if body.failure is not None:
            await asyncio.shield(self.drop(upload_id, name))
            raise body.failure
        return body.record()

    async def put_segment(self, upload_id: str, name: str, n: int, body: AsyncIterable[bytes],
                          declared_size: int | None, limit: int, also: Sequence[Any],
                          check: Callable[[int, str], None]) -> ChunkRecord:
        """A tus PATCH body as staging object ``name`` (segment ``n``); its record (size 0: nothing stored).

        With a ``declared_size`` the body streams straight to the sink and a body that ends
        early stores nothing (the client resumes from the offset). Without one, it is spooled
        to a temporary file of this request (at most ``limit`` bytes), removed when it ends.
        """
        def after(metered: MeteredBody) -> None:
            check(metered.received, metered.sha256.hexdigest())

        if declared_size is not None:
            return await self.put(upload_id, name, MeteredBody(n, body, declared_size, None, also), declared_size,
                                  after)
        async with self._spooled(body, limit) as (read, size):
            if size == 0:
                return ChunkRecord(n, 0, "")
            return await self.put(upload_id, name, MeteredBody(n, read(), size, None, also), size, after)

    @contextlib.asynccontextmanager
    async def _spooled(self, body: AsyncIterable[bytes], limit: int
                       ) -> AsyncIterator[tuple[Callable[[], AsyncIterator[bytes]], int]]:
        """``body`` in a temporary file under ``<data_dir>/spool`` that has no name (unlinked at once,
        or O_TMPFILE), so it goes with the request, or with its process should that die."""
        folder = self.engine.settings.storage.data_dir / "spool"
        await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
        spool = await asyncio.to_thread(tempfile.TemporaryFile, dir=folder)
        try:
            size = 0
            async for piece in body:
                size += len(piece)
                if size > limit:
                    raise errors.TooLarge(f"the body runs past the upload's end ({limit} bytes)", limit=limit)
                await asyncio.to_thread(spool.write, piece)
            await asyncio.to_thread(spool.seek, 0)

            async def read() -> AsyncIterator[bytes]:
                while data := await asyncio.to_thread(spool.read, READ_BLOCK):
                    yield data
            yield read, size
        finally:
            await asyncio.to_thread(spool.close)

    # -- reading back and removing -----------------------------------------------------------
    async def pieces(self, upload_id: str, records: dict[int, ChunkRecord]) -> list[Piece]:
        """The staging objects holding ``records``, in order."""
        names = await self.engine.store.claims(upload_id)
        missing = [n for n in sorted(records) if not names.get(n)]
        if missing:
            raise errors.Conflict(f"upload {upload_id}: the staged bytes of chunks {missing[:20]} are not known; "
                                  "delete the upload and upload it again")
        return [Piece(upload_id, names[n], r.size, r.sha256) for n, r in sorted(records.items())]

    def source(self, pieces: Sequence[Piece]) -> StagedInSink:
        return StagedInSink((), self.sink, tuple(pieces))

    async def drop(self, upload_id: str, name: str) -> None:
        """Remove one staging object that does not count, quietly (else the GC sweeps it)."""
        try:
            await call_sink(self.sink, "remove_staged", upload_id, name)
        except Exception as exc:
            log.warning("staging object not removed", extra={"upload_id": upload_id, "error": repr(exc)[:200]})

    async def clear(self, upload_id: str) -> None:
        """Remove every staging object of an upload, quietly (else the GC sweeps them)."""
        try:
            await call_sink(self.sink, "clear_staged", upload_id)
        except Exception as exc:
            log.warning("staging objects not removed", extra={"upload_id": upload_id, "error": repr(exc)[:200]})
