"""The append layout (tus): segments appended at the upload's offset, into one data file.

An append upload receives its bytes as *segments*: each request appends one
segment at the upload's current offset. All segments go into ONE staged file,
``<chunks>/<id>.data``: a request at offset X writes its body at file offset
X (:meth:`ChunkStaging.receive_at`: buffered, hashed, fdatasync'ed), then
registers the segment with the same Lua script as a native chunk, numbered
``received_count + 1`` and guarded by ``expected_offset``. Whatever arrived
before a client went away is kept (the body simply ends early), so the
offset always equals the bytes actually persisted.

One writer at a time, on any node: a request first takes the data file's
writer lock (``flock``, seen by every process that shares the file, released
when the request ends or its process dies), then the upload's append lease
(``<p>:up:{id}:append``, renewed while the body streams); a request that
cannot get either, after waiting half a second for its holder to let go
(LETTING_GO), answers ``409 append-busy``. Only then does it read the
offset, and it writes, registers and gives the lease back before it lets go
of the lock. So a request at a stale offset never writes a byte, two appends
at one offset never both succeed, and the lock is a fence: a request whose
lease ran out while its event loop stalled still holds the file, so no newer
request writes until it is done, and whatever it wrote then lies past the
registered offset. Bytes past the registered offset (a body that failed
before it was registered) are garbage: the next request at that offset
overwrites them, and completion cuts them off.

With ``storage.staging = "sink"`` there is no data file and no writer lock:
each segment is an object of its own in the sink (sinkstaging.py), named by
the request that wrote it and registered (its name with it) only at the offset
it was written for, so the append lease alone fences writers: a request whose
lease ran out can write only an object nothing will ever name.

When the offset reaches the length, the upload completes through the
engine's own completion path (lease, sink, SHA-256), exactly like a native
upload, with one source file: the local sink hard-links it into place, so
every byte is written once. A *partial* upload is never completed on its
own: a *final* upload is the concatenation of finished partials, whose data
files are handed to the sink in order (the local sink joins them with
``copy_file_range``; the S3 sink streams them into one multipart upload).
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import functools
import hashlib
import logging
from collections.abc import AsyncIterable, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from redis.exceptions import RedisError

from ... import errors
from ...staging import StagedChunk
from ...staging.bodies import Watched, fills, held_back
from ...staging.writer import Check
from ...staging.digests import Tee, new_sha256
from ...models import (DEFAULT_CONTENT_TYPE, ChunkRecord, Layout, Upload, UploadSpec, UploadStatus, metadata_content_type,
                      new_upload_id)
from ...sinks import ChunkFile, ChunkSource
from ...state import refusals
from ...state.batching import hangs
from ...state.store import Outcome, UploadExists
from ..leases import LEASE_SECONDS, NODE_SECONDS
from ..services import EngineServices
from .interface import Assembling
from .sinkstaging import SINK, assemble_in_sink, in_sink
from .staged import assemble_staged

log = logging.getLogger("vezastream.engine")

#: ``protocol_data["concat"]`` values.
PARTIAL, FINAL = "partial", "final"
CHECKSUM_ALGORITHMS = ("sha1", "md5", "sha256")
#: The append lease: renewed every third of it while a body's bytes flow, so a crashed
#: node blocks its uploads for at most this long (a silent client, for
#: ``server.body_idle_timeout``: its connection is cut then, and the lease released).
APPEND_LEASE_SECONDS = 10.0
#: How long a process watches a whole upload that another request is completing (append_state):
#: the append lease's life (the last PATCH may hold it that long before completing) and the
#: completion lease's, and a dead holder's heartbeat lapsing after either.
SEE_THROUGH_SECONDS = APPEND_LEASE_SECONDS + LEASE_SECONDS + NODE_SECONDS
#: Pauses between tries to give an append lease back (about 2 s in all).
RELEASE_RETRY = (0.1, 0.2, 0.4, 0.6, 0.8)
#: Pauses between tries to take a writer lock or an append lease that another request holds
#: (half a second in all). A writer registers its bytes first, so a HEAD shows the new offset,
#: and only then gives the lease back and closes the data file: a client that resumes at once
#: can reach the server in between. It waits for the writer to let go, not answering 409.
LETTING_GO = (0.01, 0.02, 0.04, 0.08, 0.15, 0.2)

T = TypeVar("T")


@dataclass(frozen=True)
class NewAppendUpload:
    filename: str
    length: int | None  # None: deferred, declared by a later append
    metadata: dict[str, str] = field(default_factory=dict)
    protocol: str = "tus"
    partial: bool = False  # part of a later concatenation: never completed on its own
    protocol_data: dict[str, Any] = field(default_factory=dict)


class _StillCompleting(Exception):
    """A whole upload not completed yet (:meth:`AppendUploads._see_through` looks again)."""


@dataclass(frozen=True)
class Checksum:
    """A client-declared digest of one request body (``hashlib`` algorithm name)."""

    algorithm: str
    digest: bytes


@dataclass
class _Writer:
    """One PATCH's hold on an upload: the data file's writer lock and the append lease."""

    lease: str  # the lease's key
    token: str
    locked: int | None  # the writer lock's descriptor (None: there was no data file to lock)
    lost: asyncio.Event = field(default_factory=asyncio.Event)  # set once the lease cannot be renewed
    keeper: "asyncio.Task[None] | None" = None  # renews the lease while the body streams
    released: bool = False  # the lease went back with the register script
    early: _Early | None = None  # the body, received while the lock and the lease were taken


@dataclass(frozen=True)
class _Early:
    """A body received while its request takes the writer lock and the append lease (see ``append``).

    ``receiving`` writes nothing until ``admitted`` gives it the writer lock's
    descriptor; a request refused meanwhile cancels it, and no byte is written.
    """

    receiving: "asyncio.Task[Any]"
    admitted: "asyncio.Future[int | None]"
    running: Any | None  # the upload's running SHA-256 this body continues (see _store_segment)

    async def cancel(self) -> None:
        """Stop receiving (the request was refused, or failed before it could write)."""
        if not self.admitted.done():
            self.admitted.cancel()
        self.receiving.cancel()
        try:
            await asyncio.shield(asyncio.wait([self.receiving]))
        finally:
            if self.receiving.done() and not self.receiving.cancelled():
                self.receiving.exception()  # retrieved: a refused request answers its refusal


@dataclass(frozen=True)
class AppendReceipt:
    upload: Upload
    offset: int
    completed: bool


def final_upload_id(owner: str, part_ids: Sequence[str]) -> str:
    """A final upload's id: the same for the same owner and parts in the same order, so a POST sent
    again (its answer lost to a dead node or a failover) finds the final upload its first try made
    instead of completing a second copy. It tells nothing the part ids (which give the bytes) do not."""
    digest = hashlib.sha256("\n".join([owner, *part_ids]).encode()).digest()
    return base64.urlsafe_b64encode(digest[:16]).rstrip(b"=").decode()


def is_partial(spec: UploadSpec) -> bool:
    return spec.protocol_data.get("concat") == PARTIAL


def is_final(spec: UploadSpec) -> bool:
    return spec.protocol_data.get("concat") == FINAL


def whole(upload: Upload) -> bool:
    """Is every byte of an append upload there, ready to complete? (a final upload: once created;
    a partial one never completes on its own)"""
    spec = upload.spec
    return (not is_partial(spec) and upload.length is not None
            and (is_final(spec) or upload.bytes_received == upload.length))


def unfinished(upload: Upload) -> bool:
    """Whole, and not completed yet (pending, or being completed)."""
    return upload.status in (UploadStatus.PENDING, UploadStatus.COMPLETING) and whole(upload)


def offset_of(upload: Upload) -> int:
    """Bytes an append upload holds (a final upload holds its parts once joined)."""
    if is_final(upload.spec):
        return upload.result.size if upload.result else 0
    return upload.bytes_received


def _declared(checksum: Checksum | None) -> tuple[Any | None, Check]:
    """The hasher of a client-declared checksum (None without one), and the check run once the bytes are durable."""
    # A sha256 checksum's digest advances in one pass with the running one where it can (digests.py).
    hasher = (new_sha256() if checksum.algorithm == "sha256" else hashlib.new(checksum.algorithm)) if checksum \
        else None
    def check(size: int, sha256: str) -> None:
        if checksum is not None and hasher is not None and hasher.digest() != checksum.digest:
            raise errors.ChecksumMismatch(f"the body's {checksum.algorithm} does not match Upload-Checksum")
    return hasher, check


async def _letting_go(take: Callable[[], Awaitable[T]]) -> T:
    """``take()``, tried again after each of LETTING_GO's pauses while it raises ``AppendBusy``."""
    for pause in LETTING_GO:
        try:
            return await take()
        except errors.AppendBusy:
            pass
        await asyncio.sleep(pause)
    return await take()


