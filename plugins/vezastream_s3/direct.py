"""Direct mode: each chunk goes to S3 as part n of a multipart upload, as it arrives.

The multipart upload is opened when the upload is created (with
``ChecksumAlgorithm=SHA256``, so S3 keeps a SHA-256 of every part). A chunk's
body streams from the client's request into a presigned UploadPart request
(``Content-Length`` known in advance, nothing buffered, nothing on disk):

- when the client declared the chunk's digest, it is sent as
  ``x-amz-checksum-sha256`` and S3 refuses a part that does not match;
- either way the sink hashes the body as it passes and compares the
  SHA-256 S3 reports for the part (or, from servers that report none, the
  MD5 ETag) with its own: a part is registered only if S3 holds exactly the
  bytes received.

Completion is ListParts (every registered chunk must be there, at its size)
then CompleteMultipartUpload naming each part's ETag, so no data is moved.
``result.sha256`` is then computed by reading the object back once
(streamed, no disk), which also re-checks every chunk's SHA-256: the cost is
one full read of the object from S3 (see README "S3 sink" for figures). The
object is visible at its key from CompleteMultipartUpload on, before that
check. CompleteMultipartUpload consumes the parts (they cannot be read
before it), so the engine checks a declared SHA-256 first when its node
hashed every chunk in order; a refusal found after it deletes the object and
the engine marks the upload ``rejected`` (see ``ReceivesChunks.assemble_direct``).
A completion that failed otherwise after it finds the object on its next try
(ListParts answers NoSuchUpload) and reads it back.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
from collections.abc import AsyncIterable, AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
from botocore.exceptions import ClientError

from vezastream import ChunkRecord, MeteredBody, Upload, UploadSpec, errors

from .client import Retrying, S3API, error_code, etag_md5, presigned_put
from .settings import MAX_PART, MAX_PARTS, MIN_PART, S3Settings

#: How many choices of copies completion tries where a store lists a part sent twice (see ``_join``).
JOIN_TRIES = 8
#: What such a store answers to CompleteMultipartUpload naming a copy whose SHA-256 is not the chunk's.
WRONG_COPY = frozenset({"BadDigest", "InvalidDigest", "InvalidPart", "XAmzContentChecksumMismatch",
                        "InvalidChecksum"})


class Objects(Protocol):
    """What direct mode asks of the S3 sink (``sink.py``), which hands itself over as this."""

    settings: S3Settings
    retry: Retrying

    async def api(self) -> S3API: ...
    async def http(self) -> aiohttp.ClientSession: ...
    def key(self, spec: UploadSpec) -> str: ...
    def location(self, key: str) -> str: ...
    def guard(self, spec: UploadSpec) -> str | None: ...
    async def create_multipart(self, spec: UploadSpec, **extra: Any) -> str: ...
    async def refuse_taken(self, key: str, upload_id: str) -> None: ...
    async def finish(self, key: str, upload_id: str | None, parts: list[dict[str, Any]], size: int,
                     content_type: str = ..., guard: str | None = None) -> None: ...
    async def object_size(self, key: str) -> int | None: ...
    async def hash_object(self, key: str, chunks: Sequence[ChunkRecord]) -> tuple[int, str, list[int]]: ...
    async def delete_key(self, key: str) -> None: ...
    def read(self, key: str, start: int, end: int) -> AsyncIterator[bytes]: ...


@dataclass
class JoinedObject:
    """A completed multipart upload whose bytes were read back and hashed (a ``vezastream.DirectAssembly``)."""

    s3: Objects
    key: str
    size: int
    sha256: str
    location: str = ""

    def __post_init__(self) -> None:
        self.location = self.s3.location(self.key)

    async def commit(self) -> None:
        return None  # CompleteMultipartUpload already made it whole

    def iter_bytes(self, block: int = 0) -> AsyncIterator[bytes]:
        """The object's bytes, in order (for inspector plugins)."""
        return self.s3.read(self.key, 0, self.size)

    async def discard(self) -> None:
        await self.s3.delete_key(self.key)


def _b64(hex_digest: str) -> str:
    return base64.b64encode(bytes.fromhex(hex_digest)).decode()


