"""A client that stops reading a response is cut off after ``server.send_timeout``; a slow reader is not.

A download whose client stops reading (its receive window shut) would otherwise hold
its connection, an open file and, for a sink that streams the object, one of the
sink's connections, for as long as the client keeps the socket open. Against a real
``vezastream serve`` (as it runs aiohttp, over loopback TCP).
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import aiohttp
import pytest

from helpers import random_bytes, sha256
from servers import Server, server_env

SEND_TIMEOUT = 2.0
SIZE = 48 * 1024 * 1024  # more than the two sockets' buffers hold, so the server's writes wait for the client
CHUNK = 8 * 1024 * 1024


async def uploaded(url: str, data: bytes) -> str:
    async with aiohttp.ClientSession(url) as s:
        async with s.post("/v1/uploads", json={"filename": "big.bin", "total_size": len(data),
                                               "chunk_size": CHUNK}) as r:
            uid = (await r.json())["upload_id"]
        for n in range(len(data) // CHUNK):
            async with s.put(f"/v1/uploads/{uid}/chunks/{n + 1}", data=data[n * CHUNK:(n + 1) * CHUNK]) as r:
                assert r.status == 201
        async with s.post(f"/v1/uploads/{uid}/complete") as r:
            assert r.status == 200 and (await r.json())["sha256"] == sha256(data)
    return f"/v1/uploads/{uid}/content"


def server_holds(server_port: int, client_port: int) -> bool:
    """Whether the server's end of the connection from ``client_port`` is still open (/proc/net/tcp)."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = (int(address.rsplit(":", 1)[1], 16) for address in fields[1:3])
        if (local, remote) == (server_port, client_port) and fields[3] != "07":  # 07: closed
            return True
    return False


async def read_body(reader: asyncio.StreamReader, slowly_for: float) -> tuple[int, bool]:
    """(bytes read, whether the connection was cut) until SIZE; for the first ``slowly_for``
    seconds, 1 MiB every 0.5 s (the server sends faster: its writes wait for each read)."""
    got, started = 0, time.monotonic()
    try:
        while got < SIZE and (data := await asyncio.wait_for(reader.read(1 << 20), 10)):
            got += len(data)
            if time.monotonic() - started < slowly_for:
                await asyncio.sleep(0.5)
    except ConnectionError:
        return got, True
    except TimeoutError:
        raise AssertionError(f"no byte for 10 s after {got} bytes, {time.monotonic() - started:.1f} s") from None
    return got, False


@pytest.mark.slow
async def test_a_client_that_stops_reading_a_download_is_cut_off(tmp_path: Path, redis_url: str) -> None:
    server = Server(server_env(tmp_path, redis_url, SERVER__SEND_TIMEOUT=str(SEND_TIMEOUT)), tmp_path)
    try:
        await server.wait_ready()
        data = random_bytes(SIZE)
        path = await uploaded(server.url, data)
        request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()

        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            writer.write(request)
            await writer.drain()
            await reader.readuntil(b"\r\n\r\n")  # and reads nothing more: its window shuts
            stopped = time.monotonic()
            client_port = writer.get_extra_info("sockname")[1]
            while server_holds(server.port, client_port):
                assert time.monotonic() - stopped < SEND_TIMEOUT + 10, \
                    "the server still holds the connection of a client that stopped reading"
                await asyncio.sleep(0.2)
            held_for = time.monotonic() - stopped
        finally:
            writer.transport.abort()
        assert held_for >= SEND_TIMEOUT, held_for

        # A client that reads slowly (1 MiB every 0.5 s, for three send timeouts) gets it all.
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            writer.write(request)
            await writer.drain()
            await reader.readuntil(b"\r\n\r\n")
            got, cut = await read_body(reader, slowly_for=3 * SEND_TIMEOUT)
        finally:
            writer.transport.abort()
        assert not cut and got == SIZE, (got, cut)
    finally:
        server.kill(signal.SIGTERM)
