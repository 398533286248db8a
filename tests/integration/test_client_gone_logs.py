"""A client that goes away mid-body is an ordinary event: one request line, never an error.

Phones lose their network and browsers close tabs all day. Each dropped body must
leave one log line, the request's own (status 499, the id the client sent), and no
error line or traceback that would page an operator or hide a real fault among
thousands. A real ``vezastream serve`` (its own connection handler, as deployed)
gets native chunks dropped on both body paths (read straight into buffers, or
through aiohttp's parser), by a reset and by a close, and a tus PATCH; nothing of a
dropped native chunk is stored, and the chunk is taken when sent again whole.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from urllib.parse import urlsplit

import aiohttp
import pytest

from servers import Server, server_env
from tus_helpers import TUS
from vezastream.http.body import TAKE_OVER_AT

pytestmark = pytest.mark.slow

SMALL = 200_000  # read by aiohttp's parser
LARGE = 3 * TAKE_OVER_AT  # read straight into the staging buffers


async def _drop(port: int, head: str, sent: bytes, reset: bool) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head.encode() + sent)
    await writer.drain()
    await asyncio.sleep(0.5)  # the server is reading the body (its handler has begun)
    if reset:
        writer.transport.abort()
    else:
        writer.close()
        await asyncio.wait_for(reader.read(), 10)  # the server's answer, if any, then its close


def _head(method: str, path: str, length: int, rid: str, extra: str = "") -> str:
    return (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Request-ID: {rid}\r\n{extra}"
            f"Content-Type: application/octet-stream\r\nContent-Length: {length}\r\n\r\n")


async def test_a_dropped_body_logs_its_request_line_and_no_error(tmp_path) -> None:
    server = Server(server_env(tmp_path, LOG__FORMAT="json"), tmp_path)
    try:
        await server.wait_ready()
        async with aiohttp.ClientSession(server.url) as s:
            uploads = {}
            for size in (SMALL, LARGE):
                async with s.post("/v1/uploads", json={"filename": "d.bin", "total_size": 4 * size,
                                                       "chunk_size": size}) as r:
                    uploads[size] = (await r.json())["upload_id"]
            async with s.post("/files/", headers={**TUS, "Upload-Length": str(LARGE)}) as r:
                tus_path = urlsplit(r.headers["Location"]).path
            drops: dict[str, str] = {}  # request id -> what was dropped
            n = 0
            for size, uid in uploads.items():
                for reset in (True, False):
                    n += 1
                    rid = f"drop-{n}-{secrets.token_hex(4)}"
                    drops[rid] = f"chunk {n} of {size} B, {'reset' if reset else 'closed'}"
                    await _drop(server.port, _head("PUT", f"/v1/uploads/{uid}/chunks/{n}", size, rid),
                                secrets.token_bytes(size // 2), reset)
            rid = f"drop-tus-{secrets.token_hex(4)}"
            drops[rid] = "tus PATCH, reset"
            await _drop(server.port, _head("PATCH", tus_path, LARGE, rid, "Tus-Resumable: 1.0.0\r\nUpload-Offset: 0\r\n")
                        .replace("application/octet-stream", "application/offset+octet-stream"),
                        secrets.token_bytes(LARGE // 2), True)
            await asyncio.sleep(1.0)  # the requests see their clients gone and end
            for size, uid in uploads.items():
                async with s.get(f"/v1/uploads/{uid}") as r:
                    assert (await r.json())["chunks_received"] == [], "a dropped chunk was stored"
                body = secrets.token_bytes(size)
                async with s.put(f"/v1/uploads/{uid}/chunks/1", data=body) as r:
                    assert r.status == 201
    finally:
        server.kill()
    lines = [json.loads(line) for line in (tmp_path / "server.log").read_text().splitlines()
             if line.startswith("{")]
    loud = [line for line in lines if line.get("level") in ("error", "critical") or "exc" in line]
    assert loud == [], loud
    status = {line.get("request_id"): line.get("status") for line in lines if line.get("msg") == "request"}
    assert {drops[rid]: status.get(rid) for rid in drops} == {drops[rid]: 499 for rid in drops}
