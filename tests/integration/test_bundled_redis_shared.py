"""Several ``vezastream serve`` processes on one ``data_dir`` with the bundled Redis (``redis.url`` empty).

The first supervises the folder's ``redis-server``; the others use it. Two promises
(docs/operations.md, "One data_dir for every node"):

- a process never starts a second ``redis-server`` on the same folder while the
  supervisor lives: two servers on one AOF would each answer a different set of
  nodes (an upload created through one is unknown to the other). A silent socket
  (what a node on another host sees of a shared folder) is a refusal to start;
- when the supervisor dies (its Redis dies with it), a process that used its Redis
  starts the same folder's Redis again and supervises it: nothing acknowledged is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from servers import Server, server_env

pytestmark = pytest.mark.slow


def _redis_servers(socket: Path) -> list[int]:
    """The pids of every redis-server serving ``socket``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if b"redis-server" in cmdline and str(socket).encode() in cmdline:
                found.append(int(entry.name))
    return found


def _events(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]


async def _deep_health(url: str) -> int:
    async with aiohttp.ClientSession() as s, s.get(url + "/v1/health/deep") as r:
        return r.status


async def _supervisor_shown(url: str) -> str:
    """Who supervises the bundled Redis, as readiness tells it (docs/api.md)."""
    async with aiohttp.ClientSession() as s, s.get(url + "/v1/health/deep") as r:
        return (await r.json())["redis"]["supervisor"]


def _node(tmp_path: Path, name: str) -> Server:
    cwd = tmp_path / name
    cwd.mkdir()
    return Server(server_env(tmp_path, LOG__FORMAT="json"), cwd)  # one data_dir: tmp_path / "data"


@contextlib.asynccontextmanager
async def _two_nodes(tmp_path: Path) -> AsyncIterator[tuple[Server, Server]]:
    """Two ready servers on one data_dir: the first supervises its bundled Redis, the second uses it."""
    first, second = _node(tmp_path, "a"), None
    try:
        await first.wait_ready()
        second = _node(tmp_path, "b")
        await second.wait_ready()
        yield first, second
    finally:
        first.kill()
        if second is not None:
            second.kill(signal.SIGTERM)


async def test_a_silent_bundled_redis_is_never_started_twice(tmp_path) -> None:
    first = _node(tmp_path, "a")
    second = None
    socket = tmp_path / "data" / "redis" / "redis.sock"
    try:
        await first.wait_ready()
        (redis_pid,) = _redis_servers(socket)
        os.kill(redis_pid, signal.SIGSTOP)  # alive, its lock held, its socket silent
        try:
            second = _node(tmp_path, "b")
            assert second.proc.wait(40) == 1  # refused, after waiting for the server to answer
            assert _redis_servers(socket) == [redis_pid]
        finally:
            os.kill(redis_pid, signal.SIGCONT)
        refusal = (tmp_path / "b" / "server.log").read_text()
        assert "cannot share a bundled Redis: set redis.url" in refusal, refusal
        assert await _deep_health(first.url) == 200
    finally:
        first.kill(signal.SIGTERM)
        if second is not None:
            second.kill()


async def test_when_the_supervisor_dies_another_process_takes_its_redis_over(tmp_path) -> None:
    socket = tmp_path / "data" / "redis" / "redis.sock"
    async with _two_nodes(tmp_path) as (first, second):
        async with aiohttp.ClientSession(first.url) as s:
            async with s.post("/v1/uploads", json={"filename": "t.bin", "total_size": 8, "chunk_size": 4}) as r:
                uid = (await r.json())["upload_id"]
            async with s.put(f"/v1/uploads/{uid}/chunks/1", data=b"abcd") as r:
                assert r.status == 201
        assert [await _supervisor_shown(n.url) for n in (first, second)] == ["this process", "another process"]
        (old,) = _redis_servers(socket)
        first.kill()  # SIGKILL: its Redis gets SIGTERM from the kernel and goes too
        killed = time.monotonic()
        while _redis_servers(socket) in ([], [old]) or await _deep_health(second.url) != 200:
            assert time.monotonic() - killed < 20, "no process took the bundled Redis over"
            await asyncio.sleep(0.2)
        took = time.monotonic() - killed
        assert old not in _redis_servers(socket)
        assert await _supervisor_shown(second.url) == "this process"
        async with aiohttp.ClientSession(second.url) as s:
            async with s.get(f"/v1/uploads/{uid}") as r:
                assert (await r.json())["chunks_received"] == [1]  # acknowledged before: kept
            async with s.put(f"/v1/uploads/{uid}/chunks/2", data=b"efgh") as r:
                assert r.status == 201
            async with s.post(f"/v1/uploads/{uid}/complete") as r:
                assert r.status == 200
            async with s.get(f"/v1/uploads/{uid}/content") as r:
                assert await r.read() == b"abcdefgh"
        assert [e for e in _events(tmp_path / "b" / "server.log") if e.get("event") == "redis-taken-over"]
        assert took < 10, took
    assert _redis_servers(socket) == []  # the taker stopped it on its way out


async def test_the_taker_waits_for_the_dead_supervisors_redis_to_go(tmp_path) -> None:
    """The supervisor SIGKILLed while its Redis cannot act yet on the SIGTERM the kernel sends it (stopped):
    the lock is free but that server still lives. Starting another on the folder then would make two, and
    the old one, going at last, removes the socket file the new one listens on. The taker waits for it."""
    socket = tmp_path / "data" / "redis" / "redis.sock"
    async with _two_nodes(tmp_path) as (first, second):
        (old,) = _redis_servers(socket)
        os.kill(old, signal.SIGSTOP)
        try:
            first.kill()
            await asyncio.sleep(1.5)  # many of the standby's looks
            assert _redis_servers(socket) == [old]
        finally:
            os.kill(old, signal.SIGCONT)  # it takes the SIGTERM and goes
        deadline = time.monotonic() + 20
        while await _deep_health(second.url) != 200:
            assert time.monotonic() < deadline, "no process took the bundled Redis over"
            await asyncio.sleep(0.2)
        await asyncio.sleep(1.0)  # the old server, gone, removed no socket of the new one's
        assert socket.exists() and len(_redis_servers(socket)) == 1 and old not in _redis_servers(socket)
        assert await _deep_health(second.url) == 200
