"""The S3 sink: streamed mode, reading back, removal, health and the GC sweep.

Direct mode (chunks sent to S3 as they arrive) lives in :mod:`.direct`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
from collections.abc import AsyncIterable, AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from botocore.exceptions import ClientError

from vezastream import (ChunkRecord, ChunkSource, Content, KeyTemplate, LiveCheck, Upload, UploadResult, UploadSpec,
                        content_disposition, errors, is_upload_id)

from .client import (Progress, Retrying, S3API, TakenBody, error_code, objects_under, open_client, unbroken,
                     unless_stalled)
from .direct import DirectParts, JoinedObject
from .settings import MAX_PARTS, S3Settings
from .staging import StagingObjects

log = logging.getLogger("vezastream.s3")

#: Bytes read from staged chunks, or from S3, per step.
READ_BLOCK = 1024 * 1024
GONE = ("NoSuchUpload", "NoSuchKey", "404")
#: Under the prefix: a note (a small JSON object) per open multipart upload whose key does not name its upload.
NOTES = ".vezastream-open/"
#: Under the prefix: an intent (upload id, key) written before such a multipart upload is created, dropped
#: once its note is written; apart from NOTES, so that a sweep reading notes never reads an intent.
INTENTS = ".vezastream-intent/"


@dataclass
class S3Assembly:
    """A multipart upload holding every part, not completed yet (so not visible)."""

    sink: "S3Sink"
    key: str
    upload_id: str | None  # None: an empty object, written by commit
    parts: list[dict[str, Any]]
    size: int
    content_type: str = "application/octet-stream"  # of an empty object (a multipart upload names it at creation)
    #: The upload whose key may already hold another's object (a key template without ``{upload_id}``).
    guard: str | None = None
    filename: str = ""  # of an empty object: its Content-Disposition, as a multipart upload's
    location: str = ""
    _tried: bool = field(default=False, repr=False)

    def __post_init__(self) -> None:
        self.location = self.sink.location(self.key)

    async def commit(self) -> None:
        if self.guard is not None:
            await self.sink.refuse_taken(self.key, self.guard)
        self._tried = True
        await self.sink.finish(self.key, self.upload_id, self.parts, self.size, self.content_type, self.guard,
                               self.filename)

    async def discard(self) -> None:
        if self.upload_id is not None:
            await self.sink.abort_multipart(self.key, self.upload_id)
        if self._tried:  # a commit may have landed before it failed
            await self.sink.delete_key(self.key)


class S3Sink:
    """Completed uploads become objects ``<prefix><upload id>`` in one bucket."""

    name = "s3"

    def __init__(self, settings: S3Settings, client: S3API | None = None) -> None:
        self.settings = settings
        self.template = KeyTemplate.parse(settings.key_template, "sinks.s3.key_template")
        self.retry = Retrying(settings)
        self._client = client
        self._http: aiohttp.ClientSession | None = None
        self._stack = contextlib.AsyncExitStack()
        self._opening = asyncio.Lock()
        #: Direct mode (chunks of >= 5 MiB as parts, as they arrive): handed this sink's object calls.
        self.parts = DirectParts(self)
        #: ``storage.staging = "sink"``: unfinished uploads' bytes as objects under ``<prefix>.staging/``.
        self.staged = StagingObjects(settings.bucket, settings.prefix, self._call, self.api, self.http, self.read)

    # -- client lifecycle -------------------------------------------------------
    async def api(self) -> S3API:
        """The S3 client, opened on first use and closed by :meth:`aclose`."""
        if self._client is None:
            async with self._opening:
                if self._client is None:
                    self._client = await open_client(self.settings, self._stack)
        return self._client

    def use_client(self, client: S3API) -> None:
        """Replace the client (tests wrap the real one to inject faults)."""
        self._client = client

    async def http(self) -> aiohttp.ClientSession:
        """The HTTP session for presigned part uploads (direct mode)."""
        if self._http is None:
            timeout = aiohttp.ClientTimeout(sock_connect=self.settings.connect_timeout,
                                            sock_read=self.settings.read_timeout)
            self._http = await self._stack.enter_async_context(aiohttp.ClientSession(timeout=timeout))
        return self._http

    async def aclose(self) -> None:
        await self._stack.aclose()
        self._client = self._http = None

    # -- names ------------------------------------------------------------------
    def key(self, spec: UploadSpec) -> str:
        return f"{self.settings.prefix}{self.template.render(spec)}"

    def guard(self, spec: UploadSpec) -> str | None:
        """``spec.id`` when its key may already hold another upload's object, else None."""
        return None if self.template.unique(spec) else spec.id

    async def refuse_taken(self, key: str, upload_id: str) -> None:
        """Raise ``key-exists`` when ``key`` holds an object that is not ``upload_id``'s."""
        owner = await self.owner_of(key)
        if owner is not None and owner != upload_id:
            raise errors.KeyExists(f"an object already exists at {self.location(key)}; delete it, "
                                   "or delete this upload")

    async def owner_of(self, key: str) -> str | None:
        """The upload id an object names in its metadata ("" for a foreign object), None when there is none."""
        reply = await self.head(key)
        return None if reply is None else str(reply.get("Metadata", {}).get("vezastream-upload", ""))

    def location(self, key: str) -> str:
        return f"s3://{self.settings.bucket}/{key}"

    def key_of(self, result: UploadResult) -> str:
        prefix = f"s3://{self.settings.bucket}/"
        if not result.location.startswith(prefix):  # stored before the sink or bucket was changed
            raise errors.NotImplementedBySink(f"this upload was stored at {result.location}, "
                                              f"outside bucket {self.settings.bucket!r}")
        return result.location[len(prefix):]

    def _call(self, what: str, method: str, **kw: Any):
        """One retried S3 call: ``method`` of the client with ``Bucket`` filled in.

        A body (bytes) goes as a :class:`TakenBody`, so that an attempt whose body S3 stops taking
        fails after ``connect_timeout`` + ``read_timeout`` (:func:`unless_stalled`)."""
        data = kw.pop("Body", None)
        stall = self.settings.connect_timeout + self.settings.read_timeout

        async def call() -> dict[str, Any]:
            progress = Progress()
            body = {} if data is None else {"Body": TakenBody(data, progress)}
            work = getattr(await self.api(), method)(Bucket=self.settings.bucket, **kw, **body)
            return await (work if data is None else unless_stalled(stall, progress, work))
        return self.retry(what, call)

    # -- streamed mode ------------------------------------------------------------
    def part_size_for(self, total: int) -> int:
        """The configured part size, grown when the file would need more than 10,000 parts."""
        return max(int(self.settings.part_size), -(-total // MAX_PARTS))

    async def create_multipart(self, spec: UploadSpec, **extra: Any) -> str:
        key = self.key(spec)
        named, intent = self._names_upload(key), self._intent(spec.id, key)
        if not named:  # for the sweep, if this process dies before the note is written (or S3 fails)
            await self._put_json(intent, {"upload": spec.id, "key": key})
        reply = await self._call("CreateMultipartUpload", "create_multipart_upload", Key=key,
                                 ContentType=spec.content_type,
                                 ContentDisposition=content_disposition(spec.filename),
                                 Metadata={"vezastream-upload": spec.id}, **extra)
        handle = str(reply["UploadId"])
        if not named:  # the sweep could not tell whose it is: a note beside it says
            try:
                await self._put_json(self._note(handle), {"upload": spec.id, "key": key, "handle": handle})
            except BaseException:
                await asyncio.shield(self._give_up(key, handle, intent))
                raise
            await self.delete_key(intent)
        return handle

    async def _give_up(self, key: str, handle: str, intent: str) -> None:
        """Abort a multipart upload whose note could not be written; its intent stays if S3 kept it."""
        if await self.abort_multipart(key, handle):
            await self.delete_key(intent)

    async def _put_json(self, key: str, value: dict[str, str]) -> None:
        await self._call("PutObject", "put_object", Key=key, ContentType="application/json",
                         Body=json.dumps(value).encode())

    # -- notes: whose a multipart upload is, when its key does not say (see sweep) ----------------
    def _names_upload(self, key: str) -> bool:
        """Whether ``key`` is ``<prefix><upload id>``, which names the upload its multipart upload belongs to."""
        return key.startswith(self.settings.prefix) and is_upload_id(key[len(self.settings.prefix):])

    def _note(self, handle: str) -> str:
        return f"{self.settings.prefix}{NOTES}{hashlib.sha256(handle.encode()).hexdigest()[:32]}"

    def _intent(self, upload_id: str, key: str) -> str:
        return f"{self.settings.prefix}{INTENTS}{upload_id}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"

    async def _drop_note(self, key: str, handle: str) -> None:
        """The multipart upload ``handle`` is completed or aborted: its note goes (quietly; else the sweep's)."""
        if not self._names_upload(key):
            await self.delete_key(self._note(handle))

    async def assemble(self, upload: Upload, source: ChunkSource) -> S3Assembly:
        """Stream the staged chunks, in order, into a new multipart upload.

        At most ``parts_in_flight`` parts of ``part_size`` bytes are in memory
        (being filled or being sent). Any failure aborts the multipart upload.
        """
        key, size, guard = self.key(upload.spec), source.size, self.guard(upload.spec)
        if size == 0:
            return S3Assembly(self, key, None, [], 0, upload.spec.content_type, guard, upload.spec.filename)
        upload_id = await self.create_multipart(upload.spec)
        try:
            parts = await self._send_parts(key, upload_id, source.iter_bytes(READ_BLOCK), self.part_size_for(size))
        except BaseException:
            await asyncio.shield(self.abort_multipart(key, upload_id))  # to its end, even if cancelled meanwhile
            raise
        return S3Assembly(self, key, upload_id, parts, size, guard=guard)

    async def _send_parts(self, key: str, upload_id: str, blocks: AsyncIterator[bytes],
                          part_size: int) -> list[dict[str, Any]]:
        slots = asyncio.Semaphore(self.settings.parts_in_flight)
        tasks: list[asyncio.Task[dict[str, Any]]] = []

        async def send(n: int, data: bytes) -> dict[str, Any]:
            try:
                reply = await self._call("UploadPart", "upload_part", Key=key, UploadId=upload_id,
                                         PartNumber=n, Body=data)
                return {"PartNumber": n, "ETag": reply["ETag"]}
            finally:
                slots.release()

        def start(data: bytes) -> None:
            tasks.append(asyncio.create_task(send(len(tasks) + 1, data)))
            for task in tasks:  # fail fast: stop reading once a part has failed
                if task.done() and not task.cancelled() and task.exception():
                    raise task.exception()  # type: ignore[misc]

        try:
            buf = bytearray()
            await slots.acquire()  # a slot is held while its part fills
            async for block in blocks:
                buf += block
                while len(buf) >= part_size:
                    start(bytes(buf[:part_size]))
                    del buf[:part_size]
                    await slots.acquire()
            if buf or not tasks:
                start(bytes(buf))
            else:
                slots.release()
            return list(await asyncio.gather(*tasks))
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    async def finish(self, key: str, upload_id: str | None, parts: list[dict[str, Any]], size: int,
                     content_type: str = "application/octet-stream", guard: str | None = None,
                     filename: str = "") -> None:
        """CompleteMultipartUpload (or PutObject for an empty file): the object appears at once, whole.

        With a ``guard`` (the upload's id), never over another object: ``If-None-Match: *``.
        """
        cond = {"IfNoneMatch": "*"} if guard is not None else {}
        try:
            if upload_id is None:
                await self._call("PutObject", "put_object", Key=key, Body=b"", ContentType=content_type,
                                 ContentDisposition=content_disposition(filename),
                                 **({"Metadata": {"vezastream-upload": guard}} if guard else {}), **cond)
                return
            await self._call("CompleteMultipartUpload", "complete_multipart_upload", Key=key, UploadId=upload_id,
                             MultipartUpload={"Parts": parts}, **cond)
        except ClientError as exc:
            if guard is not None and error_code(exc) in ("PreconditionFailed", "412"):
                raise errors.KeyExists(f"an object already exists at {self.location(key)}") from None
            # A retried complete whose first try landed finds no upload, and the object in place.
            if error_code(exc) != "NoSuchUpload" or await self.object_size(key) != size:
                raise
        await self._drop_note(key, upload_id)

    async def head(self, key: str) -> dict[str, Any] | None:
        """HeadObject's answer, None when there is no object at ``key``."""
        try:
            return await self._call("HeadObject", "head_object", Key=key)
        except ClientError as exc:
            if error_code(exc) in GONE:
                return None
            raise

    async def object_size(self, key: str) -> int | None:
        reply = await self.head(key)
        return None if reply is None else int(reply["ContentLength"])

    async def abort_multipart(self, key: str, upload_id: str) -> bool:
        """Abort, quietly: False when S3 could not be told (the GC will sweep it)."""
        try:
            await self._call("AbortMultipartUpload", "abort_multipart_upload", Key=key, UploadId=upload_id)
        except Exception as exc:
            if error_code(exc) not in GONE:
                log.warning("abort failed", extra={"key": key, "error": repr(exc)[:200]})
                return False
        await self._drop_note(key, upload_id)
        return True

    async def delete_key(self, key: str) -> None:
        try:
            await self._call("DeleteObject", "delete_object", Key=key)
        except Exception as exc:
            log.warning("delete failed", extra={"key": key, "error": repr(exc)[:200]})

    # -- reading back -------------------------------------------------------------
    async def open_content(self, upload: Upload, result: UploadResult) -> Content:
        key = self.key_of(result)
        if self.settings.content == "redirect":
            api = await self.api()
            url = await api.generate_presigned_url(
                "get_object", Params={"Bucket": self.settings.bucket, "Key": key,
                                      "ResponseContentDisposition": content_disposition(upload.spec.filename)},
                ExpiresIn=self.settings.presign_expiry)
            return Content(size=result.size, url=url)
        return Content(size=result.size, reader=lambda start, end: unbroken("GetObject", self.read(key, start, end)))

    async def read(self, key: str, start: int, end: int) -> AsyncIterator[bytes]:
        """Bytes ``start..end`` (exclusive) of an object, streamed."""
        if start >= end:
            return
        reply = await self._call("GetObject", "get_object", Key=key, Range=f"bytes={start}-{end - 1}")
        async with reply["Body"] as body:
            while data := await body.read(READ_BLOCK):
                yield data

    async def hash_object(self, key: str, chunks: Sequence[ChunkRecord]) -> tuple[int, str, list[int]]:
        """(size, SHA-256) of a stored object, and the numbers of chunks whose bytes differ from their record."""
        whole, size, bad = hashlib.sha256(), 0, []
        bounds = iter(chunks)
        current = next(bounds, None)
        part, filled = hashlib.sha256(), 0
        async for data in self.read(key, 0, sum(c.size for c in chunks)):
            whole.update(data)
            size += len(data)
            view = memoryview(data)
            while view and current is not None:
                take = min(len(view), current.size - filled)
                part.update(view[:take])
                filled += take
                view = view[take:]
                if filled == current.size:
                    if part.hexdigest() != current.sha256:
                        bad.append(current.number)
                    current, part, filled = next(bounds, None), hashlib.sha256(), 0
        return size, whole.hexdigest(), bad

    # -- capabilities ---------------------------------------------------------------
    async def remove(self, upload: Upload, result: UploadResult) -> None:
        await self._call("DeleteObject", "delete_object", Key=self.key_of(result))

    async def abort(self, upload: Upload) -> None:
        """Deleting an unfinished upload: abort its direct-mode multipart upload, if any."""
        if upload.spec.direct:
            key = self.key(upload.spec)
            await self.abort_multipart(key, upload.spec.direct)
            if self.template.unique(upload.spec) or await self.owner_of(key) == upload.id:
                await self.delete_key(key)  # a completion that landed but was never recorded

    async def check(self) -> None:
        await self._call("HeadBucket", "head_bucket")

    # -- direct mode (ReceivesChunks): see direct.py -----------------------------------------------
    async def open_direct(self, spec: UploadSpec) -> str | None:
        return await self.parts.open_direct(spec)

    async def put_direct(self, spec: UploadSpec, n: int, body: AsyncIterable[bytes], size: int,
                         sha256: str | None) -> ChunkRecord:
        return await self.parts.put_direct(spec, n, body, size, sha256)

    async def assemble_direct(self, upload: Upload, chunks: Sequence[ChunkRecord]) -> JoinedObject:
        return await self.parts.assemble_direct(upload, chunks)

    # -- sink staging (StagesBytes): see staging.py -----------------------------------------------
    async def put_staged(self, upload_id: str, name: str, body: AsyncIterable[bytes], size: int) -> None:
        await self.staged.put_staged(upload_id, name, body, size)

    def read_staged(self, upload_id: str, name: str, size: int) -> AsyncIterator[bytes]:
        return self.staged.read_staged(upload_id, name, size)

    async def remove_staged(self, upload_id: str, name: str) -> None:
        await self.staged.remove_staged(upload_id, name)

    async def clear_staged(self, upload_id: str) -> None:
        await self.staged.clear_staged(upload_id)

    async def sweep(self, older_than: float, is_live: LiveCheck, dry_run: bool = False) -> list[str]:
        """Abort multipart uploads under the prefix, started before ``older_than``, that no live upload owns.

        A multipart upload at ``<prefix><upload id>`` names its upload; one at a key that does not
        (``key_template``, a plugin's key) is found through the note written beside it when it was
        created (``<prefix>.vezastream-open/<hash of its handle>``: upload id, key, handle), which
        goes when the multipart upload is completed or aborted. One whose server died before its
        note was written is found through the intent written before it (:meth:`_sweep_intents`).
        """
        aborted: list[str] = []
        unnamed: set[str] = set()  # the handles of open multipart uploads whose key names no upload
        async for item in self._multipart_uploads(self.settings.prefix):
            key, handle = item["Key"], item["UploadId"]
            upload_id = key[len(self.settings.prefix):]
            if item["Initiated"].timestamp() > older_than:
                continue
            if not self._names_upload(key):
                unnamed.add(handle)
                continue
            if await is_live(upload_id, handle):
                continue
            if dry_run or await self.abort_multipart(key, handle):
                aborted.append(f"{key}#{handle}")
        aborted += await self._sweep_notes(older_than, is_live, unnamed, dry_run)
        aborted += await self._sweep_intents(older_than, is_live, dry_run)
        if aborted:
            log.info("aborted stale multipart uploads", extra={"event": "s3_sweep", "count": len(aborted)})
        return aborted + await self.staged.sweep(older_than, is_live, dry_run)

    async def _multipart_uploads(self, prefix: str) -> AsyncIterator[dict[str, Any]]:
        """Every open multipart upload under ``prefix``, page by page (bounded: 10 million per pass)."""
        markers: dict[str, str] = {}
        for _ in range(10_000):
            page = await self._call("ListMultipartUploads", "list_multipart_uploads", Prefix=prefix, **markers)
            for item in page.get("Uploads", []):
                yield item
            if not page.get("IsTruncated"):
                return
            markers = {"KeyMarker": page["NextKeyMarker"], "UploadIdMarker": page["NextUploadIdMarker"]}

    async def _read_json(self, key: str) -> dict[str, Any]:
        reply = await self._call("GetObject", "get_object", Key=key)
        async with reply["Body"] as body:
            return json.loads(await body.read())

    async def _sweep_notes(self, older_than: float, is_live: LiveCheck, unnamed: set[str], dry_run: bool
                           ) -> list[str]:
        """The notes' part of :meth:`sweep`: abort what no live upload owns among ``unnamed``; drop stale notes."""
        aborted: list[str] = []
        async for item in objects_under(self._call, self.settings.prefix + NOTES):
            if item["LastModified"].timestamp() > older_than:
                continue
            note = await self._read_json(item["Key"])
            upload_id, key, handle = str(note["upload"]), str(note["key"]), str(note["handle"])
            if await is_live(upload_id, handle):
                continue
            if handle not in unnamed:  # completed or aborted already (its note was not dropped then)
                if not dry_run:
                    await self.delete_key(item["Key"])
            elif dry_run or await self.abort_multipart(key, handle):  # which drops the note
                aborted.append(f"{key}#{handle}")
        return aborted

    async def _sweep_intents(self, older_than: float, is_live: LiveCheck, dry_run: bool) -> list[str]:
        """The intents' part of :meth:`sweep`: at a stale intent's key, abort the multipart uploads started
        before ``older_than`` that have no note (their server died before writing it) and are not live,
        then drop the intent; it stays while one of them is young, live or not aborted. A noted one is
        the notes' to sweep."""
        aborted: list[str] = []
        async for item in objects_under(self._call, self.settings.prefix + INTENTS):
            if item["LastModified"].timestamp() > older_than:
                continue
            intent = await self._read_json(item["Key"])
            upload_id, key = str(intent["upload"]), str(intent["key"])
            done = True  # else the intent stays, for a later pass: a young or live one, or one S3 kept
            async for mpu in self._multipart_uploads(key):
                handle = str(mpu["UploadId"])
                if mpu["Key"] != key or await self.head(self._note(handle)) is not None:
                    continue
                if (mpu["Initiated"].timestamp() > older_than or await is_live(upload_id, handle)
                        or not (dry_run or await self.abort_multipart(key, handle))):
                    done = False
                    continue
                aborted.append(f"{key}#{handle}")
            if done and not dry_run:
                await self.delete_key(item["Key"])
        return aborted
