"""``Expect: 100-continue`` (curl sends it for bodies over 1 MiB): the client holds its body back
until the server asks for it, so a refused chunk or PATCH is never sent.

"100 Continue" goes out when the handler first reads the body; a request refused before
that (an unknown upload, a tus offset that does not match) is answered at once and its
connection closed, the body never sent; one accepted gets "100 Continue", then its body
is stored and the connection goes on. Over raw sockets, against the app as ``vezastream
serve`` runs it, for bodies read through aiohttp and read straight into buffers.
"""

from __future__ import annotations

import asyncio
import json
from urllib.parse import urlsplit

import aiohttp
import pytest

from helpers import random_bytes, sha256
from tus_helpers import TUS, live_server, upload_path
from vezastream.http.body import TAKE_OVER_AT

SIZES = pytest.mark.parametrize("size", [64 * 1024, 2 * TAKE_OVER_AT], ids=["aiohttp", "zero-copy"])


async def head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    """The status and headers of the next response (or interim response) on the connection."""
    raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    lines = raw.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}


async def send(base: str, request: str, body: bytes,
               answered: dict[str, str] | None = None) -> tuple[list[int], bool, bytes]:
    """Send ``request``'s head with ``Expect: 100-continue``, and ``body`` only if asked for:
    (the statuses read, whether the body was sent, the final answer's body); the final answer's
    headers go into ``answered``."""
    url = urlsplit(base)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    try:
        writer.write(f"{request}Host: x\r\nExpect: 100-continue\r\nContent-Length: {len(body)}\r\n\r\n".encode())
        status, headers = await head(reader)
        statuses, sent = [status], False
        if status == 100:
            writer.write(body)
            sent = True
            status, headers = await head(reader)
            statuses.append(status)
        answer = await asyncio.wait_for(reader.readexactly(int(headers.get("content-length", 0))), 5)
        if answered is not None:
            answered.update(headers)
        if not sent:  # refused before the body: the connection ends with the answer
            assert headers.get("connection", "").lower() == "close"
            assert await asyncio.wait_for(reader.read(1), 5) == b""
        else:  # the connection goes on
            writer.write(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await head(reader))[0] == 200
        return statuses, sent, answer
    finally:
        writer.transport.abort()


@SIZES
async def test_a_chunk_is_asked_for_only_when_it_will_be_read(settings, size):
    data = random_bytes(size)
    async with live_server(settings) as base, aiohttp.ClientSession(base) as s:
        statuses, sent, _ = await send(base, "PUT /v1/uploads/nosuchupload/chunks/1 HTTP/1.1\r\n", data)
        assert (statuses, sent) == ([404], False)
        async with s.post("/v1/uploads", json={"filename": "e.bin", "total_size": size}) as r:
            uid = (await r.json())["upload_id"]
        statuses, sent, answer = await send(base, f"PUT /v1/uploads/{uid}/chunks/1 HTTP/1.1\r\n", data)
        assert (statuses, sent) == ([100, 201], True), answer
        async with s.post(f"/v1/uploads/{uid}/complete") as r:
            assert (await r.json())["sha256"] == sha256(data)


@SIZES
async def test_a_patch_at_a_stale_offset_is_refused_before_its_body_is_sent(settings, size):
    data = random_bytes(2 * size)
    async with live_server(settings) as base, aiohttp.ClientSession(base) as s:
        async with s.post("/files/", headers={**TUS, "Upload-Length": str(len(data))}) as r:
            path = upload_path(r)
        patch = ("PATCH {path} HTTP/1.1\r\nTus-Resumable: 1.0.0\r\nUpload-Offset: {offset}\r\n"
                 "Content-Type: application/offset+octet-stream\r\n")
        statuses, sent, _ = await send(base, patch.format(path=path, offset=size), data[size:])
        assert (statuses, sent) == ([409], False)
        for offset in (0, size):
            statuses, sent, _ = await send(base, patch.format(path=path, offset=offset), data[offset:offset + size])
            assert (statuses, sent) == ([100, 204], True)
        async with s.get(path, headers=TUS) as r:
            assert sha256(await r.read()) == sha256(data)


@SIZES
async def test_a_tus_creation_with_upload_is_asked_for_its_body_once_created(settings, size):
    data = random_bytes(size)
    async with live_server(settings) as base, aiohttp.ClientSession(base) as s:
        creation = (f"POST /files/ HTTP/1.1\r\nTus-Resumable: 1.0.0\r\nUpload-Length: {size}\r\n"
                    "Content-Type: application/offset+octet-stream\r\n")
        headers: dict[str, str] = {}
        statuses, sent, _ = await send(base, creation, data, headers)
        assert (statuses, sent) == ([100, 201], True) and headers["upload-offset"] == str(size), headers
        async with s.get(urlsplit(headers["location"]).path) as r:
            assert r.status == 200 and await r.read() == data


async def test_a_body_without_a_token_is_refused_before_it_is_sent(make_settings, monkeypatch):
    """With token auth, a chunk or a PATCH that carries no token is answered 401 at once, its body never
    sent; with the token, the same request is asked for its body. Other routes (the JSON creation) are
    asked for theirs as aiohttp does, before the handler runs."""
    monkeypatch.setenv("EXPECT_TOKENS", "tok-alice=alice")
    settings = make_settings(**{"auth.mode": "token", "auth.tokens_env": "EXPECT_TOKENS"})
    data = random_bytes(64 * 1024)
    token = "Authorization: Bearer tok-alice\r\n"
    async with live_server(settings) as base:
        created = '{"filename": "t.bin", "total_size": %d}' % len(data)
        statuses, sent, answer = await send(base, f"POST /v1/uploads HTTP/1.1\r\n{token}"
                                            "Content-Type: application/json\r\n", created.encode())
        assert (statuses, sent) == ([100, 201], True), answer
        uid = json.loads(answer)["upload_id"]
        chunk = f"PUT /v1/uploads/{uid}/chunks/1 HTTP/1.1\r\n"
        statuses, sent, answer = await send(base, chunk, data)
        assert (statuses, sent) == ([401], False) and b"unauthorized" in answer, answer
        statuses, sent, _ = await send(base, chunk + token, data)
        assert (statuses, sent) == ([100, 201], True)
