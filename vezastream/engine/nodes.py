"""Which server processes of this data folder are gone: one locked file per process.

Every process beats in Redis (state/store.py: ``<p>:node:<node>``), and a lease whose
holder stopped beating may be taken over once that beat lapses (a few
seconds). On one host we need not wait: each process also holds an ``flock``
on ``<data_dir>/nodes/<node>``, which the kernel drops the moment the process
dies, however it dies. A process starting up takes the locks it can get: those
processes are dead, and their heartbeats are ended at once, so what they left
is taken over without delay.

Nodes that keep unfinished uploads on local disk (``storage.staging = "local"``,
or the local sink) must share ``data_dir``: a node that reads another node's
upload from its own, different folder would build a wrong file. So each
``data_dir`` holds an identity (``.vezastream-dir``, written once), each beat
carries it (``dir:<identity>``), and a process starting up refuses to run
while a live node beats with another one (:func:`refuse_other_data_dirs`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import ConfigError, Settings

if TYPE_CHECKING:
    from ..state.store import StateStore

IDENTITY_FILE = ".vezastream-dir"
#: What a node's heartbeat holds when it needs no shared data_dir.
NO_SHARED_DIR = "1"


def _locked(path: Path) -> int | None:
    """``path`` opened and locked (exclusively, without waiting), or None if another process holds it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
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


def needs_shared_dir(settings: Settings) -> bool:
    """Whether this node keeps what other nodes must read in ``data_dir`` (unfinished uploads, or the stored files)."""
    return settings.storage.staging == "local" or settings.storage.sink == "local"


def dir_identity(data_dir: Path) -> str:
    """``data_dir``'s identity: read from its ``.vezastream-dir``, which the first process to get here writes.

    The file is written whole under a name of its own, then linked into place (which fails if
    it is there: as O_EXCL), so a process never reads a half-written identity.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / IDENTITY_FILE
    if not path.exists():
        draft = data_dir / f"{IDENTITY_FILE}.{secrets.token_hex(8)}"
        _write_new(draft, secrets.token_hex(16))
        try:
            os.link(draft, path)
        except FileExistsError:  # another process starting up was first: its identity stands
            pass
        except OSError:  # a filesystem without hard links: O_EXCL on the name itself
            with contextlib.suppress(FileExistsError):
                _write_new(path, draft.read_text())
        finally:
            draft.unlink()
    for _ in range(100):  # without hard links, another process may be writing it this instant
        if identity := path.read_text().strip():
            return identity
        time.sleep(0.01)
    raise ConfigError(f"storage.data_dir: {IDENTITY_FILE} in it is empty; delete it and start again")


def _write_new(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def beat_value(settings: Settings) -> str:
    """What this process's heartbeat holds: its data_dir's identity when nodes must share that folder."""
    return f"dir:{dir_identity(settings.storage.data_dir)}" if needs_shared_dir(settings) else NO_SHARED_DIR


async def refuse_other_data_dirs(store: StateStore, node: str, value: str) -> None:
    """Raise :class:`ConfigError` when a live node beats with a data_dir identity other than ``value``,
    or stages uploads otherwise (one beats a data_dir identity, the other none: ``storage.staging``).

    Called after this process's first beat: of two nodes starting together, each sees the other.
    The refusal names a node by its id, which its ``listening`` log line shows beside its host name;
    the beat itself carries no host name, as an earlier version compares the whole value and
    would take a longer one for another data_dir.
    """
    others = {n: v for n, v in (await store.beats()).items() if n != node}
    # A node staging on local disk among nodes staging in the sink, or the other way round: each
    # would take bytes of the others' uploads where those cannot read them (docs/operations.md).
    unlike = sorted(n for n, v in others.items() if v.startswith("dir:") != value.startswith("dir:"))
    if unlike:
        theirs, mine = ("local", "sink") if value == NO_SHARED_DIR else ("sink", "local")
        raise ConfigError(
            f'storage.staging: {len(unlike)} live node(s) sharing this Redis (e.g. node {unlike[0]}, as its '
            f'"listening" log line names it) stage uploads with storage.staging = "{theirs}", this node with '
            f'"{mine}", and each would take bytes of the other\'s uploads where it cannot read them; set the '
            "same storage.staging (and sink) on every node")
    if not value.startswith("dir:"):
        return
    elsewhere = sorted(n for n, v in others.items() if v.startswith("dir:") and v != value)
    if elsewhere:
        raise ConfigError(
            f"storage.data_dir: {len(elsewhere)} live node(s) sharing this Redis (e.g. node {elsewhere[0]}, "
            'as its "listening" log line names it, with its host) use '
            "another data_dir, and uploads would be corrupted; mount the same folder at storage.data_dir on "
            'every node, or use storage.staging = "sink" with the S3 sink')
