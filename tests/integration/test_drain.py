"""A node stopped on SIGTERM (a rolling restart): what its requests in flight get, how long it takes,
and what another node finds afterwards (docs/operations.md, "Stopping a node").

Real ``vezastream serve`` processes on 127.0.0.1 sharing one Redis and one data_dir, stopped by PID.
Bodies are sent over raw sockets a piece at a time, so that they are mid-transfer when the signal
comes; a completion is made slow by an inspector plugin (a virus scanner that reads slowly),
installed as pip would.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path

import aiohttp
import pytest

from helpers import random_bytes, sha256
from servers import Server, free_port, server_env
from tus_helpers import TUS

#: A scanner that takes SLOW_SCAN seconds per block it reads, where that variable is set.
SLOW_SCANNER = """
import asyncio, os
from vezastream import hookimpl

@hookimpl
async def vezastream_inspect_upload(upload, source):
    pause = float(os.environ.get("SLOW_SCAN", "0"))
    async for _ in source.iter_bytes():
        await asyncio.sleep(pause)
"""

#: server.shutdown_timeout in these tests.
DRAIN = 2.0


def installed(tmp_path: Path, name: str, source: str) -> dict[str, str]:
    """The environment of a server with the plugin ``source`` installed as module ``name``."""
    site = tmp_path / "site"
    info = site / f"{name}-1.0.dist-info"
    info.mkdir(parents=True)
    (site / f"{name}.py").write_text(source)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[vezastream]\n{name} = {name}\n")
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}


class Trickle:
    """A request whose body goes out a piece at a time over a raw socket, until told to stop or cut."""

    def __init__(self, port: int, head: str, length: int, piece: int = 64 * 1024, pause: float = 0.1) -> None:
        self.port, self.head, self.length, self.piece, self.pause = port, head, length, piece, pause
        self.sent = 0
        self.fast = asyncio.Event()  # send the rest at once
        self.answer: bytes = b""
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        writer.write(f"{self.head}Content-Length: {self.length}\r\n\r\n".encode())
        try:
            while self.sent < self.length:
                n = self.length - self.sent if self.fast.is_set() else min(self.piece, self.length - self.sent)
                writer.write(b"v" * n)
                await writer.drain()
                self.sent += n
                if not self.fast.is_set():
                    await asyncio.sleep(self.pause)
        except ConnectionError:
            pass  # cut off
        try:
            self.answer = await asyncio.wait_for(reader.read(), 30)
        except ConnectionError:
            self.answer = b""
        writer.close()

    def headers(self) -> dict[str, str]:
        head = self.answer.split(b"\r\n\r\n", 1)[0].decode().split("\r\n")
        return {line.split(":", 1)[0].lower(): line.split(":", 1)[1].strip() for line in head[1:] if ":" in line}

    def status(self) -> int | None:
        return int(self.answer.split(b" ", 2)[1]) if self.answer else None


async def trickled_patch(server: Server, length: int) -> tuple[str, Trickle]:
    """A tus upload of ``length`` bytes created on ``server``, and a PATCH of them trickling in."""
    async with aiohttp.ClientSession(server.url) as s:
        async with s.post("/files/", headers={**TUS, "Upload-Length": str(length)}) as r:
            tus_path = r.headers["Location"]
    return tus_path, Trickle(server.port, f"PATCH {tus_path} HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\n"
                             "Upload-Offset: 0\r\nContent-Type: application/offset+octet-stream\r\n", length)


def children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


async def listening_workers(server: Server, tmp_path: Path) -> list[int]:
    """The workers of ``server`` (``--workers 2``, JSON logs), once each has said it listens."""
    workers = children(server.proc.pid)
    deadline = time.monotonic() + 30
    while True:
        text = (tmp_path / "server.log").read_text()
        said = {json.loads(line)["pid"] for line in text.splitlines() if '"event": "listening"' in line}
        if set(workers) <= said:
            return workers
        assert time.monotonic() < deadline, text[-2000:]
        await asyncio.sleep(0.05)


@pytest.mark.slow
@pytest.mark.parametrize("workers", ["1", "2"])
async def test_sigterm_drains_within_the_bound_and_another_node_goes_on_at_once(tmp_path, redis_url, workers):
    """SIGTERM to a node while a chunk, a tus PATCH and a slow completion are in flight, and a chunk
    and a PATCH that end during the drain: the node refuses new connections at once; the chunk and the
    PATCH that end in time are answered (201, 204) with ``Connection: close``, the PATCH's bytes stored; at server.shutdown_timeout the others are cut off
    and the node exits 0 within a few seconds more. Another node then takes each upload on at once:
    the tus bytes that came are kept and appended to, the native chunk is taken whole, and the
    completion left half done is finished there."""
    env = server_env(tmp_path, redis_url, SERVER__SHUTDOWN_TIMEOUT=str(DRAIN), LOG__FORMAT="json")
    plugin = installed(tmp_path, "vz_slow_scanner", SLOW_SCANNER)
    leaving = Server({**env, **plugin, "SLOW_SCAN": "10"}, tmp_path, "--workers", workers)
    staying = Server({**env, **plugin, "VEZASTREAM_SERVER__PORT": str(free_port())}, tmp_path)
    whole = random_bytes(1 << 20)
    try:
        await asyncio.gather(leaving.wait_ready(), staying.wait_ready())
        async with aiohttp.ClientSession(leaving.url) as s:
            uids = []
            for size in (4 << 20, 1 << 20, len(whole)):
                async with s.post("/v1/uploads", json={"filename": "d", "total_size": size, "chunk_size": size}) as r:
                    uids.append((await r.json())["upload_id"])
            trickled, finishing, scanned = uids
            async with s.put(f"/v1/uploads/{scanned}/chunks/1", data=whole) as r:
                assert r.status == 201
        chunk = Trickle(leaving.port, f"PUT /v1/uploads/{trickled}/chunks/1 HTTP/1.1\r\nHost: x\r\n", 4 << 20)
        ends = Trickle(leaving.port, f"PUT /v1/uploads/{finishing}/chunks/1 HTTP/1.1\r\nHost: x\r\n", 1 << 20)
        tus_path, patch = await trickled_patch(leaving, 4 << 20)
        async with aiohttp.ClientSession(leaving.url) as s:  # its first half is sent, ending in the drain
            async with s.post("/files/", headers={**TUS, "Upload-Length": str(2 << 20)}) as r:
                half_path = r.headers["Location"]
        half = Trickle(leaving.port, f"PATCH {half_path} HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\n"
                       "Upload-Offset: 0\r\nContent-Type: application/offset+octet-stream\r\n", 1 << 20)
        completion = Trickle(leaving.port, f"POST /v1/uploads/{scanned}/complete HTTP/1.1\r\nHost: x\r\n", 0)
        idle_r, idle_w = await asyncio.open_connection("127.0.0.1", leaving.port)  # kept alive, idle
        idle_w.write(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await idle_r.readuntil(b"}")).startswith(b"HTTP/1.1 200")
        await asyncio.sleep(1)
        assert all(t.sent for t in (chunk, ends, patch, half)) and not any(
            t.task.done() for t in (chunk, ends, patch, half))
        leaving.proc.send_signal(signal.SIGTERM)
        stopped_at = time.monotonic()
        await asyncio.sleep(0.3)
        with pytest.raises(ConnectionRefusedError):  # no new connection is taken
            await asyncio.open_connection("127.0.0.1", leaving.port)
        assert await asyncio.wait_for(idle_r.read(), 1) == b""  # and an idle one was closed
        idle_w.close()
        ends.fast.set()
        half.fast.set()
        await asyncio.wait_for(asyncio.gather(ends.task, half.task), 10)
        assert ends.status() == 201 and ends.headers().get("connection") == "close", ends.answer
        assert half.status() == 204 and half.headers().get("connection") == "close", half.answer
        exit_status = await asyncio.to_thread(leaving.proc.wait, 30)
        took = time.monotonic() - stopped_at
        print(f"stopped {took:.1f} s after SIGTERM")
        assert exit_status == 0 and DRAIN <= took < DRAIN + 5, (exit_status, took)
        await asyncio.wait_for(asyncio.gather(chunk.task, patch.task, completion.task), 10)
        assert chunk.status() is None and patch.status() is None and completion.status() is None
        assert chunk.sent < 4 << 20 and patch.sent < 4 << 20

        started = time.monotonic()
        async with aiohttp.ClientSession(staying.url) as s:
            async with s.head(half_path, headers=TUS) as r:  # the PATCH acknowledged in the drain: stored
                assert r.headers["Upload-Offset"] == str(1 << 20)
            async with s.head(tus_path, headers=TUS) as r:
                kept = int(r.headers["Upload-Offset"])
            assert 0 < kept <= patch.sent
            async with s.patch(tus_path, data=b"v" * ((4 << 20) - kept), headers={
                    **TUS, "Upload-Offset": str(kept), "Content-Type": "application/offset+octet-stream"}) as r:
                assert r.status == 204, await r.text()
            async with s.put(f"/v1/uploads/{trickled}/chunks/1", data=b"v" * (4 << 20)) as r:
                assert r.status == 201, await r.text()
            async with s.post(f"/v1/uploads/{scanned}/complete") as r:
                assert r.status == 200, await r.text()
                assert (await r.json())["sha256"] == sha256(whole)
        assert time.monotonic() - started < 5  # nothing waited for a lease of the stopped node to lapse
    finally:
        leaving.kill()
        staying.kill(signal.SIGTERM)
    log = (tmp_path / "server.log").read_text()
    assert '"status": 500' not in log and "Traceback" not in log, log[-3000:]
    # The stopping node gave the completion back itself (pending again); none was left for a takeover.
    assert "taken over" not in log, log[-3000:]
    cut = [json.loads(line) for line in log.splitlines() if '"drain_cut"' in line]  # with --workers: each its own
    assert sum(line["requests"] for line in cut) == 3, cut


@pytest.mark.slow
async def test_a_tus_completion_cut_by_the_drain_is_finished_by_the_next_head_elsewhere(tmp_path, redis_url):
    """operations.md, step 3: a PATCH whose completion the drain cancels gets no answer; the upload
    is pending again, and the tus client's next HEAD, on another node, completes it."""
    env = server_env(tmp_path, redis_url, SERVER__SHUTDOWN_TIMEOUT=str(DRAIN), LOG__FORMAT="json")
    plugin = installed(tmp_path, "vz_slow_scanner", SLOW_SCANNER)
    leaving = Server({**env, **plugin, "SLOW_SCAN": "10"}, tmp_path)
    staying = Server({**env, **plugin, "VEZASTREAM_SERVER__PORT": str(free_port())}, tmp_path)
    length = 1 << 20
    try:
        await asyncio.gather(leaving.wait_ready(), staying.wait_ready())
        tus_path, patch = await trickled_patch(leaving, length)
        patch.fast.set()  # the whole body: the PATCH then completes the upload, held up by the scanner
        while patch.sent < length:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        leaving.proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(leaving.proc.wait, 30) == 0
        await asyncio.wait_for(patch.task, 10)
        assert patch.status() is None  # cut, unanswered
        async with aiohttp.ClientSession(staying.url) as s:
            async with s.head(tus_path, headers=TUS) as r:
                assert r.status == 200 and int(r.headers["Upload-Offset"]) == length
            async with s.get(tus_path, headers=TUS) as r:
                assert r.status == 200 and await r.read() == b"v" * length
    finally:
        leaving.kill()
        staying.kill(signal.SIGTERM)


