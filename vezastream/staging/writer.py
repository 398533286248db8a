"""Chunk staging on local disk: bodies streamed in, hashed, made durable.

Layout: ``<storage.data_dir>/chunks/<upload id>/<n>.<sha256>``. A chunk is
written under a temporary name (``.<n>.<random>.part``), hashed as it
arrives, fdatasync'ed, then renamed to a name that carries its digest, so a
different body for the same number can never overwrite a stored chunk.
A failed or interrupted body leaves no file behind.

An append upload (tus) instead keeps one file, ``<upload id>.data``, flat in the
staging folder (no folder of its own: one inode, one directory sync less per
upload; an older version's ``<upload id>/data`` is still found, see
:meth:`ChunkStaging.data_path`): each
body is written in place at its offset (:meth:`ChunkStaging.receive_at`), so
its bytes reach the disk once. Bytes past the registered offset are garbage
that the next body at that offset overwrites (see :mod:`vezastream.engine.layouts.append`).
An in-place upload (native chunks) keeps the same one file, created with the
upload; chunk ``n`` is written into its own range of it
(:meth:`ChunkStaging.receive_in_place`, see :mod:`vezastream.engine.layouts.inplace`).
"""

from __future__ import annotations

import asyncio
import errno
import functools
import hashlib
import itertools
import logging
import mmap
import os
import secrets
import shutil
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

import aiofiles.os

from .. import errors
from . import files
from .bodies import fills, known_left
from .buffers import BufferPool, HeldBody, StagedChunk
from .directio import BodyFile
from .digests import LoopPairs, Tee, new_sha256
from .kernelio import SMALL_BODY, KernelIO, placed
from .together import Together

log = logging.getLogger("vezastream.staging")

#: Called with (size, sha256) once a received body's bytes are durable, before it gets its
#: final name (in the last worker thread trip, or on the event loop after a last buffer
#: that was split over threads: it must not block); what it raises (an ``UploadError``)
#: leaves nothing behind.
Check = Callable[[int, str], None]
T = TypeVar("T")

# Each step below is one trip to a worker thread (:func:`_trip`): several system
# calls per trip, and hashing beside the write, so the event loop only moves
# buffers. A body that fits in one buffer costs one trip in all.

#: At most this many received pieces go to one trip; more are joined first (a body that trickles in).
MAX_PIECES = 128
#: At most this many uploads' data-file paths are kept (:meth:`ChunkStaging.data_path`): more
#: than are usually in flight.
DATA_PATHS_KEPT = 4096
#: Pieces smaller than this on average are joined before they go to a thread: hashlib
#: keeps the GIL for small updates, and many of them in worker threads delay the event loop.
SMALL_PIECE = 64 * 1024
#: Buffers at least this large are hashed and written by two threads at once (three when
#: they feed two digests that do not advance in one pass, see digests.py); smaller ones in
#: one trip (a second thread hand-off would cost more than it overlaps).
SPLIT_AT = 256 * 1024
#: The same for a body's last buffer, whose trip also syncs the file; a split costs one
#: more hand-off there (the check runs after the threads), so it pays only when large.
SPLIT_LAST_AT = 1024 * 1024


def gather_pieces(pieces: list[bytes], size: int) -> list[bytes]:
    """The pieces as they came when they are large (no copy), else joined into one."""
    return [b"".join(pieces)] if len(pieces) > 1 and size < SMALL_PIECE * len(pieces) else pieces


def _feed(hasher: "hashlib._Hash", pieces: list[bytes]) -> None:
    for piece in pieces:
        hasher.update(piece)  # releases the GIL (for pieces over 2 KiB)


def _feed_and_write(out: BodyFile, hasher: "hashlib._Hash", pieces: list[bytes]) -> None:
    _feed(hasher, pieces)
    out.write(pieces)


def _open_and_write(opener: Callable[[], int], path: Path, direct: bool, hasher: "hashlib._Hash | None",
                    pieces: list[bytes]) -> BodyFile:
    """Open the body's file and write its first buffer (hashing it too, unless ``hasher`` is None)."""
    out = BodyFile(opener(), path, direct)
    try:
        if hasher is not None:
            _feed_and_write(out, hasher, pieces)
        else:
            out.write(pieces)
    except BaseException:
        out.close()
        raise
    return out


