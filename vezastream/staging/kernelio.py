"""Small bodies written by the kernel's own asynchronous I/O, from the event loop (Linux native AIO).

A body written in a worker thread costs its request hand-offs of the GIL
between the event loop and that thread; with hundreds of small requests at
once, those hand-offs, not the cores or the disk, set the rate
(docs/performance.md, "What sets W2's rate"). A body of at most
:data:`SMALL_BODY` bytes is therefore gathered and hashed on the event loop,
then written through the page cache and made durable (``fdatasync``) by
Linux native AIO (``io_submit`` of a write and of an ``IOCB_CMD_FDSYNC``,
through the ``caio`` library), whose completions the event loop reads from
an eventfd: no thread at all. Durability is the same as the worker threads'
``pwrite`` and ``fdatasync``. An upload's other file calls (creating its
data file, cutting and removing it, and the local sink's link and rename)
are a few quick system calls made on the event loop, and the syncs after
them (of the file, of its folder) go to the kernel's AIO too
(:meth:`KernelIO.sync_path`).

Where the system has ``libaio`` (Debian's ``libaio1``; the Python package
``libaio`` comes with the fast extra), a body is instead copied into memory
placed so that the file's block boundaries fall on page boundaries
(:func:`placed`), and its whole 4 KiB blocks go to the disk with
``O_DIRECT``, as the worker threads write large bodies (directio.py): no
page of the page cache is filled for them. Filling fresh page-cache pages
costs the CPU twice what the direct write does, and here that cost would
fall on the event loop (1.7-1.9 against 0.7-0.8 CPU-s/GiB on the machine we
measure on; into pages just freed, 0.6 against 0.8: scripts/bench_pagecache.py,
docs/performance.md, "Fresh page-cache pages"). The blocks' range is allocated first
(``fallocate``), so that the write does not extend the file: ext4 makes a
direct write that extends a file wait in ``io_submit`` for the disk, which
would stop the event loop. A body of whole blocks is made durable by its
one write (``RWF_DSYNC``); the unaligned head and tail of another go through
the page cache, then an ``fdatasync``. Without ``libaio`` (``caio`` takes
only ``bytes``, which are not aligned), every small body goes through the
page cache.

It needs Linux, ``caio`` or ``libaio`` (``pip install 'vezastream[fast]'``)
and a data folder on a local filesystem: the writer lock (``open`` and
``flock``) is then taken on the event loop too, which on a network
filesystem would be a round trip holding up every request.
``storage.kernel_io = "off"`` keeps every write in the worker threads.
"""

from __future__ import annotations

import asyncio
import collections
import ctypes
import errno
import functools
import logging
import os
from pathlib import Path
from typing import Any

from .directio import BLOCK
from .together import retrieved

log = logging.getLogger("vezastream.staging")

#: Bodies of at most this many bytes are written by the kernel's AIO, hashed on the event loop
#: (about 0.15 ms of SHA-256 here); larger ones keep the worker threads' buffered path.
SMALL_BODY = 256 * 1024
#: Operations in flight at once (caio queues more until one completes; so does LibaioContext).
MAX_IN_FLIGHT = 1024
#: How long closing a LibaioContext waits for the operations still in the kernel (s).
CLOSE_WAIT = 5.0
#: Filesystems on which opening and locking a file on the event loop costs no network round trip.
LOCAL_FILESYSTEMS = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "f2fs", "zfs", "bcachefs", "overlay"})
#: caio reports a failed operation as ``SystemError(strerror(errno))``: its number back from its text.
_ERRNO_BY_TEXT = {os.strerror(number): number for number in errno.errorcode}


def filesystem_of(path: Path, mountinfo: str) -> str | None:
    """The type of the filesystem ``path`` (absolute, resolved) lives on, from ``/proc/self/mountinfo``'s text."""
    best, kind = "", None
    target = str(path)
    for line in mountinfo.splitlines():
        fields, sep, rest = line.partition(" - ")
        parts = fields.split()
        if not sep or len(parts) < 5:
            continue
        point = parts[4].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):  # the last of equal mount points is the one on top
            best, kind = point, rest.split()[0] if rest.split() else None
    return kind


def _local(path: Path) -> bool:
    try:
        with open("/proc/self/mountinfo") as fh:
            mountinfo = fh.read()
    except OSError:
        return False
    return filesystem_of(path.resolve(), mountinfo) in LOCAL_FILESYSTEMS


