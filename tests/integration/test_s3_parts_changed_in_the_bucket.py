"""Direct mode when the bucket changed behind the server's back: a multipart upload aborted
(a lifecycle rule, an operator), a part replaced, ListParts refused. Against a real S3 (moto).

Completion lists the parts before it joins them: what S3 no longer holds as registered is a
409 and the upload stays pending (nothing was joined); bytes found wrong only after joining
are a 422, the object goes and the upload is rejected; S3's own refusal is a 502.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from helpers import create, put_chunk, random_bytes, sha256, split
from s3_servers import (Faulty, bucket_contents, client_error, deleted_leaves_nothing,
                        open_multipart_uploads, PREFIX, read_object, the_sink, upload_is_rejected)

MiB = 1024 * 1024
CHUNK = 5 * MiB  # direct mode: S3's smallest part


@pytest.fixture
async def s3_client(make_client, sink_settings):
    return await make_client(sink_settings(retry_attempts=2))


async def direct_upload_ready(client, s3: Any, bucket: str) -> tuple[str, bytes, str]:
    """A direct-mode upload with every chunk sent: (upload id, its bytes, its multipart upload's handle)."""
    data = random_bytes(CHUNK + 7)
    state = await create(client, total_size=len(data), chunk_size=CHUNK)
    assert state["mode"] == "direct"
    for n, piece in enumerate(split(data, CHUNK), 1):
        await put_chunk(client, state["upload_id"], n, piece)
    (handle,) = [u["UploadId"] for u in await asyncio.to_thread(open_multipart_uploads, s3, bucket)]
    return state["upload_id"], data, handle


async def replace_part(s3: Any, bucket: str, uid: str, handle: str, body: bytes) -> None:
    """Part 1 of the upload's multipart upload, sent again by someone else with ``body``."""
    await asyncio.to_thread(s3.upload_part, Bucket=bucket, Key=PREFIX + uid, UploadId=handle, PartNumber=1,
                            Body=body)


async def completion_refused(client, uid: str, status: int, words: str) -> dict[str, Any]:
    resp = await client.post(f"/v1/uploads/{uid}/complete")
    problem = await resp.json()
    assert resp.status == status and resp.content_type == "application/problem+json", problem
    assert words in problem["detail"], problem
    return problem


async def test_parts_aborted_by_a_lifecycle_rule_answer_409_and_the_upload_stays_deletable(s3_client, s3, bucket):
    """ListParts answers NoSuchUpload and no object stands in for it: the client is told to start again."""
    uid, _, handle = await direct_upload_ready(s3_client, s3, bucket)
    await asyncio.to_thread(s3.abort_multipart_upload, Bucket=bucket, Key=PREFIX + uid, UploadId=handle)
    await completion_refused(s3_client, uid, 409, "no longer in S3; delete it and upload again")
    state = await (await s3_client.get(f"/v1/uploads/{uid}")).json()
    assert state["status"] == "pending" and state["chunks_received"] == [1, 2], state
    await deleted_leaves_nothing(s3_client, uid, s3, bucket)


async def test_a_part_replaced_with_another_size_answers_409_and_nothing_is_joined(s3_client, s3, bucket):
    uid, _, handle = await direct_upload_ready(s3_client, s3, bucket)
    await replace_part(s3, bucket, uid, handle, random_bytes(CHUNK + 1))
    await completion_refused(s3_client, uid, 409, "part 1 is missing or wrong in S3; delete the upload and upload the file again")
    assert await asyncio.to_thread(bucket_contents, s3, bucket) == ([], [PREFIX + uid])  # not joined
    await deleted_leaves_nothing(s3_client, uid, s3, bucket)


async def test_a_part_replaced_with_other_bytes_of_its_size_is_found_on_reading_back(s3_client, s3, bucket):
    """A server that does not check the parts' SHA-256 at CompleteMultipartUpload (moto) joins them:
    reading the object back finds chunk 1 wrong, the object goes, and the upload is rejected."""
    uid, data, handle = await direct_upload_ready(s3_client, s3, bucket)
    await replace_part(s3, bucket, uid, handle, random_bytes(CHUNK))
    problem = await completion_refused(s3_client, uid, 422, "S3 holds different bytes for chunks [1]")
    assert problem["type"].endswith("integrity-error") and problem["chunks"] == [1], problem
    assert await asyncio.to_thread(bucket_contents, s3, bucket) == ([], [])
    await upload_is_rejected(s3_client, uid, "different bytes", data[:CHUNK])
    await deleted_leaves_nothing(s3_client, uid, s3, bucket)


async def test_listparts_refused_by_s3_answers_502_and_keeps_the_parts(s3_client, s3, bucket):
    uid, data, _ = await direct_upload_ready(s3_client, s3, bucket)
    sink = the_sink(s3_client)
    real = await sink.api()
    spy = Faulty(real, list_parts=[client_error("AccessDenied", 403, "ListParts")])
    sink.use_client(spy)
    resp = await s3_client.post(f"/v1/uploads/{uid}/complete")
    assert resp.status == 502 and resp.content_type == "application/problem+json", await resp.text()
    assert spy.calls["list_parts"] == 1  # permanent: not retried, and not taken for a missing upload
    assert await asyncio.to_thread(bucket_contents, s3, bucket) == ([], [PREFIX + uid])
    sink.use_client(real)
    resp = await s3_client.post(f"/v1/uploads/{uid}/complete")
    assert resp.status == 200 and (await resp.json())["sha256"] == sha256(data)
    assert await read_object(s3, bucket, PREFIX + uid) == data
