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

It needs Linux, ``caio`` (``pip install 'vezastream[fast]'``) and a data
folder on a local filesystem: the writer lock (``open`` and ``flock``) is
then taken on the event loop too, which on a network filesystem would be a
round trip holding up every request. ``storage.kernel_io = "off"`` keeps
every write in the worker threads.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
from pathlib import Path
from typing import Any

from .together import retrieved

log = logging.getLogger("vezastream.staging")

#: Bodies of at most this many bytes are written by the kernel's AIO, hashed on the event loop
#: (about 0.15 ms of SHA-256 here); larger ones keep the worker threads' buffered path.
SMALL_BODY = 256 * 1024
#: Operations in flight at once (caio queues more until one completes).
MAX_IN_FLIGHT = 1024
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

    def __init__(self, context: Any) -> None:
        self._context = context

    @classmethod
    def start(cls, data_dir: Path, setting: str) -> KernelIO | None:
        """One for the running loop, or None: ``setting`` "off", no Linux AIO or ``caio``, a network filesystem."""
        if setting == "off":
            return None
        if not _local(data_dir):
            log.info("kernel_io off: the data folder is not on a local filesystem", extra={"path": str(data_dir)})
            return None
        try:
            from caio.linux_aio_asyncio import AsyncioContext
        except ImportError:  # not installed (the fast extra), or not Linux
            return None
        try:
            return cls(AsyncioContext(max_requests=MAX_IN_FLIGHT))
        except (OSError, SystemError) as exc:  # io_setup refused (aio-max-nr reached, a sandbox without it)
            log.warning("kernel_io off: Linux AIO is not available here", extra={"error": repr(exc)})
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
