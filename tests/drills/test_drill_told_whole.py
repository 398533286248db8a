"""Drill: a node SIGKILLed while tus uploads send their last PATCH to it; it does not come back.

Two `vezastream serve` nodes share a Redis and a data folder (the local sink). Each round, 16 tus
uploads are created and sent, all but their last MiB, through node B; their last PATCHes go to node
A together, and A is SIGKILLed as soon as Redis shows one of them holding all its bytes, not yet
completed. Each client then does what a tus client does: it
asks node B for the offset (HEAD), and if told the whole length it is done and sends nothing more;
else it sends the rest to B.

Some of the killed PATCHes were recorded, and A died before (or while) it completed the upload: B's
HEAD answers the whole length of an upload not completed yet. Asserted: with A still dead and no
request about them, each such upload is completed (its status read straight from Redis) within A's
heartbeat and a few seconds more, and every upload reads back byte-identical through B; B's notes
for the GC (``<prefix>:unfinished``) are gone once they are. Never a 5xx from B. And the case came
up: some upload was told whole before it was completed. Found by tests/drills/test_drill_nodes.py, whose object for such an upload was missing.

Reported: how many uploads were told whole before they were completed, how many were resumed on B,
and how long after the kill every upload was completed (the longest of the rounds).
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from helpers import random_bytes
from servers import Server, free_port, server_env
from vezastream.engine.leases import NODE_SECONDS

pytestmark = [pytest.mark.slow, pytest.mark.drill]

TUS = {"Tus-Resumable": "1.0.0"}
STREAM = {**TUS, "Content-Type": "application/offset+octet-stream"}
ROUNDS, UPLOADS, HEAD_PART, LAST = 3, 16, 256 * 1024, 1024 * 1024
#: Seconds after the kill by which every upload told whole must be completed: the dead node's
#: heartbeat lapsing, then the completion.
BOUND_S = NODE_SECONDS + 10


async def _create(s: aiohttp.ClientSession, url: str, data: bytes) -> str:
    async with s.post(url + "/files/", headers={**TUS, "Upload-Length": str(len(data))}) as r:
        assert r.status == 201, await r.text()
        path = "/files/" + r.headers["Location"].rstrip("/").rsplit("/", 1)[1]
    await _patch(s, url + path, 0, data[:HEAD_PART], expect=204)
    return path


async def _patch(s: aiohttp.ClientSession, url: str, offset: int, body: bytes, expect: int | None = None) -> int:
    try:
        async with s.patch(url, headers={**STREAM, "Upload-Offset": str(offset)}, data=body) as r:
            assert expect is None or r.status == expect, await r.text()
            return r.status
    except aiohttp.ClientError:
        return 0  # its node died under it


def _kill_once_one_is_whole(server: Server, redis, keys: list[str], length: int, rng: random.Random) -> None:
    """SIGKILL ``server`` the moment Redis shows one of ``keys`` holding all its bytes but not completed
    (its last PATCH registered, its completion to come or under way), 0-2 ms after, or after 10 s."""
    deadline = time.monotonic() + 10
    try:
        while time.monotonic() < deadline:
            pipe = redis.pipeline(transaction=False)
            for key in keys:
                pipe.hmget(key, "bytes_received", "status")
            if any(int(got or 0) == length and status != "completed" for got, status in pipe.execute()):
                time.sleep(rng.uniform(0, 0.002))
                return
            time.sleep(0.0005)
    finally:
        server.kill()


async def _resume(s: aiohttp.ClientSession, url: str, blob: bytes, answers: Counter[int], since: float,
                  completed: Callable[[], bool]) -> str:
    """What a tus client does after its PATCH failed: HEAD, then send the rest (after a 409, the dead
    node's append lease still held until its heartbeat lapses, wait and ask again). "told whole" (and
    "... unfinished" when the upload was not completed then) if the first HEAD answered the whole length:
    the client is done; "resumed" once the rest was sent."""
    first = True
    while True:
        assert time.monotonic() - since < BOUND_S, f"{url}: the rest not taken {BOUND_S} s after the kill"
        async with s.head(url, headers=TUS) as r:
            answers[r.status] += 1
            assert r.status == 200, await r.text()
            offset = int(r.headers["Upload-Offset"])
        if offset == len(blob) and first:
            return "told whole" if completed() else "told whole unfinished"
        first = False
        status = await _patch(s, url, offset, blob[offset:]) if offset < len(blob) else 204
        answers[status] += 1
        if status == 204:
            return "resumed"
        assert status == 409, f"{url}: the rest sent to the live node answered {status}"
        await asyncio.sleep(0.2)


async def test_uploads_told_whole_by_a_live_node_are_completed_after_their_node_dies(tmp_path: Path, own_redis,
                                                                                     report):
    seed = int(os.environ.get("DRILL_SEED", "0")) or random.randrange(1 << 30)
    rng = random.Random(seed)
    env_b = server_env(tmp_path, f"redis://{own_redis.address}/0")
    env_a = {**env_b, "VEZASTREAM_SERVER__PORT": str(free_port())}
    prefix = env_b["VEZASTREAM_REDIS__KEY_PREFIX"]
    folders = {name: tmp_path / name for name in "ab"}
    for folder in folders.values():
        folder.mkdir()
    redis = own_redis.client()
    answers: Counter[int] = Counter()
    outcomes: Counter[str] = Counter()
    waits = []
    b = Server(env_b, folders["b"])
    a = None
    try:
        await b.wait_ready()
        async with aiohttp.ClientSession() as s:
            for _ in range(ROUNDS):
                a = Server(env_a, folders["a"])
                await a.wait_ready()
                blobs = [random_bytes(HEAD_PART + LAST) for _ in range(UPLOADS)]
                paths = [await _create(s, b.url, blob) for blob in blobs]
                lasts = [asyncio.create_task(_patch(s, a.url + p, HEAD_PART, blob[HEAD_PART:]))
                         for p, blob in zip(paths, blobs)]
                keys = [f"{prefix}:up:{{{path.rsplit('/', 1)[1]}}}" for path in paths]
                await asyncio.to_thread(_kill_once_one_is_whole, a, redis, keys, len(blobs[0]), rng)
                killed_at = time.monotonic()
                await asyncio.gather(*lasts)
                ends = await asyncio.gather(*(
                    _resume(s, b.url + path, blob, answers, killed_at, lambda k=key: redis.hget(k, "status") == "completed")
                    for path, blob, key in zip(paths, blobs, keys)))
                outcomes.update(ends)
                waiting = [key for key, end in zip(keys, ends) if end == "told whole unfinished"]
                while waiting:  # no request about them: the live node sees them through
                    waiting = [k for k in waiting if redis.hget(k, "status") != "completed"]
                    assert time.monotonic() - killed_at < BOUND_S, f"not completed {BOUND_S} s after the kill: {waiting}"
                    await asyncio.sleep(0.1)
                waits.append(time.monotonic() - killed_at)
                for path, blob in zip(paths, blobs):
                    async with s.get(b.url + path) as r:
                        answers[r.status] += 1
                        assert r.status == 200 and await r.read() == blob, f"{path}: content differs"
            # The watches' notes for the GC (<prefix>:unfinished) go once their uploads are completed.
            deadline = time.monotonic() + 5
            while redis.scard(f"{prefix}:unfinished"):
                assert time.monotonic() < deadline, redis.smembers(f"{prefix}:unfinished")
                await asyncio.sleep(0.1)
    finally:
        for server in (a, b):
            if server is not None:
                server.kill()
    report("told whole, then its node died", seed=seed, rounds=ROUNDS, uploads=ROUNDS * UPLOADS,
           **{k.replace(" ", "_"): v for k, v in sorted(outcomes.items())},
           all_completed_within_s=round(max(waits), 1), bound_s=BOUND_S, answers=dict(sorted(answers.items())))
    assert not [status for status in answers if status >= 500], answers
    # The case the drill is for came up (6-26 of 48 uploads in runs so far): else it showed nothing.
    assert outcomes["told whole unfinished"], outcomes
