"""Drills: the S3 server (SeaweedFS) SIGKILLed by PID in the middle of a direct-mode completion and of
a direct-mode chunk's body, then started again on its data.

The request answers 503 problem+json with ``Retry-After``, naming neither the endpoint nor the
library's error; the upload is pending at once (the completion lease given back, the chunk not
registered); once S3 is back, the retried request completes the upload byte-identical, and after
one GC pass the bucket holds the object and no multipart upload. (A streamed-mode completion killed
the same way: ``tests/integration/test_s3_seaweedfs.py``.)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from helpers import create, put_chunk, random_bytes, split
from s3_servers import (PREFIX, Faulty, aws_env, boto_client, bucket_contents, completes, new_bucket,  # noqa: F401
                        s3_overrides, start_weed, the_sink)

from vezastream.http.app import gc_key

pytestmark = [pytest.mark.slow, pytest.mark.drill]

MiB = 1024 * 1024
CHUNK = 5 * MiB
LEAKS = ("127.0.0.1", "http://", "botocore", "aiohttp", "Error(", "Cannot connect")


async def node(make_client, make_settings, server) -> tuple[Any, Any, str]:
    """(client, boto3 client, bucket) of a node whose sink is ``server``."""
    s3 = boto_client(server.endpoint)
    bucket = await asyncio.to_thread(new_bucket, s3)
    client = await make_client(make_settings(**s3_overrides(server, bucket, prefix=PREFIX, retry_attempts=3,
                                                            retry_base_delay=0.05, retry_max_delay=0.1,
                                                            connect_timeout=2, read_timeout=10)))
    return client, s3, bucket


async def unavailable(resp) -> float:
    """The 503 of a request S3's death reached; the seconds it took are the caller's to time."""
    text = await resp.text()
    assert resp.status == 503 and resp.content_type == "application/problem+json", text
    assert resp.headers.get("Retry-After"), resp.headers
    for leak in LEAKS:
        assert leak not in text, (leak, text)
    return time.monotonic()


async def back_and_swept(client, s3, bucket: str, uid: str, data: bytes) -> None:
    await completes(client, s3, bucket, uid, data)
    gc = client.server.app[gc_key]
    gc.clock = lambda: time.time() + 2 * gc.settings.gc.max_age
    await gc.run_once()
    assert await asyncio.to_thread(bucket_contents, s3, bucket) == ([PREFIX + uid], [])


async def test_s3_killed_mid_direct_completion(make_client, make_settings, aws_env, tmp_path, report):  # noqa: F811
    server = start_weed(tmp_path / "weed")
    try:
        client, s3, bucket = await node(make_client, make_settings, server)
        data = random_bytes(2 * CHUNK + 12_345)
        uid = (await create(client, total_size=len(data), chunk_size=CHUNK))["upload_id"]
        for n, piece in enumerate(split(data, CHUNK), 1):
            await put_chunk(client, uid, n, piece)
        sink = the_sink(client)
        real = await sink.api()
        sink.use_client(Faulty(real, complete_multipart_upload=[server.kill]))
        started = time.monotonic()
        answered = await unavailable(await client.post(f"/v1/uploads/{uid}/complete"))
        assert (await (await client.get(f"/v1/uploads/{uid}")).json())["status"] == "pending"
        server = start_weed(tmp_path / "weed", server.ports)
        sink.use_client(real)
        await back_and_swept(client, s3, bucket, uid, data)
    finally:
        server.stop()
    report("s3 killed mid-completion (direct)", answer_s=round(answered - started, 2))


async def test_s3_killed_mid_direct_chunk(make_client, make_settings, aws_env, tmp_path, report):  # noqa: F811
    server = start_weed(tmp_path / "weed")
    try:
        client, s3, bucket = await node(make_client, make_settings, server)
        data = random_bytes(CHUNK + 12_345)
        pieces = split(data, CHUNK)
        uid = (await create(client, total_size=len(data), chunk_size=CHUNK))["upload_id"]
        await put_chunk(client, uid, 2, pieces[1])

        async def body() -> AsyncIterator[bytes]:
            yield pieces[0][:MiB]
            await asyncio.sleep(0.2)
            await asyncio.to_thread(server.kill)  # S3 dies with a fifth of the part sent
            yield pieces[0][MiB:]
        started = time.monotonic()
        resp = await client.put(f"/v1/uploads/{uid}/chunks/1", data=body(),
                                headers={"Content-Length": str(CHUNK)})
        answered = await unavailable(resp)
        assert (await (await client.get(f"/v1/uploads/{uid}")).json())["chunks_received"] == [2]
        server = start_weed(tmp_path / "weed", server.ports)
        await put_chunk(client, uid, 1, pieces[0])  # its part lease was given back: taken at once
        await back_and_swept(client, s3, bucket, uid, data)
    finally:
        server.stop()
    report("s3 killed mid-chunk (direct)", answer_s=round(answered - started, 2))