def _trip(fn: Callable[..., T], *args: Any) -> "asyncio.Future[T]":
    """``fn(*args)`` handed to a worker thread now (the loop's default executor), not when a task first runs.

    A coroutine's trip reaches the executor only once the event loop runs its task's
    first step. Timed in one large stream (uvloop), that step ran only once the next
    buffer had been read full from the socket, about 2 ms for 4 MiB on the project's
    machine, and the previous buffer's write waited that long with the disk idle. A
    trip handed over here starts as soon as a thread is free.
    """
    return asyncio.get_running_loop().run_in_executor(None, fn, *args)


def _digests(hasher: Any) -> tuple[Any, ...]:
    """The digests a large buffer feeds, each in a thread of its own (an unpaired :class:`Tee`'s two at
    once; a paired one's advance together in one pass)."""
    return (hasher.first, hasher.second) if isinstance(hasher, Tee) and not hasher.paired else (hasher,)


def _together(writing: "asyncio.Future[T]", hasher: Any, pieces: list[Any]) -> Coroutine[Any, Any, T]:
    """``writing`` (a trip under way), with ``pieces`` hashed into each of the digests meanwhile (their
    trips handed over now); awaited, returns what ``writing`` returns.

    Returns (or raises the first error) only once every trip has returned, so that
    no thread still uses the file or the buffers. If ``writing`` returned a
    :class:`BodyFile` but a hash failed, the file is closed.
    """
    return _all_returned(writing, [_trip(_feed, h, pieces) for h in _digests(hasher)])


async def _all_returned(writing: "asyncio.Future[T]", hashing: list["asyncio.Future[None]"]) -> T:
    done = await asyncio.gather(writing, *hashing, return_exceptions=True)
    failed = [outcome for outcome in done if isinstance(outcome, BaseException)]
    if failed:
        if isinstance(done[0], BodyFile):
            done[0].close()
        try:
            raise failed[0]
        finally:  # no local holds the error, whose traceback holds this frame: no reference cycle
            del done, failed
    return done[0]


def _write(out: BodyFile, hasher: "hashlib._Hash", pieces: list[bytes], size: int, split_at: int
           ) -> Awaitable[None]:
    """Hash and write one buffer (one of ``split_at`` bytes or more in several worker threads at once);
    the trips are handed over now. Awaited, returns when all is done."""
    if size < split_at:
        return _trip(_feed_and_write, out, hasher, pieces)
    return _together(_trip(BodyFile.write, out, pieces), hasher, pieces)


def _first_write(opener: Callable[[], int], path: Path, direct: bool, hasher: "hashlib._Hash",
                 pieces: list[bytes], size: int, split_at: int) -> Awaitable[BodyFile]:
    """Like :func:`_write`, for the first buffer: the file is opened in the writing trip (one hand-off less)."""
    if size < split_at:
        return _trip(_open_and_write, opener, path, direct, hasher, pieces)
    return _together(_trip(_open_and_write, opener, path, direct, None, pieces), hasher, pieces)


async def _filled(body: Any, buffers: Sequence[mmap.mmap], limit: int
                  ) -> AsyncIterator[tuple[list[memoryview], int, bool]]:
    """A body that fills buffers, a buffer at a time: (its bytes, their length, whether this is the end).

    ``buffers`` are filled in turn, so a buffer handed out is filled again once
    the one after it is full: the caller's write of it must be done by then (it
    is: each write settles the previous one first).
    """
    size = 0
    for turn in itertools.count():
        view = memoryview(buffers[turn % len(buffers)])
        room = min(len(view), limit + 1 - size)  # one byte past the limit tells a body too large
        fill = 0
        while fill < room:
            n = await body.readinto(view[fill:room])
            if not n:
                break
            fill += n
        size += fill
        if size > limit:
            raise errors.TooLarge(f"body runs past the {limit} bytes expected", limit=limit)
        if fill < len(view):
            yield ([view[:fill]] if fill else []), fill, True
            return
        # A body that ends with this buffer says so (its length is known): this buffer is then written
        # and synced in the last trip, instead of a trip for it and one more to sync.
        last = known_left(body) == 0
        yield [view], fill, last
        if last:
            return