@pytest.mark.slow
@pytest.mark.parametrize("kill_mode", ["mixed", "control-group"])
async def test_the_bundled_redis_under_either_systemd_kill_mode(tmp_path, kill_mode):
    """operations.md's KillMode advice. systemd's default (control-group) sends SIGTERM to the bundled
    redis-server as well: it stops mid-drain and the server starts it again. With mixed, only serve
    gets it, and Redis stops after the drain. Either way a chunk that ends during the drain is stored."""
    server = Server(server_env(tmp_path, SERVER__SHUTDOWN_TIMEOUT=str(DRAIN)), tmp_path)
    try:
        await server.wait_ready()
        [redis_pid] = [pid for pid in children(server.proc.pid)
                       if b"redis-server" in Path(f"/proc/{pid}/cmdline").read_bytes()]
        async with aiohttp.ClientSession(server.url) as s:
            async with s.post("/v1/uploads", json={"filename": "k", "total_size": 1 << 20}) as r:
                uid = (await r.json())["upload_id"]
        ends = Trickle(server.port, f"PUT /v1/uploads/{uid}/chunks/1 HTTP/1.1\r\nHost: x\r\n", 1 << 20)
        await asyncio.sleep(0.5)
        server.proc.send_signal(signal.SIGTERM)
        if kill_mode == "control-group":
            os.kill(redis_pid, signal.SIGTERM)
        await asyncio.sleep(0.5)
        ends.fast.set()
        await asyncio.wait_for(ends.task, 10)
        assert await asyncio.to_thread(server.proc.wait, 30) == 0
    finally:
        server.kill()
    assert ends.status() == 201, ends.answer[-500:]
    log = (tmp_path / "server.log").read_text()
    assert ("redis-died" in log and "redis-restarted" in log) == (kill_mode == "control-group"), log[-2000:]


