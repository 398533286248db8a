"""Crash drill: `vezastream serve` SIGKILLed 20 times while 32 uploads run (issue 15).

Half the uploads come in by the native door, half by tus; the sink is the
local one, the state is in the bundled Redis (AOF, ``appendfsync always``),
everything on one data folder. At random moments (some of them right after a
client asked for a completion) the server is SIGKILLed, then started again on
the same folder. Clients resume as real ones do: tus with HEAD then PATCH
from the offset, native with GET state, the missing chunks, then complete.

Asserted: every upload completes and reads back byte-identical; nothing a
client got a 2xx for is ever missing afterwards; no process is left running.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from s3_servers import boto_client, new_bucket, open_multipart_uploads, start_weed
from helpers import Job
from servers import Server, free_port, run

MiB = 1024 * 1024
TUS = {"Tus-Resumable": "1.0.0"}
STREAM = {**TUS, "Content-Type": "application/offset+octet-stream"}
#: Statuses a client simply retries after (the server is restarting, or finishing what a dead one left).
RETRY = (409, 423, 500, 502, 503)


class Retry(Exception):
    pass


@dataclass
class Drill:
    rng: random.Random
    url: str = ""
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    #: Clients that sent a completion request and have no answer yet.
    completing: int = 0
    completion_sent: asyncio.Event = field(default_factory=asyncio.Event)
    lost: list[str] = field(default_factory=list)
    #: Client index -> monotonic time of its last 2xx.
    progress: dict[int, float] = field(default_factory=dict)
    done: set[int] = field(default_factory=set)

    def ok(self, i: int) -> None:
        self.progress[i] = time.monotonic()

    async def pace(self) -> None:
        await asyncio.sleep(self.rng.uniform(0.05, 1.0))  # uploads last through the kills


def _check(resp: aiohttp.ClientResponse, *expected: int) -> None:
    if resp.status not in expected:
        if resp.status in RETRY:
            raise Retry(resp.status)
        raise AssertionError(f"{resp.method} {resp.url.path} answered {resp.status}")


async def native_client(d: Drill, s: aiohttp.ClientSession, i: int, data: bytes, piece: int) -> None:
    total = -(-len(data) // piece)
    uid = None
    acked: set[int] = set()
    while True:
        try:
            await d.ready.wait()
            if uid is None:
                async with s.post(d.url + "/v1/uploads", json={"filename": f"n{i}.bin", "total_size": len(data),
                                                               "chunk_size": piece}) as r:
                    _check(r, 201)
                    uid = (await r.json())["upload_id"]
                    d.ok(i)
            async with s.get(f"{d.url}/v1/uploads/{uid}") as r:
                _check(r, 200)
                state = await r.json()
                d.ok(i)
            if state["status"] != "completed" and not acked <= set(state["chunks_received"]):
                d.lost.append(f"native {i}: acknowledged chunks {sorted(acked - set(state['chunks_received']))}")
            if state["status"] == "pending":
                for n in (n for n in range(1, total + 1) if n not in state["chunks_received"]):
                    await d.pace()
                    async with s.put(f"{d.url}/v1/uploads/{uid}/chunks/{n}",
                                     data=data[(n - 1) * piece:n * piece]) as r:
                        _check(r, 200, 201)
                        acked.add(n)
                        d.ok(i)
                await d.pace()
                d.completing += 1
                d.completion_sent.set()
                try:
                    async with s.post(f"{d.url}/v1/uploads/{uid}/complete") as r:
                        _check(r, 200)
                        d.ok(i)
                finally:
                    d.completing -= 1
            elif state["status"] != "completed":
                raise Retry(state["status"])
            async with s.get(f"{d.url}/v1/uploads/{uid}/content") as r:
                _check(r, 200)
                assert await r.read() == data, f"native {i}: content differs"
            d.done.add(i)
            return
        except (aiohttp.ClientError, asyncio.TimeoutError, Retry):
            await asyncio.sleep(0.1)


async def tus_client(d: Drill, s: aiohttp.ClientSession, i: int, data: bytes, piece: int) -> None:
    path = None
    acked = 0
    while True:
        try:
            await d.ready.wait()
            if path is None:
                async with s.post(d.url + "/files/", headers={**TUS, "Upload-Length": str(len(data))}) as r:
                    _check(r, 201)
                    path = "/files/" + r.headers["Location"].rsplit("/", 1)[1]
                    d.ok(i)
            async with s.head(d.url + path, headers=TUS) as r:
                _check(r, 200)
                offset = int(r.headers["Upload-Offset"])
                d.ok(i)
            if offset < acked:
                d.lost.append(f"tus {i}: offset {offset} after {acked} was acknowledged")
            if offset == len(data):
                async with s.get(d.url + path) as r:
                    _check(r, 200)
                    assert await r.read() == data, f"tus {i}: content differs"
                d.done.add(i)
                return
            while offset < len(data):
                await d.pace()
                end = min(offset + piece, len(data))
                final = end == len(data)
                if final:
                    d.completing += 1
                    d.completion_sent.set()
                try:
                    async with s.patch(d.url + path, headers={**STREAM, "Upload-Offset": str(offset)},
                                       data=data[offset:end]) as r:
                        _check(r, 204)
                        offset = acked = int(r.headers["Upload-Offset"])
                        d.ok(i)
                finally:
                    if final:
                        d.completing -= 1
        except (aiohttp.ClientError, asyncio.TimeoutError, Retry):
            await asyncio.sleep(0.1)


def _children(pid: int) -> list[int]:
    """PIDs whose parent is ``pid`` (the bundled redis-server of a served process)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry))
    return out


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


