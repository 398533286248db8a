"""S3 refusing what the sink asks, against a real S3 (moto): the bucket deleted after start-up; the
credentials refused (InvalidAccessKeyId, AccessDenied) and a key S3 will not take, as S3 answers them
(moto checks neither keys nor their length, so those answers are played by wrapping its client).

Each answers 502 ``sink-failed`` naming the S3 call and S3's error code (what an operator acts on),
never the endpoint or the library's wording; the upload stays pending with its chunks, nothing is
left in the bucket, deep health reports the sink, and once S3 takes the calls again the same
complete stores the bytes.
"""

from __future__ import annotations

import asyncio

import pytest

from helpers import random_bytes
from s3_servers import LEAKS, PREFIX, Faulty, bucket_contents, chunks_sent, client_error, completes, the_sink

MiB = 1024 * 1024


async def refused(client, uid: str, call: str, code: str) -> str:
    """Complete answers 502 sink-failed naming ``call`` and ``code``; the upload stays pending."""
    resp = await client.post(f"/v1/uploads/{uid}/complete")
    text = await resp.text()
    assert resp.status == 502 and resp.content_type == "application/problem+json", text
    problem = await resp.json()
    assert problem["type"].endswith("/sink-failed"), problem
    assert call in problem["detail"] and code in problem["detail"], problem
    for leak in LEAKS:
        assert leak not in text, (leak, text)
    assert (await (await client.get(f"/v1/uploads/{uid}")).json())["status"] == "pending"
    return problem["detail"]


async def test_a_bucket_deleted_after_start_up(make_client, sink_settings, s3, bucket):
    client = await make_client(sink_settings())
    data = random_bytes(MiB + 5)
    uid = await chunks_sent(client, data, MiB)  # streamed mode: the chunks wait on this node
    await asyncio.to_thread(s3.delete_bucket, Bucket=bucket)
    detail = await refused(client, uid, "CreateMultipartUpload", "NoSuchBucket")
    assert "S3 refused CreateMultipartUpload: 404 NoSuchBucket" in detail, detail  # s3.md's example
    health = await client.get("/v1/health/deep")
    assert health.status == 503, await health.text()
    assert (await health.json())["checks"]["sink:s3"] == {"ok": False, "reason": "sink-failed"}
    await asyncio.to_thread(s3.create_bucket, Bucket=bucket)
    assert (await client.get("/v1/health/deep")).status == 200
    await completes(client, s3, bucket, uid, data)


@pytest.mark.parametrize("code", ["InvalidAccessKeyId", "AccessDenied"])
@pytest.mark.parametrize("mode, chunk, call, method", [
    ("staged", MiB, "UploadPart", "upload_part"),
    ("direct", 5 * MiB, "ListParts", "list_parts"),
], ids=["staged", "direct"])
async def test_credentials_refused_at_completion(make_client, sink_settings, s3, bucket, code, mode, chunk, call,
                                                 method):
    client = await make_client(sink_settings())
    data = random_bytes(chunk + 5)
    uid = await chunks_sent(client, data, chunk)
    sink = the_sink(client)
    real = await sink.api()
    sink.use_client(Faulty(real, **{method: [client_error(code, 403, call)]}))
    await refused(client, uid, call, code)
    assert await asyncio.to_thread(bucket_contents, s3, bucket) == ([], [PREFIX + uid] if mode == "direct" else [])
    sink.use_client(real)
    await completes(client, s3, bucket, uid, data)


async def test_a_key_s3_will_not_take(make_client, sink_settings, s3, bucket):
    """S3 refuses the key at CreateMultipartUpload (moto takes keys over 1,024 bytes, so its refusal
    is played): nothing is left behind, and the same complete stores the bytes once S3 takes it."""
    client = await make_client(sink_settings())
    data = random_bytes(MiB + 5)
    uid = await chunks_sent(client, data, MiB)
    sink = the_sink(client)
    real = await sink.api()
    sink.use_client(Faulty(real, create_multipart_upload=[client_error("KeyTooLongError", 400,
                                                                       "CreateMultipartUpload")]))
    await refused(client, uid, "CreateMultipartUpload", "KeyTooLongError")
    assert await asyncio.to_thread(bucket_contents, s3, bucket) == ([], [])
    sink.use_client(real)
    await completes(client, s3, bucket, uid, data)
