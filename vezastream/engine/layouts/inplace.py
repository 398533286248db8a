"""The in-place layout: native chunks written once, each at its offset in one data file.

A staged native upload created with ``storage.in_place`` on (the default)
keeps ONE staged file, ``<chunks>/<id>.data``, created empty (and durable)
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
  chunk files layout's file ``<n>.<sha256>`` (``chunkfiles.py``), and registered with the mark
  ``staged``, so whatever the claim holder writes can never matter: at
  completion, if any chunk is marked ``staged``, the engine copies the
  registered bytes (claimed ranges and staged files) into a fresh file and
  hands that to the sink, never the data file a late writer might touch.

So a registered range is only ever written by the one request that
registered it, no claim expires under a slow writer, and a crashed node
costs a copy at completion, not a lost chunk.

The whole-file SHA-256: a chunk that starts where this process's running
digest of the upload ends continues it as it arrives (``staging/digests.py``). A
chunk written here in place but out of order (several chunks in flight at
once) is remembered instead, and :class:`CatchUp` extends the digest over
it as soon as everything before it is hashed, while the rest of the upload
arrives; completion then only waits for the last few. Such a chunk's bytes
wait in memory (the buffers it was received into, within a budget) when they
can, else they are read back from the data file. Chunks written
on another process, or staged on their own, stop the chain: completion then
hashes the whole file.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import mmap
import os
import secrets
import time
from collections import OrderedDict
from collections.abc import AsyncIterable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ... import errors
from ...staging.directio import page_buffer
from ...staging.digests import RunningDigests, Tee, new_sha256
from ...models import ChunkReceipt, ChunkRecord, Upload, UploadSpec
from ...metering import MeteredBody, check_chunk
from ...sinks import ChunkFile, ChunkSource
from ...staging import (BUFFER_BUDGET, READ_AHEAD, READ_BLOCK, ChunkStaging, HeldBody, StagedChunk, fsync_dir,
                      hash_range)

from ...state.batching import hangs
from ...state.store import Outcome
from ...tasks import stop
from ..services import EngineServices
from .chunkfiles import ChunkFiles
from .interface import Assembling
from .staged import assemble_staged

log = logging.getLogger("vezastream.engine")
#: Seconds a chunk claim that a hung Redis kept its request from giving back is tried again for, in the
#: background (until then, and after, a retry of the chunk stages its body on its own: still correct).
CLAIM_GIVE_BACK_SECONDS = 30.0

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
    """The in-place layout (a :class:`StorageLayout` taking :class:`NumberedChunks`).

    ``alone``: the chunk files layout, for a body that may not write its range.
    """

    def __init__(self, engine: EngineServices, alone: ChunkFiles) -> None:
        self.engine = engine
        self.alone = alone
        #: Out-of-order chunks waiting for the running digest to reach them.
        self.catch_up = CatchUp(engine.digests, engine.staging)

    async def put(self, spec: UploadSpec, n: int, body: AsyncIterable[bytes],
                  expected: int, expected_sha256: str | None) -> ChunkReceipt:
        ttl = self.engine.limits.upload_ttl
        token = self.engine.new_token()
        claim, status = await self.engine.store.claim_chunk(spec.id, n, token, ttl)
        if claim == "missing":
            self.engine.forget(spec.id)
            raise errors.NotFound("no such upload")
        if claim == "status":
            raise errors.UploadNotPending(f"upload is {status}", upload_status=str(status))
        if claim == "registered":  # hash only: 200 or 409, never a write
            record = await MeteredBody(n, body, expected, expected_sha256).drain()
            reg = await self.engine.store.register_chunk(spec.id, record, ttl, replicate=True)
            return await self.engine.receipt(spec, record, reg)
        if claim == "busy":  # someone else may write the range: stage this body on its own
            return await self.alone.put(spec, n, body, expected, expected_sha256, mark=STAGED)

        def check(size: int, sha256: str) -> None:  # once the bytes are durable
            check_chunk(n, expected, expected_sha256, size, sha256)

        # Chunks arriving here one after the other also feed the upload's running SHA-256
        # (staging/digests.py), so completion need not read the file back.
        # One that arrives before the chunks ahead of it is kept in memory, when it fits, until
        # the digest reaches it (CatchUp), so it need not be read back from the disk.
        # Chunk 1's own digest is the upload's running one so far: one hasher serves both
        # (taking a digest leaves the hasher as it was), so its bytes are hashed once.
        offset = (n - 1) * spec.chunk_size
        running = self.engine.digests.resume(spec.id, offset)
        hasher = (running if offset == 0 else Tee(new_sha256(), running)) if running else None
        staged: StagedChunk | None = None
        try:
            staged = await self.engine.staging.receive_in_place(spec.id, offset, body, expected, check, hasher,
                                                                hold=running is None)
            record = ChunkRecord(n, staged.size, staged.sha256)
            reg = await self.engine.store.register_chunk(spec.id, record, ttl, replicate=True)
        except BaseException as failure:
            if staged is not None and staged.held is not None:
                staged.held.release()
            # Every write of ours has returned: the range is free for a retry.
            release = functools.partial(self.engine.store.release_claim, spec.id, n, token)
            if hangs(failure):  # Redis gave no reply in time: the answer does not wait for it again
                self.engine.give_back.later(f"chunk claim {spec.id}/{n}", release, CLAIM_GIVE_BACK_SECONDS)
                raise
            try:
                await asyncio.shield(release())
            except Exception as exc:  # then retries stage their bodies on their own (still correct)
                log.warning("chunk claim not released", extra={"upload_id": spec.id, "chunk": n,
                                                              "error": repr(exc)})
            if isinstance(failure, errors.Conflict):  # its data file gone: with the upload, deleted meanwhile?
                await self.engine.refuse_if_gone(spec.id)
            raise
        # Registered now (by us, or by a staged body first: then our range is never read).
        if reg.outcome is Outcome.STORED:
            if running is not None:
                self.engine.digests.advance(spec.id, offset + record.size, running)
                self.catch_up.advanced(spec)
            else:
                self.catch_up.landed(spec, n, record.size, staged.held)
        elif staged.held is not None:
            staged.held.release()
        return await self.engine.receipt(spec, record, reg)

    async def ready(self, upload: Upload, records: dict[int, ChunkRecord]) -> Assembling:
        return Assembling(upload, records)

    async def assemble(self, job: Assembling) -> None:
        """The data file (or a copy, see :meth:`source`), hashed as far as the running digest reaches."""
        if job.source is None:
            job.source = await self.source(job.upload, job.records)
        await self.catch_up.settle(job.upload.spec)
        await assemble_staged(self.engine, job)

    def forget(self, upload_id: str) -> None:
        self.catch_up.forget(upload_id)

    async def source(self, upload: Upload, records: dict[int, ChunkRecord]
                               ) -> ChunkSource:
        """The file to hand the sink: the data file itself, unless some chunk was staged on its own.

        Runs under the completion lease.
        """
        spec = upload.spec
        if not records:
            return ChunkSource([])
        data = self.engine.staging.data_path(spec.id)
        staged = {n for n, mark in (await self.engine.store.claims(spec.id)).items() if mark == STAGED}
        if not staged:
            return ChunkSource([ChunkFile(1, data, spec.total_size, "")])
        pieces = [(self.engine.staging.chunk_path(spec.id, n, r.sha256), 0, r.size) if n in staged
                  else (data, (n - 1) * spec.chunk_size, r.size) for n, r in sorted(records.items())]
        out = self.engine.staging.upload_dir(spec.id) / f"assembled.{secrets.token_hex(6)}"
        log.info("in-place upload assembled from a copy", extra={"upload_id": spec.id, "staged": len(staged)})
        await asyncio.to_thread(build_file, out, pieces, self.engine.staging.durable)
        return ChunkSource([ChunkFile(1, out, spec.total_size, "")])


#: Uploads whose out-of-order chunks one process remembers for the running digest.
CATCH_UP_UPLOADS = 1_000
#: Sets of read buffers (READ_AHEAD x READ_BLOCK each) kept for the next catch-up.
KEPT_BUFFER_SETS = 2
#: What the chunks kept in memory for the catch-up may hold together; more are read back from disk.
#: A client sending 8 chunks of 8 MiB at a time leaves up to about two such windows waiting for the
#: slowest chunk before them: at 64 MiB many of its chunks were read back, at 128 MiB its rate rose
#: about 15 % (docs/performance.md). Only uploads whose chunks arrive out of order hold any.
HELD_BUDGET = 2 * BUFFER_BUDGET
#: A chunk kept longer than this (the chunks before it are late, or never come, or went
#: to another process) lets its memory go.
HELD_SECONDS = 10.0

#: A landed chunk: its size, and its bytes when they are still in memory.
Landed = tuple[int, HeldBody | None]


def _hash_landed(path: Path, chunk_size: int, landed: dict[int, Landed], end: int, hasher: Any,
                 buffers: list[mmap.mmap], hashed: Callable[[int], None]) -> tuple[int, Any]:
    """Feed ``hasher`` (at ``end``) the chunks of ``landed`` that follow, while the next one is there.

    Blocking; takes the chunks it hashes out of ``landed`` (which the event loop adds to
    meanwhile), and calls ``hashed(n)`` once done with the held bytes of chunk ``n``.
    Returns how far the digest now reaches, and the digest there.
    """
    good = end, hasher.copy()
    with ThreadPoolExecutor(len(buffers), thread_name_prefix="vezastream-read") as ahead:
        while (n := end // chunk_size + 1) in landed:
            size, held = landed.pop(n)
            if held is not None:
                for view in held.views:
                    hasher.update(view)  # releases the GIL
                fed = held.size
                hashed(n)
            else:
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
    """Extends uploads' running SHA-256 over chunks written here in place, out of order.

    A chunk's bytes come from memory when it was kept there (received into
    buffers it fits in; HELD_BUDGET at most, for HELD_SECONDS at most), else
    they are read back from the data file.

    Only the event loop releases held bytes, and only those of an upload whose
    catch-up is not running: the thread of a running one may be hashing them.
    """

    def __init__(self, digests: RunningDigests, staging: ChunkStaging) -> None:
        self.digests = digests
        self.staging = staging
        self._landed: OrderedDict[str, dict[int, Landed]] = OrderedDict()  # upload -> chunks not yet hashed
        self._tasks: dict[str, asyncio.Task[None]] = {}
        # Read buffers kept between chunks (fresh pages cost a fault each); one set per running task.
        self._buffers: list[list[mmap.mmap]] = []
        self._held: OrderedDict[tuple[str, int], tuple[float, HeldBody]] = OrderedDict()  # oldest first
        self.held_bytes = 0
        self._sweep: asyncio.TimerHandle | None = None  # lets go of what is held too long

    @property
    def busy(self) -> bool:
        """Whether a catch-up task is hashing (or has only just finished)."""
        return bool(self._tasks)

    @property
    def waiting(self) -> set[str]:
        """The uploads with chunks that wait for their running digest to reach them."""
        return set(self._landed)

    @property
    def held(self) -> set[tuple[str, int]]:
        """The (upload, chunk) whose bytes are kept in memory for the digest."""
        return set(self._held)

    @property
    def sweeping(self) -> bool:
        """Whether a sweep is due (it is while anything is held)."""
        return self._sweep is not None

    def landed(self, spec: UploadSpec, n: int, size: int, held: HeldBody | None = None) -> None:
        """Chunk ``n`` is registered and its bytes are in its range of the data file (and in ``held``).

        ``held`` is this object's to release from now on.
        """
        if held is not None and not self._room_for(held.size):
            held.release()
            held = None
        if held is not None:
            self._held[spec.id, n] = time.monotonic(), held
            self.held_bytes += held.size
            if self._sweep is None:
                self._sweep = asyncio.get_running_loop().call_later(HELD_SECONDS, self._swept)
        self._landed.setdefault(spec.id, {})[n] = size, held
        self._landed.move_to_end(spec.id)
        while len(self._landed) > CATCH_UP_UPLOADS:
            self.forget(next(iter(self._landed)))
        self.advanced(spec)

    def _room_for(self, size: int) -> bool:
        """Whether ``size`` more bytes may be held, after letting go of (enough of) those held too long."""
        self._expire(size)
        return self.held_bytes + size <= HELD_BUDGET

    def _expire(self, need: int = 0) -> None:
        """Let go of the chunks held longer than HELD_SECONDS; with ``need``, only until that many more fit.

        Their bytes are read back from the data file if the digest still reaches them.
        """
        now = time.monotonic()
        for (upload_id, n), (since, _) in list(self._held.items()):
            if now - since < HELD_SECONDS or (need and self.held_bytes + need <= HELD_BUDGET):
                break
            if not self._running(upload_id):
                chunks = self._landed.get(upload_id)
                if chunks is not None and n in chunks:
                    chunks[n] = chunks[n][0], None
                self._let_go(upload_id, n)

    def _swept(self) -> None:
        """Runs while anything is held: what waits for a chunk that is late (or never comes) goes."""
        self._expire()
        self._sweep = None
        if self._held:
            oldest = next(iter(self._held.values()))[0]
            wait = max(oldest + HELD_SECONDS - time.monotonic(), HELD_SECONDS / 10)
            self._sweep = asyncio.get_running_loop().call_later(wait, self._swept)

    def _let_go(self, upload_id: str, n: int) -> None:
        entry = self._held.pop((upload_id, n), None)
        if entry is not None:
            self.held_bytes -= entry[1].size
            entry[1].release()

    def _running(self, upload_id: str) -> bool:
        task = self._tasks.get(upload_id)
        return task is not None and not task.done()

    def forget(self, upload_id: str) -> None:
        """Drop what is remembered of the upload (it is deleted, or complete)."""
        chunks = self._landed.pop(upload_id, None)
        if chunks is None:
            return

        def let_go(_: object = None) -> None:
            for n in list(chunks):
                self._let_go(upload_id, n)
        task = self._tasks.get(upload_id)
        if task is not None and not task.done():  # its thread may be reading them still
            task.add_done_callback(let_go)
        else:
            let_go()

    def advanced(self, spec: UploadSpec) -> None:
        """The upload's running digest grew (or a chunk landed): hash what it now reaches."""
        if spec.id in self._landed and not self._running(spec.id):
            task = self._tasks[spec.id] = asyncio.create_task(self._run(spec))
            task.add_done_callback(functools.partial(self._finished, spec.id))

    def _finished(self, upload_id: str, task: "asyncio.Task[None]") -> None:
        if self._tasks.get(upload_id) is task:
            del self._tasks[upload_id]

    async def _run(self, spec: UploadSpec) -> None:
        buffers = self._buffers.pop() if self._buffers else [page_buffer(READ_BLOCK) for _ in range(READ_AHEAD)]
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
            # The held bytes of each chunk go back as soon as they are hashed: the trip may be long.
            loop = asyncio.get_running_loop()
            hashed = functools.partial(loop.call_soon_threadsafe, self._let_go, spec.id)
            new_end, hasher = await asyncio.to_thread(_hash_landed, path, spec.chunk_size, chunks, end,
                                                      self.digests.resume(spec.id, end), buffers, hashed)
            if new_end == end or self.digests.position(spec.id) != end:
                return
            self.digests.advance(spec.id, new_end, hasher)

    async def settle(self, spec: UploadSpec) -> None:
        """Extend the running digest as far as this process can, now (at completion)."""
        self.advanced(spec)
        while (task := self._tasks.get(spec.id)) is not None and not task.done():
            await asyncio.shield(task)
        self.forget(spec.id)

    async def close(self) -> None:
        await stop(*self._tasks.values())
        for upload_id in list(self._landed):
            self.forget(upload_id)
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
