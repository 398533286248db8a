"""A filesystem of a given kind mounted for one test (tmpfs to fill up, ramfs that refuses O_DIRECT).

Mounting needs root or CAP_SYS_ADMIN: without it the test is skipped, saying why.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def mounted(kind: str, where: Path, *options: str) -> Iterator[Path]:
    """A ``kind`` filesystem at ``where`` (made here), unmounted at the end whatever happens."""
    where.mkdir(parents=True)
    command = ["mount", "-t", kind, *(["-o", ",".join(options)] if options else []), kind, str(where)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"cannot mount a {kind} ({exc})")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a {kind}: {done.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=10)


def fill_up(disk: Path) -> Path:
    """Take every free block of ``disk`` with one file (allocated, not written); its path (remove it to free them)."""
    filler = disk / "filler"
    free = os.statvfs(disk)
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.posix_fallocate(fd, 0, free.f_bavail * free.f_frsize)
    finally:
        os.close(fd)
    return filler


class Stall:
    """A folder served by tests/stallfs.py: :meth:`hold` makes every call on it wait (a disk that stops
    answering), :meth:`release` lets them go on."""

    def __init__(self, path: Path, gate: Path) -> None:
        self.path, self._gate = path, gate

    def hold(self) -> None:
        self._gate.touch()

    def release(self) -> None:
        self._gate.unlink(missing_ok=True)

    def fail(self, failing: bool = True) -> None:
        """Every write and sync on the folder fails with EIO (``failing``), or works again."""
        eio = self._gate.with_name(self._gate.name + ".eio")
        if failing:
            eio.touch()
        else:
            eio.unlink(missing_ok=True)


@contextlib.contextmanager
def stallable(where: Path) -> Iterator[Stall]:
    """A FUSE folder at ``where`` (its files kept in ``where``'s sibling ``<name>.backing``) that can be
    held; released, unmounted and its server stopped (by PID) at the end whatever happens."""
    try:
        import fuse  # noqa: F401  (fusepy: loads the system's libfuse.so.2)
    except (ImportError, OSError) as exc:
        _skip_or_fail(f"cannot serve a folder through FUSE: {exc} (scripts/test installs fusepy and Debian's libfuse2)")
    backing, gate = where.with_name(where.name + ".backing"), where.with_name(where.name + ".gate")
    where.mkdir(parents=True)
    backing.mkdir()
    log = open(where.with_name(where.name + ".log"), "wb")
    proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("stallfs.py")), str(backing), str(where),
                             str(gate)], stdout=log, stderr=log)
    stall = Stall(where, gate)
    try:
        deadline = time.monotonic() + 10
        while not os.path.ismount(where):
            if proc.poll() is not None or time.monotonic() > deadline:
                _skip_or_fail(f"cannot mount a FUSE folder: {where.with_name(where.name + '.log').read_text()[-500:]}")
            time.sleep(0.02)
        yield stall
    finally:
        stall.release()
        stall.fail(False)
        subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=10)
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()


@contextlib.contextmanager
def stallable_disk(where: Path, size_mib: int = 256) -> Iterator[Stall]:
    """A local disk at ``where`` that can be held: an ext4 filesystem on a loop device whose image
    lies in a :func:`stallable` FUSE folder. The server sees a block device's ext4 (as on a machine's
    disk or a cloud volume, ``kernel_io`` may be on); holding the FUSE folder holds every read and
    write the kernel sends to the device, and ext4's journal with them, while what the kernel's caches
    hold (a ``stat``, an ``open`` of a file it knows) still answers. Unmounted and detached at the end."""
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    losetup, mkfs = shutil.which("losetup", path=search), shutil.which("mkfs.ext4", path=search)
    if losetup is None or mkfs is None:
        _skip_or_fail("cannot make a loop-device disk: no losetup or mkfs.ext4 (scripts/test installs Debian's "
                      "mount and e2fsprogs)")
    with stallable(where.with_name(where.name + ".fuse")) as fuse:
        image = fuse.path / "disk.img"
        with open(image, "wb") as f:
            f.truncate(size_mib << 20)
        attached = subprocess.run([losetup, "--find", "--show", str(image)], capture_output=True, text=True,
                                  timeout=20)
        if attached.returncode != 0:
            _skip_or_fail(f"cannot attach a loop device: {attached.stderr.strip()}")
        device = attached.stdout.strip()
        try:
            subprocess.run([mkfs, "-q", device], check=True, capture_output=True, timeout=60)
            where.mkdir(parents=True)
            subprocess.run(["mount", device, str(where)], check=True, capture_output=True, timeout=20)
            try:
                yield Stall(where, fuse._gate)
            finally:
                fuse.release()
                subprocess.run(["umount", str(where)], capture_output=True, timeout=60)
        finally:
            subprocess.run([losetup, "-d", device], capture_output=True, timeout=20)


def _skip_or_fail(why: str) -> None:
    """Skip the test, saying ``why``; under CI (which installs what the test needs), fail it."""
    if os.environ.get("CI"):
        pytest.fail(why)
    pytest.skip(why)
