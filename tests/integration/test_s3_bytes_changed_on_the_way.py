"""Bytes that change between the server and S3 are never registered (a real S3, moto).

Direct-mode chunks and staging objects (``storage.staging = "sink"``) stream to S3 through
presigned URLs; the sink hashes what it sends and compares the part's or object's ETag (the
MD5 of what S3 stored). Here the URLs lead through a hop on 127.0.0.1 that flips one bit of
every body on its way to S3 (a faulty proxy, NIC or middlebox): the chunk answers 502, it is
not registered, and no staging object is left; sent again on a sound path, it lands.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from helpers import create, put_chunk, random_bytes, sha256, split
from s3_servers import (aws_env, bucket, bucket_contents, free_port, moto_server, PREFIX, read_object,  # noqa: F401
                        s3, s3_overrides, s3_server, sink_defaults, sink_settings, the_sink)

MiB = 1024 * 1024
#: S3's answer headers the sink reads (the rest of the hop's answer is rebuilt by aiohttp).
KEPT = re.compile(r"^(etag|x-amz-.*)$", re.IGNORECASE)


class BitFlippingHop:
    """An HTTP hop to ``upstream`` that flips the lowest bit of the middle byte of each request body."""

    def __init__(self, upstream: str) -> None:
        self.upstream, self.port, self.flipped = upstream, free_port(), 0

    async def forward(self, request: web.Request) -> web.Response:
        body = bytearray(await request.read())
        if body:
            body[len(body) // 2] ^= 1
            self.flipped += 1
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        async with aiohttp.ClientSession() as session:
            async with session.request(request.method, self.upstream + request.path_qs, data=bytes(body),
                                       headers=headers) as resp:
                return web.Response(status=resp.status, body=await resp.read(),
                                    headers={k: v for k, v in resp.headers.items() if KEPT.match(k)})


@pytest.fixture
async def hop(s3_server) -> AsyncIterator[BitFlippingHop]:
    """The hop, listening on 127.0.0.1 for the test's length."""
    found = BitFlippingHop(s3_server.endpoint)
    app = web.Application(client_max_size=64 * MiB)
    app.router.add_route("*", "/{path:.*}", found.forward)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", found.port).start()
    try:
        yield found
    finally:
        await runner.cleanup()


class Through:
    """The real S3 client, but the URLs it presigns lead through ``port`` (the hop)."""

    def __init__(self, real: Any, port: int) -> None:
        self.real, self.port = real, port

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    async def generate_presigned_url(self, *args: Any, **kw: Any) -> str:
        url = await self.real.generate_presigned_url(*args, **kw)
        return re.sub(r"^(https?://[^/:]+):\d+", rf"\g<1>:{self.port}", url)


async def refused_on_the_way(client, hop: BitFlippingHop, s3: Any, bucket: str, data: bytes, chunk: int,
                             mode: str) -> str:
    """The first chunk of a new upload, sent through the hop: 502 naming the MD5 S3 stored, nothing
    registered. Then every chunk sent on the sound path, and completed: the upload's id."""
    sink = the_sink(client)
    real = await sink.api()
    state = await create(client, total_size=len(data), chunk_size=chunk)
    uid = state["upload_id"]
    assert state["mode"] == mode
    pieces = split(data, chunk)
    sink.use_client(Through(real, hop.port))
    status, problem = await put_chunk(client, uid, 1, pieces[0], expect=None)
    assert status == 502 and problem["type"].endswith("sink-failed") and hop.flipped == 1, problem
    assert "with MD5" in problem["detail"], problem
    assert (await (await client.get(f"/v1/uploads/{uid}")).json())["received_count"] == 0
    assert (await asyncio.to_thread(bucket_contents, s3, bucket))[0] == []  # no staging object left
    sink.use_client(real)
    for n, piece in enumerate(pieces, 1):
        await put_chunk(client, uid, n, piece, expect=201)
    resp = await client.post(f"/v1/uploads/{uid}/complete")
    assert resp.status == 200 and (await resp.json())["sha256"] == sha256(data)
    return uid


async def test_a_direct_chunk_changed_on_its_way_to_s3_answers_502_and_is_not_registered(
        make_client, sink_settings, s3, bucket, hop):
    client = await make_client(sink_settings())
    data = random_bytes(5 * MiB + 9)
    uid = await refused_on_the_way(client, hop, s3, bucket, data, 5 * MiB, "direct")
    assert await read_object(s3, bucket, PREFIX + uid) == data
    assert await asyncio.to_thread(bucket_contents, s3, bucket) == ([PREFIX + uid], [])


async def test_a_staging_object_changed_on_its_way_to_s3_answers_502_and_is_removed(
        make_client, make_settings, s3_server, s3, bucket, sink_defaults, hop):
    client = await make_client(make_settings(**{"storage.staging": "sink",
                                                **s3_overrides(s3_server, bucket, **sink_defaults)}))
    data = random_bytes(300_001)
    uid = await refused_on_the_way(client, hop, s3, bucket, data, 100_000, "staged")
    assert await read_object(s3, bucket, PREFIX + uid) == data
    assert await asyncio.to_thread(bucket_contents, s3, bucket) == ([PREFIX + uid], [])
