"""Shared fixtures: a real redis-server, settings in a temp folder, an app client."""

from __future__ import annotations

import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from vezastream.app import create_app
from vezastream.config import Settings, load_settings
from vezastream.redis_server import redis_binary


def _wait_for_redis(sock: Path, proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"redis-server exited with {proc.returncode}")
        try:
            if sock.exists() and redis.Redis(unix_socket_path=str(sock)).ping():
                return
        except redis.ConnectionError:
            pass
        time.sleep(0.05)
    raise RuntimeError("redis-server did not start")


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One real redis-server for the session, on a unix socket; stopped by PID."""
    folder = tmp_path_factory.mktemp("redis")
    sock = folder / "redis.sock"
    proc = subprocess.Popen(
        [redis_binary(), "--port", "0", "--unixsocket", str(sock), "--dir", str(folder),
         "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for_redis(sock, proc)
        yield f"unix://{sock}"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def make_settings(tmp_path: Path, redis_url: str):
    """Settings for one test: its own data folder and Redis key prefix."""

    def make(**overrides: Any) -> Settings:
        base: dict[str, Any] = {
            "storage.data_dir": str(tmp_path / "data"),
            "redis.url": redis_url,
            "redis.key_prefix": "t" + secrets.token_hex(4),
            "limits.min_chunk_size": 1,
            "gc.enabled": False,
            "log.format": "text",
        }
        base.update(overrides)
        return load_settings(None, environ={}, overrides=base)

    return make


@pytest.fixture
def settings(make_settings) -> Settings:
    return make_settings()


@pytest.fixture
async def make_client(aiohttp_client):
    """Start the real app (real Redis, real sink) and return a test client."""

    async def make(settings: Settings, **kwargs: Any):
        return await aiohttp_client(create_app(settings, **kwargs))

    return make


@pytest.fixture
async def client(make_client, settings):
    return await make_client(settings)