def as_os_error(exc: BaseException) -> OSError:
    """caio's ``SystemError`` as the ``OSError`` it stands for (``ENOSPC``, ``EIO``...)."""
    text = str(exc)
    return OSError(_ERRNO_BY_TEXT.get(text, errno.EIO), text)


class KernelIO:
    """Writes and syncs through one Linux native AIO context bound to the running event loop."""

    @classmethod
    async def started(cls, data_dir: Path, setting: str) -> KernelIO | None:
        """:meth:`start`, from a coroutine on a running server: where ``data_dir`` lives is looked up in a
        worker thread (its path is resolved on its own disk, and a disk that stalls would hold the
        event loop with it)."""
        if setting == "off":
            return None
        return cls.start(data_dir, setting, local=await asyncio.to_thread(_local, data_dir))

    def __init__(self, context: Any, aligned: bool = False) -> None:
        self._context = context
        #: Whether it writes from any memory (libaio), so page-aligned buffers can go with O_DIRECT
        #: (:meth:`write_placed`); else (caio) :meth:`write` takes ``bytes`` through the page cache.
        self.aligned = aligned

    @classmethod
    def start(cls, data_dir: Path, setting: str, backends: tuple[str, ...] = ("libaio", "caio"),
              local: bool | None = None) -> KernelIO | None:
        """One for the running loop, or None: ``setting`` "off", no Linux AIO library (``backends``, the
        first that works), a network filesystem (``local``: whether ``data_dir`` is on a local one, when
        the caller knows; else looked up, resolving its path on its own disk)."""
        if setting == "off":
            return None
        if not (_local(data_dir) if local is None else local):
            log.info("kernel_io off: the data folder is not on a local filesystem", extra={"path": str(data_dir)})
            return None
        for backend in backends:
            try:
                if backend == "libaio":
                    return cls(LibaioContext(asyncio.get_running_loop()), aligned=True)
                from caio.linux_aio_asyncio import AsyncioContext
                return cls(AsyncioContext(max_requests=MAX_IN_FLIGHT))
            except ImportError:  # not installed (the fast extra), or not Linux
                continue
            except (OSError, SystemError) as exc:  # no libaio.so.1; io_setup refused (aio-max-nr reached, a sandbox)
                log.info("kernel_io: %s is not usable here", backend, extra={"error": repr(exc)})
                continue
        log.warning("kernel_io off: Linux AIO is not available here (neither libaio nor caio)")
        return None

    async def write(self, fd: int, payload: bytes, offset: int, sync: bool) -> None:
        """All of ``payload`` at ``offset`` of ``fd``, then ``fdatasync`` when ``sync``; failures as ``OSError``."""
        try:
            done = 0
            while done < len(payload):
                n = await self._context.write(payload[done:] if done else payload, fd, offset + done)
                if n <= 0:
                    raise OSError(errno.EIO, "the write made no progress")
                done += n
            if sync:
                await self._context.fdsync(fd)
        except SystemError as exc:
            raise as_os_error(exc) from None

    async def write_placed(self, fd: int, path: Path, view: memoryview, offset: int, sync: bool,
                           direct: bool) -> None:
        """``view`` at ``offset`` of ``fd``, then ``fdatasync`` when ``sync`` (only where :attr:`aligned`).

        ``view`` lies in page-aligned memory, ``offset % BLOCK`` bytes into a page, so that the
        file's block boundaries fall on page boundaries. With ``direct``, its whole blocks go with
        ``O_DIRECT`` (a descriptor of its own, opened from ``path``) after their range is allocated;
        the rest, or all of it where the filesystem refuses ``O_DIRECT``, through the page cache.
        Returns once every write has ended, also when one failed (the memory is then free to reuse).
        """
        end = offset + len(view)
        first, last = -(-offset // BLOCK) * BLOCK, end // BLOCK * BLOCK  # the whole blocks: [first, last)
        direct_fd = _open_direct(path) if direct and last > first else -1
        try:
            if direct_fd >= 0:
                os.posix_fallocate(fd, first, last - first)  # (glibc may emulate it by writes: not O_DIRECT ones)
                spans = [(fd, view[:first - offset], offset), (direct_fd, view[first - offset:last - offset], first),
                         (fd, view[last - offset:], last)]
            else:
                spans = [(fd, view, offset)]
            spans = [(span_fd, span, at) for span_fd, span, at in spans if len(span)]
            # A body of whole blocks only is made durable by its one write (RWF_DSYNC: the kernel syncs
            # what it needs once the write is done), not by a write and then an fdatasync.
            dsync = sync and len(spans) == 1 and spans[0][0] == direct_fd
            if len(spans) == 1:  # (most bodies: no task for gather to wrap it in, about 7 us)
                durable = await self._write_span(*spans[0], fd, dsync)
            else:
                durable = True
                for outcome in await asyncio.gather(*(self._write_span(span_fd, span, at, fd, dsync)
                                                      for span_fd, span, at in spans), return_exceptions=True):
                    if isinstance(outcome, BaseException):
                        raise outcome
                    durable = durable and outcome
            if sync and not durable:
                await self._context.fdsync(fd)
        except SystemError as exc:
            raise as_os_error(exc) from None
        finally:
            if direct_fd >= 0:
                os.close(direct_fd)

    async def _write_span(self, fd: int, view: memoryview, offset: int, buffered_fd: int, dsync: bool) -> bool:
        """All of ``view`` at ``offset`` of ``fd``; a direct write that the device refuses or cuts
        short off its block boundary is finished through ``buffered_fd`` (the page cache).
        Whether the bytes are durable already: all written with ``dsync`` (direct writes only)."""
        durable = dsync
        while view:
            try:
                n = await self._context.write(view, fd, offset, dsync=durable and fd != buffered_fd)
            except OSError as exc:
                if fd == buffered_fd or exc.errno != errno.EINVAL:
                    raise
                n = 0  # O_DIRECT opened but refused (an alignment this device does not take)
            if n <= 0 or (fd != buffered_fd and n % BLOCK):
                if fd == buffered_fd:
                    raise OSError(errno.EIO, "the write made no progress")
                fd, durable = buffered_fd, False
            view, offset = view[n:], offset + n
        return durable

    async def sync_path(self, path: Path, data_only: bool = False) -> None:
        """``fsync`` (``fdatasync`` when ``data_only``) of the file or folder ``path``, by the kernel's AIO.

        Its descriptor is closed once the kernel's sync is done, also when the caller is cancelled
        meanwhile (the sync still runs: the caller just does not wait for it)."""
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        syncing = asyncio.ensure_future(self._sync_and_close(fd, data_only))
        syncing.add_done_callback(retrieved)  # a cancelled caller's failed sync is not "never retrieved"
        await asyncio.shield(syncing)

    async def _sync_and_close(self, fd: int, data_only: bool) -> None:
        try:
            await (self._context.fdsync(fd) if data_only else self._context.fsync(fd))
        except SystemError as exc:
            raise as_os_error(exc) from None
        finally:
            os.close(fd)

    def close(self) -> None:
        self._context.close()


def placed(pieces: list[bytes], size: int, offset: int) -> memoryview:
    """The ``size`` bytes of ``pieces``, copied where :meth:`KernelIO.write_placed` wants them: as far
    into a page of memory as ``offset`` is into a block of the file.

    The memory is a ``bytearray`` from the same allocator as the pieces (aiohttp's ``bytes``), so the
    process's memory for small bodies stays one pool: what the pieces free is what the next bodies'
    copies take, and the other way round (a pool of ``mmap`` buffers beside it cost W2 about 45 MiB
    of peak RSS).
    """
    room = bytearray(size + BLOCK)
    start = (offset - ctypes.addressof(ctypes.c_char.from_buffer(room))) % BLOCK
    view = memoryview(room)[start:start + size]
    at = 0
    for piece in pieces:
        view[at:at + len(piece)] = piece
        at += len(piece)
    return view


def _open_direct(path: Path) -> int:
    """A descriptor of ``path`` with ``O_DIRECT``, or -1 where the filesystem refuses it."""
    try:
        return os.open(path, os.O_WRONLY | os.O_DIRECT | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
        return -1


class LibaioContext:
    """Linux native AIO through libaio (the ``libaio`` package over the system's ``libaio.so.1``), from
    the event loop: each operation is one ``io_submit``, and the loop reads completions when the
    eventfd they signal becomes readable. It writes from any writable memory (a view of a
    ``bytearray`` or an ``mmap``), unlike caio's ``bytes``. The operations' signatures are
    caio's, failures ``OSError``.

    At most :data:`MAX_IN_FLIGHT` operations are in the kernel at once; more wait their turn here.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        import libaio  # ImportError: not installed; OSError: the system has no libaio.so.1

        self._aio = libaio
        self._loop = loop
        self._context = libaio.AIOContext(MAX_IN_FLIGHT)
        self._eventfd = libaio.EventFD(flags=libaio.EFD_NONBLOCK | libaio.EFD_CLOEXEC)
        self._in_flight: set[asyncio.Future[int]] = set()  # sent to the kernel, not ended yet
        self._waiting: collections.deque[Any] = collections.deque()
        loop.add_reader(self._eventfd.fileno(), self._reap)

    def write(self, payload: memoryview, fd: int, offset: int, dsync: bool = False) -> asyncio.Future[int]:
        """``dsync``: done once the bytes are durable (``RWF_DSYNC``), as if ``fdatasync`` followed."""
        return self._submit(self._aio.AIOBLOCK_MODE_WRITE, fd, [payload], offset,
                            self._aio.RWF_DSYNC if dsync else 0)

    def fdsync(self, fd: int) -> asyncio.Future[int]:
        return self._submit(self._aio.AIOBLOCK_MODE_FDSYNC, fd)

    def fsync(self, fd: int) -> asyncio.Future[int]:
        return self._submit(self._aio.AIOBLOCK_MODE_FSYNC, fd)

    def _submit(self, mode: object, fd: int, buffers: list[memoryview] | None = None,
                offset: int = 0, flags: int = 0) -> asyncio.Future[int]:
        done = self._loop.create_future()
        block = self._aio.AIOBlock(mode, fd, buffers or (), offset, self._eventfd,
                                   functools.partial(self._ended, done), flags)
        self._waiting.append((block, done))
        self._send()
        return done

    def _send(self) -> None:
        """Hand waiting operations to the kernel, up to MAX_IN_FLIGHT in it."""
        while self._waiting and len(self._in_flight) < MAX_IN_FLIGHT:
            block, done = self._waiting[0]
            try:
                self._context.submit([block])
            except OSError as exc:
                if exc.errno == errno.EAGAIN and self._in_flight:
                    return  # the kernel's queue is full: the next completion sends it
                self._waiting.popleft()
                if not done.done():
                    done.set_exception(exc)
                continue
            self._waiting.popleft()
            self._in_flight.add(done)

    def _ended(self, done: asyncio.Future[int], block: Any, result: int, result2: int) -> None:
        """An operation's end, as libaio reports it (``result``: bytes written, or minus an errno)."""
        self._in_flight.discard(done)
        if done.done():  # its caller was cancelled; the kernel still did the operation
            return
        if result < 0:
            done.set_exception(OSError(-result, os.strerror(-result)))
        else:
            done.set_result(result)

    def _reap(self) -> None:
        """The eventfd is readable: settle every operation that has ended."""
        try:
            self._eventfd.read()
        except BlockingIOError:
            pass
        for _ in range(MAX_IN_FLIGHT // 64 + 1):
            if len(self._context.getEvents(min_nr=0, nr=64, timeout=0)) < 64:  # settles each (_ended)
                break
        self._send()

    def close(self) -> None:
        """Waits (up to CLOSE_WAIT seconds) for the operations still in the kernel and settles them;
        those not sent yet, or not ended by then, fail with ECANCELED. Then ``io_destroy``."""
        try:
            self._loop.remove_reader(self._eventfd.fileno())
        except RuntimeError:  # its loop is closed already
            pass
        waiting, self._waiting = self._waiting, collections.deque()
        if not self._loop.is_closed():  # (a closed loop's futures have no one left to wake)
            if self._in_flight:  # at shutdown: blocking the loop for these few is what closing means
                self._context.getEvents(min_nr=len(self._in_flight), nr=max(64, len(self._in_flight)),
                                        timeout=CLOSE_WAIT)
            for done in [*self._in_flight, *(done for _, done in waiting)]:
                if not done.done():
                    done.set_exception(OSError(errno.ECANCELED, "the AIO context was closed"))
        self._context.close()
        self._eventfd.close()
