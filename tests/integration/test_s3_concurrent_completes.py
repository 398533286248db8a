"""A completion asked again while the first still runs, on the same node and on another: two
`vezastream serve` processes that share only Redis and the bucket (moto), ``storage.staging = "sink"``.

Every ``complete`` answers 200 with the same SHA-256; the bucket then holds exactly one object,
byte-identical, and no multipart upload or staging object (one completion ran, the others waited
for it).
"""

from __future__ import annotations

import asyncio
import signal

import aiohttp
import pytest

from helpers import random_bytes, sha256, split
from s3_servers import PREFIX, bucket_contents, read_object, stateless_nodes

pytestmark = pytest.mark.slow

KiB, MiB = 1024, 1024 * 1024
#: Chunk size and file size: chunks staged as objects in the bucket, then chunks sent direct as parts.
MODES = {"staged-in-sink": (256 * KiB, 3 * MiB + 5), "direct": (5 * MiB, 10 * MiB + 5)}


@pytest.mark.parametrize("mode", MODES)
async def test_completes_at_once_on_two_nodes_store_one_object(tmp_path, redis_url, moto_server, s3, bucket, mode):
    chunk, size = MODES[mode]
    nodes = stateless_nodes(tmp_path, redis_url, moto_server, bucket)
    try:
        await asyncio.gather(*(node.wait_ready() for node in nodes))
        a, b = (aiohttp.ClientSession(node.url) for node in nodes)
        async with a, b:
            data = random_bytes(size)
            async with a.post("/v1/uploads", json={"filename": "f", "total_size": size, "chunk_size": chunk}) as r:
                uid = (await r.json())["upload_id"]
            for n, piece in enumerate(split(data, chunk), 1):
                async with (a, b)[n % 2].put(f"/v1/uploads/{uid}/chunks/{n}", data=piece) as r:
                    assert r.status == 201, await r.text()

            async def complete(node: aiohttp.ClientSession) -> tuple[int, str]:
                async with node.post(f"/v1/uploads/{uid}/complete") as r:
                    return r.status, (await r.json()).get("sha256", await r.text())
            answers = await asyncio.wait_for(asyncio.gather(*(complete(node) for node in (a, a, b, b))), 60)
            assert answers == [(200, sha256(data))] * 4, answers
            async with b.get(f"/v1/uploads/{uid}") as r:
                assert ((await r.json())["mode"] == "direct") == (mode == "direct")
    finally:
        for node in nodes:
            node.kill(signal.SIGTERM)
    logs = [(tmp_path / name / "server.log").read_text() for name in ("a", "b")]
    assert sum(log.count("event=completed") for log in logs) == 1, logs  # one ran, three waited for it
    assert await read_object(s3, bucket, PREFIX + uid) == data
    assert await asyncio.to_thread(bucket_contents, s3, bucket) == ([PREFIX + uid], [])