class DirectParts:
    """The ``ReceivesChunks`` capability of the S3 sink, handed the sink's object calls (:class:`Objects`)."""

    def __init__(self, s3: Objects) -> None:
        self.s3 = s3

    async def open_direct(self, spec: UploadSpec) -> str | None:
        """Take uploads whose chunks S3 accepts as parts (5 MiB .. 5 GiB, all but the last; at most
        10,000 of them, as ``limits.max_chunks`` may allow more)."""
        if not self.s3.settings.direct or spec.total_size == 0 or not MIN_PART <= spec.chunk_size <= MAX_PART \
                or spec.total_chunks > MAX_PARTS:
            return None
        return await self.s3.create_multipart(spec, ChecksumAlgorithm="SHA256")

    async def put_direct(self, spec: UploadSpec, n: int, body: AsyncIterable[bytes], size: int,
                         sha256: str | None) -> ChunkRecord:
        assert spec.direct
        api = await self.s3.api()
        params: dict[str, Any] = {"Bucket": self.s3.settings.bucket, "Key": self.s3.key(spec),
                                  "UploadId": spec.direct, "PartNumber": n}
        headers = {"Content-Length": str(size)}
        if sha256:
            params["ChecksumSHA256"] = headers["x-amz-checksum-sha256"] = _b64(sha256)
        url = await api.generate_presigned_url("upload_part", Params=params, ExpiresIn=3600, HttpMethod="PUT")
        md5 = hashlib.md5(usedforsecurity=False)
        metered = MeteredBody(n, body, size, sha256, also=[md5])
        http = await self.s3.http()
        try:
            answer = await presigned_put(http, url, metered.__aiter__(), headers, f"UploadPart of chunk {n}")
        except Exception as exc:
            if metered.failure is not None:
                raise metered.failure from None
            if isinstance(exc, errors.DigestMismatch) and metered.received == size \
                    and metered.sha256.hexdigest() == sha256:
                # The client's bytes matched their SHA-256; S3's did not: they changed on the way (502, not 422).
                raise errors.SinkFailed(f"S3 received other bytes than were sent for chunk {n} (they do not "
                                        "match its SHA-256); send the chunk again") from None
            raise
        etag, s3_sum = answer.get("ETag", ""), answer.get("x-amz-checksum-sha256")
        record = metered.record()
        if metered.failure is not None:  # a failure after the last byte went out
            raise metered.failure
        stored_md5 = etag_md5(etag)
        if s3_sum and base64.b64decode(s3_sum).hex() != record.sha256:
            raise errors.SinkFailed(f"S3 stored part {n} with SHA-256 {base64.b64decode(s3_sum).hex()}, "
                                    f"sent {record.sha256}")
        if not s3_sum and stored_md5 and stored_md5 != md5.hexdigest():
            raise errors.SinkFailed(f"S3 stored part {n} with MD5 {stored_md5}, sent {md5.hexdigest()}")
        return record

    async def assemble_direct(self, upload: Upload, chunks: Sequence[ChunkRecord]) -> JoinedObject:
        spec = upload.spec
        assert spec.direct
        key = self.s3.key(spec)
        try:
            listed = await self._list_parts(key, spec.direct)
        except ClientError as exc:
            # Completed by an earlier attempt that failed later on (e.g. while reading back)?
            if error_code(exc) != "NoSuchUpload" or await self.s3.object_size(key) != spec.total_size:
                if error_code(exc) == "NoSuchUpload":
                    raise errors.Conflict("the upload's parts are no longer in S3; delete it and upload again") \
                        from exc
                raise
        else:
            copies = []  # per chunk, the listed copies of its part that have its size, the last listed first
            for chunk in chunks:
                fits = [p for p in reversed(listed.get(chunk.number, [])) if int(p["Size"]) == chunk.size]
                if not fits:
                    # A registered chunk is never sent again (a retry is only compared), so only a new upload helps.
                    raise errors.Conflict(f"part {chunk.number} is missing or wrong in S3; delete the upload "
                                          "and upload the file again")
                copies.append(fits)
            if (guard := self.s3.guard(spec)) is not None:
                await self.s3.refuse_taken(key, guard)
            await self._join(key, spec, chunks, copies, guard)
        size, sha256, bad = await self.s3.retry("GetObject", lambda: self.s3.hash_object(key, chunks))
        if bad:
            await self.s3.delete_key(key)
            raise errors.IntegrityError(f"S3 holds different bytes for chunks {bad[:20]}", chunks=bad[:100])
        return JoinedObject(self.s3, key, size, sha256)

    async def _join(self, key: str, spec: UploadSpec, chunks: Sequence[ChunkRecord],
                    copies: Sequence[Sequence[dict[str, Any]]], guard: str | None) -> None:
        """CompleteMultipartUpload, naming for each chunk one listed copy of its part, with the chunk's
        SHA-256 (S3 checks each part's against it).

        S3 keeps one copy of a part sent twice. A store that keeps and lists every copy (SeaweedFS)
        refuses a copy whose SHA-256 is not the chunk's: the next choice of copies is then tried (the
        last listed first), at most :data:`JOIN_TRIES` in all. Which copy a chunk's record names is
        not kept (only its size and SHA-256), so this is how the right one is found."""
        choices = list(itertools.islice(itertools.product(*copies), JOIN_TRIES))
        for tried, choice in enumerate(choices, 1):
            parts = [{"PartNumber": chunk.number, "ETag": part["ETag"], "ChecksumSHA256": _b64(chunk.sha256)}
                     for chunk, part in zip(chunks, choice)]
            try:
                await self.s3.finish(key, spec.direct, parts, spec.total_size, guard=guard)
                return
            except ClientError as exc:
                if tried == len(choices) or error_code(exc) not in WRONG_COPY:
                    raise

    async def _list_parts(self, key: str, upload_id: str) -> dict[int, list[dict[str, Any]]]:
        """The multipart upload's parts by number: each number's copies, in the order listed (S3 lists one)."""
        parts: dict[int, list[dict[str, Any]]] = {}
        marker: dict[str, Any] = {}
        for _ in range(100):  # 1,000 parts a page, 10,000 parts at most
            page = await self.s3.retry("ListParts", lambda: self._list_page(key, upload_id, marker))
            for part in page.get("Parts", []):
                parts.setdefault(int(part["PartNumber"]), []).append(part)
            if not page.get("IsTruncated"):
                break
            marker = {"PartNumberMarker": page["NextPartNumberMarker"]}
        return parts

    async def _list_page(self, key: str, upload_id: str, marker: dict[str, Any]) -> dict[str, Any]:
        api = await self.s3.api()
        return await api.list_parts(Bucket=self.s3.settings.bucket, Key=key, UploadId=upload_id, **marker)
