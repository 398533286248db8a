"""Many uploads at once under a low limit on open files (issue 19's 1,000 and 5,000 at once).

Every connection, data file and Redis connection is a file. ``vezastream serve``
raises its soft limit to the hard one at start, so a shell's or a service's usual
soft limit (1024, here 256) does not fail uploads at a few hundred in flight; and
where the hard limit itself runs out, a request answers 503 with Retry-After, never
a 500. Against a real ``vezastream serve`` started with those limits.
"""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import subprocess
from collections import Counter
from pathlib import Path

import aiohttp
import pytest

from helpers import random_bytes, sha256
from servers import VEZASTREAM, server_env

UPLOADS, CHUNK = 400, 64 * 1024
pytestmark = pytest.mark.slow


async def upload(s: aiohttp.ClientSession, data: bytes) -> str:
    """One native upload of three chunks: "ok", or the first answer that was not a success."""
    try:
        async with s.post("/v1/uploads", json={"filename": "f.bin", "total_size": len(data), "chunk_size": CHUNK}) as r:
            if r.status != 201:
                return await refused(r)
            uid = (await r.json())["upload_id"]
        for n in range(len(data) // CHUNK):
            async with s.put(f"/v1/uploads/{uid}/chunks/{n + 1}", data=data[n * CHUNK:(n + 1) * CHUNK]) as r:
                if r.status != 201:
                    return await refused(r)
        async with s.post(f"/v1/uploads/{uid}/complete") as r:
            if r.status != 200:
                return await refused(r)
            assert (await r.json())["sha256"] == sha256(data)
        return "ok"
    except aiohttp.ClientConnectionError:  # not accepted: the kernel's queue, or the event loop shedding it
        return "connection"


async def refused(r: aiohttp.ClientResponse) -> str:
    await r.read()
    # operations.md: out of open files answers 503 with Retry-After: 1 (descriptors free up at once).
    form = r.content_type == "application/problem+json" and r.headers.get("Retry-After") == "1"
    return f"{r.status}{'' if form else ' (not problem+json with Retry-After: 1)'}"


async def burst(tmp_path: Path, soft: int, hard: int) -> tuple[Counter[str], str, int]:
    """(what the uploads got, the server's open-files line, a lone upload's answer afterwards)."""
    env = server_env(tmp_path)
    port = env["VEZASTREAM_SERVER__PORT"]
    proc = subprocess.Popen(VEZASTREAM + ["serve"], env={**os.environ, **env}, cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "server.log", "ab"),
                            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard)))
    try:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}", connector=aiohttp.TCPConnector(limit=UPLOADS),
                                         timeout=aiohttp.ClientTimeout(total=120)) as s:
            for _ in range(300):
                assert proc.poll() is None, "the server exited"
                try:
                    async with s.get("/v1/health/deep") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
            limit = next(line for line in Path(f"/proc/{proc.pid}/limits").read_text().splitlines()
                         if line.startswith("Max open files"))
            data = random_bytes(3 * CHUNK)
            got = Counter(await asyncio.gather(*(upload(s, data) for _ in range(UPLOADS))))
        await asyncio.sleep(0.5)  # the burst's connections closed (each held one of the server's files)
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as s:
            after = await upload(s, data)
        return got, limit, after
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


async def test_a_low_soft_limit_is_raised_and_every_upload_lands(tmp_path: Path) -> None:
    got, limit, after = await burst(tmp_path, 256, 4096)
    assert limit.split()[3:5] == ["4096", "4096"], limit
    assert got == Counter({"ok": UPLOADS}), got
    assert after == "ok"


async def test_out_of_open_files_answers_503_never_500(tmp_path: Path) -> None:
    got, limit, after = await burst(tmp_path, 256, 256)
    assert limit.split()[3:5] == ["256", "256"], limit
    assert set(got) <= {"ok", "503", "connection"}, got  # no 500, no 503 without Retry-After
    assert got["503"] > 0, got  # the limit was met
    assert after == "ok"  # and the server goes on once the burst is over
    assert "Traceback" not in (tmp_path / "server.log").read_text()
