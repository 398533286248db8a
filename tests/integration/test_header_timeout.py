"""Slow request headers are cut off (issue 15, finding 10); idle keep-alive connections are not.

Connections that never finish sending a request's headers (slowloris) are
closed ``server.header_timeout`` seconds after they opened, or after their next
request's first byte, whether they send nothing more or trickle a byte now and
then, and the server serves others meanwhile. A connection idle between requests
is kept ``server.keepalive_timeout``, so that a proxy keeping its connections to
the server for less never sends a request on one the server is closing. Against a
real ``vezastream serve`` process, as it runs aiohttp.
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


HEALTH = b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


async def answered(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> int | None:
    """Send ``request`` and read its whole answer: its status, or None when the server had closed
    the connection (the request lost, as a proxy reusing the connection would find)."""
    try:
        writer.write(request)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0)
    except (ConnectionError, asyncio.IncompleteReadError):
        return None
    lines = head.decode("latin-1").split("\r\n")
    length = next(int(line.split(":", 1)[1]) for line in lines if line.lower().startswith("content-length:"))
    await asyncio.wait_for(reader.readexactly(length), 5.0)
    return int(lines[0].split()[1])


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> float | None:
    """How long until the server closes the connection (None: still open after ``seconds``)."""
    start = time.monotonic()
    try:
        data = await asyncio.wait_for(reader.read(1024), seconds)
    except TimeoutError:
        return None
    except ConnectionError:
        data = b""
    assert data == b"", f"unexpected bytes {data[:80]!r}"
    return time.monotonic() - start


@pytest.mark.slow
async def test_an_idle_connection_is_kept_past_the_header_timeout(tmp_path: Path, redis_url: str) -> None:
    """A keep-alive connection idle for longer than header_timeout still takes the next request
    (with header_timeout as the idle limit it was closed, and that request lost), and is closed
    once idle for keepalive_timeout; bytes of a next request that stop short of whole headers
    still have only header_timeout from their first byte."""
    header, keepalive = 1.0, 4.0
    server = Server(server_env(tmp_path, redis_url, SERVER__HEADER_TIMEOUT=str(header),
                               SERVER__KEEPALIVE_TIMEOUT=str(keepalive)), tmp_path)
    try:
        await server.wait_ready()
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            assert await answered(reader, writer, HEALTH) == 200
            await asyncio.sleep(header + 1.0)
            assert await answered(reader, writer, HEALTH) == 200, "the idle connection was closed"
            after = await closed_within(reader, keepalive + SLACK)
            assert after is not None and keepalive - 0.5 <= after <= keepalive + SLACK, after
        finally:
            writer.transport.abort()

        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            assert await answered(reader, writer, HEALTH) == 200
            await asyncio.sleep(header + 0.5)  # idle past header_timeout, well inside keepalive_timeout
            writer.write(HEALTH[:20])  # then half a request's headers, and nothing more
            await writer.drain()
            after = await closed_within(reader, keepalive)
            assert after is not None and header - 0.5 <= after <= header + 1.0, after
        finally:
            writer.transport.abort()
    finally:
        server.kill(signal.SIGTERM)
