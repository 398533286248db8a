"""Files of the staging area: opening them where a body writes, the writer lock, durability.

Blocking calls, each made in a worker thread by the writer. ``lock_data_file``
is the ``flock`` that fences an upload's one data file while a request
writes it (a second writer gets ``AppendBusy``).
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import os
from pathlib import Path

from .. import errors

#: An append or in-place upload's data file is ``<upload id>.data``, flat in the staging folder.
DATA_SUFFIX = ".data"
#: The data file's name inside an upload's own folder, as versions before the flat layout made it.
FOLDERED_DATA = "data"
#: An upload folder whose removal began is renamed ``<upload id>.removing`` first: a removal cut short
#: (the process killed mid-walk) leaves it under that name, whatever its age, for the GC's next pass.
REMOVING_SUFFIX = ".removing"


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in ``path`` durable (blocking)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


#: What a folder that refuses a removal says (read-only, immutable, permissions): the files stay
#: where they are, to be removed once it is put right; callers log it and go on.
FOLDER_REFUSALS = frozenset({errno.EROFS, errno.EPERM, errno.EACCES})


def check_folder(path: Path) -> None:
    """Readiness of a folder the server writes into (made if missing; blocking): raises what says why
    it cannot: ``OSError(EROFS)`` on a filesystem mounted read-only, ``NotADirectoryError`` when a
    file stands in its place, ``PermissionError`` when this process may not write there (an
    immutable folder refuses even root). Asks the kernel only: it writes nothing (:func:`write_probe` does)."""
    try:
        path.mkdir(parents=True, exist_ok=True)  # removed by hand: made again, as a body's file would make it
    except (FileExistsError, NotADirectoryError):
        raise NotADirectoryError(errno.ENOTDIR, "not a folder") from None
    if os.statvfs(path).f_flag & os.ST_RDONLY:
        raise OSError(errno.EROFS, "mounted read-only")
    if not os.access(path, os.W_OK):
        raise PermissionError(errno.EACCES, "not writable by this process")


#: The file :func:`write_probe` writes, in the staging folder (a name no upload's file takes, so
#: the GC and the listing of staged uploads pass it by); removed at once, and reused should a process
#: die before that.
WRITE_PROBE = ".vezastream-write-probe"


def write_probe(folder: Path) -> None:
    """Write a page to ``folder``, make it durable, remove it (blocking): raises what the disk
    answers, ``OSError(EIO)`` on one that fails writes or syncs. Readiness calls it once requests
    met an I/O error there, to tell when the disk writes again."""
    path = folder / WRITE_PROBE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, bytes(4096))
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.unlink(path)
    except FileNotFoundError:  # another worker process's probe removed it
        pass


def create(path: Path, flags: int = 0) -> int:
    """Open ``path`` for writing, created if missing (``flags``: e.g. ``O_EXCL``), and its folder if need be."""
    flags |= os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC
    try:
        return os.open(path, flags, 0o644)
    except FileNotFoundError:  # the folder is made once (the staging folder), or per upload (chunk files)
        path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(path, flags, 0o644)


def create_empty(path: Path) -> None:
    """Create the empty file ``path`` (never an existing one)."""
    os.close(create(path, os.O_EXCL))


def open_new(path: Path) -> int:
    """Create a chunk's file ``path`` (in its upload's own folder, made if need be); never an existing one."""
    return create(path, os.O_EXCL)


def foldered_data_files(root: Path) -> set[str]:
    """The uploads under ``root`` whose data file lies in a folder of their own (an older version's layout)."""
    try:
        entries = list(os.scandir(root))
    except (FileNotFoundError, NotADirectoryError):  # a file in its place: each request answers for it
        return set()
    return {entry.name for entry in entries
            if entry.is_dir(follow_symlinks=False) and os.path.exists(os.path.join(entry.path, FOLDERED_DATA))}


def open_at(path: Path, offset: int, sync: bool, locked: int | None) -> int:
    """Open an append upload's data file positioned at ``offset``; it must hold ``offset`` bytes already.

    ``locked``: the descriptor holding the file's writer lock; the body gets a
    duplicate of it, so closing the body's descriptor keeps the lock.
    """
    if locked is not None:
        fd = os.dup(locked)
    elif offset == 0:
        fd = create(path)
        if sync:
            fsync_dir(path.parent)
        return fd
    else:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            fd = -1
    if fd < 0 or os.fstat(fd).st_size < offset:
        if fd >= 0:
            os.close(fd)
        raise errors.Conflict("the upload's earlier bytes are not staged on this node")
    os.lseek(fd, offset, os.SEEK_SET)
    return fd


def lock_data_file(path: Path) -> int | None:
    """Open an append upload's data file and take its writer lock; None if there is no file."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise errors.AppendBusy("another request is writing to this upload (it holds the data file's writer lock); "
                                "retry later") from None
    except BaseException:
        os.close(fd)
        raise
    return fd


#: Removing a file that holds more than this (and is its last name) frees that many blocks, which
#: can take milliseconds: such a removal goes to a worker thread, not the event loop.
QUICK_REMOVAL = 64 * 1024 * 1024


def quick_to_remove(path: Path) -> bool:
    """Whether removing ``path`` is a quick call: it is gone, has another name (the local sink's
    link), or holds at most :data:`QUICK_REMOVAL` bytes of blocks."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return True
    return st.st_nlink > 1 or st.st_blocks * 512 <= QUICK_REMOVAL


def remove_quietly(path: Path) -> None:
    """Remove a failed body's file, if it was created (none was if a file stands where its folder should be)."""
    try:
        os.unlink(path)
    except (FileNotFoundError, NotADirectoryError):
        pass


def close_if_opened(done: "asyncio.Future[int | None]") -> None:
    if not done.cancelled() and done.exception() is None and done.result() is not None:
        os.close(done.result())


def open_positioned(path: Path, offset: int) -> int:
    """Open an in-place upload's data file (created with the upload) positioned at ``offset``."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise errors.Conflict("the upload's data file is not staged on this node") from None
    os.lseek(fd, offset, os.SEEK_SET)
    return fd
