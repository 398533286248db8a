"""Staging objects: unfinished uploads' bytes in the bucket (``storage.staging = "sink"``).

Stores: ``<prefix>.staging/<upload id>/<name>``, one object per native chunk or
tus PATCH body, named by the engine (unique per request). Each is one PutObject,
streamed from the client's request through a presigned URL with its length
known (nothing buffered, nothing on disk), and its ETag (the MD5 of a single
PUT) compared with the MD5 of what was sent. Completion reads them back in
order (GetObject), the sink joins them into the upload's object, then they are
deleted. Key templates never yield a segment that starts with a dot, so
``.staging/`` never meets an upload's object.

Does not: register anything (the engine does, once an object is whole), or
keep anything locally. Needs (IAM): ``s3:PutObject``, ``s3:GetObject``,
``s3:DeleteObject`` on ``<prefix>.staging/*`` and ``s3:ListBucket`` (the GC and
``clear_staged`` list the objects of an upload).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from datetime import datetime
from typing import Any

import aiohttp
from botocore.exceptions import ClientError

from vezastream import STAGED_IN_SINK, LiveCheck, errors, is_upload_id

from .client import S3API, error_code, etag_md5, objects_under, presigned_put, unbroken

log = logging.getLogger("vezastream.s3")

#: A folder of staging objects never looks like an upload's key (a template's segments never start with ".").
FOLDER = ".staging/"

#: ``call(what, method, **kw)``: one retried S3 call on the bucket.
Call = Callable[..., Awaitable[dict[str, Any]]]
#: ``read(key, start, end)``: an object's bytes, streamed.
Read = Callable[[str, int, int], AsyncIterator[bytes]]


class StagingObjects:
    """The ``StagesBytes`` capability of the S3 sink, handed only the calls it makes."""

    def __init__(self, bucket: str, prefix: str, call: Call, api: Callable[[], Awaitable[S3API]],
                 http: Callable[[], Awaitable[aiohttp.ClientSession]], read: Read) -> None:
        self.bucket, self.root = bucket, prefix + FOLDER
        self._call, self._api, self._http, self._read = call, api, http, read

    def key(self, upload_id: str, name: str = "") -> str:
        return f"{self.root}{upload_id}/{name}"

    async def put_staged(self, upload_id: str, name: str, body: AsyncIterable[bytes], size: int) -> None:
        key = self.key(upload_id, name)
        url = await (await self._api()).generate_presigned_url(
            "put_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=3600, HttpMethod="PUT")
        md5 = hashlib.md5(usedforsecurity=False)

        async def counted() -> AsyncIterator[bytes]:
            async for piece in body:
                await asyncio.to_thread(md5.update, piece)
                yield piece

        answer = await presigned_put(await self._http(), url, counted(), {"Content-Length": str(size)},
                                     "PutObject of a staging object")
        stored = etag_md5(answer.get("ETag", ""))
        if stored and stored != md5.hexdigest():
            log.warning("staging object changed on the way", extra={"key": key, "md5": stored,
                                                                    "sent_md5": md5.hexdigest()})
            await self.remove_staged(upload_id, name)
            raise errors.SinkFailed(f"S3 stored a staging object with MD5 {stored}, sent {md5.hexdigest()}; "
                                    "send the bytes again")

    async def read_staged(self, upload_id: str, name: str, size: int) -> AsyncIterator[bytes]:
        try:
            async for data in unbroken("GetObject of a staging object", self._read(self.key(upload_id, name), 0, size)):
                yield data
        except ClientError as exc:
            if error_code(exc) in ("NoSuchKey", "404"):
                raise errors.Conflict(f"a staged piece of upload {upload_id} is missing from the bucket; "
                                      "delete the upload and upload it again") from None
            raise

    async def remove_staged(self, upload_id: str, name: str) -> None:
        await self._call("DeleteObject", "delete_object", Key=self.key(upload_id, name))

    async def clear_staged(self, upload_id: str) -> None:
        for key, _ in await self._listed(self.key(upload_id)):
            await self._call("DeleteObject", "delete_object", Key=key)

    async def _listed(self, prefix: str) -> list[tuple[str, datetime]]:
        """(key, last modified) of every object under ``prefix``."""
        return [(item["Key"], item["LastModified"]) async for item in objects_under(self._call, prefix)]

    async def sweep(self, older_than: float, is_live: LiveCheck, dry_run: bool = False) -> list[str]:
        """Delete the staging objects of uploads no longer live, none of whose objects is newer than ``older_than``."""
        uploads: dict[str, list[tuple[str, datetime]]] = {}
        for key, modified in await self._listed(self.root):
            uploads.setdefault(key[len(self.root):].split("/", 1)[0], []).append((key, modified))
        removed: list[str] = []
        for upload_id, objects in uploads.items():
            if not is_upload_id(upload_id) or max(m for _, m in objects).timestamp() > older_than:
                continue
            if await is_live(upload_id, STAGED_IN_SINK):
                continue
            for key, _ in objects:
                if not dry_run:
                    await self._call("DeleteObject", "delete_object", Key=key)
                removed.append(key)
        if removed:
            log.info("removed stale staging objects", extra={"event": "s3_sweep", "count": len(removed)})
        return removed
