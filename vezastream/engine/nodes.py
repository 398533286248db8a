"""Which server processes of this data folder are gone: one locked file per process.

Every process beats in Redis (state/store.py: ``<p>:node:<node>``), and a lease whose
holder stopped beating may be taken over once that beat lapses (a few
seconds). On one host we need not wait: each process also holds an ``flock``
on ``<data_dir>/nodes/<node>``, which the kernel drops the moment the process
dies, however it dies. A process starting up takes the locks it can get: those
processes are dead, and their heartbeats are ended at once, so what they left
is taken over without delay.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


def _locked(path: Path) -> int | None:
    """``path`` opened and locked (exclusively, without waiting), or None if another process holds it."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except FileNotFoundError:  # removed meanwhile by another process starting up
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def departed(directory: Path) -> list[str]:
    """The nodes of ``directory`` whose process is gone (their files are removed)."""
    gone = []
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    for name in names:
        if name.startswith("."):
            continue
        fd = _locked(directory / name)
        if fd is None:
            continue
        try:
            (directory / name).unlink(missing_ok=True)
        finally:
            os.close(fd)
        gone.append(name)
    return gone


def hold(directory: Path, node: str) -> int:
    """Lock this process's file for as long as it lives; returns the descriptor (close it at shutdown)."""
    directory.mkdir(parents=True, exist_ok=True)
    hidden = directory / f".{node}"  # locked before it is named: no one starting up sees it unlocked
    fd = _locked(hidden)
    if fd is None:
        raise RuntimeError(f"node {node} is already held")
    os.rename(hidden, directory / node)
    return fd


def release(directory: Path, node: str, fd: int) -> None:
    """A clean stop: the file goes, then the lock."""
    try:
        (directory / node).unlink(missing_ok=True)
    finally:
        os.close(fd)
