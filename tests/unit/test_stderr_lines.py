"""logs.StderrLines on a real pipe: a reader that stops taking lines never makes a caller wait;
what was held comes out in order once it reads again, and what was dropped is counted there."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import select
import socket
import time
from collections.abc import Iterator

import pytest

from vezastream.logs import JSONFormatter, StderrLines


@pytest.fixture(params=["pipe", "socket"])
def pipe(request) -> Iterator[tuple[int, int]]:
    """stderr as a supervisor leaves it (a pipe), or as journald takes it (a Unix stream socket),
    with small buffers (about a hundred lines fill them): its read and write ends."""
    if request.param == "pipe":
        r, w = os.pipe()
        fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, 8192)
        ends = [r, w]
    else:
        reader, writer = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        writer.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        ends = [reader.detach(), writer.detach()]
    try:
        yield ends[0], ends[1]
    finally:
        for fd in ends:
            os.close(fd)


def handler_on(fd: int, held: int) -> StderrLines:
    handler = StderrLines(fd, held)
    handler.setFormatter(JSONFormatter())
    return handler


def emit(handler: StderrLines, n: int, first: int = 0) -> float:
    """``n`` lines ("line 0", "line 1"...): the longest a caller waited, in seconds."""
    slowest = 0.0
    for i in range(first, first + n):
        started = time.monotonic()
        handler.handle(logging.makeLogRecord({"name": "t", "levelno": 20, "levelname": "INFO", "msg": f"line {i}"}))
        slowest = max(slowest, time.monotonic() - started)
    return slowest


def read_lines(fd: int, handler: StderrLines, timeout: float = 5.0) -> list[dict]:
    """The JSON lines read from ``fd`` until ``handler`` holds none and the pipe is empty."""
    data, deadline = b"", time.monotonic() + timeout
    while time.monotonic() < deadline:
        if select.select([fd], [], [], 0.05)[0]:
            data += os.read(fd, 1 << 16)
        elif handler.thread is None:
            return [json.loads(line) for line in data.split(b"\n")[:-1]]
    raise AssertionError(f"the handler still holds lines after {timeout} s")


def test_lines_go_to_the_pipe_at_once_while_it_has_room(pipe):
    r, w = pipe
    handler = handler_on(w, held=10)
    emit(handler, 3)
    assert handler.thread is None  # written by the caller: in the pipe before handle() returned
    assert [line["msg"] for line in read_lines(r, handler)] == ["line 0", "line 1", "line 2"]


def test_a_reader_that_stops_makes_no_caller_wait_and_then_gets_every_held_line_in_order(pipe):
    r, w = pipe
    handler = handler_on(w, held=1000)
    assert emit(handler, 500) < 0.5  # about 4 KiB fill the pipe; the rest are held
    assert handler.backlog or handler.writing
    lines = read_lines(r, handler)
    assert [line["msg"] for line in lines] == [f"line {i}" for i in range(500)]
    handler.flush()
    assert handler.thread is None  # the writer ends once nothing is held


def test_lines_past_the_held_ones_are_dropped_and_counted_where_they_were(pipe):
    r, w = pipe
    handler = handler_on(w, held=50)
    assert emit(handler, 300) < 0.5
    got = read_lines(r, handler)
    notices = [line for line in got if line.get("event") == "log_lines_dropped"]
    assert notices and all(n["level"] == "warning" for n in notices), got
    kept = [line["msg"] for line in got if line not in notices]
    assert kept == sorted(kept, key=lambda msg: int(msg.split()[1]))  # in order
    assert kept[:50] == [f"line {i}" for i in range(50)]  # those written at once and the first held: none skipped
    assert len(kept) + sum(n["dropped"] for n in notices) == 300  # every line either came or is counted
    # Each notice comes where its lines were dropped: after the line before the first of them.
    for n in notices:
        before = got[got.index(n) - 1]["msg"]
        after = next((line["msg"] for line in got[got.index(n) + 1:] if line not in notices), "line 300")
        assert int(after.split()[1]) - int(before.split()[1]) - 1 == n["dropped"], (before, n, after)
    emit(handler, 1, first=300)
    assert [line["msg"] for line in read_lines(r, handler)] == ["line 300"]  # and it goes on


def test_flush_waits_for_a_stopped_reader_no_longer_than_it_is_told(pipe):
    r, w = pipe
    handler = handler_on(w, held=1000)
    emit(handler, 500)
    started = time.monotonic()
    handler.flush(timeout=0.3)
    assert 0.25 < time.monotonic() - started < 2
    assert handler.backlog or handler.writing  # still held: nobody read
    started = time.monotonic()
    handler.flush(timeout=0.3)  # the exit handlers' flush after serve's own: no second wait
    assert time.monotonic() - started < 0.1


def test_a_file_takes_every_line_at_once(tmp_path):
    with open(tmp_path / "log", "wb") as f:
        handler = handler_on(f.fileno(), held=1)
        emit(handler, 100)  # a file never waits for a reader: no line held, none dropped
        assert handler.thread is None and not handler.dropped
    assert len((tmp_path / "log").read_text().splitlines()) == 100
