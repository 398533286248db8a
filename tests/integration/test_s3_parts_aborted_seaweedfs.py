"""A direct-mode upload whose multipart upload was aborted outside the server (a lifecycle
rule, an operator), against SeaweedFS: it answers NoSuchUpload to the next part, as S3 does
(moto answers 500 instead, so test_s3_parts_changed_in_the_bucket.py covers completion only).

The chunk's answer must say what happened and what to do, not "no such upload" about an
upload that GET still shows pending.
"""

from __future__ import annotations

import asyncio

import pytest

from helpers import create, put_chunk, random_bytes, split
from s3_servers import deleted_leaves_nothing, open_multipart_uploads

MiB = 1024 * 1024
CHUNK = 5 * MiB


@pytest.fixture
def s3_server(weed_server):
    return weed_server


@pytest.fixture
def sink_defaults():
    return {"prefix": "gone/", "retry_base_delay": 0.01, "retry_max_delay": 0.05}


async def test_a_chunk_for_parts_aborted_outside_the_server_says_so_and_what_to_do(make_client, sink_settings, s3,
                                                                                  bucket):
    client = await make_client(sink_settings())
    data = random_bytes(CHUNK + 3)
    uid = (await create(client, total_size=len(data), chunk_size=CHUNK))["upload_id"]
    first, last = split(data, CHUNK)
    await put_chunk(client, uid, 2, last)
    (handle,) = await asyncio.to_thread(open_multipart_uploads, s3, bucket)
    await asyncio.to_thread(s3.abort_multipart_upload, Bucket=bucket, Key=handle["Key"], UploadId=handle["UploadId"])
    status, problem = await put_chunk(client, uid, 1, first, expect=None)
    assert status == 404 and problem["type"].endswith("not-found"), problem
    assert "no longer holds this upload's parts" in problem["detail"], problem
    assert "delete the upload and upload it again" in problem["detail"], problem
    state = await (await client.get(f"/v1/uploads/{uid}")).json()
    assert state["status"] == "pending" and state["chunks_received"] == [2], state
    await deleted_leaves_nothing(client, uid, s3, bucket)
