"""GC drill: the garbage collector SIGKILLed mid-pass, then one more pass.

A live `vezastream serve` on the test's own Redis holds a few hundred expired native uploads, each with
staged chunk files (``storage.in_place = false``: a folder each) (their Redis records deleted, as their TTL would; their folders aged past ``gc.max_age``),
and a few live ones half sent. `vezastream gc`, or a `vezastream serve` whose scheduled GC runs, is
started and SIGKILLed once the pass has begun removing folders, 0-50 ms later each time; then one
`vezastream gc` pass runs to its end.

Asserted: after that pass nothing of an expired upload is staged, each answers ``404``, never a ``5xx``;
every live upload completes byte-identical.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from pathlib import Path

import aiohttp
import pytest

from helpers import random_bytes
from servers import Server, gc_pass, kill_mid_pass, run, server_env

pytestmark = [pytest.mark.slow, pytest.mark.drill]

EXPIRED, LIVE, CHUNKS, PIECE, KILLS = 240, 8, 24, 512, 8


async def _native(s: aiohttp.ClientSession, data: bytes, chunks: int) -> str:
    async with s.post("/v1/uploads", json={"filename": "g.bin", "total_size": len(data), "chunk_size": PIECE}) as r:
        assert r.status == 201, await r.text()
        uid = (await r.json())["upload_id"]
    for n in range(1, chunks + 1):
        async with s.put(f"/v1/uploads/{uid}/chunks/{n}", data=data[(n - 1) * PIECE:n * PIECE]) as r:
            assert r.status == 201, await r.text()
    return uid


async def test_gc_killed_mid_pass_then_one_pass_leaves_no_expired_upload(tmp_path, own_redis, report):
    rng = random.Random(int(os.environ.get("DRILL_SEED", "0")) or random.randrange(1 << 30))
    env = server_env(tmp_path, f"redis://{own_redis.address}/0", GC__MAX_AGE="3600",
                     STORAGE__IN_PLACE="false")  # chunk files: a folder each, removed file by file
    chunks = tmp_path / "data" / "chunks"
    server = Server(env, tmp_path)
    try:
        await server.wait_ready()
        async with aiohttp.ClientSession(server.url) as s:
            sem = asyncio.Semaphore(16)

            async def one(data: bytes, n: int) -> str:
                async with sem:
                    return await _native(s, data, n)
            expired = await asyncio.gather(*(one(b"e" * CHUNKS * PIECE, CHUNKS) for _ in range(EXPIRED)))
            datas = [random_bytes(CHUNKS * PIECE) for _ in range(LIVE)]
            live = await asyncio.gather(*(one(d, CHUNKS // 2) for d in datas))
            r = own_redis.client()
            for uid in expired:  # what the upload's TTL does
                r.delete(*r.keys(f"{env['VEZASTREAM_REDIS__KEY_PREFIX']}:up:{{{uid}}}*"))
            old = time.time() - 7200
            for uid in expired:
                os.utime(chunks / uid, (old, old))
    finally:
        server.kill(signal.SIGTERM)
    left = []
    for kill in range(KILLS):  # the command's pass and the server's scheduled one, in turn
        before = len(os.listdir(chunks))
        left.append(kill_mid_pass(gc_pass(env, tmp_path, scheduled=kill % 2 == 1), lambda: len(os.listdir(chunks)),
                                  before, rng.uniform(0, 0.05)))
    server = Server(env, tmp_path)
    try:
        await server.wait_ready()
        async with aiohttp.ClientSession(server.url) as s:
            gc = run(["gc"], env, tmp_path)
            assert gc.returncode == 0, gc.stderr
            names = os.listdir(chunks)  # a folder, or one renamed while removed
            staged = [uid for uid in expired if any(name.startswith(uid) for name in names)]
            answers = []
            for uid in expired:
                async with s.get(f"/v1/uploads/{uid}") as resp:
                    answers.append(resp.status)
            for uid, data in zip(live, datas):
                for n in range(CHUNKS // 2 + 1, CHUNKS + 1):
                    async with s.put(f"/v1/uploads/{uid}/chunks/{n}", data=data[(n - 1) * PIECE:n * PIECE]) as resp:
                        assert resp.status == 201
                async with s.post(f"/v1/uploads/{uid}/complete") as resp:
                    assert resp.status == 200, await resp.text()
            same = 0
            for uid, data in zip(live, datas):
                async with s.get(f"/v1/uploads/{uid}/content") as resp:
                    same += resp.status == 200 and await resp.read() == data
    finally:
        server.kill(signal.SIGTERM)
    report("gc-killed", expired=EXPIRED, live=LIVE, kills=KILLS, folders_after_each_kill=left,
           expired_staged_after_pass=len(staged), answers=sorted(set(answers)), live_identical=same)
    assert not staged, f"{len(staged)} expired uploads still staged after a full pass"
    assert set(answers) == {404}
    assert same == LIVE