#: A sink that hangs on its way out, holding its process's event loop (a stuck plugin).
HUNG_SINK = """
import time
from vezastream import hookimpl
from vezastream_local import make_local_sink

@hookimpl
def vezastream_register_sinks(register):
    def factory(config, settings):
        sink = make_local_sink(config, settings)

        async def aclose():
            time.sleep(60)
        sink.aclose = aclose
        return sink
    register("hung", factory)
"""


@pytest.mark.slow
async def test_the_workers_parent_kills_a_worker_that_outlives_the_drain_by_10_s(tmp_path, redis_url):
    """--workers: the parent waits server.shutdown_timeout + 10 s for its workers to stop, then kills
    those still running, says so, and exits with a killed worker's status."""
    env = {**server_env(tmp_path, redis_url, SERVER__SHUTDOWN_TIMEOUT="1", STORAGE__SINK="hung", LOG__FORMAT="json"),
           **installed(tmp_path, "vz_hung_sink", HUNG_SINK)}
    server = Server(env, tmp_path, "--workers", "2")
    try:
        await server.wait_ready()
        workers = await listening_workers(server, tmp_path)
        server.proc.send_signal(signal.SIGTERM)
        stopped_at = time.monotonic()
        exit_status = await asyncio.to_thread(server.proc.wait, 30)
        took = time.monotonic() - stopped_at
    finally:
        server.kill()
    assert exit_status == 128 + signal.SIGKILL and 11 <= took < 14, (exit_status, took)
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers)
    lines = [json.loads(line) for line in (tmp_path / "server.log").read_text().splitlines() if line.startswith("{")]
    killed = sorted(line["pid"] for line in lines if line.get("event") == "worker_killed")
    assert killed == sorted(workers) and all("did not stop within 11 s" in line["msg"]
                                             for line in lines if line.get("event") == "worker_killed"), lines[-5:]


