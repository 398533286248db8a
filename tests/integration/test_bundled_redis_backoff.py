"""The bundled Redis's restart delays, as docs/configuration.md ("Redis") states them: a server that
dies is started again at once if it had run 30 s, else after a delay that grows from 0.25 s to 5 s
while it keeps dying.

A real ``redis-server`` is killed (SIGKILL, by its PID) and :class:`BundledRedis` supervises it as
the app does (``tend()``). Only its clock is ours: the module's ``time`` is swapped for one whose
``monotonic()`` runs ahead when the test says so, so "it ran 30 s" and "the 5 s wait is over" take
no real time. What an operator reads is checked: the ``redis-died`` log line's ``restart_in_s``,
and whether a new redis-server process is there.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path

import pytest
import redis

from vezastream.state import redis_server
from vezastream.state.redis_server import BundledRedis


class Clock:
    """``time`` as redis_server.py uses it, with ``monotonic()`` moved forward by :meth:`advance`."""

    def __init__(self) -> None:
        self.ahead = 0.0

    def monotonic(self) -> float:
        return time.monotonic() + self.ahead

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def advance(self, seconds: float) -> None:
        self.ahead += seconds


@pytest.fixture
def clock(monkeypatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(redis_server, "time", fake)
    return fake


@pytest.fixture
def bundled(tmp_path: Path, clock: Clock):
    server = BundledRedis(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        last = server.proc.pid if server.proc else None
        server.stop()
        if last is not None:
            assert not Path(f"/proc/{last}").exists()  # stopped by its PID, and reaped


def answers(server: BundledRedis) -> bool:
    client = redis.Redis(unix_socket_path=str(server.socket), socket_timeout=1)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def kill_and_see_the_death(server: BundledRedis, caplog) -> tuple[int, float]:
    """SIGKILL the running server once it answers; tend until the supervisor logs the death.
    Returns the dead PID and the logged ``restart_in_s``."""
    deadline = time.monotonic() + 10
    while not answers(server):
        assert time.monotonic() < deadline, "the bundled redis-server never answered"
        time.sleep(0.02)
    dead = server.proc.pid
    caplog.clear()
    os.kill(dead, signal.SIGKILL)
    while not (died := [r for r in caplog.records if getattr(r, "event", None) == "redis-died"]):
        assert time.monotonic() < deadline, "the supervisor never saw the death"
        time.sleep(min(server.tend(), 0.02))
    [record] = died
    assert record.pid == dead
    return dead, record.restart_in_s


def restarted_within(server: BundledRedis, dead: int, seconds: float) -> bool:
    """Tend for up to ``seconds`` of real time; whether a new redis-server was started meanwhile."""
    deadline = time.monotonic() + seconds
    while True:
        server.tend()
        if server.proc.pid != dead:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)


def test_a_server_that_keeps_dying_waits_longer_each_time_up_to_5_s(bundled, clock, caplog):
    """0.25 s, 0.75 s, 1.75 s, 3.75 s, then 5 s and 5 s again: never longer. Before its delay is
    over nothing is started; once the (fake) clock has passed it, the next look starts it."""
    caplog.set_level(logging.WARNING, logger="vezastream.redis")
    delays = []
    for _ in range(6):
        dead, delay = kill_and_see_the_death(bundled, caplog)
        delays.append(delay)
        assert bundled.state == "restarting"
        assert not restarted_within(bundled, dead, 0.1), "started again before its delay was over"
        clock.advance(delay)
        assert restarted_within(bundled, dead, 1), "not started again once its delay was over"
        assert bundled.state == "running" and not Path(f"/proc/{dead}").exists()
    assert delays == [0.25, 0.75, 1.75, 3.75, 5.0, 5.0]
    assert bundled.restarts == 6


def test_a_server_that_had_run_30_s_is_started_again_at_once(bundled, clock, caplog):
    """Dying young twice makes the next wait 1.75 s; having run 29 s still counts as young. Having
    run 30 s, it is started again at the supervisor's next look, and the delays start over."""
    caplog.set_level(logging.WARNING, logger="vezastream.redis")
    for expected in (0.25, 0.75):
        dead, delay = kill_and_see_the_death(bundled, caplog)
        assert delay == expected
        clock.advance(delay)
        assert restarted_within(bundled, dead, 1)

    clock.advance(29)  # it has run 29 s: not long enough
    dead, delay = kill_and_see_the_death(bundled, caplog)
    assert delay == 1.75
    clock.advance(delay)
    assert restarted_within(bundled, dead, 1)

    clock.advance(30)  # it has run 30 s
    dead, delay = kill_and_see_the_death(bundled, caplog)
    assert delay == 0
    # The look that saw the death started it again: the clock is not moved on.
    assert bundled.proc.pid != dead and bundled.state == "running"
    assert restarted_within(bundled, dead, 0)
    # The run of young deaths starts over: the next young death waits 0.25 s again.
    dead, delay = kill_and_see_the_death(bundled, caplog)
    assert delay == 0.25
