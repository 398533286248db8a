"""Drills: your own Redis (not the bundled one) fills up, or restarts empty, while native and tus
uploads run against a real `vezastream serve`.

Full: ``maxmemory`` with ``noeviction`` is reached mid-upload. Every write answers 503
``state-store-full`` problem+json with Retry-After (never a 500, no traceback in the server's
log, as in the other drill), readiness fails with
``out-of-memory``, nothing acknowledged is lost, and once Redis has room again every upload
completes byte-identical.

Empty: a Redis without persistence restarts (here: FLUSHALL) while bodies are arriving and staged
bytes wait on disk. Each request in flight, and each upload's next one, answers a 4xx (404: the
upload is unknown), never a 5xx; one `vezastream gc` pass past ``gc.max_age`` removes every staged
file; new uploads work.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from drill_clients import NATIVE, PIECE, PIECES, TUS, TUS_UPLOADS, Drill, identical
from helpers import random_bytes
from redis_topologies import RedisProcess
from servers import Server, run, server_env

pytestmark = [pytest.mark.slow, pytest.mark.drill]

FULL_S, SETTLE_S = 3.0, 0.3
#: Bytes of other data in the Redis that fills up; it is full by a quarter of them.
FILLER = 4 * 1024 * 1024



@contextlib.asynccontextmanager
async def served(tmp_path: Path, redis: RedisProcess, **settings: str) -> AsyncIterator[
        tuple[dict[str, str], Drill, aiohttp.ClientSession]]:
    env = server_env(tmp_path, f"redis://{redis.address}/0", **settings)
    server = Server(env, tmp_path)
    try:
        await server.wait_ready()
        async with aiohttp.ClientSession(server.url) as s:
            yield env, Drill(server.url), s
    finally:
        server.kill(signal.SIGTERM)
    assert server.proc.returncode == 0
    log = (tmp_path / "server.log").read_text()
    assert "Traceback" not in log and "unhandled error" not in log, log[-3000:]


async def readiness(s: aiohttp.ClientSession) -> tuple[int, str | None]:
    async with s.get("/v1/health/deep") as r:
        return r.status, (await r.json())["checks"]["redis"].get("reason")


async def test_redis_full_mid_upload(tmp_path, own_redis, report):
    natives = [random_bytes(PIECES * PIECE) for _ in range(NATIVE)]
    tuses = [random_bytes(PIECES * PIECE) for _ in range(TUS_UPLOADS)]
    async with served(tmp_path, own_redis) as (_, drill, s):
        tasks = await drill.a_third_sent(s, natives, tuses)
        c = own_redis.client()
        c.mset({f"filler:{i}": b"x" * (FILLER // 64) for i in range(64)})  # what else the Redis holds...
        c.config_set("maxmemory", int(c.info("memory")["used_memory"]) - FILLER // 4)  # ...fills it
        full_at = time.monotonic()
        await asyncio.sleep(SETTLE_S)  # the requests that were past Redis already are answered
        chunks, offsets = set(drill.acked_chunks), dict(drill.acked_offsets)
        await asyncio.sleep(FULL_S - SETTLE_S)
        ready_while_full = await readiness(s)
        assert not any(t.done() for t in tasks), [t.exception() for t in tasks if t.done()]
        acked_while_full = len(drill.acked_chunks) - len(chunks) + sum(
            drill.acked_offsets.get(p, 0) > o for p, o in offsets.items())
        c.delete(*(f"filler:{i}" for i in range(64)))  # an operator frees memory
        freed_at = time.monotonic()
        lost = await drill.lost(s, chunks, offsets)
        paths = await asyncio.wait_for(asyncio.gather(*tasks), timeout=45)
        done_s = time.monotonic() - freed_at
        same = await identical(s, paths, natives + tuses)
        ready_after = await readiness(s)
    answers_5xx_other = sum(n for status, n in drill.answers.items() if status >= 500 and status != 503)
    report("redis-full", uploads=len(paths), full_s=round(freed_at - full_at, 1), answers_503=drill.answers[503],
           problems=dict(drill.problems), answers_5xx_other=answers_5xx_other, acked_while_full=acked_while_full,
           readiness_while_full=ready_while_full, lost=lost, identical=same, all_done_after_freed_s=round(done_s, 2))
    assert ready_while_full == (503, "out-of-memory")
    assert drill.answers[503] > 0 and set(drill.problems) == {"state-store-full"}, drill.problems
    assert answers_5xx_other == 0 and drill.not_problem_json == 0, drill.answers
    assert acked_while_full == 0
    assert lost == 0 and same == len(paths)
    assert ready_after == (200, None)
    assert done_s < 10


async def slow_body(data: bytes, first: asyncio.Event) -> AsyncIterator[bytes]:
    """``data`` in two halves, 1 s apart: the request is in flight while Redis empties."""
    yield data[:len(data) // 2]
    first.set()
    await asyncio.sleep(1.0)
    yield data[len(data) // 2:]


async def status_of(s: aiohttp.ClientSession, method: str, path: str, **kwargs) -> int:
    async with s.request(method, path, **kwargs) as r:
        await r.read()
        return r.status


async def test_redis_restarted_empty_mid_upload(tmp_path, own_redis, report):
    datas = [random_bytes(4 * PIECE) for _ in range(NATIVE + TUS_UPLOADS)]
    async with served(tmp_path, own_redis, GC__MAX_AGE="1") as (env, drill, s):
        natives, tuses = [], []
        for data in datas[:NATIVE]:  # half of each upload sent
            async with s.post("/v1/uploads", json={"filename": "n", "total_size": len(data), "chunk_size": PIECE}) as r:
                natives.append((await r.json())["upload_id"])
            for n in (1, 2):
                assert await status_of(s, "PUT", f"/v1/uploads/{natives[-1]}/chunks/{n}",
                                       data=data[(n - 1) * PIECE:n * PIECE]) == 201
        meta = "filename " + base64.b64encode(b"t").decode()
        for data in datas[NATIVE:]:
            async with s.post("/files/", headers={**TUS, "Upload-Length": str(len(data)), "Upload-Metadata": meta}) as r:
                tuses.append("/files/" + r.headers["Location"].rstrip("/").rsplit("/", 1)[1])
            assert await status_of(s, "PATCH", tuses[-1], data=data[:2 * PIECE], headers={
                **TUS, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"}) == 204
        staged_before = len(list((tmp_path / "data" / "chunks").iterdir()))

        # In flight while Redis empties: a chunk PUT and a PATCH whose bodies are half sent.
        halves = [asyncio.Event(), asyncio.Event()]
        in_flight = [
            asyncio.create_task(status_of(s, "PUT", f"/v1/uploads/{natives[0]}/chunks/3",
                                          data=slow_body(datas[0][2 * PIECE:3 * PIECE], halves[0]))),
            asyncio.create_task(status_of(s, "PATCH", tuses[0], data=slow_body(datas[NATIVE][2 * PIECE:], halves[1]),
                                          headers={**TUS, "Upload-Offset": str(2 * PIECE),
                                                   "Content-Type": "application/offset+octet-stream"}))]
        await asyncio.wait_for(asyncio.gather(*(h.wait() for h in halves)), timeout=10)
        own_redis.client().flushall()
        answers = await asyncio.gather(*in_flight)
        answers += [await status_of(s, "PUT", f"/v1/uploads/{u}/chunks/3", data=datas[0][:PIECE]) for u in natives[1:]]
        answers += [await status_of(s, "HEAD", p, headers=TUS) for p in tuses[1:]]
        answers += [await status_of(s, "POST", f"/v1/uploads/{natives[0]}/complete")]

        await asyncio.sleep(1.2)  # past gc.max_age
        gc = run(["gc"], env, tmp_path)
        removed = sum(line.split()[0] == "removed" and len(line.split()) == 2 for line in gc.stdout.splitlines())
        left = list((tmp_path / "data" / "chunks").iterdir())
        new = await drill.native(s, datas[0]), await drill.tus(s, datas[-1])
        same = await identical(s, list(new), [datas[0], datas[-1]])
    report("redis-empty", uploads=len(datas), in_flight=2, answers=sorted(answers), staged_before=staged_before,
           gc_removed=removed, staged_left=len(left),
           new_uploads_identical=same)
    assert all(400 <= a < 500 for a in answers), answers
    assert set(answers) == {404}, answers  # the uploads are unknown now: start again
    assert gc.returncode == 0, gc.stderr
    assert staged_before == removed == len(datas) and left == []
    assert same == 2
