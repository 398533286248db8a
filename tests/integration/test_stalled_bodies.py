"""A client that goes silent mid-body keeps no upload locked (issue 15, finding 3).

A body that brings no byte for ``server.body_idle_timeout`` has its connection
cut, and its request lets go of what it held: the tus writer lock and append
lease (the offset keeps the bytes that came), a direct-mode chunk's part lease.
So the upload resumes within ``body_idle_timeout`` plus one lease. Each test
runs the app as ``vezastream serve`` runs it and talks to it over raw sockets,
as a phone that lost its network would: the connection stays open.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

import aiohttp
import pytest

from helpers import random_bytes, samples, sha256, value
from tus_helpers import STREAM, TUS, live_server, resumed_after, tus_patch_head, tus_resume
from vezastream.engine.layouts.append import APPEND_LEASE_SECONDS
from vezastream.http.body import TAKE_OVER_AT

IDLE = 1.0
#: One lease: what a crashed node may block an upload for (the README's promise, 10 s).
LEASE = APPEND_LEASE_SECONDS
MiB = 1024 * 1024


@pytest.fixture
def idle_settings(make_settings):
    return make_settings(**{"server.body_idle_timeout": IDLE})


@pytest.mark.parametrize("length", [1000, 2 * TAKE_OVER_AT], ids=["aiohttp", "zero-copy"])
async def test_a_tus_patch_that_stalls_lets_the_upload_resume(idle_settings, length):
    data = random_bytes(length)
    async with live_server(idle_settings) as base, aiohttp.ClientSession(base) as s:
        async with s.post("/files/", headers={**TUS, "Upload-Length": str(length)}) as r:
            assert r.status == 201
            path = urlsplit(r.headers["Location"]).path
        offsets: list[int] = []
        took = await resumed_after(base, tus_patch_head(path, 0, length), data[:10],
                                   lambda: tus_resume(s, path, data, offsets), IDLE + LEASE + 5)
        assert took <= IDLE + LEASE
        assert offsets[-1] == 10  # reliability.md: the bytes that came before the stall are kept and counted
        async with s.head(path, headers=TUS) as r:
            assert r.headers["Upload-Offset"] == str(length)
        async with s.get(path, headers=TUS) as r:
            assert r.status == 200 and sha256(await r.read()) == sha256(data)  # the 10 bytes were kept, once


async def test_a_native_chunk_put_that_stalls_in_s3_direct_mode_lets_the_chunk_resume(sink_settings):
    chunk = 5 * MiB  # S3's smallest part: the chunk goes straight to S3 under the part lease
    data = random_bytes(chunk + 1)
    settings = sink_settings()
    settings = dataclasses.replace(settings, server=dataclasses.replace(settings.server, body_idle_timeout=IDLE))
    async with live_server(settings) as base, aiohttp.ClientSession(base) as s:
        async with s.post("/v1/uploads", json={"filename": "s.bin", "total_size": len(data),
                                               "chunk_size": chunk}) as r:
            assert r.status == 201
            uid = (await r.json())["upload_id"]

        async def resume() -> bool:
            async with s.put(f"/v1/uploads/{uid}/chunks/1", data=data[:chunk]) as r:
                if r.status == 409:  # the silent request still holds the chunk's part lease
                    return False
                assert r.status == 201, await r.text()
                return True

        took = await resumed_after(base, f"PUT /v1/uploads/{uid}/chunks/1 HTTP/1.1\r\nHost: x\r\n"
                                         f"Content-Length: {chunk}\r\n\r\n", data[:10], resume, IDLE + LEASE + 5)
        assert took <= IDLE + LEASE
        async with s.put(f"/v1/uploads/{uid}/chunks/2", data=data[chunk:]) as r:
            assert r.status == 201
        async with s.post(f"/v1/uploads/{uid}/complete") as r:
            assert r.status == 200 and (await r.json())["sha256"] == sha256(data)


async def assert_cut_off(base: str, sent: bytes) -> None:
    """Send ``sent`` (a request's head and the start of its body), then nothing more, the connection
    left open: the server closes it, with no answer, within ``IDLE`` and a second."""
    url = urlsplit(base)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    try:
        writer.write(sent)
        stalled_at = time.monotonic()
        assert await asyncio.wait_for(reader.read(), IDLE + 5) in (b"", b"HTTP/1.1 100 Continue\r\n\r\n")
        assert time.monotonic() - stalled_at < IDLE + 1
    finally:
        writer.transport.abort()


def stalled_put(uid: str, chunk: int, data: bytes, multipart: bool) -> bytes:
    """The head of a chunk PUT and its first 10 bytes, raw or as a multipart file field."""
    if not multipart:
        return f"PUT /v1/uploads/{uid}/chunks/1 HTTP/1.1\r\nHost: x\r\nContent-Length: {chunk}\r\n\r\n".encode() + data[:10]
    part = (b"--b0undary\r\nContent-Disposition: form-data; name=\"chunk\"; filename=\"c\"\r\n"
            b"Content-Type: application/octet-stream\r\n\r\n")
    length = len(part) + chunk + len(b"\r\n--b0undary--\r\n")
    return (f"PUT /v1/uploads/{uid}/chunks/1 HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n"
            "Content-Type: multipart/form-data; boundary=b0undary\r\n\r\n").encode() + part + data[:10]


@pytest.mark.parametrize("chunk, multipart", [(64 * 1024, False), (2 * TAKE_OVER_AT, False), (64 * 1024, True)],
                         ids=["aiohttp", "zero-copy", "multipart"])
async def test_a_native_chunk_that_stalls_has_its_connection_closed_and_its_range_freed(idle_settings, chunk,
                                                                                         multipart):
    data = random_bytes(2 * chunk)
    async with live_server(idle_settings) as base, aiohttp.ClientSession(base) as s:
        async with s.post("/v1/uploads", json={"filename": "n.bin", "total_size": len(data),
                                               "chunk_size": chunk}) as r:
            uid = (await r.json())["upload_id"]
        await assert_cut_off(base, stalled_put(uid, chunk, data, multipart))
        for n in (1, 2):  # chunk 1's range is claimed by no one now: written in place, as usual
            async with s.put(f"/v1/uploads/{uid}/chunks/{n}", data=data[(n - 1) * chunk:n * chunk]) as r:
                assert r.status == 201
        async with s.post(f"/v1/uploads/{uid}/complete") as r:
            assert r.status == 200 and (await r.json())["sha256"] == sha256(data)


async def test_a_body_cut_off_for_its_silence_is_logged_and_counted_as_body_idle_408(idle_settings, caplog):
    """The client gets no answer (its connection is closed), so the operator's log line and metrics
    are where the cut shows (docs/api.md): status 408, problem ``body-idle``."""
    caplog.set_level(logging.INFO, logger="vezastream.http")
    chunk = 64 * 1024
    async with live_server(idle_settings) as base, aiohttp.ClientSession(base) as s:
        async with s.post("/v1/uploads", json={"filename": "n.bin", "total_size": chunk, "chunk_size": chunk}) as r:
            uid = (await r.json())["upload_id"]
        await assert_cut_off(base, stalled_put(uid, chunk, random_bytes(chunk), False))
        lines: list[dict] = []
        for _ in range(50):  # bounded: 5 s for the handler to end after the cut
            lines = [r.__dict__ for r in caplog.records if r.getMessage() == "request" and r.method == "PUT"]
            if lines:
                break
            await asyncio.sleep(0.1)
        assert [(line["status"], line.get("problem"), line["upload_id"]) for line in lines] == [
            (408, "body-idle", uid)], lines
        async with s.get("/metrics") as r:
            found = samples(await r.text())
        assert value(found, "vezastream_http_requests_total", method="PUT", status="408") == 1
        async with s.put(f"/v1/uploads/{uid}/chunks/1", data=b"x" * (chunk + 1)) as r:
            assert r.status == 413  # an answered problem is named on its line too
        assert [line.__dict__.get("problem") for line in caplog.records
                if line.getMessage() == "request" and line.method == "PUT"] == ["body-idle", "too-large"]


@pytest.mark.parametrize("expect", ["", "Expect: 100-continue\r\n"], ids=["body-stalls", "body-never-sent"])
async def test_a_json_body_that_stalls_has_its_connection_closed(idle_settings, expect):
    """The creation's JSON body is a body too: one that stopped coming held its request and
    connection for as long as the client kept the connection open."""
    async with live_server(idle_settings) as base, aiohttp.ClientSession(base) as s:
        sent = b"" if expect else b'{"filename": "j.bin",'
        await assert_cut_off(base, (f"POST /v1/uploads HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                    f"{expect}Content-Length: 60\r\n\r\n").encode() + sent)
        async with s.post("/v1/uploads", json={"filename": "j.bin", "total_size": 1}) as r:
            assert r.status == 201  # the server goes on