async def _gone(pids: list[int], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while any(_running(p) for p in pids):
        assert time.monotonic() < deadline, f"still running: {[p for p in pids if _running(p)]}"
        await asyncio.sleep(0.02)


def _seed(name: str) -> tuple[random.Random, int]:
    seed = int(os.environ.get("DRILL_SEED", random.randrange(1 << 30)))
    print(f"{name} drill seed: {seed} (DRILL_SEED={seed} repeats it)")
    return random.Random(seed), seed


def _env(tmp_path: Path, **more: str) -> dict[str, str]:
    return {
        "VEZASTREAM_STORAGE__DATA_DIR": str(tmp_path / "data"),
        "VEZASTREAM_SERVER__PORT": str(free_port()),
        "VEZASTREAM_LIMITS__MIN_CHUNK_SIZE": "1",
        "VEZASTREAM_GC__ENABLED": "false",
        "VEZASTREAM_LOG__FORMAT": "json",
        "VEZASTREAM_REDIS__APPENDFSYNC": "always",  # acknowledged means on disk (the default, said aloud)
        **more,
    }


async def crash_drill(tmp_path: Path, env: dict[str, str], rng: random.Random, jobs: list[Job], kills: int
                      ) -> dict[str, object]:
    """SIGKILL the served process ``kills`` times while ``jobs`` run; assert; return the figures."""
    uploads = len(jobs)
    d = Drill(rng)
    started = time.monotonic()
    seen: list[int] = []  # every process started: the servers and their Redis
    server = Server(env, tmp_path)
    seen.append(server.proc.pid)
    d.url = server.url
    recoveries: list[float] = []
    at_completion = running = 0
    timeout = aiohttp.ClientTimeout(total=30)
    try:
        await server.wait_ready()
        seen.extend(_children(server.proc.pid))
        d.ready.set()
        async with aiohttp.ClientSession(timeout=timeout) as s:
            clients = [asyncio.create_task((native_client if job.door == "native" else tus_client)(
                d, s, i, job.data, job.piece)) for i, job in enumerate(jobs)]
            for _ in range(kills):
                if rng.random() < 0.4 and len(d.done) < uploads:  # right after a client asks for a completion
                    d.completion_sent.clear()
                    try:
                        await asyncio.wait_for(d.completion_sent.wait(), 3)
                        await asyncio.sleep(rng.uniform(0, 0.015))
                    except asyncio.TimeoutError:
                        pass
                else:
                    await asyncio.sleep(rng.uniform(0.2, 1.5))
                at_completion += d.completing > 0
                running = uploads - len(d.done)
                d.ready.clear()
                killed_at = time.monotonic()
                redis = _children(server.proc.pid)
                seen.extend(redis)
                server.kill(signal.SIGKILL)
                await _gone(redis)  # the bundled Redis follows its server (it flushes its AOF first)
                server = Server(env, tmp_path)
                seen.append(server.proc.pid)
                await server.wait_ready()
                seen.extend(_children(server.proc.pid))
                d.ready.set()
                # Recovered: every unfinished upload has had a 2xx since the restart.
                waiting = [i for i in range(uploads) if i not in d.done]
                deadline = time.monotonic() + 30
                while any(d.progress.get(i, 0) < killed_at and i not in d.done for i in waiting):
                    assert time.monotonic() < deadline, "uploads did not resume within 30 s of a kill"
                    await asyncio.sleep(0.02)
                recoveries.append(time.monotonic() - killed_at)
            _, unfinished = await asyncio.wait(clients, timeout=60)
            for task in unfinished:
                task.cancel()
            for task in clients:
                if task.done() and not task.cancelled() and task.exception():
                    raise task.exception()
            assert not unfinished, f"uploads unfinished 60 s after the last kill: {sorted(set(range(uploads)) - d.done)}"
    finally:
        seen.extend(_children(server.proc.pid))
        server.kill(signal.SIGTERM)
        await _gone(seen)  # nothing left running: every server and every Redis
    total = time.monotonic() - started
    log = [json.loads(line) for line in (tmp_path / "server.log").read_text().splitlines() if line.startswith("{")]
    taken_over = sum(rec.get("msg") == "completion of a dead process taken over" for rec in log)
    assert d.lost == [], d.lost
    assert d.done == set(range(uploads))
    return {"uploads": uploads, "kills": kills, "kills_at_completion": at_completion,
            "running_at_last_kill": running, "completions_taken_over": taken_over, "lost": len(d.lost),
            "max_recovery_s": round(max(recoveries), 2), "total_s": round(total, 1)}


@pytest.mark.slow
@pytest.mark.drill
async def test_crash_drill_sigkill_20_times_while_32_uploads_run(tmp_path, report):
    """Local sink: 16 native and 16 tus uploads of 0.3-0.9 MB in 16 KiB requests (~40 an upload)."""
    rng, seed = _seed("crash")
    jobs = [Job("native" if i % 2 else "tus", rng.randbytes(rng.randrange(300_000, 900_000)), 16 * 1024)
            for i in range(32)]
    figures = await crash_drill(tmp_path, _env(tmp_path), rng, jobs, kills=20)
    report("crash", seed=seed, sink="local", **figures)


@pytest.mark.slow
@pytest.mark.drill
async def test_crash_drill_s3_direct_on_seaweedfs(tmp_path, report, aws_env):
    """S3 direct mode on SeaweedFS, smaller: 4 native uploads of 2-3 chunks of 5 MiB (each chunk sent
    straight to S3 as a part) and 4 tus uploads (staged, streamed into S3 at completion); 8 kills."""
    rng, seed = _seed("crash-s3")
    weed = start_weed(tmp_path / "weed")
    try:
        bucket = new_bucket(boto_client(weed.endpoint))
        env = _env(tmp_path, **aws_env, VEZASTREAM_STORAGE__SINK="s3", VEZASTREAM_SINKS__S3__BUCKET=bucket,
                   VEZASTREAM_SINKS__S3__ENDPOINT_URL=weed.endpoint, VEZASTREAM_SINKS__S3__ADDRESSING_STYLE="path",
                   VEZASTREAM_SINKS__S3__CONTENT="proxy")
        jobs = [Job("native", rng.randbytes(rng.randrange(10 * MiB + 1, 15 * MiB)), 5 * MiB) if i % 2 else
                Job("tus", rng.randbytes(rng.randrange(500_000, 1_500_000)), 64 * 1024) for i in range(8)]
        figures = await crash_drill(tmp_path, env, rng, jobs, kills=8)
        # What killed processes left in S3 (multipart uploads of completions or creations they never
        # finished) belongs to no live upload: one GC pass sweeps it.
        s3 = boto_client(weed.endpoint)
        left = len(open_multipart_uploads(s3, bucket))
        gc = run(["gc"], {**env, "VEZASTREAM_GC__MAX_AGE": "1"}, tmp_path)
        assert gc.returncode == 0, gc.stderr
        assert open_multipart_uploads(s3, bucket) == []
    finally:
        weed.stop()
    report("crash", seed=seed, sink="s3-direct (SeaweedFS)", **figures, multipart_left_then_swept=left)
