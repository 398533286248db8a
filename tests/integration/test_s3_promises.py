"""Promises of docs/s3.md that no other test held the S3 sink to, against a real S3 (moto)."""

from __future__ import annotations

import asyncio

import pytest

from helpers import create, put_chunk, random_bytes, sha256, split
from s3_servers import Faulty, bucket_contents, client_error, read_object, the_sink, PREFIX

MiB = 1024 * 1024
ATTEMPTS = 4


@pytest.mark.parametrize("fault, status, calls", [
    (client_error("AccessDenied", 403), 502, 1),  # permanent: one call, never retried
    (client_error("NoSuchBucket", 404), 502, 1),
    (client_error("SlowDown", 503), 503, ATTEMPTS),  # transient: retry_attempts tries in all, then 503
], ids=["AccessDenied", "NoSuchBucket", "SlowDown"])
async def test_a_permanent_s3_error_is_not_retried_and_answers_502(make_client, sink_settings, s3, bucket,
                                                                  fault, status, calls):
    """s3.md: transient S3 errors are retried, ``retry_attempts`` tries in all, then 503; a permanent
    error (access denied, no such bucket) is not retried: 502. Counted at the S3 client: the one
    part of a staged completion is sent once for a permanent error."""
    client = await make_client(sink_settings(retry_attempts=ATTEMPTS))
    sink = the_sink(client)
    real = await sink.api()
    data = random_bytes(MiB + 5)  # two chunks, one part
    uid = (await create(client, total_size=len(data), chunk_size=MiB))["upload_id"]
    for n, piece in enumerate(split(data, MiB), 1):
        await put_chunk(client, uid, n, piece)
    spy = Faulty(real, upload_part=[fault] * ATTEMPTS)
    sink.use_client(spy)
    resp = await client.post(f"/v1/uploads/{uid}/complete")
    problem = await resp.json(content_type=None)
    assert resp.status == status and resp.content_type == "application/problem+json", problem
    assert spy.calls["upload_part"] == calls, spy.calls
    assert await asyncio.to_thread(bucket_contents, s3, bucket) == ([], [])  # aborted: nothing left
    sink.use_client(real)  # the chunks were kept: a later complete succeeds
    resp = await client.post(f"/v1/uploads/{uid}/complete")
    assert resp.status == 200 and (await resp.json())["sha256"] == sha256(data)
    assert await read_object(s3, bucket, PREFIX + uid) == data
