"""A folder served through FUSE whose every call can be held, or whose writes can fail: a disk that
stalls, or fails, for the drills.

``python stallfs.py BACKING MOUNTPOINT GATE`` serves BACKING's files at
MOUNTPOINT (in the foreground, until unmounted or killed). While the file GATE
exists, every call on the mount waits (as on a disk, a network filesystem or a
cloud volume that stops answering), at most ``MAX_HOLD`` seconds; once GATE is
removed, the held calls go on, in the order they came. While ``GATE.eio`` exists, every write
and sync answers EIO at once. A file opened with
``O_DIRECT`` is served through the page cache (the kernel has aligned it), so
what an ``O_DIRECT`` writer gets is what it would get from a local disk.

Each call is served in a thread of its own (libfuse's threads), so held calls
do not queue behind one another. Uses fusepy (``fuse``) and the system's
libfuse.so.2 (Debian's libfuse2): scripts/test installs both.
"""

from __future__ import annotations

import errno
import os
import sys
import time

from fuse import FUSE, FuseOSError, Operations  # type: ignore[import-untyped]

#: The longest one call is held, in seconds, whatever GATE says: a drill that dies leaves no call held for good.
MAX_HOLD = 60.0
#: How often a held call looks at GATE.
LOOK_EVERY = 0.005


class StallFS(Operations):
    def __init__(self, backing: str, gate: str) -> None:
        self.backing = os.path.realpath(backing)
        self.gate = gate

    # -- the gate -------------------------------------------------------------------
    def _hold(self) -> None:
        deadline = time.monotonic() + MAX_HOLD
        while os.path.exists(self.gate) and time.monotonic() < deadline:
            time.sleep(LOOK_EVERY)

    def _failing(self) -> None:
        """EIO while ``<GATE>.eio`` exists: a disk that fails writes and syncs (a dying disk, a volume
        that lost its backend), each call answered at once."""
        if os.path.exists(self.gate + ".eio"):
            raise FuseOSError(errno.EIO)

    def _path(self, path: str) -> str:
        self._hold()
        return os.path.join(self.backing, path.lstrip("/"))

    # -- the calls ------------------------------------------------------------------
    def __call__(self, op, *args):  # every call: OSError as the errno the kernel expects
        try:
            return super().__call__(op, *args)
        except OSError as exc:
            raise FuseOSError(exc.errno or errno.EIO) from None

    def access(self, path, amode):
        if not os.access(self._path(path), amode):
            raise FuseOSError(errno.EACCES)

    def chmod(self, path, mode):
        os.chmod(self._path(path), mode)

    def chown(self, path, uid, gid):
        os.chown(self._path(path), uid, gid)

    def getattr(self, path, fh=None):
        st = os.lstat(self._path(path))
        return {key: getattr(st, key) for key in ("st_atime", "st_ctime", "st_gid", "st_mode", "st_mtime",
                                                  "st_nlink", "st_size", "st_uid", "st_blocks")}

    def readdir(self, path, fh):
        return [".", "..", *os.listdir(self._path(path))]

    def readlink(self, path):
        return os.readlink(self._path(path))

    def mknod(self, path, mode, dev):
        os.mknod(self._path(path), mode, dev)

    def mkdir(self, path, mode):
        os.mkdir(self._path(path), mode)

    def rmdir(self, path):
        os.rmdir(self._path(path))

    def unlink(self, path):
        os.unlink(self._path(path))

    def symlink(self, target, source):
        os.symlink(source, self._path(target))

    def rename(self, old, new):
        os.rename(self._path(old), self._path(new))

    def link(self, target, source):
        os.link(self._path(source), self._path(target))

    def utimens(self, path, times=None):
        os.utime(self._path(path), times)

    def statfs(self, path):
        sv = os.statvfs(self._path(path))
        return {key: getattr(sv, key) for key in ("f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail",
                                                  "f_ffree", "f_files", "f_flag", "f_frsize", "f_namemax")}

    def open(self, path, flags):
        return os.open(self._path(path), flags & ~os.O_DIRECT)

    def create(self, path, mode, fi=None):
        return os.open(self._path(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)

    def read(self, path, length, offset, fh):
        self._hold()
        return os.pread(fh, length, offset)

    def write(self, path, data, offset, fh):
        self._hold()
        self._failing()
        return os.pwrite(fh, data, offset)

    def truncate(self, path, length, fh=None):
        if fh is None:
            os.truncate(self._path(path), length)
        else:
            self._hold()
            os.ftruncate(fh, length)

    def flush(self, path, fh):
        self._hold()

    def release(self, path, fh):
        os.close(fh)  # never held: the kernel does not wait for a release's answer

    def fsync(self, path, datasync, fh):
        self._hold()
        self._failing()
        if datasync:
            os.fdatasync(fh)
        else:
            os.fsync(fh)

    def fsyncdir(self, path, datasync, fh):
        self._hold()


def main(argv: list[str]) -> None:
    backing, mountpoint, gate = argv
    FUSE(StallFS(backing, gate), mountpoint, foreground=True, nothreads=False, big_writes=True,
         max_write=131072, attr_timeout=0, entry_timeout=0)


if __name__ == "__main__":
    main(sys.argv[1:])
