"""Writing one request body into a file: whole blocks with O_DIRECT, the rest through the page cache.

On the machines we measure on, writing through the page cache costs several
times the CPU of sending the same bytes to the disk directly (``dd`` of 1 GiB
with fdatasync: 2.8 s of system time buffered, 0.1-0.2 s with O_DIRECT). So a
body's whole 4 KiB blocks are written with O_DIRECT: straight from where they
are when the body was read from the socket into one of the staging area's
page-aligned buffers (``http/body.py``), else copied into an aligned
buffer first (one per worker thread, reused); only a body's unaligned head
and tail go through the page cache. Where the filesystem refuses O_DIRECT
(tmpfs, some network filesystems), or with ``storage.direct_io`` off,
everything goes through the page cache. Durability does not change: the caller still
fdatasyncs the file, which flushes the device's cache and the file's metadata.

Two bodies may write neighbouring ranges of one file at the same time
(native chunks in place). O_DIRECT only ever writes blocks that lie wholly
inside one body's range, so a block two bodies share is written by both
through the page cache, where their bytes merge.

A :class:`BodyFile` is used from worker threads only, by one trip at a time.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import threading
from pathlib import Path

#: Alignment of O_DIRECT offsets, lengths and memory (a page: enough for any common device).
BLOCK = 4096
#: Size of each worker thread's aligned buffer (a multiple of BLOCK).
BUFFER = 1024 * 1024
#: A transparent huge page on x86-64 and most arm64 kernels.
HUGE_PAGE = 2 * 1024 * 1024

_local = threading.local()


def page_buffer(size: int) -> mmap.mmap:
    """``size`` bytes of page-aligned memory of this process's own, for bodies and O_DIRECT.

    Private anonymous memory (``mmap(-1, n)`` alone would be shared, i.e.
    shmem, whose page faults cost more); buffers of 2 MiB or more also ask
    for transparent huge pages, so that filling a fresh one faults a few
    times instead of once per 4 KiB page.
    """
    buf = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if size >= HUGE_PAGE and hasattr(mmap, "MADV_HUGEPAGE"):
        try:
            buf.madvise(mmap.MADV_HUGEPAGE)
        except OSError:  # a kernel without transparent huge pages: small pages it is
            pass
    return buf


def release_freed_memory() -> None:
    """Give back to the system what the C allocator holds freed (blocking: run it in a thread).

    Bodies that go through aiohttp arrive as ``bytes`` pieces of up to a few hundred KiB,
    which glibc's allocator serves from its heaps once it has seen a few freed, and keeps
    when they are freed: after a burst of bodies the process would stay at its peak size.
    ``malloc_trim`` returns the free pages of every heap. Nothing happens elsewhere (musl,
    macOS), where the allocator has no such call.
    """
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError):
        return
    trim(0)


def _aligned_buffer() -> mmap.mmap:
    """This thread's page-aligned buffer, made on first use and kept."""
    buf = getattr(_local, "buffer", None)
    if buf is None:
        buf = _local.buffer = page_buffer(BUFFER)
    return buf


def is_aligned(piece: bytes | memoryview) -> bool:
    """Whether ``piece`` is writable memory that starts on a page (an mmap'ed buffer): O_DIRECT can take it."""
    if not isinstance(piece, memoryview) or piece.readonly or not piece.contiguous or not piece.nbytes:
        return False
    return ctypes.addressof(ctypes.c_char.from_buffer(piece)) % BLOCK == 0


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        n = os.pwrite(fd, data, offset)
        data, offset = data[n:], offset + n


class BodyFile:
    """One body's bytes, written at consecutive offsets of a file from where ``fd`` is positioned."""

    def __init__(self, fd: int, path: Path, direct: bool) -> None:
        self.fd = fd
        self.pos = os.lseek(fd, 0, os.SEEK_CUR)  # where the next byte not handed to the kernel goes
        self.carry = b""  # received bytes from an aligned ``pos`` on, fewer than a block, not yet written
        self.direct_fd = -1
        if direct and hasattr(os, "O_DIRECT"):
            try:
                self.direct_fd = os.open(path, os.O_WRONLY | os.O_DIRECT | os.O_CLOEXEC)
            except OSError:  # EINVAL: this filesystem does not do O_DIRECT
                pass

    def write(self, pieces: list[bytes] | list[memoryview]) -> None:
        if self.direct_fd < 0:
            for piece in pieces:
                _pwrite_all(self.fd, memoryview(piece), self.pos)
                self.pos += len(piece)
            return
        if len(pieces) == 1 and not self.carry and self.pos % BLOCK == 0 and is_aligned(pieces[0]):
            view = memoryview(pieces[0])  # a buffer the body was read into: written from where it is
            whole = len(view) - len(view) % BLOCK
            if whole:
                self._direct(view[:whole], self.pos)
            self.carry = bytes(view[whole:])
            self.pos += whole
            return
        buf = _aligned_buffer()
        fill, start = 0, self.pos  # the buffer holds the bytes for [start, start + fill)
        for piece in (self.carry, *pieces):
            view = memoryview(piece)
            while view:
                if fill == 0 and start % BLOCK:  # up to the next block boundary: the page cache
                    k = min(len(view), BLOCK - start % BLOCK)
                    _pwrite_all(self.fd, view[:k], start)
                    start, view = start + k, view[k:]
                    continue
                k = min(len(view), BUFFER - fill)
                buf[fill:fill + k] = view[:k]
                fill, view = fill + k, view[k:]
                if fill == BUFFER:
                    self._direct(memoryview(buf)[:BUFFER], start)
                    start, fill = start + BUFFER, 0
        whole = fill - fill % BLOCK
        if whole:
            self._direct(memoryview(buf)[:whole], start)
        self.carry = buf[whole:fill]
        self.pos = start + whole

    def _direct(self, data: memoryview, offset: int) -> None:
        """Write ``data`` (page-aligned memory, whole blocks) at ``offset`` (block-aligned) with O_DIRECT."""
        try:
            while data:
                n = os.pwrite(self.direct_fd, data, offset)
                if n % BLOCK:  # a short write that broke the alignment: finish through the page cache
                    _pwrite_all(self.fd, data[n:], offset + n)
                    return
                data, offset = data[n:], offset + n
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            # O_DIRECT opened but refused (an alignment this device does not take): page cache from now on.
            os.close(self.direct_fd)
            self.direct_fd = -1
            _pwrite_all(self.fd, data, offset)

    def finish(self) -> None:
        """Write what is still held back (the unaligned tail)."""
        if self.carry:
            _pwrite_all(self.fd, memoryview(self.carry), self.pos)
            self.pos += len(self.carry)
            self.carry = b""

    def close(self) -> None:
        if self.direct_fd >= 0:
            os.close(self.direct_fd)
            self.direct_fd = -1
        os.close(self.fd)