def _while_leased(body: AsyncIterable[bytes], lost: asyncio.Event) -> Watched:
    """``body``, stopped (with an error) as soon as the append lease is lost."""
    def check(_piece: object) -> None:
        if lost.is_set():
            raise errors.AppendBusy("the upload's append lease was lost mid-body")
    return Watched(body, check)


def _completion_refused(exc: Exception, offset: int) -> Exception:
    """What the last PATCH answers when the completion it began fails on the server's side (a full
    or read-only disk, a failing sink, a Redis that refuses): the same problem, but saying that its bytes are stored, as
    "nothing was recorded" would be untrue for them; a client's ``HEAD`` retries the completion."""
    if isinstance(exc, RedisError):
        answer: errors.UploadError | None = refusals.problem(exc)
    else:
        answer = exc if isinstance(exc, errors.UploadError) else (
            errors.exhausted(exc) or errors.disk_failed(exc) or errors.unusable_folder(exc))
    if answer is None or answer.status < 500:
        return exc
    # The same error, its detail told anew (a sink's own subclass may take other arguments).
    answer.detail = (f"the bytes up to offset {offset} are stored, but completing the upload failed: "
                     f"{answer.detail.removesuffix(errors.NOTHING_RECORDED)}; send HEAD to retry the completion")
    return answer


