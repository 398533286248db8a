"""Drills: the bundled Redis is SIGKILLed, or stops answering (SIGSTOP), while native and tus uploads run
against a real `vezastream serve`.

Killed:
While it is down, requests answer 503 problem+json (never another 5xx); the server's supervisor starts
it again, `/v1/health/deep` is 200 again within 10 s, nothing acknowledged before the kill is lost
(appendfsync always), and every upload then completes byte-identical, within 10 s of the kill
(all_done_s): a tus PATCH cut by the outage gives its append lease back once Redis is back, so the
resume does not answer 409 until the lease expires (answers_409). Hung: see test_redis_hangs_mid_upload.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from drill_clients import NATIVE, PIECE, PIECES, TUS_UPLOADS, Drill, deep_status, identical
from helpers import random_bytes
from servers import Server, server_env

pytestmark = [pytest.mark.slow, pytest.mark.drill]


def descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        for task in Path(f"/proc/{todo.pop()}/task").glob("*"):
            try:
                kids = [int(k) for k in (task / "children").read_text().split()]
            except OSError:
                continue
            found += kids
            todo += kids
    return found


def redis_pids(server: Server) -> list[int]:
    """The bundled redis-server(s) under the server's process tree."""
    pids = []
    for pid in descendants(server.proc.pid):
        try:
            if b"redis-server" in Path(f"/proc/{pid}/cmdline").read_bytes():
                pids.append(pid)
        except OSError:
            pass
    return pids


def listeners(server: Server) -> int:
    """How many of the server's processes hold a socket listening on its port (/proc/net/tcp)."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == server.port:
            inodes.add(f"socket:[{fields[9]}]")
    count = 0
    for pid in descendants(server.proc.pid):
        try:
            count += any(os.readlink(fd) in inodes for fd in Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            pass
    return count


def assert_gone(pids: list[int]) -> None:
    """Within 5 s, none of ``pids`` runs any more."""
    deadline = time.monotonic() + 5
    while any(Path(f"/proc/{pid}").exists() for pid in pids):
        assert time.monotonic() < deadline, f"still running: {pids}"
        time.sleep(0.05)


async def logged_within(log: Path, text: str, seconds: float) -> float:
    """Seconds until the server's log holds ``text`` (polled), at most ``seconds``."""
    began = time.monotonic()
    while text not in log.read_text():
        assert time.monotonic() - began < seconds, f"{text!r} not logged within {seconds} s"
        await asyncio.sleep(0.1)
    return time.monotonic() - began


async def outage(s: aiohttp.ClientSession, killed_at: float) -> float:
    """Seconds from the kill until readiness is 200 again (after it was not: the kill landed)."""
    while await deep_status(s) == 200:
        assert time.monotonic() - killed_at < 5
        await asyncio.sleep(0.005)
    while await deep_status(s) != 200:
        assert time.monotonic() - killed_at < 10, "not back within 10 s"
        await asyncio.sleep(0.02)
    return time.monotonic() - killed_at


@contextlib.asynccontextmanager
async def served(tmp_path: Path, **settings: str) -> AsyncIterator[tuple[Server, Drill, aiohttp.ClientSession,
                                                                           aiohttp.ClientSession]]:
    """A `vezastream serve` with its bundled Redis, a drill, and two sessions (uploads, probes);
    at the end the server stops, and its Redis with it."""
    server = Server(server_env(tmp_path, **settings), tmp_path)
    try:
        await server.wait_ready()
        async with aiohttp.ClientSession(server.url) as s, aiohttp.ClientSession(server.url) as probe:
            yield server, Drill(server.url), s, probe
    finally:
        left = redis_pids(server)
        server.kill(signal.SIGTERM)
    assert_gone(left)


async def test_redis_killed_mid_upload(tmp_path, report):
    natives = [random_bytes(PIECES * PIECE) for _ in range(NATIVE)]
    tuses = [random_bytes(PIECES * PIECE) for _ in range(TUS_UPLOADS)]
    async with served(tmp_path) as (server, drill, s, probe):
        tasks = await drill.a_third_sent(s, natives, tuses)
        [pid] = redis_pids(server)
        os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()
        chunks, offsets = set(drill.acked_chunks), dict(drill.acked_offsets)  # acknowledged before the kill
        assert not any(t.done() for t in tasks), "the uploads ended before the kill"
        outage_s = await outage(probe, killed_at)
        assert redis_pids(server) and redis_pids(server) != [pid]
        # Right after the outage, before anything is sent again: what was acknowledged is there.
        lost = await drill.lost(probe, chunks, offsets)
        paths = await asyncio.wait_for(asyncio.gather(*tasks), timeout=45)
        done_s = time.monotonic() - killed_at
        same = await identical(s, paths, natives + tuses)
        answers_503 = drill.answers[503]
        answers_5xx_other = sum(n for status, n in drill.answers.items() if status >= 500 and status != 503)
        report("redis-down", uploads=len(paths), kills=1, outage_s=round(outage_s, 2), answers_503=answers_503,
               answers_5xx_other=answers_5xx_other, answers_409=drill.answers[409], lost=lost,
               identical=same, all_done_s=round(done_s, 2))
        assert answers_5xx_other == 0, drill.answers
        assert drill.not_problem_json == 0
        assert answers_503 > 0, "no request met the outage"
        assert lost == 0 and same == len(paths)
        assert outage_s < 10
        assert done_s < 10, "an upload stayed blocked after the outage (an append lease left behind?)"