def _write_last(out: BodyFile | None, opener: Callable[[], int], tmp: Path, hasher: "hashlib._Hash | None",
                rest: list[bytes], sync: bool, direct: bool) -> None:
    """Open if not yet, hash (unless ``hasher`` is None) and write the rest, sync, close (blocking).

    Owns ``out`` (closes it whatever happens).
    """
    if out is None:
        out = BodyFile(opener(), tmp, direct)
    try:
        if hasher is not None:
            _feed(hasher, rest)
        out.write(rest)
        out.finish()
        if sync:
            os.fdatasync(out.fd)
    finally:
        out.close()


def _name(tmp: Path, size: int, digest: str, sync: bool, check: Check | None,
          final_for: Callable[[str], Path] | None) -> Path:
    """Check the durable body, then give it its final name (when ``final_for``); returns where it is."""
    if check is not None:
        check(size, digest)
    if final_for is None:
        return tmp
    final = final_for(digest)
    os.replace(tmp, final)
    if sync:
        files.fsync_dir(final.parent)
    return final


def _finish(out: BodyFile | None, opener: Callable[[], int], tmp: Path, hasher: "hashlib._Hash",
            rest: list[bytes], size: int, sync: bool, direct: bool, check: Check | None,
            final_for: Callable[[str], Path] | None) -> Path:
    """The last trip of a body whose last buffer is small: :func:`_write_last`, then :func:`_name`."""
    _write_last(out, opener, tmp, hasher, rest, sync, direct)
    return _name(tmp, size, hasher.hexdigest(), sync, check, final_for)


async def _write_whole(write: Callable[..., Awaitable[None]], fd: int, offset: int, sync: bool) -> None:
    """A body at ``offset`` of ``fd`` (made durable when ``sync``) by the kernel's AIO
    (:meth:`KernelIO.write` or :meth:`KernelIO.write_placed`, the body bound); closes ``fd``."""
    try:
        await write(fd=fd, offset=offset, sync=sync)
    finally:
        os.close(fd)