class AppendUploads:
    """The append layout (tus): segments written at the upload's offset under a lease.

    A :class:`StorageLayout` without numbered chunks: the tus door calls its own
    methods (``engine.appends``: create, append, state, terminate, concatenate).
    """

    def __init__(self, engine: EngineServices) -> None:
        self.engine = engine
        #: Whole uploads this process watches until they are completed (:meth:`_see_through`).
        self._seen_through: set[str] = set()

    async def _release(self, lease: str, token: str, hung: bool = False) -> None:
        """Give the append lease back, so the next PATCH need not wait for it to expire.

        Redis may be away for a moment (a bundled one restarting): tried again for up to
        RELEASE_RETRY s. A Redis that gave no reply within ``redis.reply_timeout`` hangs (or
        ``hung``: the request failed so): the request does not wait for it (again), and the
        lease is given back in the background as soon as Redis answers, until it would have
        expired anyway (``engine.give_back``).
        """
        def later() -> None:
            self.engine.give_back.later(f"append lease {lease}", lambda: self.engine.store.release_lease(lease, token),
                                        APPEND_LEASE_SECONDS)

        if hung:
            return later()
        for pause in (*RELEASE_RETRY, None):
            try:
                await asyncio.shield(self.engine.store.release_lease(lease, token))
                return
            except Exception as exc:
                if hangs(exc):
                    return later()
                if pause is None:
                    log.warning("append lease not released; it expires", extra={"lease": lease, "error": repr(exc)})
                    return
            await asyncio.sleep(pause)

    @property
    def max_append_size(self) -> int:
        """Largest append upload: ``tus.max_size`` when set, never above ``limits.max_upload_size``."""
        cap = int(self.engine.limits.max_upload_size)
        tus_max = int(self.engine.settings.tus.max_size)
        return min(tus_max, cap) if tus_max else cap

    def _check_length(self, length: int) -> None:
        if length < 0:
            raise errors.BadRequest("the upload length must be >= 0")
        if length > self.max_append_size:
            raise errors.TooLarge(f"length {length} exceeds the maximum upload size {self.max_append_size}",
                                  max_upload_size=self.max_append_size)

    async def create_append(self, owner: str, req: NewAppendUpload) -> Upload:
        if req.length is not None:
            self._check_length(req.length)
        data = dict(req.protocol_data)
        if req.partial:
            data["concat"] = PARTIAL
        upload = await self._create_spec(owner, req.filename, req.length, req.metadata, req.protocol, data)
        spec = upload.spec
        log.info("upload created", extra={"event": "created", "upload_id": spec.id, "owner": owner,
                                          "total_size": spec.total_size, "layout": Layout.APPEND})
        if req.length == 0 and not req.partial:  # nothing to wait for: complete now
            upload, _ = await self.engine.complete(owner, spec.id)
        return upload

    async def _create_spec(self, owner: str, filename: str, length: int | None,
                           metadata: dict[str, str], protocol: str, data: dict[str, Any],
                           upload_id: str | None = None) -> Upload:
        spec = UploadSpec(
            id=upload_id or new_upload_id(), owner=owner, filename=filename,
            total_size=-1 if length is None else length,
            chunk_size=0, total_chunks=0, created_at=self.engine.clock(), metadata=dict(metadata), protocol=protocol,
            layout=Layout.APPEND, protocol_data=data,
            content_type=metadata_content_type(metadata) or DEFAULT_CONTENT_TYPE,
            staging=SINK if self.engine.settings.storage.staging == SINK else "local",
        )
        await self.engine.hooks.validate_upload(spec)
        spec = dataclasses.replace(spec, key=self.engine.hooks.object_key(spec))
        async with self.engine.quotas.holding(spec):  # 429 before anything is created
            if length != 0 and data.get("concat") != FINAL and not in_sink(spec):  # the file appends write into
                await self.engine.staging.create_data_file(spec.id)
            upload = await self.engine.store.create(spec, self.engine.limits.upload_ttl)
        self.engine.remember(spec)
        return upload

    async def _append_spec(self, owner: str, upload_id: str) -> UploadSpec:
        spec = await self.engine.spec(owner, upload_id)
        if spec.layout != Layout.APPEND:  # a native upload is not visible through an append door
            raise errors.NotFound("no such upload")
        return spec

    async def append_state(self, owner: str, upload_id: str, see_through: bool = True) -> Upload:
        """The upload as an append client sees it; finishes a full upload whose completion failed.

        A whole upload that a request on some process is completing right now is answered as it
        is (its whole length: the client is done) and, with ``see_through``, watched until it is
        completed: if that process dies first, this one completes it (:meth:`_see_through`)."""
        spec = await self._append_spec(owner, upload_id)
        upload = await self.engine.finish_abandoned(owner, await self.engine.loaded(upload_id))  # a dead process's
        # A final upload still pending was left by a process killed before it completed it.
        if upload.status is UploadStatus.PENDING and whole(upload):
            lease, token = self.engine.store.append_lease_key(upload_id), self.engine.new_token()
            if not await self.engine.take_lease(lease, token, APPEND_LEASE_SECONDS):
                if see_through:  # a request is writing or completing it right now
                    self._see_through(owner, upload_id)
                return upload
            try:
                upload, _ = await self.engine.complete(owner, upload_id)
            finally:
                await self._release(lease, token)
            if is_final(spec):
                await self._free_parts(owner, spec.protocol_data.get("parts", []))
        elif upload.status is UploadStatus.COMPLETING and see_through:  # by a process that still beats
            self._see_through(owner, upload_id)
        return upload

    def _see_through(self, owner: str, upload_id: str) -> None:
        """Watch a whole upload that another request is completing until it is completed, and
        complete it here once that request's process is gone (its heartbeat lapsed), for up to
        SEE_THROUGH_SECONDS. A tus client told the whole length is done and will not ask again.
        The upload is noted in Redis meanwhile (``store.unfinished_key``): should it still not be
        completed when the watch ends (its completion failing) or this process die, the next sweep
        of the notes (every serving process's, once a minute, and each GC pass's) completes it
        (:meth:`sweep_unfinished`)."""
        if upload_id in self._seen_through:
            return
        self._seen_through.add(upload_id)
        noted = False

        async def completed_or_not_ours() -> None:
            nonlocal noted
            if not noted:
                await self.engine.store.note_unfinished(upload_id)
                noted = True
            try:
                upload: Upload | None = await self.append_state(owner, upload_id, see_through=False)
            except errors.UploadError as exc:
                if exc.status >= 500:  # the sink or Redis is down: try again
                    raise
                upload = None  # gone, or refused: nothing to see through
            if upload is not None and unfinished(upload):
                raise _StillCompleting(upload_id)
            await self.engine.store.forget_unfinished(upload_id)

        self.engine.give_back.later(f"completion of upload {upload_id}", completed_or_not_ours, SEE_THROUGH_SECONDS,
                                    done="whole upload seen through",
                                    undone="whole upload not completed yet: left to its process, or the next sweep",
                                    then=lambda: self._seen_through.discard(upload_id))

    async def finish_whole(self, upload_id: str, dry_run: bool = False) -> bool:
        """Complete a whole upload that no live request holds: still pending (its last PATCH was
        recorded, then its process died: a GC pass frees a dead writer's lease first; or its
        completion failed after a HEAD was told the whole length, :meth:`_see_through` noted it),
        or being completed by a dead process. True if it did (or, with ``dry_run``, would: a pending
        one)."""
        upload, _ = await self.engine.store.load(upload_id)
        if upload is None or upload.spec.layout != Layout.APPEND or not unfinished(upload):
            return False
        if dry_run:
            return upload.status is UploadStatus.PENDING
        upload = await self.append_state(upload.spec.owner, upload_id, see_through=False)
        return upload.status is UploadStatus.COMPLETED

    async def sweep_unfinished(self, dry_run: bool = False) -> list[str]:
        """Complete the whole uploads noted by watches that ended before their completion
        (:meth:`_see_through`): each serving process once a minute, and each GC pass; a note goes
        once its upload is completed, gone, or not whole."""
        done = []
        for upload_id in await self.engine.store.unfinished():
            try:
                finished = await self.finish_whole(upload_id, dry_run)
            except Exception:  # still failing (the sink down): kept for the next pass
                log.warning("whole upload not completed", extra={"upload_id": upload_id}, exc_info=True)
                continue
            if finished:
                done.append(upload_id)
            if dry_run:
                continue
            if not finished:  # held by a live request, or no longer whole and pending: which?
                upload, _ = await self.engine.store.load(upload_id)
                if upload is not None and unfinished(upload):
                    continue
            await self.engine.store.forget_unfinished(upload_id)
        return done

    async def terminate(self, owner: str, upload_id: str) -> None:
        """Delete an append upload (tus termination) as it is: it is never completed first."""
        await self._append_spec(owner, upload_id)
        await self.engine.delete(owner, upload_id)

    async def append(self, owner: str, upload_id: str, offset: int, body: AsyncIterable[bytes],
                     *, declared_size: int | None = None, checksum: Checksum | None = None,
                     length: int | None = None) -> AppendReceipt:
        """Append ``body`` at ``offset``; declare a deferred ``length``; complete when full."""
        spec = await self._append_spec(owner, upload_id)
        if is_final(spec):
            raise errors.FinalUploadPatch("a final (concatenated) upload cannot be appended to")
        # One writer per upload, on any node. First the data file's writer lock (the
        # fence: a request whose lease ran out while it still writes keeps the file
        # until it is done), then the lease; the state is read under both, so a request
        # at a stale offset (or past a completion) never writes a byte.
        # Sink staging: no file to lock; the append lease fences writers, and each body is an
        # object of its own (sinkstaging.py), registered only at the offset it was written for.
        lost = asyncio.Event()
        watched = _while_leased(body, lost)
        # A large body on the local data file starts arriving into its buffers now, while the
        # lock and the lease are taken; nothing is written until both are held (_Early). Not one
        # its client holds back until it is read: a stale offset then keeps it from being sent.
        early = self._receive_early(upload_id, offset, watched, declared_size, checksum) if (
            not in_sink(spec) and fills(watched) and declared_size and not held_back(watched)) else None
        try:
            locked = None if in_sink(spec) else await _letting_go(
                functools.partial(self.engine.staging.lock_data_file, upload_id))
        except BaseException:
            if early is not None:
                await early.cancel()
            raise
        try:
            w = _Writer(self.engine.store.append_lease_key(upload_id), self.engine.new_token(), locked, lost,
                        early=early)
            upload = await _letting_go(functools.partial(self._lease, upload_id, w))
            w.keeper = asyncio.create_task(self.engine.keep_lease(w.lease, w.token, APPEND_LEASE_SECONDS, w.lost,
                                                                  watched))
            hung = False
            try:
                if upload is None:
                    self.engine.forget(upload_id)
                    raise errors.NotFound("no such upload")
                return await self._append_leased(owner, upload, offset, watched, w, declared_size, checksum, length)
            except BaseException as exc:
                hung = hangs(exc)
                raise
            finally:
                w.keeper.cancel()
                if not w.released:
                    await self._release(w.lease, w.token, hung)
        finally:
            if early is not None and not early.admitted.done():  # refused: the body wrote nothing
                await early.cancel()
            if locked is not None:
                await self.engine.staging.unlock_data_file(locked)  # after the register and the lease

    async def _lease(self, upload_id: str, w: _Writer) -> Upload | None:
        """Take the upload's append lease for ``w`` and read the upload under it, or ``AppendBusy``."""
        try:
            leased, upload = await self.engine.store.lease_and_load(upload_id, w.lease, w.token, APPEND_LEASE_SECONDS)
        except Exception as exc:  # no reply (Redis died or hangs): it may have taken the lease, give it back
            await self._release(w.lease, w.token, hangs(exc))
            raise
        if not leased and await self.engine.take_lease(w.lease, w.token, APPEND_LEASE_SECONDS):
            leased, upload = True, (await self.engine.store.load(upload_id))[0]  # its holder had died
        if not leased:
            raise errors.AppendBusy("another request is writing to this upload (it holds the append lease); "
                                    "retry later")
        return upload

    async def _append_leased(self, owner: str, upload: Upload, offset: int,
                             body: AsyncIterable[bytes], w: _Writer, declared_size: int | None,
                             checksum: Checksum | None, length: int | None) -> AppendReceipt:
        spec = upload.spec  # read under the lease, in the same round trip that took it
        upload_id = spec.id
        known = upload.length
        if length is not None:
            self._check_length(length)
            if known is not None and length != known:
                raise errors.BadRequest(f"the upload length is already {known}", length=known)
            if length < offset:
                raise errors.BadRequest(f"length {length} is below offset {offset}")
        if offset != upload.bytes_received:
            raise errors.OffsetMismatch(f"the upload's offset is {upload.bytes_received}, not {offset}",
                                        offset=upload.bytes_received)
        target = known if known is not None else length
        limit = (target if target is not None else self.max_append_size) - offset
        if declared_size is not None and declared_size > limit:
            raise errors.TooLarge(f"the body ({declared_size} bytes) runs past the upload's end", limit=limit)
        if upload.status is not UploadStatus.PENDING:
            if declared_size == 0 or limit == 0:
                if declared_size:
                    raise errors.TooLarge("the upload is already complete", limit=0)
                return AppendReceipt(upload, offset, upload.status is UploadStatus.COMPLETED)
            raise errors.UploadNotPending(f"upload is {upload.status}", upload_status=str(upload.status))

        ends = declared_size is not None and target is not None and offset + declared_size == target
        if declared_size != 0 and not ends:  # the PATCH that ends the upload is always let in
            self.engine.quotas.check_segments(upload.received_count)
        new_offset = offset
        if declared_size != 0:
            # The lease goes back with the register script (one round trip less) unless this
            # request still needs it: to declare the length, or to complete the upload.
            completes_at = target if target is not None and not is_partial(spec) else None
            may_release = length is None or known is not None
            new_offset = await self._store_segment(upload, offset, body, limit, checksum, w,
                                                   may_release, completes_at, declared_size)
        # A deferred length is declared after this request's bytes are registered: the
        # body was already bounded by it, and losing the offset race declares nothing.
        if length is not None and known is None:
            outcome, detail = await self.engine.store.declare_length(upload_id, length)
            if outcome == "missing":
                raise errors.NotFound("no such upload")
            if outcome == "already" and detail != length:
                raise errors.BadRequest(f"the upload length is already {detail}", length=detail)
            if outcome == "short":
                raise errors.BadRequest(f"length {length} is below the {detail} bytes stored")
        if target is not None and new_offset == target and not is_partial(spec):
            try:
                upload, _ = await self.engine.complete(owner, upload_id)  # still under the append lease
            except Exception as exc:
                raise _completion_refused(exc, new_offset) from exc
            return AppendReceipt(upload, new_offset, True)
        if new_offset != offset:  # what the register script just wrote, without reading it back
            now = self.engine.clock()
            upload = dataclasses.replace(upload, bytes_received=new_offset, received_count=upload.received_count + 1,
                                         updated_at=now, expires_at=now + self.engine.limits.upload_ttl)
        if known is None and length is not None:
            upload = dataclasses.replace(upload, declared_length=length)
        return AppendReceipt(upload, new_offset, False)

    def _segment_hashers(self, upload_id: str, offset: int, checksum: Checksum | None
                         ) -> tuple[Any | None, Any, Check]:
        """A segment's digests at ``offset`` of the data file: (the running SHA-256, what to feed, the check)."""
        hasher, check = _declared(checksum)
        # Hash each byte once: continue this process's running SHA-256 of the upload when it
        # reaches exactly this offset (a copy: a failed request must not advance it).
        # The segment's record then carries the digest of everything up to its end.
        running = self.engine.digests.resume(upload_id, offset)
        # A client-declared checksum is computed beside it, in the same worker thread (never on the loop).
        return running, (Tee(running or new_sha256(), hasher) if hasher else running), check

    def _receive_early(self, upload_id: str, offset: int, body: Watched, size: int,
                       checksum: Checksum | None) -> _Early:
        """Start receiving a body of ``size`` bytes at ``offset`` before the request may write (_Early).

        If the request is let in, ``offset`` is the registered offset and ``size`` is within
        the upload's limit (checked before the segment is stored), as for ``receive_at``.
        """
        running, hashers, check = self._segment_hashers(upload_id, offset, checksum)
        admitted: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        receiving = asyncio.ensure_future(self.engine.staging.receive_at(
            upload_id, offset, body, limit=size, hasher=hashers, check=check, admitted=admitted))
        return _Early(receiving, admitted, running)

    async def _store_segment(self, upload: Upload, offset: int, body: AsyncIterable[bytes],
                             limit: int, checksum: Checksum | None, w: _Writer, may_release: bool,
                             completes_at: int | None, declared_size: int | None = None) -> int:
        """Write one segment at ``offset`` (into the data file, or a staging object) and register it; the new offset.

        The caller holds the append lease and the data file's writer lock (``w``),
        and has checked that ``offset`` is the registered one. With ``may_release``,
        the register script also gives the lease back, unless the segment ends at
        ``completes_at`` (where the caller completes the upload under the lease).
        """
        upload_id = upload.id
        n = upload.received_count + 1
        name = ""  # sink staging: the segment's own object, named by this request (sinkstaging.py)
        if w.early is not None:  # received since before the lease: it may write now
            running = w.early.running
            w.early.admitted.set_result(w.locked)
            staged = await self._into_data_file(upload_id, w.early.receiving)
            record = ChunkRecord(n, staged.size, staged.sha256)
        elif in_sink(upload.spec):
            hasher, check = _declared(checksum)
            running, name = None, f"{offset}.{w.token}"
            record = await self.engine.sink_staging.put_segment(upload_id, name, n, body, declared_size, limit,
                                                           [hasher] if hasher else [], check)
        else:
            running, hashers, check = self._segment_hashers(upload_id, offset, checksum)
            staged = await self._into_data_file(upload_id, self.engine.staging.receive_at(
                upload_id, offset, body, limit=limit, hasher=hashers, check=check, locked=w.locked,
                size=declared_size))
            record = ChunkRecord(n, staged.size, staged.sha256)
        if record.size == 0:
            return offset
        if w.lost.is_set():  # another request may own the file now: do not claim these bytes
            if name:
                await asyncio.shield(self.engine.sink_staging.drop(upload_id, name))
            raise errors.AppendBusy("the upload's append lease was lost mid-body")
        give_back = may_release and offset + record.size != completes_at
        # (Should the register script's answer be lost, its object stays: completion or the GC removes it.)
        reg = await self.engine.store.register_chunk(upload_id, record, self.engine.limits.upload_ttl,
                                                     expected_offset=offset, mark=name,
                                                     release=(w.lease, w.token) if give_back else None,
                                                     replicate=True)
        if give_back:  # whatever the outcome, the lease is gone: the writer lock still fences the file
            w.released = True
            if w.keeper is not None:
                w.keeper.cancel()
        if reg.outcome is Outcome.STORED:
            self.engine.digests.advance(upload_id, reg.bytes_received, running)
            self.engine.hooks.chunk_stored(upload.spec, record, reg.received_count)
            await self.engine.store.replicated(upload_id, reg.acks)  # redis.min_replica_acks: else 503
            return reg.bytes_received
        if name:  # not registered: this object never counts
            await asyncio.shield(self.engine.sink_staging.drop(upload_id, name))
        # The upload moved on (deleted, completing) or lost the offset despite the lease
        # (it expired): these bytes lie past the registered offset, as garbage.
        if reg.outcome is Outcome.MISSING:
            self.engine.forget(upload_id)
            raise errors.NotFound("no such upload")
        if reg.outcome is Outcome.STATUS:
            raise errors.UploadNotPending(f"upload is {reg.status}", upload_status=str(reg.status))
        current = (await self.engine.loaded(upload_id)).bytes_received
        raise errors.OffsetMismatch(f"another request appended at offset {offset} first", offset=current)

    async def _into_data_file(self, upload_id: str, writing: Awaitable[StagedChunk]) -> StagedChunk:
        """``writing`` (a body into the upload's data file), or 404 if the file went with the upload
        meanwhile (terminated, or expired, while the body streamed), not the file system's error."""
        try:
            return await writing
        except FileNotFoundError:
            await self.engine.refuse_if_gone(upload_id)
            raise

    async def concatenate(self, owner: str, part_ids: Sequence[str], filename: str,
                          metadata: dict[str, str], protocol: str = "tus",
                          protocol_data: dict[str, Any] | None = None) -> Upload:
        """Create a final upload from finished partial uploads and complete it into the sink; the same
        parts again give the same final upload (:func:`final_upload_id`), completed once.

        ``protocol_data``: the front door's own fields, kept with the upload."""
        if not part_ids:
            raise errors.BadRequest("a final upload needs at least one partial upload")
        final_id = final_upload_id(owner, part_ids)
        upload = None
        if await self.engine.store.status(final_id) is None:
            try:
                upload = await self._concatenate(owner, final_id, part_ids, filename, metadata, protocol,
                                                 protocol_data)
            except UploadExists:  # another try of this POST created it meanwhile: it completes once
                pass
        if upload is None:  # the same POST again: its answer was lost, or both tries ran at once
            upload, _ = await self.engine.complete(owner, final_id)
        await self._free_parts(owner, part_ids)
        return upload

    async def _free_parts(self, owner: str, part_ids: Sequence[str]) -> None:
        """The parts of a completed final upload: their bytes now live in the sink, their staged segments go."""
        for pid in part_ids:
            try:
                await self.engine.delete(owner, pid, reason="concatenated")
            except errors.NotFound:  # a first try removed it
                pass
            except errors.UploadError:
                log.warning("partial upload not removed", extra={"upload_id": pid})

    async def _concatenate(self, owner: str, final_id: str, part_ids: Sequence[str], filename: str,
                           metadata: dict[str, str], protocol: str, protocol_data: dict[str, Any] | None) -> Upload:
        total = 0
        for pid in part_ids:
            spec = await self._append_spec(owner, pid)
            part = await self.engine.loaded(pid)
            if not is_partial(spec):
                raise errors.BadRequest(f"upload {pid} is not a partial upload")
            if part.length is None or part.bytes_received != part.length:
                raise errors.BadRequest(f"partial upload {pid} is not finished")
            total += part.length
        self._check_length(total)
        spec = (await self._create_spec(owner, filename, total, metadata, protocol,
                                        {**(protocol_data or {}), "concat": FINAL, "parts": list(part_ids)},
                                        upload_id=final_id)).spec
        try:
            upload, _ = await self.engine.complete(owner, spec.id)
        except BaseException:
            self.engine.forget(spec.id)
            await asyncio.shield(self.engine.store.delete(spec.id))  # even if the request is cancelled meanwhile
            await asyncio.shield(self.engine.quotas.forget(spec))
            raise
        return upload

    async def source(self, upload: Upload, own: dict[int, ChunkRecord] | None = None
                             ) -> tuple[Upload, ChunkSource]:
        """The data file to assemble, cut to the registered length (a final upload's: its parts', in order).

        ``own``: the upload's own segment records, when the caller has read them already.
        """
        spec = upload.spec
        ids = list(spec.protocol_data.get("parts", [])) if is_final(spec) else [spec.id]
        files: list[ChunkFile] = []
        pieces = []  # sink staging: each segment is a staging object of its upload (sinkstaging.py)
        for uid in ids:
            records = own if own is not None and uid == spec.id else await self.engine.store.chunks(uid)
            if sorted(records) != list(range(1, len(records) + 1)):  # only Redis losing keys makes one
                raise errors.UploadLost(f"upload {uid} lost the records of its segments (Redis evicted or lost "
                                        "them); upload the file again", upload_id=uid)
            size = sum(r.size for r in records.values())
            if in_sink(spec):
                pieces += await self.engine.sink_staging.pieces(uid, records)
            elif size:  # readers take ``size`` bytes of the file: garbage past it is never read
                files.append(ChunkFile(len(files) + 1, self.engine.staging.data_path(uid), size, ""))
        length = spec.total_size if is_final(spec) else upload.length
        if length is None:
            raise errors.Conflict("the upload's length is not declared yet")
        source = self.engine.sink_staging.source(pieces) if in_sink(spec) else ChunkSource(files)
        if source.size != length:
            raise errors.Conflict(f"the upload holds {source.size} of {length} bytes", offset=source.size,
                                  length=length)
        if files and not is_final(spec):  # one whole file, so that a sink may link it instead of copying
            await self.engine.staging.truncate(spec.id, length)
        if spec.total_size != length:
            upload = dataclasses.replace(upload, spec=dataclasses.replace(spec, total_size=length))
        return upload, source

    async def ready(self, upload: Upload, records: dict[int, ChunkRecord]) -> Assembling:
        """The data file (or a final upload's parts), checked whole before the completion lease."""
        upload, source = await self.source(upload, records)
        return Assembling(upload, {}, source)

    async def assemble(self, job: Assembling) -> None:
        if in_sink(job.upload.spec):  # the segments are staging objects: read back from the sink
            await assemble_in_sink(self.engine.sink, job)
        else:
            await assemble_staged(self.engine, job)

    def forget(self, upload_id: str) -> None:
        pass  # the running digest is the engine's; nothing else is kept in memory
