"""Bytes that change between the server and S3 are never registered (a real S3: moto, SeaweedFS).

Direct-mode chunks and staging objects (``storage.staging = "sink"``) stream to S3 through
presigned URLs; the sink hashes what it sends and compares the SHA-256 S3 reports for the
part (SeaweedFS does) or else its ETag (the MD5 of what S3 stored; moto). A chunk's declared
SHA-256 goes along, and a server that checks it (SeaweedFS) refuses the changed part itself.
Here the URLs lead through a hop on 127.0.0.1 that flips one bit of every body on its way to
S3 (a faulty proxy, NIC or middlebox): the chunk answers 502 (the server's fault, worth a
retry: never 422, which would tell the client its bytes were wrong), it is not registered,
and no staging object is left; sent again on a sound path, it lands.
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
from s3_servers import (bucket_contents, deleted_leaves_nothing, free_port, PREFIX, read_object,
                        s3_overrides, the_sink)

MiB = 1024 * 1024
#: S3's answer headers the sink reads (the rest of the hop's answer is rebuilt by aiohttp).
KEPT = re.compile(r"^(etag|x-amz-.*)$", re.IGNORECASE)


@pytest.fixture
def s3_server(request, s3_kind: str):
    """moto or SeaweedFS, as the test's ``s3_kind`` parameter says."""
    return request.getfixturevalue("moto_server" if s3_kind == "moto" else "weed_server")


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
                             mode: str, words: str, resend: bool = True, **headers: str) -> str:
    """The first chunk of a new upload, sent through the hop (with ``headers``): 502, its detail
    saying ``words``, nothing registered. Then (``resend``) every chunk sent on the sound path, and
    completed: the upload's id."""
    sink = the_sink(client)
    real = await sink.api()
    state = await create(client, total_size=len(data), chunk_size=chunk)
    uid = state["upload_id"]
    assert state["mode"] == mode
    pieces = split(data, chunk)
    sink.use_client(Through(real, hop.port))
    status, problem = await put_chunk(client, uid, 1, pieces[0], expect=None, headers=headers)
    assert status == 502 and problem["type"].endswith("sink-failed") and hop.flipped == 1, problem
    assert words in problem["detail"], problem
    assert (await (await client.get(f"/v1/uploads/{uid}")).json())["received_count"] == 0
    assert (await asyncio.to_thread(bucket_contents, s3, bucket))[0] == []  # no staging object left
    sink.use_client(real)
    if not resend:
        return uid
    for n, piece in enumerate(pieces, 1):
        await put_chunk(client, uid, n, piece, expect=201)
    resp = await client.post(f"/v1/uploads/{uid}/complete")
    assert resp.status == 200 and (await resp.json())["sha256"] == sha256(data)
    return uid


@pytest.mark.parametrize("s3_kind, declared", [("moto", False), ("seaweedfs", False), ("seaweedfs", True)],
                         ids=["moto", "seaweedfs", "seaweedfs-declared"])  # moto ignores a declared SHA-256
async def test_a_direct_chunk_changed_on_its_way_to_s3_answers_502_and_is_not_registered(
        make_client, sink_settings, s3, bucket, hop, s3_kind, declared):
    """SeaweedFS reports each part's SHA-256 and checks a declared one itself: the part it refuses
    is not stored. One it stored (undeclared) stays listed beside the part sent again, so that
    upload is not completed here but deleted: its multipart upload goes, and nothing is left."""
    client = await make_client(sink_settings())
    data = random_bytes(5 * MiB + 9)
    headers = {"X-Chunk-Sha256": sha256(data[:5 * MiB])} if declared else {}
    words = {("moto", False): "S3 stored part 1 with MD5", ("seaweedfs", False): "S3 stored part 1 with SHA-256",
             ("seaweedfs", True): "S3 received other bytes than were sent for chunk 1"}[s3_kind, declared]
    resend = s3_kind == "moto" or declared
    uid = await refused_on_the_way(client, hop, s3, bucket, data, 5 * MiB, "direct", words, resend, **headers)
    if resend:
        assert await read_object(s3, bucket, PREFIX + uid) == data
        assert await asyncio.to_thread(bucket_contents, s3, bucket) == ([PREFIX + uid], [])
    else:
        await deleted_leaves_nothing(client, uid, s3, bucket)


@pytest.mark.parametrize("s3_kind", ["moto", "seaweedfs"])
async def test_a_staging_object_changed_on_its_way_to_s3_answers_502_and_is_removed(
        make_client, make_settings, s3_server, s3, bucket, sink_defaults, hop):
    client = await make_client(make_settings(**{"storage.staging": "sink",
                                                **s3_overrides(s3_server, bucket, **sink_defaults)}))
    data = random_bytes(300_001)
    uid = await refused_on_the_way(client, hop, s3, bucket, data, 100_000, "staged", "with MD5")
    assert await read_object(s3, bucket, PREFIX + uid) == data
    assert await asyncio.to_thread(bucket_contents, s3, bucket) == ([PREFIX + uid], [])
