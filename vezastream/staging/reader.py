"""Reading staged bytes back: whole blocks, O_DIRECT where it can, several reads ahead of the hash."""

from __future__ import annotations

import errno
import hashlib
import mmap
import os
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path

from .buffers import READ_AHEAD, READ_BLOCK
from .directio import page_buffer


def hash_range(path: Path, offset: int, size: int, hasher: "hashlib._Hash",
               buffers: Sequence[mmap.mmap] | None = None, ahead: ThreadPoolExecutor | None = None) -> int:
    """Feed ``size`` bytes of ``path`` from ``offset`` to ``hasher``; returns how many there were (blocking).

    ``buffers``: READ_BLOCK-sized aligned buffers to read into (reused across calls saves
    faulting fresh pages in); new ones when not given. ``ahead``: the threads that read
    (as many as buffers); new ones for this call when not given.
    """
    buffers = buffers or [page_buffer(READ_BLOCK) for _ in range(READ_AHEAD)]
    if size >= 0:  # no more reads in flight (nor threads) than the range has blocks
        buffers = buffers[:max(1, -(-size // READ_BLOCK))]
    if ahead is None:
        with ThreadPoolExecutor(len(buffers), thread_name_prefix="vezastream-read") as ahead:
            return hash_range(path, offset, size, hasher, buffers, ahead)
    fed = 0
    for block in read_blocks(path, size, ahead, buffers, offset):
        hasher.update(block)  # releases the GIL
        fed += len(block)
    return fed


def sha256_of_files(paths: Sequence[Path], sizes: Sequence[int] | None = None) -> tuple[int, str]:
    """(total size, SHA-256) of the files in order (of each one's first ``sizes[i]`` bytes when given).

    Blocking: run in a thread. The files are read with O_DIRECT where the
    filesystem allows it (bodies were written that way, so the page cache
    rarely holds them, and filling it costs more CPU than the hash), several
    blocks ahead in helper threads while this one hashes.
    """
    hasher = hashlib.sha256()
    buffers = [page_buffer(READ_BLOCK) for _ in range(READ_AHEAD)]
    size = sum(hash_range(path, 0, sizes[i] if sizes is not None else -1, hasher, buffers)
               for i, path in enumerate(paths))
    return size, hasher.hexdigest()


def read_blocks(path: Path, limit: int, ahead: ThreadPoolExecutor, buffers: Sequence[mmap.mmap],
                offset: int = 0) -> Iterator[memoryview]:
    """``limit`` bytes of ``path`` from ``offset`` (to the end with -1), in READ_BLOCK blocks.

    One read per buffer is in flight in ``ahead`` while the caller uses the
    oldest block; each block is valid until the next one is asked for.
    """
    reader = BlockReader(path)
    free = list(buffers)
    pending: deque[tuple[Future[int], mmap.mmap]] = deque()
    unsubmitted = limit  # bytes not yet asked of the disk (-1: up to the end of the file)

    def submit() -> None:
        nonlocal offset, unsubmitted
        buf = free.pop()
        pending.append((ahead.submit(reader.read, buf, offset), buf))
        offset += READ_BLOCK
        if unsubmitted > 0:
            unsubmitted = max(0, unsubmitted - READ_BLOCK)

    try:
        while free and unsubmitted != 0:
            submit()
        left = limit
        while pending:
            done, buf = pending.popleft()
            n = done.result()
            if n <= 0:
                break
            take = n if left < 0 else min(n, left)
            left = left - take if left >= 0 else -1
            yield memoryview(buf)[:take]
            if n < READ_BLOCK or left == 0:  # a short read is the end of the file
                break
            free.append(buf)
            if unsubmitted != 0:
                submit()
    finally:
        wait([done for done, _ in pending])  # no thread may still read into a buffer we give back
        reader.close()


class BlockReader:
    """Reads whole blocks of one file at block-aligned offsets, with O_DIRECT when it can."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = -1
        if hasattr(os, "O_DIRECT"):
            try:
                self.fd = os.open(path, os.O_RDONLY | os.O_DIRECT | os.O_CLOEXEC)
            except OSError:
                pass  # this filesystem does not do O_DIRECT
        if self.fd < 0:
            self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)

    def read(self, buf: mmap.mmap, offset: int) -> int:
        try:
            return os.preadv(self.fd, [buf], offset)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            os.close(self.fd)  # O_DIRECT opened but refused: the page cache from now on
            self.fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            return os.preadv(self.fd, [buf], offset)

    def close(self) -> None:
        os.close(self.fd)
