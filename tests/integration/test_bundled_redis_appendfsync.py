"""``redis.appendfsync``: the Redis that ``vezastream serve`` starts itself (``redis.url`` empty) keeps
its append-only file with the configured policy: "always" by default, "everysec" when set
(docs/configuration.md, "Redis"), with one process or ``--workers``, and again after the supervisor
restarted it."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import aiohttp
import pytest
import redis

import servers
from servers import Server


def bundled(tmp_path: Path) -> redis.Redis:
    """A client of the bundled Redis (its unix socket in ``<data_dir>/redis``)."""
    return redis.Redis(unix_socket_path=str(tmp_path / "data" / "redis" / "redis.sock"), decode_responses=True,
                       socket_timeout=5)


def policy_of(tmp_path: Path) -> dict[str, str]:
    with bundled(tmp_path) as r:
        return {**r.config_get("appendonly"), **r.config_get("appendfsync")}


async def upload_one(url: str) -> None:
    """One small upload, so the policy is the one the server's writes are made under."""
    async with aiohttp.ClientSession(url) as s:
        async with s.post("/v1/uploads", json={"filename": "a.bin", "total_size": 4, "chunk_size": 4}) as r:
            assert r.status == 201, await r.text()
            uid = (await r.json())["upload_id"]
        async with s.put(f"/v1/uploads/{uid}/chunks/1", data=b"abcd") as r:
            assert r.status == 201, await r.text()


@pytest.mark.parametrize("policy, workers", [(None, 1), ("everysec", 1), ("always", 2), ("everysec", 2)],
                         ids=["default", "everysec", "always-workers", "everysec-workers"])
async def test_the_bundled_redis_runs_with_the_configured_appendfsync(tmp_path, policy, workers):
    env = servers.server_env(tmp_path, **({"REDIS__APPENDFSYNC": policy} if policy else {}))
    server = Server(env, tmp_path, *(["--workers", str(workers)] if workers > 1 else []))
    try:
        await server.wait_ready()
        await upload_one(server.url)
        assert policy_of(tmp_path) == {"appendonly": "yes", "appendfsync": policy or "always"}
    finally:
        server.kill(signal.SIGTERM)
    assert server.proc.returncode == 0, (tmp_path / "server.log").read_text()


async def test_a_restarted_bundled_redis_keeps_the_policy(tmp_path):
    """The supervisor starts a Redis that died again, with the same policy."""
    server = Server(servers.server_env(tmp_path, REDIS__APPENDFSYNC="everysec"), tmp_path)
    pidfile = tmp_path / "data" / "redis" / "redis.pid"
    try:
        await server.wait_ready()
        assert policy_of(tmp_path)["appendfsync"] == "everysec"
        first = int(pidfile.read_text())
        os.kill(first, signal.SIGKILL)  # the bundled Redis, the server's child
        deadline = time.monotonic() + 10
        while True:
            assert time.monotonic() < deadline, "the bundled Redis was not restarted within 10 s"
            try:
                if int(pidfile.read_text()) != first and bundled(tmp_path).ping():
                    break
            except (OSError, ValueError, redis.RedisError):
                pass
            await asyncio.sleep(0.05)
        assert policy_of(tmp_path) == {"appendonly": "yes", "appendfsync": "everysec"}
        await upload_one(server.url)
    finally:
        server.kill(signal.SIGTERM)