async def test_redis_killed_under_workers_is_restarted_once(tmp_path, report):
    """With `serve --workers 2` the parent alone starts the bundled Redis, and starts it again: one, never two."""
    server = Server(server_env(tmp_path), tmp_path, "--workers", "2")
    data = random_bytes(8 * PIECE)
    try:
        await server.wait_ready()
        deadline = time.monotonic() + 30
        while listeners(server) < 2:  # both workers serve (a worker that is starting waits for Redis anyway)
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        [pid] = redis_pids(server)
        async with aiohttp.ClientSession(server.url, connector=aiohttp.TCPConnector(force_close=True)) as s:
            drill = Drill(server.url)
            os.kill(pid, signal.SIGKILL)
            killed_at = time.monotonic()
            outage_s = await outage(s, killed_at)
            for _ in range(10):  # both workers (the port is shared, each request lands on either) answer
                assert await deep_status(s) == 200
            path = await drill.native(s, data)
            async with s.get(path) as r:
                assert await r.read() == data
        restarted = redis_pids(server)
        assert len(restarted) == 1 and restarted != [pid]
        report("redis-down-workers", workers=2, kills=1, outage_s=round(outage_s, 2),
               answers_5xx_other=sum(n for st, n in drill.answers.items() if st >= 500 and st != 503))
    finally:
        left = redis_pids(server)
        server.kill(signal.SIGTERM)
    assert server.proc.returncode == 0
    assert_gone(left)


HANG, REPLY = 6.0, 2.0


async def timed(s: aiohttp.ClientSession, path: str) -> tuple[float, int, bool]:
    """(seconds to the answer, its status, whether a 503 was problem+json with Retry-After)."""
    asked = time.monotonic()
    async with s.get(path) as r:
        await r.read()
        return (time.monotonic() - asked, r.status,
                r.status != 503 or (r.content_type == "application/problem+json" and "Retry-After" in r.headers))


async def test_redis_hangs_mid_upload(tmp_path, report):
    """The bundled Redis stops answering (SIGSTOP: alive, its socket open, no reply) for three times
    ``redis.reply_timeout`` while uploads run. Every request then answers within that timeout (a
    503 problem+json with Retry-After), however many are queued for Redis, and a chunk or PATCH
    gives its claim or lease back once Redis answers again; readiness is 503;
    nothing acknowledged is lost; and once Redis answers again (SIGCONT) every upload completes
    byte-identical."""
    natives = [random_bytes(PIECES * PIECE) for _ in range(NATIVE)]
    tuses = [random_bytes(PIECES * PIECE) for _ in range(TUS_UPLOADS)]
    async with served(tmp_path, REDIS__REPLY_TIMEOUT=str(REPLY)) as (server, drill, s, probe):
        tasks = await drill.a_third_sent(s, natives, tuses)
        [pid] = redis_pids(server)
        os.kill(pid, signal.SIGSTOP)
        stopped_at = time.monotonic()
        chunks, offsets = set(drill.acked_chunks), dict(drill.acked_offsets)  # acknowledged before the hang
        state_path = f"/v1/uploads/{next(iter(chunks))[0]}"
        try:
            probes = [asyncio.create_task(timed(probe, "/v1/health/deep"))]
            while time.monotonic() - stopped_at < HANG:  # a request every 0.2 s of the hang, each timed
                probes.append(asyncio.create_task(timed(probe, state_path)))
                await asyncio.sleep(0.2)
            assert not any(t.done() for t in tasks), "the uploads ended during the hang"
        finally:
            os.kill(pid, signal.SIGCONT)
        resumed_at = time.monotonic()
        (_, ready_during, _), *answered = await asyncio.gather(*probes)
        lost = await drill.lost(probe, chunks, offsets)
        paths = await asyncio.wait_for(asyncio.gather(*tasks), timeout=45)
        done_s = time.monotonic() - resumed_at
        same = await identical(s, paths, natives + tuses)
        heartbeat_back_s = await logged_within(tmp_path / "server.log", "heartbeat back", 5)
    slowest = max(seconds for seconds, _, _ in answered)
    slowest_upload = max(drill.hung_answers, default=0.0)
    answers_5xx_other = sum(n for status, n in drill.answers.items() if status >= 500 and status != 503)
    report("redis-hangs", uploads=len(paths), hang_s=HANG, reply_timeout_s=REPLY, probes=len(answered),
           probes_503=sum(status == 503 for _, status, _ in answered), slowest_probe_s=round(slowest, 2),
           slowest_upload_503_s=round(slowest_upload, 2),
           answers_503=drill.answers[503], answers_5xx_other=answers_5xx_other, lost=lost,
           identical=same, all_done_after_resume_s=round(done_s, 2), heartbeat_back_s=round(heartbeat_back_s, 2))
    assert ready_during == 503
    assert slowest <= REPLY + 1.0, [(round(seconds, 2), status) for seconds, status, _ in answered]
    # Nor does a chunk PUT or PATCH wait for Redis a second time to give its claim or lease back.
    assert slowest_upload <= REPLY + 1.0, sorted(drill.hung_answers)
    assert {status for _, status, _ in answered} <= {200, 503} and all(form for _, _, form in answered)
    assert sum(status == 503 for _, status, _ in answered) >= len(answered) // 2
    assert answers_5xx_other == 0, drill.answers
    assert drill.not_problem_json == 0
    assert lost == 0 and same == len(paths)
    # Leases a failed PATCH could not give back are given back once Redis answers: no upload
    # waits for one to expire (10 s).
    assert done_s < 5, "an upload stayed blocked after the hang"
    # The node's heartbeat failed through the hang: one line when it began failing and one when it got
    # through again (else other nodes would take its leases over), not a line a try (docs/operations.md).
    log = (tmp_path / "server.log").read_text()
    assert (log.count("heartbeat failed"), log.count("heartbeat back")) == (1, 1), log[-3000:]
