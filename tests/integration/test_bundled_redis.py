"""The bundled Redis is supervised: killed, it is restarted, and readiness (`/v1/health/deep`) says so
while it is down, with no server path in what it shows. Liveness (`/v1/health`) never asks Redis."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest
import redis

from helpers import create, put_chunk
from vezastream.state.redis_server import BundledRedis


def redis_pid(redis_dir: Path, timeout: float = 10) -> int:
    """The PID of the redis-server this test process started in ``redis_dir`` (from /proc)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for task in Path("/proc/self/task").iterdir():
            for pid in (task / "children").read_text().split():
                try:
                    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                except OSError:
                    continue
                if b"redis-server" in cmdline and str(redis_dir).encode() in cmdline:
                    return int(pid)
        time.sleep(0.05)
    raise AssertionError(f"no redis-server running in {redis_dir}")


def assert_no_path(text: str, *paths: Path) -> None:
    for path in paths:
        assert str(path) not in text, text
    assert "Traceback" not in text and "Errno" not in text, text


async def test_killed_bundled_redis_is_restarted_and_readiness_reports_the_outage(make_client, make_settings,
                                                                                  tmp_path):
    settings = make_settings(**{"redis.url": ""})
    client = await make_client(settings)
    up = await create(client, total_size=8, chunk_size=4)
    uid = up["upload_id"]
    await put_chunk(client, uid, 1, b"abcd")  # acknowledged before the kill
    deep = await client.get("/v1/health/deep")
    assert deep.status == 200 and (await deep.json())["redis"]["mode"] == "bundled"

    first = redis_pid(settings.storage.redis_dir)
    os.kill(first, signal.SIGKILL)
    killed_at = time.monotonic()
    seen_down = None
    while time.monotonic() - killed_at < 5 and seen_down is None:
        assert (await client.get("/v1/health")).status == 200  # liveness: cheap, no Redis
        resp = await client.get(f"/v1/uploads/{uid}")
        if resp.status != 200:  # during the outage: 503 problem+json with Retry-After, never a 500
            assert resp.status == 503 and resp.content_type == "application/problem+json", await resp.text()
            assert int(resp.headers["Retry-After"]) >= 1
        deep = await client.get("/v1/health/deep")
        if deep.status == 503:
            seen_down = await deep.json()
            assert_no_path(await deep.text(), tmp_path)
    assert seen_down is not None, "/v1/health/deep never reported the outage"
    assert seen_down["status"] == "fail" and seen_down["checks"]["redis"]["ok"] is False
    assert seen_down["checks"]["redis"]["reason"] in ("unreachable", "loading", "timeout")
    assert seen_down["checks"]["sink:local"]["ok"] is True

    while (await client.get("/v1/health/deep")).status != 200:  # restarted, and the client reconnects
        assert time.monotonic() - killed_at < 10, "the bundled Redis did not come back within 10 s"
        await asyncio.sleep(0.05)
    second = redis_pid(settings.storage.redis_dir)
    assert second != first
    deep = await (await client.get("/v1/health/deep")).json()
    assert deep["redis"]["state"] == "running" and deep["redis"]["restarts"] >= 1
    # Nothing acknowledged is lost, and the upload goes on.
    state = await (await client.get(f"/v1/uploads/{uid}")).json()
    assert state["chunks_received"] == [1]
    await put_chunk(client, uid, 2, b"efgh")
    resp = await client.post(f"/v1/uploads/{uid}/complete")
    assert resp.status == 200, await resp.text()


async def test_health_deep_shows_no_server_path(make_client, make_settings, tmp_path):
    """A failing check names its component and a reason class; the detail (paths and all) goes to the log."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    broken = await make_client(make_settings(**{"sinks.local.directory": str(blocker / "files")}))
    deep = await broken.get("/v1/health/deep")
    body = await deep.json()
    assert deep.status == 503 and body["checks"]["redis"] == {"ok": True}
    assert body["checks"]["sink:local"]["ok"] is False and body["checks"]["sink:local"]["reason"] == "not-a-folder"
    assert body["redis"] == {"mode": "external"}
    assert_no_path(await deep.text(), tmp_path, blocker)


@pytest.mark.slow
def test_supervisor_restarts_with_growing_delay_and_keeps_what_was_acknowledged(tmp_path):
    bundled = BundledRedis(tmp_path / "redis")
    bundled.start()
    try:
        r = redis.Redis(unix_socket_path=str(bundled.socket), socket_timeout=5)
        delays = []
        for i in range(3):
            r.set(f"k{i}", "acknowledged")
            dead = bundled.proc.pid
            os.kill(dead, signal.SIGKILL)
            killed_at = time.monotonic()
            while bundled.proc.pid == dead:
                assert time.monotonic() - killed_at < 10
                time.sleep(bundled.tend())
            delays.append(time.monotonic() - killed_at)
            while True:  # the restarted server answers, and holds every acknowledged write
                try:
                    assert [r.get(f"k{j}") for j in range(i + 1)] == [b"acknowledged"] * (i + 1)
                    break
                except redis.ConnectionError:
                    assert time.monotonic() - killed_at < 10
                    time.sleep(0.02)
        assert bundled.restarts == 3 and bundled.state == "running"
        # It keeps dying young: 0.25 s, then 0.75 s, then 1.75 s before each new start.
        assert delays[0] >= 0.25 and delays[1] >= 0.75 and delays[2] >= 1.75, delays
        r.close()
    finally:
        last = bundled.proc.pid
        bundled.stop()
    assert not Path(f"/proc/{last}").exists()  # stopped by its PID (and reaped)
    assert bundled.tend() > 0 and bundled.proc is None  # a stopped server is not started again
