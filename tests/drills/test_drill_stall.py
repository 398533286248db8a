"""Fault drill: clients that go silent mid-PATCH, their connections left open, lock nothing for long.

A real ``vezastream serve`` process (``server.body_idle_timeout`` = 2 s) gets tus
PATCHes that send 10 bytes and then nothing, as a phone that lost its network
would (issue 15, finding 3): small bodies (through aiohttp) and large ones (read
straight into the staging buffers). Each upload must resume, by HEAD and PATCH
as a tus client does, within body_idle_timeout plus one lease, keep the 10
bytes that came, and read back byte-identical.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import pytest

from helpers import random_bytes, sha256
from servers import Server, server_env
from tus_helpers import resumed_after, tus_patch_head, tus_resume
from tus_helpers import TUS
from vezastream.engine.layouts.append import APPEND_LEASE_SECONDS
from vezastream.http.body import TAKE_OVER_AT

IDLE = 2.0
LENGTHS = [1000, 64 * 1024, 2 * TAKE_OVER_AT, 3 * TAKE_OVER_AT]


@pytest.mark.slow
@pytest.mark.drill
async def test_stalled_clients_lock_no_upload(tmp_path: Path, redis_url: str, report) -> None:
    env = server_env(tmp_path, redis_url, SERVER__BODY_IDLE_TIMEOUT=str(IDLE))
    server = Server(env, tmp_path)
    try:
        await server.wait_ready()
        async with aiohttp.ClientSession(server.url) as s:
            async def stalled_upload(length: int) -> float:
                data = random_bytes(length)
                async with s.post("/files/", headers={**TUS, "Upload-Length": str(length)}) as r:
                    assert r.status == 201
                    path = urlsplit(r.headers["Location"]).path
                took = await resumed_after(server.url, tus_patch_head(path, 0, length), data[:10],
                                           lambda: tus_resume(s, path, data), IDLE + APPEND_LEASE_SECONDS + 5)
                async with s.get(path, headers=TUS) as r:
                    assert r.status == 200 and sha256(await r.read()) == sha256(data)
                return took

            took = await asyncio.gather(*(stalled_upload(length) for length in LENGTHS))
        report("stalled client", uploads=len(LENGTHS), body_idle_timeout_s=IDLE, lease_s=APPEND_LEASE_SECONDS,
               resumed_after_s=round(max(took), 2), lost_bytes=0)
        assert max(took) <= IDLE + APPEND_LEASE_SECONDS
    finally:
        server.kill(signal.SIGTERM)
