"""Fault drill: a `vezastream serve` whose log reader stops reading goes on answering
(docs/operations.md, "Logs"; docs/reliability.md).

Its stderr is a pipe that nobody reads for a while, as a supervisor or a container's log driver
that stalls would leave it: the pipe's 64 KiB fill with a few hundred request lines. Requests
and uploads go on all the same; the lines past ``log.held_lines`` are dropped, and once the pipe
is read again every other line comes, in order, with a warning that counts the dropped ones.
"""

from __future__ import annotations

import json
import os
import select
import signal
import time

import aiohttp
import pytest

import servers
from vezastream.logs import FLUSH_WAIT

pytestmark = [pytest.mark.slow, pytest.mark.drill]

#: Requests made while nobody reads the server's stderr: about five pipes' worth of lines.
REQUESTS = 1500
HELD = 300


def missing_id(i: int) -> str:
    """An upload id of the right shape that names no upload, numbered."""
    return f"Missing{i:015d}"


class PipeLines:
    """The JSON lines read from the read end ``fd`` of a server's stderr, as they come."""

    def __init__(self, fd: int) -> None:
        self.fd, self.data, self.lines = fd, b"", []

    def read_until(self, done, timeout: float = 20.0) -> None:
        """Read until ``done(self.lines)`` holds, or the pipe ends (its writer exited)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if select.select([self.fd], [], [], 0.1)[0]:
                chunk = os.read(self.fd, 1 << 16)
                *whole, self.data = (self.data + chunk).split(b"\n")
                self.lines += [json.loads(line) for line in whole if line.startswith(b"{")]
                if not chunk or done(self.lines):
                    return
        raise AssertionError(f"the lines did not come in {timeout} s: {self.data[-600:]!r}")


async def test_a_log_reader_that_stops_reading_holds_no_request_up_and_is_told_what_it_missed(
        tmp_path, redis_url, report):
    read_end, write_end = os.pipe()
    env = servers.server_env(tmp_path, redis_url, LOG__FORMAT="json", LOG__HELD_LINES=str(HELD))
    server = servers.Server(env, tmp_path, stderr=write_end)
    os.close(write_end)
    body = os.urandom(3 * 65536)
    try:
        await server.wait_ready()
        slowest = 0.0
        async with aiohttp.ClientSession(server.url, timeout=aiohttp.ClientTimeout(total=5)) as s:
            async with s.post("/v1/uploads", json={"filename": "a.bin", "total_size": len(body),
                                                   "chunk_size": 65536}) as r:
                uid = (await r.json())["upload_id"]
            for n in (1, 2, 3):
                async with s.put(f"/v1/uploads/{uid}/chunks/{n}", data=body[(n - 1) * 65536:n * 65536]) as r:
                    assert r.status == 201
            for i in range(REQUESTS):  # each a request line; before, the server stopped at about 300
                started = time.monotonic()
                async with s.get(f"/v1/uploads/{missing_id(i)}") as r:
                    assert r.status == 404
                slowest = max(slowest, time.monotonic() - started)
            async with s.post(f"/v1/uploads/{uid}/complete") as r:
                assert r.status == 200
            async with s.get(f"/v1/uploads/{uid}/content") as r:
                assert await r.read() == body
        assert slowest < 1.0, slowest

        pipe = PipeLines(read_end)
        pipe.read_until(lambda got: any(line.get("event") == "log_lines_dropped" for line in got))
        async with aiohttp.ClientSession(server.url) as s:  # read again: a new line comes at once
            async with s.get(f"/v1/uploads/{missing_id(REQUESTS)}") as r:
                assert r.status == 404
        pipe.read_until(lambda got: any(line.get("upload_id") == missing_id(REQUESTS) for line in got))
        server.kill(signal.SIGTERM)
        pipe.read_until(lambda got: False)  # to the pipe's end: the process has exited
    finally:
        server.kill()
        os.close(read_end)

    lines = pipe.lines
    events = [line.get("event") for line in lines]
    assert events.count("stopped") == 1 and events[-1] == "stopped"  # the lines at exit were written too
    numbered = [(i, line) for i, line in enumerate(lines) if line.get("upload_id", "").startswith("Missing")]
    notices = [(i, line) for i, line in enumerate(lines) if line.get("event") == "log_lines_dropped"]
    assert notices, "no line was dropped: the test held fewer lines than the pipe takes"
    assert all(line["level"] == "warning" for _, line in notices)
    # Every request either has its line, in order, or is counted where its line is missing; the
    # last count holds the completion's lines as well, which came after the numbered requests.
    seen = [int(line["upload_id"][len("Missing"):]) for _, line in numbered]
    assert seen == sorted(seen) and seen[0] == 0 and seen[-1] == REQUESTS  # the last: made once read again
    assert len(seen) - 1 >= HELD  # at least the held ones came
    for k, (at, notice) in enumerate(notices):
        before = max(n for (i, _), n in zip(numbered, seen) if i < at)
        after = min(n for (i, _), n in zip(numbered, seen) if i > at)
        if k < len(notices) - 1:
            assert after - before - 1 == notice["dropped"], (before, notice, after)
        else:
            assert after - before - 1 < notice["dropped"], (before, notice, after)
    report("log reader stopped", requests=REQUESTS, held_lines=HELD, slowest_request_s=round(slowest, 3),
           upload_identical=True, lines_read=len(lines), lines_dropped=sum(n["dropped"] for _, n in notices),
           drop_notices=len(notices), stopped_line_written=True)


@pytest.mark.parametrize("workers", [1, 2])
async def test_a_server_whose_log_reader_never_comes_back_still_stops(tmp_path, redis_url, report, workers):
    """SIGTERM with lines held: each process gives them FLUSH_WAIT, then exits without them (with
    ``--workers``, the workers, then the parent)."""
    read_end, write_end = os.pipe()
    env = servers.server_env(tmp_path, redis_url, LOG__FORMAT="json", LOG__HELD_LINES=str(HELD),
                             SERVER__SHUTDOWN_TIMEOUT="1")
    server = servers.Server(env, tmp_path, "--workers", str(workers), stderr=write_end)
    os.close(write_end)
    try:
        await server.wait_ready()
        async with aiohttp.ClientSession(server.url, timeout=aiohttp.ClientTimeout(total=5)) as s:
            for i in range(REQUESTS // 3):  # the pipe full, lines held
                async with s.get(f"/v1/uploads/{missing_id(i)}") as r:
                    assert r.status == 404
        started = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        exit_status = server.proc.wait(30)
        took = time.monotonic() - started
    finally:
        server.kill()
        os.close(read_end)
    bound = FLUSH_WAIT * (2 if workers > 1 else 1) + 5
    assert exit_status == 0
    assert FLUSH_WAIT <= took < bound, took  # before, it never exited: its "stopping" line waited
    report(f"log reader gone at stop, workers={workers}", held_lines=HELD, exit_status=exit_status,
           exit_s=round(took, 2), bound_s=bound)