@pytest.mark.slow
async def test_a_second_signal_cuts_the_drain_short_and_still_stops_cleanly(tmp_path, redis_url):
    """An impatient operator's second SIGTERM (or Ctrl-C) during the drain: the requests in flight are
    cut at once, not after server.shutdown_timeout, and the stop ends as the first would have: what
    came of a PATCH is kept, the node leaves (another goes on at once), "stopped", exit status 0."""
    env = server_env(tmp_path, redis_url, SERVER__SHUTDOWN_TIMEOUT="20", LOG__FORMAT="json")
    leaving = Server(env, tmp_path)
    staying = Server({**env, "VEZASTREAM_SERVER__PORT": str(free_port())}, tmp_path)
    try:
        await asyncio.gather(leaving.wait_ready(), staying.wait_ready())
        tus_path, patch = await trickled_patch(leaving, 4 << 20)
        await asyncio.sleep(0.5)
        leaving.proc.send_signal(signal.SIGTERM)
        stopped_at = time.monotonic()
        await asyncio.sleep(0.5)
        leaving.proc.send_signal(signal.SIGTERM)
        exit_status = await asyncio.to_thread(leaving.proc.wait, 30)
        took = time.monotonic() - stopped_at
        assert exit_status == 0 and took < 3, (exit_status, took)
        await asyncio.wait_for(patch.task, 10)
        async with aiohttp.ClientSession(staying.url) as s:
            async with s.head(tus_path, headers=TUS) as r:
                kept = int(r.headers["Upload-Offset"])
            assert kept > 0
            async with s.patch(tus_path, data=b"v" * ((4 << 20) - kept), headers={
                    **TUS, "Upload-Offset": str(kept), "Content-Type": "application/offset+octet-stream"}) as r:
                assert r.status == 204, await r.text()
    finally:
        leaving.kill()
        staying.kill(signal.SIGTERM)
    lines = [json.loads(line) for line in (tmp_path / "server.log").read_text().splitlines() if line.startswith("{")]
    mine = [line for line in lines if line.get("pid") == leaving.proc.pid]
    assert [line["event"] for line in mine if line.get("event") in ("stopping", "stopped")] == ["stopping", "stopped"]


@pytest.mark.slow
async def test_workers_drain_when_every_process_gets_sigterm_as_systemd_sends_it(tmp_path, redis_url):
    """systemd (KillMode=control-group, its default) sends SIGTERM to every process of the unit: each
    worker gets one from it and one from the parent. A worker drains on the first and takes no
    other for a hurry: its PATCH runs until server.shutdown_timeout, what came is kept, exit 0."""
    env = server_env(tmp_path, redis_url, SERVER__SHUTDOWN_TIMEOUT=str(DRAIN), LOG__FORMAT="json")
    server = Server(env, tmp_path, "--workers", "2")
    try:
        await server.wait_ready()
        workers = await listening_workers(server, tmp_path)
        tus_path, patch = await trickled_patch(server, 4 << 20)
        await asyncio.sleep(0.5)
        for pid in [server.proc.pid, *workers]:
            os.kill(pid, signal.SIGTERM)
        stopped_at = time.monotonic()
        exit_status = await asyncio.to_thread(server.proc.wait, 30)
        took = time.monotonic() - stopped_at
        await asyncio.wait_for(patch.task, 10)
    finally:
        server.kill()
    assert exit_status == 0 and DRAIN <= took < DRAIN + 5, (exit_status, took)
    again = Server({**env, "VEZASTREAM_SERVER__PORT": str(free_port())}, tmp_path)
    try:
        await again.wait_ready()
        async with aiohttp.ClientSession(again.url) as s:
            async with s.head(tus_path, headers=TUS) as r:
                assert int(r.headers["Upload-Offset"]) > 0
    finally:
        again.kill(signal.SIGTERM)