class ChunkStaging:
    """Where chunk bodies wait, on this node's disk, until completion."""

    def __init__(self, root: Path, durable: bool = True, direct_io: bool = True) -> None:
        self.root = root
        self.durable = durable
        self.direct_io = direct_io  # whole blocks with O_DIRECT where the filesystem allows (staging/directio.py)
        #: The page-aligned buffers bodies are received into (buffers.py).
        self.buffers = BufferPool()
        #: Uploads whose data file an older version made in a folder of their own (``<id>/data``),
        #: found once at start-up; they go as they are completed or removed.
        self._foldered = files.foldered_data_files(root)
        #: Each upload's data-file path, made once: a tus upload asks for it 12 times (its creation,
        #: each PATCH's lock and write, completion), and a ``Path`` and its text cost about 3 us.
        self._data_paths: dict[str, Path] = {}
        #: Creating, cutting and removing data files: many uploads' calls in one thread trip.
        self._together = Together()
        #: Small bodies written by the kernel's AIO from the event loop (kernelio.py), once
        #: :meth:`start_kernel_io` found it usable; None: every write goes to a worker thread.
        self.kernel: KernelIO | None = None
        #: Small bodies' digests, hashed two by two on the event loop (digests.py).
        self.loop_pairs = LoopPairs()
        #: How many requests met an I/O error of this disk (``errors.StorageFailed``), and how many of
        #: those a write that succeeded since has cleared (:meth:`check`): readiness fails while they differ.
        self.io_errors = 0
        self._io_errors_cleared = 0
        #: Readiness's write probe under way (one at a time), and ``io_errors`` when it began.
        self._probing: tuple[asyncio.Future[None], int] | None = None

    def start_kernel_io(self, setting: str) -> None:
        """At start-up, on the event loop: ``storage.kernel_io`` ("auto" or "off"), see kernelio.py."""
        self.kernel = KernelIO.start(self.root, setting)

    def upload_dir(self, upload_id: str) -> Path:
        """An upload's own folder: its chunk files (only layouts that stage chunks on their own make it)."""
        return self.root / upload_id

    def chunk_path(self, upload_id: str, n: int, sha256: str) -> Path:
        return self.upload_dir(upload_id) / f"{n}.{sha256}"

    def data_path(self, upload_id: str) -> Path:
        """An append or in-place upload's one data file: ``<id>.data`` (an older version's: ``<id>/data``)."""
        path = self._data_paths.get(upload_id)
        if path is None:
            if upload_id in self._foldered:
                path = self.upload_dir(upload_id) / files.FOLDERED_DATA
            else:
                path = self.root / f"{upload_id}{files.DATA_SUFFIX}"
            os.fspath(path)  # its text, which the Path keeps, made now rather than at each system call
            if len(self._data_paths) >= DATA_PATHS_KEPT:
                self._data_paths.clear()
            self._data_paths[upload_id] = path
        return path

    def holds(self, upload_id: str) -> bool:
        """Does anything of the upload wait here (its data file, its folder)? Blocking."""
        return any(path.exists() for path in (self.data_path(upload_id), self.upload_dir(upload_id),
                                              self._removing(upload_id)))

    def _removing(self, upload_id: str) -> Path:
        """Where the upload's folder is while :meth:`remove_upload` removes it (files.REMOVING_SUFFIX)."""
        return self.root / f"{upload_id}{files.REMOVING_SUFFIX}"

    def io_failed(self) -> None:
        """A request met an I/O error of this disk (EIO): readiness fails until a write here succeeds."""
        self.io_errors += 1

    async def check(self) -> None:
        """Readiness: can bodies be written here? ``files.check_folder`` (read-only, not a folder, not
        writable); then ``files.write_probe``, a page written and synced here, while bodies are being
        received (a local disk that stalls answers ``check_folder`` from the kernel's caches while every
        body's sync waits) and once requests met an I/O error (:meth:`io_failed`): the disk fails until
        such a page is written. An idle disk that met no error is never written to."""
        await asyncio.to_thread(files.check_folder, self.root)
        if self.io_errors > self._io_errors_cleared or self.receiving:
            await self._write_probe()

    async def _write_probe(self) -> None:
        """One probe at a time: a check that comes while one waits for a stalled disk waits for it too
        (a thread each would pile up in the pool the bodies' writes use). Clears the I/O errors met before
        the probe began; a later one asks for another."""
        if self._probing is None:
            probe = asyncio.ensure_future(asyncio.to_thread(files.write_probe, self.root))
            self._probing = probe, self.io_errors

            def done(_: object) -> None:
                self._probing = None
                if not probe.cancelled():
                    probe.exception()  # retrieved: every check that waited may have timed out
            probe.add_done_callback(done)
        probe, met = self._probing
        await asyncio.shield(probe)
        self._io_errors_cleared = max(self._io_errors_cleared, met)

    @property
    def receiving(self) -> int:
        """Bodies being received now."""
        return self.buffers.receiving

    @property
    def filling(self) -> int:
        """Bodies being received straight into the pool's buffers now."""
        return self.buffers.filling

    def close(self) -> None:
        """At shutdown: no trim left pending, no idle buffer kept, the kernel's AIO context closed."""
        self.buffers.close()
        if self.kernel is not None:
            self.kernel.close()
            self.kernel = None

    async def receive(self, upload_id: str, n: int, body: AsyncIterable[bytes], limit: int,
                      hasher: "hashlib._Hash | None" = None, check: Check | None = None,
                      final_for: Callable[[str], Path] | None = None) -> StagedChunk:
        """Stream ``body`` to a temporary file; raise ``TooLarge`` past ``limit`` bytes.

        ``check(size, sha256)`` then runs, once the bytes are durable; with
        ``final_for(sha256) -> Path`` the file is also renamed there, durably,
        in the same trip. Without it, the temporary file is returned and the
        caller commits or discards it.
        """
        tmp = self.upload_dir(upload_id) / f".{n}.{secrets.token_hex(6)}.part"
        return await self._stream(functools.partial(files.open_new, tmp), tmp, body, limit,
                                  hasher, check, final_for, on_failure=functools.partial(files.remove_quietly, tmp))

    async def lock_data_file(self, upload_id: str) -> int | None:
        """Open an append upload's data file and take its writer lock, or ``AppendBusy``.

        The lock (``flock``, seen by every process that shares the file) is held
        until the returned descriptor is closed, and goes when its process dies.
        None when there is no data file to lock: uploads get theirs when they are
        created, but one made by an older version may have none yet.
        """
        if self.kernel is not None:  # a local filesystem (kernelio.py): an open and an flock, no thread trip
            return files.lock_data_file(self.data_path(upload_id))
        locking = asyncio.ensure_future(asyncio.to_thread(files.lock_data_file, self.data_path(upload_id)))
        try:
            return await asyncio.shield(locking)
        except asyncio.CancelledError:  # the thread may still take the lock: let it go at once
            locking.add_done_callback(files.close_if_opened)
            raise
        finally:  # (the future holds what the thread raised, whose traceback holds this frame)
            del locking

    async def unlock_data_file(self, fd: int) -> None:
        """Close ``lock_data_file``'s descriptor, which lets the writer lock go: on the event loop on a
        local filesystem, as it was taken; else in a worker-thread trip, since a close on a network
        filesystem may wait for its server (one that stalls would hold the event loop)."""
        await self._file_call(functools.partial(os.close, fd))

    async def receive_at(self, upload_id: str, offset: int, body: AsyncIterable[bytes], limit: int,
                         hasher: "hashlib._Hash | None" = None, check: Check | None = None,
                         locked: int | None = None, admitted: Awaitable[int | None] | None = None,
                         size: int | None = None) -> StagedChunk:
        """Write ``body`` into the upload's data file at ``offset``, durably; ``TooLarge`` past ``limit``.

        The caller must be the upload's only writer (the append lease, and the
        writer lock whose descriptor is ``locked``). Nothing is removed on
        failure: what was written lies past the registered offset. The data
        file must already hold ``offset`` bytes (else ``Conflict``).

        ``admitted``: the body is received before the caller is that writer.
        Its first buffer fills while ``admitted`` is awaited; nothing is written
        until it gives the writer lock's descriptor (in place of ``locked``),
        and if it raises, the body fails with that error, having written nothing.
        ``size``: the body's length when it is known (its ``Content-Length``).
        """
        path = self.data_path(upload_id)
        opener = functools.partial(files.open_at, path, offset, self.durable, locked)
        if admitted is None and locked is not None and self._reserve_whole(size):
            return await self._receive_whole(opener, path, offset, body, limit, size or 0, hasher, check)
        if admitted is not None:
            async def opening() -> Callable[[], int]:
                return functools.partial(files.open_at, path, offset, self.durable, await admitted)
            return await self._stream(opener, path, body, limit, hasher, check, None, admitted=opening())
        return await self._stream(opener, path, body, limit, hasher, check, None)

    async def _file_call(self, fn: Callable[[], T], sync: Path | None = None, quick: bool = True) -> T:
        """A few quick system calls (``fn``), then the folder ``sync`` synced if given: on the event loop,
        the sync by the kernel's AIO, where that is on (kernelio.py); else (or when the caller knows
        them not to be ``quick``) in a worker-thread trip shared with other requests' calls (together.py)."""
        if self.kernel is None or not quick:
            return await self._together.call(fn, sync)
        result = fn()
        if sync is not None:
            await self.kernel.sync_path(sync)
        return result

    async def create_data_file(self, upload_id: str) -> None:
        """Create an upload's empty data file (in place, or append), durably (its entry in the folder included).

        Always in a shared worker-thread trip, kernel AIO or not: a new inode waits for the journal, which
        the syncs of other requests keep busy, and the event loop would wait with it (W2 ran 4-9 % faster
        this way; docs/performance.md). The creates of one trip share one sync of the folder."""
        path = self.data_path(upload_id)
        await self._file_call(functools.partial(files.create_empty, path), path.parent if self.durable else None,
                              quick=False)

    async def receive_in_place(self, upload_id: str, offset: int, body: AsyncIterable[bytes], limit: int,
                               check: Check | None = None, hasher: "hashlib._Hash | None" = None,
                               hold: bool = False) -> StagedChunk:
        """Write ``body`` into the upload's data file at ``offset``, durably; ``TooLarge`` past ``limit``.

        The caller must hold the claim on that range. Nothing is removed on
        failure: the range holds garbage until a chunk is registered there.
        ``hold``: when the whole body was received into buffers that still hold
        it, the result's ``held`` keeps them (and the caller must release it).
        """
        path = self.data_path(upload_id)
        opener = functools.partial(files.open_positioned, path, offset)
        if self._reserve_whole(limit):
            return await self._receive_whole(opener, path, offset, body, limit, limit, hasher, check, hold)
        return await self._stream(opener, path, body, limit, hasher, check, None, hold)

    def _reserve_whole(self, size: int | None) -> bool:
        """Whether a body of ``size`` bytes goes to the kernel's AIO (kernelio.py); if so, its bytes are
        counted against the buffer budget (:meth:`_receive_whole` gives them back)."""
        return (self.kernel is not None and size is not None and 0 < size <= SMALL_BODY
                and self.buffers.reserve(size))

    async def _receive_whole(self, opener: Callable[[], int], path: Path, offset: int, body: AsyncIterable[bytes],
                             limit: int, reserved: int, hasher: "hashlib._Hash | None", check: Check | None,
                             hold: bool = False) -> StagedChunk:
        """A small body gathered and hashed on the event loop, then written at ``offset`` and made
        durable by the kernel's AIO, with no worker thread (kernelio.py).

        As :meth:`_stream`: ``TooLarge`` past ``limit``, ``check`` once the bytes are durable;
        ``hold`` keeps the bytes for the caller (:class:`HeldBody`). ``reserved``: the bytes
        :meth:`_reserve_whole` counted for it, given back at the end (or when the HeldBody is released).
        """
        hasher = hasher or new_sha256()
        kernel = self.kernel
        assert kernel is not None
        pool = self.buffers
        pool.body_began()
        held: HeldBody | None = None
        try:
            pieces: list[bytes] = []
            size = 0
            async for piece in body:
                size += len(piece)
                if size > limit:
                    raise errors.TooLarge(f"body runs past the {limit} bytes expected", limit=limit)
                pieces.append(piece)
            if kernel.aligned:  # placed in memory for O_DIRECT (kernelio.py): its whole blocks skip the page cache
                payload: bytes | memoryview = placed(pieces, size, offset)
                pieces.clear()
                write = functools.partial(kernel.write_placed, path=path, view=payload, direct=self.direct_io)
            else:
                payload = bytes(pieces[0]) if len(pieces) == 1 else b"".join(pieces)
                pieces.clear()  # the payload holds the bytes now: not twice while the kernel writes them
                write = functools.partial(kernel.write, payload=payload)
            if size:
                fd = opener()
                # Shielded, and waited for if the request fails meanwhile: until the kernel's write
                # returns, the descriptor (and with it a writer lock it duplicates) and the buffer stay.
                writing = asyncio.ensure_future(_write_whole(write, fd, offset, self.durable))
                hashing = self.loop_pairs.update(hasher, payload)  # at the loop's next turn (digests.LoopPairs)
                try:
                    await asyncio.shield(writing)
                except BaseException:
                    if not writing.done():
                        await asyncio.wait([writing])
                    raise
                self.loop_pairs.settle()  # nothing left to hash by now, unless the write returned first
                hashing.done()
            digest = hasher.hexdigest()
            if check is not None:
                check(size, digest)
            if hold and size:
                held = HeldBody([memoryview(payload)], functools.partial(pool.unreserve, reserved))
        finally:
            pool.body_ended()
            if held is None:
                pool.unreserve(reserved)
        return StagedChunk(path, size, digest, held)

    async def truncate(self, upload_id: str, length: int) -> None:
        """Cut an append upload's data file to ``length`` bytes (dropping garbage past it)."""
        path = self.data_path(upload_id)
        sync_here = self.durable and self.kernel is None

        def cut() -> bool:
            """Whether the file was cut."""
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                raise errors.Conflict("the upload's bytes are not staged on this node") from None
            try:
                size = os.fstat(fd).st_size
                if size < length:
                    raise errors.Conflict(f"only {size} of the upload's {length} bytes are staged on this node")
                if size > length:
                    os.ftruncate(fd, length)
                    if sync_here:
                        os.fdatasync(fd)
                return size > length
            finally:
                os.close(fd)
        if await self._file_call(cut) and self.durable and self.kernel is not None:
            await self.kernel.sync_path(path, data_only=True)

    async def _stream(self, opener: Callable[[], int], tmp: Path, body: AsyncIterable[bytes], limit: int,
                      hasher: "hashlib._Hash | None", check: Check | None,
                      final_for: Callable[[str], Path] | None, hold: bool = False,
                      on_failure: Callable[[], None] | None = None,
                      admitted: Awaitable[Callable[[], int]] | None = None) -> StagedChunk:
        """Receive ``body`` into the file ``opener()`` opens (in a worker thread, with the first write).

        ``admitted``: awaited before the first trip (receiving goes on until then, into the
        first buffer); it gives the opener to use instead of ``opener``.

        ``on_failure`` runs when the body fails, once no thread writes any more: after
        the request's failure, or, when the request is cancelled meanwhile (a server
        that cancels handlers when their client goes), when the last trip returns.
        """
        hasher = hasher or hashlib.sha256()
        size = 0
        held: HeldBody | None = None
        out: BodyFile | None = None
        in_flight: asyncio.Future[Any] | None = None
        opening: asyncio.Future[BodyFile] | None = None

        async def settle() -> None:
            # The buffer in flight is written and hashed; after the first, the file is open.
            nonlocal out
            if in_flight is not None:
                await asyncio.shield(in_flight)
                if out is None and opening is not None:
                    out = opening.result()

        async def admit() -> None:
            # Nothing goes to a thread (nothing is written) before the caller may write.
            nonlocal opener, admitted
            if admitted is not None:
                gate, admitted = admitted, None
                opener = await gate

        async def write(data: list[bytes], length: int) -> None:
            # Double buffering: the previous buffer's write+hash finishes (in order) while
            # this one was being received; this one then goes to a thread while the next
            # arrives. The file is opened in the first write's trip, so a body that trickles
            # in holds no descriptor until it has a buffer's worth. Shielded: if the request
            # is cancelled, the thread still owns the file until it returns.
            nonlocal in_flight, opening
            await admit()
            await settle()
            gathered = gather_pieces(data, length)
            if out is None:
                opening = in_flight = asyncio.ensure_future(
                    _first_write(opener, tmp, self.direct_io, hasher, gathered, length, split_at))
            else:
                in_flight = asyncio.ensure_future(_write(out, hasher, gathered, length, split_at))

        pool = self.buffers
        pool.body_began()
        buffers = pool.take(pair=hold) if fills(body) else None
        # A body with one buffer waits for each write before it receives more, while other bodies
        # keep the cores busy: one trip per buffer then costs less than splitting it over threads.
        split_at = SPLIT_AT if buffers is None or len(buffers) > 1 else limit + 1
        try:
            rest: list[Any] = []  # the last buffer's worth, for _finish
            if buffers is not None:
                received: list[memoryview] = []  # the body, while no buffer is filled twice
                async for view, length, last in _filled(body, buffers, limit):
                    size += length
                    received.extend(view)
                    if last:
                        rest = view
                    else:
                        await write(view, length)
                        if len(buffers) == 1:  # refilled next: its write must be done first
                            await settle()
            else:
                # The pieces aiohttp hands over are kept as they are, never joined: a buffer's
                # worth of them goes to the worker thread as one list (hashed, then one writev).
                threshold, buffered = pool.buffer_size(), 0
                async for piece in body:
                    size += len(piece)
                    if size > limit:
                        raise errors.TooLarge(f"body runs past the {limit} bytes expected", limit=limit)
                    rest.append(piece)
                    buffered += len(piece)
                    if len(rest) >= MAX_PIECES:  # a body that trickles in tiny pieces
                        rest = [b"".join(rest)]
                    if buffered >= threshold:
                        await write(rest, buffered)
                        rest, buffered = [], 0
                rest = gather_pieces(rest, buffered)
            await admit()
            await settle()
            out, owned = None, out  # the last trip owns (and closes) the file from here
            if sum(len(piece) for piece in rest) < max(SPLIT_LAST_AT, split_at):
                in_flight = _trip(_finish, owned, opener, tmp, hasher, rest, size,
                                  self.durable, self.direct_io, check, final_for)
                path = await asyncio.shield(in_flight)
            else:  # the digests are computed while the last buffer is written and synced
                in_flight = asyncio.ensure_future(_together(
                    _trip(_write_last, owned, opener, tmp, None, rest, self.durable, self.direct_io), hasher, rest))
                await asyncio.shield(in_flight)
                digest = hasher.hexdigest()
                if final_for is None:
                    path = _name(tmp, size, digest, self.durable, check, None)
                else:
                    in_flight = _trip(_name, tmp, size, digest, self.durable, check, final_for)
                    path = await asyncio.shield(in_flight)
            if hold and buffers is not None and 0 < len(received) <= len(buffers):
                held = HeldBody(received, functools.partial(pool.keep, buffers))
        except BaseException:
            if isinstance(admitted, Coroutine):  # never awaited: closed, not left to warn
                admitted.close()
            def close_owned(_: object = None) -> None:  # once no thread writes: the file this body opened
                owned = out
                if owned is None and in_flight is opening and opening is not None and not opening.cancelled() \
                        and opening.exception() is None:
                    owned = opening.result()  # it failed after (or was cancelled during) the first write
                if owned is not None:
                    owned.close()
                if on_failure is not None:
                    on_failure()
            if in_flight is not None and not in_flight.done():
                try:
                    await asyncio.wait([in_flight])
                except asyncio.CancelledError:  # cancelled again while waiting: close it when it returns
                    in_flight.add_done_callback(close_owned)
                    raise
            close_owned()
            # The futures hold what a thread raised, whose traceback holds this frame (and its
            # buffers): dropped, so that no reference cycle outlives the request.
            in_flight = opening = None
            raise
        finally:
            pool.body_ended()
            if buffers is not None:  # kept for reuse only when no thread uses them (nor a HeldBody)
                pool.give(buffers, reuse=held is None and (in_flight is None or in_flight.done()))
        return StagedChunk(path, size, hasher.hexdigest(), held)

    async def discard(self, path: Path) -> None:
        try:
            await aiofiles.os.remove(path)
        except FileNotFoundError:
            pass

    async def remove_upload(self, upload_id: str) -> None:
        """Remove all that waits here of the upload: its data file and its folder (either may be absent)."""
        data, folder = self.data_path(upload_id), self.upload_dir(upload_id)
        removing = self._removing(upload_id)

        def remove() -> list[Path]:
            files.remove_quietly(data)
            try:  # renamed first: removing its files one by one makes the folder look new to the GC
                folder.rename(removing)
            except FileNotFoundError:
                pass
            except OSError:  # an earlier removal's leftover in the way: both go
                return [folder, removing]
            return [removing] if removing.exists() else []
        # A large file that only staging names frees its blocks as it goes: not on the event loop.
        quick = self.kernel is None or files.quick_to_remove(data)
        for walked in await self._file_call(remove, quick=quick):  # a walk of its own, holding up no other call
            await asyncio.to_thread(shutil.rmtree, walked, True)
        self._foldered.discard(upload_id)
        self._data_paths.pop(upload_id, None)

    async def remove_or_leave(self, upload_id: str) -> bool:
        """:meth:`remove_upload`, for an upload recorded completed or forgotten: a folder that refuses
        the removal (read-only, immutable: ``files.FOLDER_REFUSALS``) is logged, and its files are
        left for a later GC pass (False); other errors are raised."""
        try:
            await self.remove_upload(upload_id)
        except OSError as exc:
            if exc.errno not in files.FOLDER_REFUSALS:
                raise
            log.warning("staged files not removed", extra={"upload_id": upload_id, "error": exc.strerror})
            return False
        return True

    def list_uploads(self) -> list[tuple[str, float]]:
        """(upload id, last modification time) of every upload with a data file or a folder here;
        0 for one whose removal was cut short (its folder renamed, not yet gone).

        The folder is read as it is walked: a list of its entries (each keeps its path and stat)
        would hold some 1 KB per upload at once, 1 GB for a million; the answer holds ~160 B each."""
        try:
            entries = os.scandir(self.root)
        except OSError as exc:  # removed, or a file (or a link that loops) put in its place: nothing staged
            if exc.errno not in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                raise
            return []
        found: dict[str, float] = {}
        cut_short: set[str] = set()  # a removal began: due, however new (files.REMOVING_SUFFIX)
        with entries:
            for entry in entries:
                name = entry.name
                if name.endswith(files.REMOVING_SUFFIX) and entry.is_dir(follow_symlinks=False):
                    cut_short.add(name[:-len(files.REMOVING_SUFFIX)])
                    continue
                if entry.is_dir(follow_symlinks=False):
                    upload_id = name
                elif name.endswith(files.DATA_SUFFIX) and entry.is_file(follow_symlinks=False):
                    upload_id = name[:-len(files.DATA_SUFFIX)]
                else:
                    continue
                try:
                    mtime = entry.stat(follow_symlinks=False).st_mtime
                except FileNotFoundError:
                    continue
                found[upload_id] = max(mtime, found.get(upload_id, mtime))
        found.update(dict.fromkeys(cut_short, 0.0))
        return list(found.items())


