"""Nodes sharing Redis must share ``storage.data_dir`` (issue 16): real `vezastream serve` processes on one Redis."""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import time
from pathlib import Path

import contextlib
import secrets

import pytest
import redis.asyncio as aioredis

from servers import Server, free_port, server_env
from tests.redis_topologies import RedisCluster
from vezastream.config import ConfigError
from vezastream.http.app import engine_key
from vezastream.testing import running_app

FIX = 'mount the same folder at storage.data_dir on every node, or use storage.staging = "sink" with the S3 sink'


def node(tmp_path: Path, name: str, base: dict[str, str], data: str, *args: str) -> Server:
    """A `vezastream serve` with ``base``'s Redis and key prefix, its data in ``tmp_path/data``, its own port."""
    cwd = tmp_path / name
    cwd.mkdir()
    env = {**base, "VEZASTREAM_STORAGE__DATA_DIR": str(tmp_path / data), "VEZASTREAM_SERVER__PORT": str(free_port())}
    return Server(env, cwd, *args)


async def exits(server: Server, timeout: float = 30) -> int | None:
    """The process's exit status once it has stopped, or None if it is still running (and ready) after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and server.proc.poll() is None:
        await asyncio.sleep(0.1)
    return server.proc.poll()


async def heartbeats(redis_url: str, prefix: str) -> list[bytes]:
    client = aioredis.from_url(redis_url)
    try:
        return [k async for k in client.scan_iter(f"{prefix}:node:*")]
    finally:
        await client.aclose()


@pytest.mark.slow
@pytest.mark.parametrize("workers", ["1", "2"])
async def test_a_node_with_another_data_dir_refuses_to_start(tmp_path, redis_url, workers):
    """operations.md: a configuration error is one line and exit status 2, also with --workers N
    (where the check runs in each worker)."""
    base = server_env(tmp_path, redis_url)
    first = node(tmp_path, "a", base, "data-a")
    try:
        await first.wait_ready()
        second = node(tmp_path, "b", base, "data-b", "--workers", workers)
        try:
            status = await exits(second)
        finally:
            second.kill()
        log = (tmp_path / "b" / "server.log").read_text()
        assert status == 2, log[-2000:]
        lines = [line for line in log.splitlines() if "data_dir" in line]
        # One line; with --workers N, each worker that met the refusal before it was stopped says it.
        assert 1 <= len(lines) <= int(workers) and len(set(lines)) == 1, log[-2000:]
        assert FIX in lines[0] and "Traceback" not in log, log[-2000:]
        if workers != "1":  # then the parent's lines: the worker that exited, and its own stop
            assert "event=worker_exited" in log and "event=stopped" in log, log[-2000:]
        assert first.proc.poll() is None  # the node already running is untouched
    finally:
        first.kill(signal.SIGTERM)


async def listening_line(log: Path, timeout: float = 10) -> str:
    """The server's `listening` log line (text format), once written."""
    deadline = time.monotonic() + timeout
    while not (lines := [line for line in log.read_text().splitlines() if "event=listening" in line]):
        assert time.monotonic() < deadline, log.read_text()[-2000:]
        await asyncio.sleep(0.1)
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.slow
async def test_the_refusal_names_a_node_that_its_listening_line_shows(tmp_path, redis_url):
    """The node id a refusal names is one an operator can find: the running node's `listening` line
    carries it, with its host; and operations.md's sample is the message as it is printed (one line,
    a 16-digit id)."""
    base = server_env(tmp_path, redis_url)
    first = node(tmp_path, "a", base, "data-a")
    try:
        await first.wait_ready()
        fields = dict(re.findall(r"(\w+)=(\S+)", await listening_line(tmp_path / "a" / "server.log")))
        assert re.fullmatch(r"[0-9a-f]{16}", fields.get("node", "")) and fields.get("host") == socket.gethostname(), \
            fields
        second = node(tmp_path, "b", base, "data-b")
        try:
            status = await exits(second)
        finally:
            second.kill()
    finally:
        first.kill(signal.SIGTERM)
    log = (tmp_path / "b" / "server.log").read_text()
    assert status == 2, log[-2000:]
    (refusal,) = [line for line in log.splitlines() if "data_dir" in line]
    assert f"(e.g. node {fields['node']}, " in refusal, refusal
    docs = (Path(__file__).parents[2] / "docs" / "operations.md").read_text()
    (sample,) = [line.strip() for line in docs.splitlines()
                 if line.strip().startswith("vezastream: config error: storage.data_dir: ")]
    assert re.fullmatch(re.escape(sample).replace("3f0c9a1e5b7d2468", "[0-9a-f]{16}"), refusal), (sample, refusal)


@pytest.mark.slow
async def test_nodes_sharing_the_data_dir_both_run(tmp_path, redis_url):
    base = server_env(tmp_path, redis_url)
    first, second = node(tmp_path, "a", base, "data"), node(tmp_path, "b", base, "data")
    try:
        await asyncio.gather(first.wait_ready(), second.wait_ready())
        assert len(await heartbeats(redis_url, base["VEZASTREAM_REDIS__KEY_PREFIX"])) == 2
    finally:
        first.kill(signal.SIGTERM)
        second.kill(signal.SIGTERM)
    assert first.proc.returncode == 0 and second.proc.returncode == 0
    # operations.md: a clean stop takes a node's heartbeat away at once (not 5 s later).
    assert await heartbeats(redis_url, base["VEZASTREAM_REDIS__KEY_PREFIX"]) == []


@pytest.mark.slow
async def test_a_dead_node_does_not_block_another_data_dir_once_its_heartbeat_lapsed(tmp_path, redis_url):
    base = server_env(tmp_path, redis_url)
    prefix = base["VEZASTREAM_REDIS__KEY_PREFIX"]
    first = node(tmp_path, "a", base, "data-a")
    await first.wait_ready()
    first.kill(signal.SIGKILL)  # no clean stop: its heartbeat stays until it expires
    deadline = time.monotonic() + 15
    while await heartbeats(redis_url, prefix):
        assert time.monotonic() < deadline, "the dead node's heartbeat did not expire"
        await asyncio.sleep(0.2)
    second = node(tmp_path, "b", base, "data-b")
    try:
        await second.wait_ready()
    finally:
        second.kill(signal.SIGTERM)
    assert second.proc.returncode == 0


async def test_the_guard_sees_every_primary_of_a_redis_cluster(tmp_path, make_settings, redis_cluster: RedisCluster):
    """Heartbeats live on every master of a Cluster: the start-up check asks them all, one slot per command."""
    shared = {"redis.url": "", "redis.mode": "cluster", "redis.cluster_nodes": [n.address for n in redis_cluster.nodes[:2]],
              "redis.key_prefix": "t" + secrets.token_hex(4)}
    async with contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(running_app(make_settings(**shared))) for _ in range(6)]
        store = clients[0].app[engine_key].store
        live = await store.beats()
        assert set(live) == {c.app[engine_key].leases.node for c in clients}  # six keys: on more than one master, mostly
        with pytest.raises(ConfigError, match="mount the same folder at storage.data_dir"):
            async with running_app(make_settings(**shared, **{"storage.data_dir": str(tmp_path / "other")})):
                pass
