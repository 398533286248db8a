"""Slow request headers are cut off (issue 15, finding 10).

Connections that never finish sending a request's headers (slowloris) are
closed ``server.header_timeout`` seconds after they opened, whether they send
nothing more or trickle a byte now and then, and the server serves others
meanwhile. Against a real ``vezastream serve`` process, as it runs aiohttp.
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import aiohttp
import pytest

from servers import Server, server_env

TIMEOUT = 2.0
SLACK = 2.0
CONNECTIONS = 300


async def half_headers(port: int, trickle: bool) -> float | None:
    """Open a connection, send part of a request's headers (then a byte a second when ``trickle``);
    returns after how long the server closed it (None: still open after TIMEOUT + SLACK)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    opened = time.monotonic()
    try:
        writer.write(b"PUT /v1/uploads/x/chunks/1 HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        await writer.drain()
        while time.monotonic() - opened < TIMEOUT + SLACK:
            try:
                if await asyncio.wait_for(reader.read(1024), 1.0) == b"":
                    return time.monotonic() - opened
            except TimeoutError:
                pass
            except ConnectionError:
                return time.monotonic() - opened
            if trickle:
                try:
                    writer.write(b"a")
                    await writer.drain()
                except ConnectionError:
                    return time.monotonic() - opened
        return None
    finally:
        writer.transport.abort()


@pytest.mark.slow
async def test_connections_with_unfinished_headers_are_closed(tmp_path: Path, redis_url: str) -> None:
    server = Server(server_env(tmp_path, redis_url, SERVER__HEADER_TIMEOUT=str(TIMEOUT)), tmp_path)
    try:
        await server.wait_ready()
        slow = asyncio.gather(*(half_headers(server.port, trickle=i % 2 == 1) for i in range(CONNECTIONS)))
        await asyncio.sleep(0.5)
        async with aiohttp.ClientSession(server.url) as s:  # the server still serves others meanwhile
            async with s.post("/v1/uploads", json={"filename": "a.bin", "total_size": 3}) as r:
                assert r.status == 201
        closed_after = await slow
        assert None not in closed_after, f"{closed_after.count(None)} of {CONNECTIONS} connections still open"
        assert max(closed_after) <= TIMEOUT + SLACK
    finally:
        server.kill(signal.SIGTERM)
