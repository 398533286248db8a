"""Large bodies over TLS (the app embedded behind the caller's own TLS site: `vezastream serve` has no
TLS of its own). A body of 1 MiB or more on a plain connection is read straight from the socket into
the staging buffers (http/body.py); under TLS the socket carries ciphertext, so such a body must go
through aiohttp's reader instead. The bytes read back must be the bytes sent, through both doors.
"""

from __future__ import annotations

import aiohttp
import pytest
from aiohttp import web

from helpers import loopback_tls, random_bytes, sha256
from tus_helpers import TUS
from vezastream.http.app import create_app
from vezastream.http.body import TAKE_OVER_AT


@pytest.fixture
async def https_base(settings, tmp_path):
    runner = web.AppRunner(create_app(settings), handler_cancellation=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=loopback_tls(tmp_path)[0])
    await site.start()
    try:
        yield f"https://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def test_large_chunks_and_patches_over_tls_read_back_identical(https_base):
    chunk = 2 * TAKE_OVER_AT + 12_345
    data = random_bytes(2 * chunk)
    connector = aiohttp.TCPConnector(ssl=False)  # the test's own certificate
    async with aiohttp.ClientSession(https_base, connector=connector) as s:
        async with s.post("/v1/uploads", json={"filename": "t.bin", "total_size": len(data),
                                               "chunk_size": chunk}) as r:
            uid = (await r.json())["upload_id"]
        for n in (1, 2):
            async with s.put(f"/v1/uploads/{uid}/chunks/{n}", data=data[(n - 1) * chunk:n * chunk]) as r:
                assert r.status == 201 and (await r.json())["sha256"] == sha256(data[(n - 1) * chunk:n * chunk])
        async with s.post(f"/v1/uploads/{uid}/complete") as r:
            assert r.status == 200 and (await r.json())["sha256"] == sha256(data)
        async with s.get(f"/v1/uploads/{uid}/content") as r:
            assert await r.read() == data
        async with s.post("/files/", headers={**TUS, "Upload-Length": str(len(data))}) as r:
            path = "/files/" + r.headers["Location"].rsplit("/", 1)[1]
        async with s.patch(path, data=data, headers={**TUS, "Upload-Offset": "0",
                                                     "Content-Type": "application/offset+octet-stream"}) as r:
            assert r.status == 204, await r.text()
        async with s.get(path) as r:
            assert sha256(await r.read()) == sha256(data)
