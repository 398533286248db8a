"""An acknowledged body is on disk: the sync comes before the answer, seen by ``strace`` on a real server.

The crash drills kill the process, not the machine: the kernel keeps what was
written, so they would pass without a single fsync. What power loss would lose
is shown here instead, on the system calls themselves: between one answer and
the next ``2xx`` to a chunk ``PUT``, a tus ``PATCH`` or a ``complete``, the
server must have synced a file under its data folder (``fdatasync``/``fsync``
returned, or handed to the kernel's AIO as an ``FDSYNC``/``FSYNC`` or a
``RWF_DSYNC`` write, whose completion the answer waits for). The same run with
``storage.durable = false`` finds no such sync, so the check can fail.
Needs ``strace`` (``scripts/test`` installs Debian's) and the right to trace
the server (the same user, or root).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from servers import Server, server_env
from tus_helpers import TUS

MiB = 1024 * 1024
SMALL, LARGE = 256 * 1024, 4 * MiB + 100  # aiohttp's body path, and the zero-copy one (bodies of 1 MiB or more)
SYSCALLS = "fdatasync,fsync,io_submit,pwritev2,write,writev,sendmsg,sendto"
RESUMED = re.compile(r"^(\d+) +[\d.]+ <\.\.\. (\w+) resumed>.*= 0")
CALL = re.compile(r"^(\d+) +[\d.]+ (\w+)\((.*)$")
ANSWER = re.compile(r'^\d+<TCP:\[127\.0\.0\.1:(\d+)->.*?"HTTP/1\.1 (\d{3})')
FILE = re.compile(r"(?:^|aio_fildes=)\d+<(/[^>]*)>")
IN_AIO = re.compile(r"IOCB_CMD_FDSYNC|IOCB_CMD_FSYNC|RWF_DSYNC")


@dataclass
class Trace:
    """What a traced run did: each answer's status, with the files synced since the answer before it."""

    answers: list[tuple[int, list[str]]]


def strace_or_skip() -> str:
    found = shutil.which("strace")
    if found is None:
        message = "strace is not installed (scripts/test installs Debian's as root)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


def parse(lines: list[str], port: int) -> Trace:
    """Answers on the server's port in order; a sync counts once it returned (or reached the AIO)."""
    answers: list[tuple[int, list[str]]] = []
    synced: list[str] = []
    pending: dict[str, str] = {}  # thread id: the file of its sync still running
    for line in lines:
        if resumed := RESUMED.match(line):
            if resumed.group(2) in ("fdatasync", "fsync") and resumed.group(1) in pending:
                synced.append(pending.pop(resumed.group(1)))
            continue
        call = CALL.match(line)
        if not call:
            continue
        thread, name, rest = call.groups()
        if name in ("fdatasync", "fsync") and (target := FILE.match(rest)):
            if "<unfinished ...>" in rest:
                pending[thread] = target.group(1)
            elif rest.rstrip().endswith("= 0"):
                synced.append(target.group(1))
        elif name in ("io_submit", "pwritev2") and IN_AIO.search(rest):
            synced += [m.group(1) for m in FILE.finditer(rest)]
        elif (answer := ANSWER.match(rest)) and int(answer.group(1)) == port:
            answers.append((int(answer.group(2)), synced))
            synced = []
    return Trace(answers)


async def traced(tmp_path: Path, durable: bool) -> tuple[Trace, Path, list[str]]:
    """Two native uploads (2 chunks each) and one tus upload (2 PATCHes) against a traced ``vezastream serve``."""
    strace = strace_or_skip()
    env = server_env(tmp_path, STORAGE__DURABLE="true" if durable else "false")
    server = Server(env, tmp_path)
    out = tmp_path / "strace.txt"
    tracer = None
    try:
        await server.wait_ready()
        tracer = subprocess.Popen([strace, "-f", "-qq", "-ttt", "-yy", "-s", "24", "-e", f"trace={SYSCALLS}",
                                   "-o", str(out), "-p", str(server.proc.pid)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_traced(server.proc.pid, tracer)
        sent = []
        async with aiohttp.ClientSession(server.url) as s:
            for chunk in (SMALL, LARGE):  # two chunks each: that size, then 10 bytes
                body = {"filename": "a.bin", "total_size": chunk + 10, "chunk_size": chunk}
                async with s.post("/v1/uploads", json=body) as r:
                    assert r.status == 201, await r.text()
                    uid = (await r.json())["upload_id"]
                sent.append("create")
                for n, size in ((1, chunk), (2, 10)):
                    async with s.put(f"/v1/uploads/{uid}/chunks/{n}", data=os.urandom(size)) as r:
                        assert r.status == 201, await r.text()
                    sent.append("chunk")
                async with s.post(f"/v1/uploads/{uid}/complete") as r:
                    assert r.status == 200, await r.text()
                sent.append("complete")
            async with s.post("/files/", headers={**TUS, "Upload-Length": str(SMALL + LARGE)}) as r:
                assert r.status == 201, await r.text()
                path = r.headers["Location"]
            sent.append("create")
            offset = 0
            for size in (SMALL, LARGE):  # the second completes the upload
                headers = {**TUS, "Upload-Offset": str(offset), "Content-Type": "application/offset+octet-stream"}
                async with s.patch(path, data=os.urandom(size), headers=headers) as r:
                    assert r.status == 204, await r.text()
                offset += size
                sent.append("patch")
        time.sleep(0.2)  # the last lines reach strace's file
    finally:
        if tracer is not None and tracer.poll() is None:
            tracer.send_signal(signal.SIGINT)
            tracer.wait(10)
        server.kill(signal.SIGTERM)
    return parse(out.read_text().splitlines(), server.port), Path(env["VEZASTREAM_STORAGE__DATA_DIR"]), sent


def wait_traced(pid: int, tracer: subprocess.Popen[bytes], timeout: float = 10) -> None:
    """Until every thread of ``pid`` is traced (or skip: no right to trace here)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if tracer.poll() is not None:
            pytest.skip(f"strace cannot trace the server: {tracer.stderr.read().decode()[-300:]}")  # type: ignore[union-attr]
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
        if all(f"TracerPid:\t{tracer.pid}\n" in (task / "status").read_text() for task in tasks):
            return
        time.sleep(0.05)
    pytest.fail("strace did not attach in time")


@pytest.mark.parametrize("durable", [True, False], ids=["durable", "not-durable"])
async def test_every_acknowledged_body_was_synced_before_its_answer(tmp_path, durable):
    trace, data_dir, sent = await traced(tmp_path, durable)
    assert [status for status, _ in trace.answers] == [201, 201, 201, 200] * 2 + [201, 204, 204], trace.answers
    # What each answer must follow: the body's data file synced; at completion, the stored object's.
    where = {"chunk": f"{data_dir}/chunks/", "patch": f"{data_dir}/chunks/", "complete": f"{data_dir}/files/"}
    for what, (status, synced) in zip(sent, trace.answers):
        if what in where:
            ours = [f for f in synced if f.startswith(where[what])]
            # storage.durable = false (speed over durability) syncs nothing: the check sees the difference.
            assert bool(ours) == durable, (what, status, synced)
