"""Chunk staging on local disk: bodies streamed in, hashed, made durable.

Layout: ``<storage.data_dir>/chunks/<upload id>/<n>.<sha256>``. A chunk is
written under a temporary name (``.<n>.<random>.part``), hashed as it
arrives, fdatasync'ed, then renamed to a name that carries its digest, so a
different body for the same number can never overwrite a stored chunk.
A failed or interrupted body leaves no file behind.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
import shutil
from collections.abc import AsyncIterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiofiles
import aiofiles.os

from . import errors

#: Bytes gathered from the socket before one write (and one hash update).
WRITE_BUFFER = 256 * 1024
#: Block size when reading staged chunks back.
READ_BLOCK = 1024 * 1024


@dataclass(frozen=True)
class StagedChunk:
    path: Path
    size: int
    sha256: str


def _sync_file(fd: int) -> None:
    os.fdatasync(fd)


def _sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _hash_update(hasher: "hashlib._Hash", data: bytes) -> None:
    hasher.update(data)


class ChunkStaging:
    """Where chunk bodies wait, on this node's disk, until completion."""

    def __init__(self, root: Path, durable: bool = True) -> None:
        self.root = root
        self.durable = durable

    def upload_dir(self, upload_id: str) -> Path:
        return self.root / upload_id

    def chunk_path(self, upload_id: str, n: int, sha256: str) -> Path:
        return self.upload_dir(upload_id) / f"{n}.{sha256}"

    async def receive(self, upload_id: str, n: int, body: AsyncIterable[bytes], limit: int,
                      hasher: "hashlib._Hash | None" = None) -> StagedChunk:
        """Stream ``body`` to a temporary file; raise ``TooLarge`` past ``limit`` bytes.

        Returns the temporary file; the caller commits or discards it.
        """
        folder = self.upload_dir(upload_id)
        await aiofiles.os.makedirs(folder, exist_ok=True)
        tmp = folder / f".{n}.{secrets.token_hex(6)}.part"
        hasher = hasher or hashlib.sha256()
        size = 0
        buf = bytearray()
        try:
            async with aiofiles.open(tmp, "wb") as fh:
                async def flush(data: bytes) -> None:
                    # Hash in one worker thread while another writes: hashlib
                    # releases the GIL, so neither blocks the event loop.
                    await asyncio.gather(fh.write(data), asyncio.to_thread(_hash_update, hasher, data))

                async for piece in body:
                    size += len(piece)
                    if size > limit:
                        raise errors.TooLarge(f"body runs past the {limit} bytes expected", limit=limit)
                    buf += piece
                    if len(buf) >= WRITE_BUFFER:
                        await flush(bytes(buf))
                        buf.clear()
                if buf:
                    await flush(bytes(buf))
                await fh.flush()
                if self.durable:
                    await asyncio.to_thread(_sync_file, fh.fileno())
        except BaseException:
            await self.discard(tmp)
            raise
        return StagedChunk(tmp, size, hasher.hexdigest())

    async def commit(self, staged: StagedChunk, final: Path) -> StagedChunk:
        """Rename a received chunk to its final name, durably."""
        await aiofiles.os.replace(staged.path, final)
        if self.durable:
            await asyncio.to_thread(_sync_dir, final.parent)
        return StagedChunk(final, staged.size, staged.sha256)

    async def discard(self, path: Path) -> None:
        try:
            await aiofiles.os.remove(path)
        except FileNotFoundError:
            pass

    async def remove_upload(self, upload_id: str) -> None:
        await asyncio.to_thread(shutil.rmtree, self.upload_dir(upload_id), True)

    def list_uploads(self) -> list[tuple[str, float]]:
        """(upload id, last modification time) of every chunk folder."""
        try:
            entries = list(os.scandir(self.root))
        except FileNotFoundError:
            return []
        out = []
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                try:
                    out.append((entry.name, entry.stat(follow_symlinks=False).st_mtime))
                except FileNotFoundError:
                    continue
        return out


def sha256_of_files(paths: Sequence[Path]) -> tuple[int, str]:
    """(total size, SHA-256) of the files in order. Blocking: run in a thread."""
    hasher = hashlib.sha256()
    size = 0
    buf = bytearray(READ_BLOCK)
    view = memoryview(buf)
    for path in paths:
        with open(path, "rb", buffering=0) as fh:
            while True:
                n = fh.readinto(buf)
                if not n:
                    break
                hasher.update(view[:n])
                size += n
    return size, hasher.hexdigest()
