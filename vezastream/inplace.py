"""In-place uploads (native chunks written once), as methods of the upload engine.

A staged native upload created with ``storage.in_place`` on (the default)
keeps ONE staged file, ``<chunks>/<id>/data``, created empty (and durable)
with the upload. Chunk ``n`` has a fixed range of it, starting at
``(n - 1) * chunk_size``, so chunks arriving in parallel and in any order
write disjoint ranges, and completion hands the sink that one file: the
local sink hard-links it, so each byte reaches the disk once (the chunk
layout instead copies every staged chunk into the assembled file).

Who may write a range is decided once, in Redis: a request first *claims*
chunk ``n`` (``<p>:up:{id}:claims``, one round trip, with no expiry but the
upload's), and only the claim holder writes into the range. Then:

- ``claimed``: stream the body into the range (hashed, fdatasync'ed),
  register the chunk. A request that fails before registering releases the
  claim (after its last write returned), so a retry can claim it again.
- ``registered``: the chunk is stored already; the body is only hashed, to
  answer 200 (same bytes) or 409 (different), and nothing is written.
- ``busy``: another request holds the claim (it is streaming, or its node
  died before it could release it). This body is staged on its own, in the
  chunk layout's file ``<n>.<sha256>``, and registered with the mark
  ``staged``, so whatever the claim holder writes can never matter: at
  completion, if any chunk is marked ``staged``, the engine copies the
  registered bytes (claimed ranges and staged files) into a fresh file and
  hands that to the sink, never the data file a late writer might touch.

So a registered range is only ever written by the one request that
registered it, no claim expires under a slow writer, and a crashed node
costs a copy at completion, not a lost chunk.

The whole-file SHA-256: a chunk that starts where this process's running
digest of the upload ends continues it as it arrives (``digests.py``). A
chunk written here in place but out of order (several chunks in flight at
once) is remembered instead, and :class:`CatchUp` reads it back and extends
the digest as soon as everything before it is hashed, while the rest of the
upload arrives; completion then only waits for the last few. Chunks written
on another process, or staged on their own, stop the chain: completion then
hashes the whole file.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import mmap
import os
import secrets
from collections import OrderedDict
from collections.abc import AsyncIterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import errors
from .digests import RunningDigests, Tee
from .models import ChunkReceipt, ChunkRecord, Upload, UploadSpec
from .sinks import ChunkFile, ChunkSource, MeteredBody, check_chunk
from .staging import READ_AHEAD, READ_BLOCK, ChunkStaging, fsync_dir, hash_range

if TYPE_CHECKING:
    from .engine import UploadEngine

log = logging.getLogger("vezastream.engine")

IN_PLACE = "inplace"
#: The claims hash value of a chunk registered from its own staged file.
STAGED = "staged"
COPY_BLOCK = 8 * 1024 * 1024


def _copy_range(src: Path, offset: int, size: int, out_fd: int) -> None:
    """Append ``size`` bytes of ``src`` from ``offset`` to ``out_fd`` (a kernel copy where it can)."""
    fd = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
    try:
        left = size
        while left > 0:
            try:
                n = os.copy_file_range(fd, out_fd, min(COPY_BLOCK, left), offset)
            except OSError:  # e.g. EXDEV or ENOSYS: a plain copy
                n = os.write(out_fd, os.pread(fd, min(COPY_BLOCK, left), offset))
            if n <= 0:
                raise errors.Conflict(f"{src.name} holds fewer bytes than registered")
            offset += n
            left -= n
    finally:
        os.close(fd)


def build_file(out: Path, pieces: list[tuple[Path, int, int]], durable: bool) -> None:
    """Write the ``(path, offset, size)`` pieces, in order, into the new file ``out`` (blocking)."""
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        for path, offset, size in pieces:
            _copy_range(path, offset, size, fd)
        if durable:
            os.fdatasync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(out)
        raise
    os.close(fd)
    if durable:
        fsync_dir(out.parent)


class InPlaceChunks:
    """Mixed into :class:`~vezastream.engine.UploadEngine`; uses its store, staging and receipts."""

    async def _put_in_place(self: "UploadEngine", spec: UploadSpec, n: int, body: AsyncIterable[bytes],
                            expected: int, expected_sha256: str | None) -> ChunkReceipt:
        ttl = self.limits.upload_ttl
        token = self.new_token()
        claim, status = await self.store.claim_chunk(spec.id, n, token, ttl)
        if claim == "missing":
            self._forget(spec.id)
            raise errors.NotFound("no such upload")
        if claim == "status":
            raise errors.UploadNotPending(f"upload is {status}", upload_status=str(status))
        if claim == "registered":  # hash only: 200 or 409, never a write
            record = await MeteredBody(n, body, expected, expected_sha256).drain()
            return await self._receipt(spec, record, await self.store.register_chunk(spec.id, record, ttl))
        if claim == "busy":  # someone else may write the range: stage this body on its own
            return await self._put_staged(spec, n, body, expected, expected_sha256, mark=STAGED)

        def check(size: int, sha256: str) -> None:  # in the worker thread, after the bytes are durable
            check_chunk(n, expected, expected_sha256, size, sha256)

        # Chunks arriving here one after the other also feed the upload's running SHA-256
        # (digests.py), so completion need not read the file back.
        offset = (n - 1) * spec.chunk_size
        running = self.digests.resume(spec.id, offset)
        try:
            staged = await self.staging.receive_in_place(spec.id, offset, body, expected, check,
                                                         Tee(hashlib.sha256(), running) if running else None)
            record = ChunkRecord(n, staged.size, staged.sha256)
            reg = await self.store.register_chunk(spec.id, record, ttl)
        except BaseException:
            # Every write of ours has returned: the range is free for a retry.
            try:
                await asyncio.shield(self.store.release_claim(spec.id, n, token))
            except Exception as exc:  # then retries stage their bodies on their own (still correct)
                log.warning("chunk claim not released", extra={"upload_id": spec.id, "chunk": n,
                                                              "error": repr(exc)})
            raise
        # Registered now (by us, or by a staged body first: then our range is never read).
        if reg.outcome == "stored":
            if running is not None:
                self.digests.advance(spec.id, offset + record.size, running)
                self.catch_up.advanced(spec)
            else:
                self.catch_up.landed(spec, n, record.size)
        return await self._receipt(spec, record, reg)

    async def _in_place_source(self: "UploadEngine", upload: Upload, records: dict[int, ChunkRecord]
                               ) -> ChunkSource:
        """The file to hand the sink: the data file itself, unless some chunk was staged on its own.

        Runs under the completion lease.
        """
        spec = upload.spec
        if not records:
            return ChunkSource([])
        data = self.staging.data_path(spec.id)
        staged = {n for n, mark in (await self.store.claims(spec.id)).items() if mark == STAGED}
        if not staged:
            return ChunkSource([ChunkFile(1, data, spec.total_size, "")])
        pieces = [(self.staging.chunk_path(spec.id, n, r.sha256), 0, r.size) if n in staged
                  else (data, (n - 1) * spec.chunk_size, r.size) for n, r in sorted(records.items())]
        out = self.staging.upload_dir(spec.id) / f"assembled.{secrets.token_hex(6)}"
        log.info("in-place upload assembled from a copy", extra={"upload_id": spec.id, "staged": len(staged)})
        await asyncio.to_thread(build_file, out, pieces, self.staging.durable)
        return ChunkSource([ChunkFile(1, out, spec.total_size, "")])


#: Uploads whose out-of-order chunks one process remembers for the running digest.
CATCH_UP_UPLOADS = 1_000
#: Sets of read buffers (READ_AHEAD x READ_BLOCK each) kept for the next catch-up.
KEPT_BUFFER_SETS = 2


def _hash_landed(path: Path, chunk_size: int, landed: dict[int, int], end: int, hasher: Any,
                 buffers: list[mmap.mmap]) -> tuple[int, Any]:
    """Feed ``hasher`` (at ``end``) the chunks of ``landed`` that follow, while the next one is there.

    Blocking; takes the chunks it hashes out of ``landed`` (which the event loop adds to
    meanwhile). Returns how far the digest now reaches, and the digest there.
    """
    good = end, hasher.copy()
    with ThreadPoolExecutor(len(buffers), thread_name_prefix="vezastream-read") as ahead:
        while (size := landed.pop(end // chunk_size + 1, None)) is not None:
            try:
                fed = hash_range(path, end, size, hasher, buffers, ahead)
            except OSError as exc:  # e.g. the upload was deleted meanwhile: completion will hash it all
                log.info("running digest not extended", extra={"path": str(path), "error": repr(exc)})
                break
            if fed != size:
                break
            end += size
            good = end, hasher.copy()
    return good


class CatchUp:
    """Extends uploads' running SHA-256 over chunks written here in place, out of order, by reading them back."""

    def __init__(self, digests: RunningDigests, staging: ChunkStaging) -> None:
        self.digests = digests
        self.staging = staging
        self._landed: OrderedDict[str, dict[int, int]] = OrderedDict()  # upload -> {chunk: size} not yet hashed
        self._tasks: dict[str, asyncio.Task[None]] = {}
        # Read buffers kept between chunks (fresh pages cost a fault each); one set per running task.
        self._buffers: list[list[mmap.mmap]] = []

    def landed(self, spec: UploadSpec, n: int, size: int) -> None:
        """Chunk ``n`` is registered and its bytes are in its range of the data file."""
        self._landed.setdefault(spec.id, {})[n] = size
        self._landed.move_to_end(spec.id)
        while len(self._landed) > CATCH_UP_UPLOADS:
            self._landed.popitem(last=False)
        self.advanced(spec)

    def advanced(self, spec: UploadSpec) -> None:
        """The upload's running digest grew (or a chunk landed): hash what it now reaches."""
        task = self._tasks.get(spec.id)
        if spec.id in self._landed and (task is None or task.done()):
            task = self._tasks[spec.id] = asyncio.create_task(self._run(spec))
            task.add_done_callback(functools.partial(self._finished, spec.id))

    def _finished(self, upload_id: str, task: "asyncio.Task[None]") -> None:
        if self._tasks.get(upload_id) is task:
            del self._tasks[upload_id]

    async def _run(self, spec: UploadSpec) -> None:
        buffers = self._buffers.pop() if self._buffers else [mmap.mmap(-1, READ_BLOCK) for _ in range(READ_AHEAD)]
        try:
            await self._extend(spec, buffers)
        finally:
            if len(self._buffers) < KEPT_BUFFER_SETS:
                self._buffers.append(buffers)

    async def _extend(self, spec: UploadSpec, buffers: list[mmap.mmap]) -> None:
        path = self.staging.data_path(spec.id)
        while True:  # never awaits between finding nothing to do and returning: see landed()
            end = self.digests.position(spec.id)
            chunks = self._landed.get(spec.id)
            if end is None or not chunks or end % spec.chunk_size or end // spec.chunk_size + 1 not in chunks:
                return
            # One thread trip hashes every chunk that has landed next, including those that
            # land meanwhile: under load each trip (and each new reading thread) waits its turn
            # for a core, and the digest must keep pace with the upload. The chain stays
            # where it was until the trip returns, so no request continues it meanwhile.
            new_end, hasher = await asyncio.to_thread(_hash_landed, path, spec.chunk_size, chunks, end,
                                                      self.digests.resume(spec.id, end), buffers)
            if new_end == end or self.digests.position(spec.id) != end:
                return
            self.digests.advance(spec.id, new_end, hasher)

    async def settle(self, spec: UploadSpec) -> None:
        """Extend the running digest as far as this process can, now (at completion)."""
        task = self._tasks.pop(spec.id, None)
        if task is not None:
            await asyncio.shield(task)
        if spec.id in self._landed:
            await self._run(spec)
            self._landed.pop(spec.id, None)

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
