"""Client-side helpers for the tus tests (what a tus client sends)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from urllib.parse import urlsplit

import aiohttp
import pytest
from aiohttp import web

from vezastream.http.app import create_app
from vezastream.config import Settings

TUS = {"Tus-Resumable": "1.0.0"}
STREAM = {"Content-Type": "application/offset+octet-stream"}
#: tus-js-client and the Node script that drives it (``./scripts/test`` runs ``npm ci`` there).
JS_DIR = Path(__file__).parent / "js"


def b64(value: str) -> str:
    return base64.b64encode(value.encode()).decode()


async def tus_create(client, length: int | None = None, expect: int = 201, headers: dict[str, str] | None = None,
                     data: bytes | None = None, filename: str | None = "file.bin") -> Any:
    h = dict(TUS)
    if length is not None:
        h["Upload-Length"] = str(length)
    if filename is not None:
        h["Upload-Metadata"] = f"filename {b64(filename)}"
    if data is not None:
        h.update(STREAM)
    h.update(headers or {})
    resp = await client.post("/files/", headers=h, data=data)
    assert resp.status == expect, (resp.status, await resp.text())
    return resp


def upload_path(resp) -> str:
    """The path of an upload's URL from a creation answer."""
    return urlsplit(resp.headers["Location"]).path


async def tus_patch(client, path: str, offset: int, data: bytes, expect: int | None = 204,
                    headers: dict[str, str] | None = None) -> Any:
    h = {**TUS, **STREAM, "Upload-Offset": str(offset), **(headers or {})}
    resp = await client.patch(path, headers=h, data=data)
    if expect is not None:
        assert resp.status == expect, (resp.status, await resp.text())
    return resp


@contextlib.asynccontextmanager
async def live_server(settings: Settings) -> AsyncIterator[str]:
    """The app on a free 127.0.0.1 port, configured as ``vezastream serve`` runs it; yields the base URL."""
    runner = web.AppRunner(create_app(settings), handler_cancellation=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def drop_mid_body(base: str, path: str, data: bytes, sent: int) -> int:
    """PATCH ``data`` at offset 0 but go away after ``sent`` bytes; then the offset the server reports."""
    url = urlsplit(base)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    writer.write((f"PATCH {path} HTTP/1.1\r\nHost: {url.hostname}\r\nTus-Resumable: 1.0.0\r\n"
                  "Content-Type: application/offset+octet-stream\r\nUpload-Offset: 0\r\n"
                  f"Content-Length: {len(data)}\r\n\r\n").encode() + data[:sent])
    await writer.drain()
    await asyncio.sleep(0.2)
    writer.transport.abort()  # the client goes away mid-body
    offset = 0
    async with aiohttp.ClientSession() as session:
        for _ in range(50):  # bounded: about 5 s for the server to persist what arrived
            async with session.head(base + path, headers=TUS) as resp:
                offset = int(resp.headers["Upload-Offset"])
            if offset:
                break
            await asyncio.sleep(0.1)
    return offset


# -- clients that stall mid-body, over raw sockets

async def resumed_after(base: str, head: str, sent: bytes, attempt: Callable[[], Awaitable[bool]],
                        within: float) -> float:
    """Send ``head`` (a request's headers) and ``sent``, then nothing more, the connection left open;
    call ``attempt()`` (True: done; False: refused, retry) until it is done, at most ``within``
    seconds. Returns the seconds from the stall to the attempt that was done."""
    url = urlsplit(base)
    _, writer = await asyncio.open_connection(url.hostname, url.port)
    try:
        writer.write(head.encode() + sent)
        await writer.drain()
        stalled_at = time.monotonic()
        while not await attempt():
            assert time.monotonic() - stalled_at < within, "still refused"
            await asyncio.sleep(0.1)
        return time.monotonic() - stalled_at
    finally:
        writer.transport.abort()


async def raw_answer(reader: asyncio.StreamReader, within: float = 15) -> tuple[int, dict[str, str], bytes]:
    """The next answer on a raw connection: its status, headers (names in lower case) and body."""
    head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), within)).decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in head[1:] if line)}
    return int(head[0].split()[1]), headers, await reader.readexactly(int(headers.get("content-length", 0)))


def tus_patch_head(path: str, offset: int, length: int) -> str:
    return (f"PATCH {path} HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\n"
            f"Content-Type: application/offset+octet-stream\r\nUpload-Offset: {offset}\r\n"
            f"Content-Length: {length}\r\n\r\n")


async def tus_resume(s: aiohttp.ClientSession, path: str, data: bytes, offsets: list[int] | None = None) -> bool:
    """HEAD, then PATCH the rest: True once accepted, False on 409 (append-busy: the upload is held).
    ``offsets`` gets each offset the HEAD gave."""
    async with s.head(path, headers=TUS) as r:
        offset = int(r.headers["Upload-Offset"])
    if offsets is not None:
        offsets.append(offset)
    async with s.patch(path, data=data[offset:], headers={**TUS, **STREAM, "Upload-Offset": str(offset)}) as r:
        if r.status == 409:
            return False
        assert r.status == 204, await r.text()
        return True


async def js_upload(base: str, src: Path, options: dict, timeout: float = 60) -> str:
    """Upload ``src`` with tus-js-client on Node; returns the upload URL."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    assert (JS_DIR / "node_modules" / "tus-js-client").is_dir(), "run ./scripts/test (it runs npm ci in tests/js)"
    proc = await asyncio.create_subprocess_exec(
        node, str(JS_DIR / "upload.js"), f"{base}/files/", str(src), json.dumps(options),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout=timeout)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode == 0, err.decode()
    return json.loads(out.decode().strip().splitlines()[-1])["url"]
