"""A filesystem of a given kind mounted for one test (tmpfs to fill up, ramfs that refuses O_DIRECT).

Mounting needs root or CAP_SYS_ADMIN: without it the test is skipped, saying why.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
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
