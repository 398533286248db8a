"""Drills: the S3 server (SeaweedFS) SIGKILLed by PID in the middle of a direct-mode completion and of
a direct-mode chunk's body, then started again on its data.

The request answers 503 problem+json with ``Retry-After``, naming neither the endpoint nor the
library's error; the upload is pending at once (the completion lease given back, the chunk not
registered); once S3 is back, the retried request completes the upload byte-identical (a completion
is sent again while it answers 503: SeaweedFS answers before its volumes are back), and after
one GC pass the bucket holds the object and no multipart upload. (A streamed-mode completion killed
the same way: ``tests/integration/test_s3_seaweedfs.py``.)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from helpers import create, put_chunk, random_bytes, split
from s3_servers import PREFIX, Faulty, chunks_sent, completes, node_on, start_weed, the_sink, unavailable

pytestmark = [pytest.mark.slow, pytest.mark.drill]

MiB = 1024 * 1024
CHUNK = 5 * MiB


#: The sink's table: quick retries, which meet a refused connection while S3 is down.
SINK = {"prefix": PREFIX, "retry_attempts": 3, "retry_base_delay": 0.05, "retry_max_delay": 0.1,
        "connect_timeout": 2, "read_timeout": 10}


async def test_s3_killed_mid_direct_completion(make_client, make_settings, aws_env, tmp_path, report):  # noqa: F811
    server = start_weed(tmp_path / "weed")
    try:
        client, s3, bucket = await node_on(make_client, make_settings, server, **SINK)
        data = random_bytes(2 * CHUNK + 12_345)
        uid = await chunks_sent(client, data, CHUNK)
        sink = the_sink(client)
        real = await sink.api()
        sink.use_client(Faulty(real, complete_multipart_upload=[server.kill]))
        started = time.monotonic()
        await unavailable(await client.post(f"/v1/uploads/{uid}/complete"))
        answered = time.monotonic()
        assert (await (await client.get(f"/v1/uploads/{uid}")).json())["status"] == "pending"
        server = start_weed(tmp_path / "weed", server.ports)
        sink.use_client(real)
        await completes(client, s3, bucket, uid, data, sweep=True, restarted=True)
    finally:
        server.stop()
    report("s3 killed mid-completion (direct)", answer_s=round(answered - started, 2))


async def test_s3_killed_mid_direct_chunk(make_client, make_settings, aws_env, tmp_path, report):  # noqa: F811
    server = start_weed(tmp_path / "weed")
    try:
        client, s3, bucket = await node_on(make_client, make_settings, server, **SINK)
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
        await unavailable(resp)
        answered = time.monotonic()
        assert (await (await client.get(f"/v1/uploads/{uid}")).json())["chunks_received"] == [2]
        server = start_weed(tmp_path / "weed", server.ports)
        # Its part lease was given back: taken at once. (Sent again while a weed just restarted
        # answers 503, as for the completion below.)
        deadline = time.monotonic() + 30
        while (await put_chunk(client, uid, 1, pieces[0], expect=None))[0] == 503 and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
        assert (await (await client.get(f"/v1/uploads/{uid}")).json())["chunks_received"] == [1, 2]
        await completes(client, s3, bucket, uid, data, sweep=True, restarted=True)
    finally:
        server.stop()
    report("s3 killed mid-chunk (direct)", answer_s=round(answered - started, 2))
