"""`vezastream serve` as a child process, for the tests and drills that need a real server.

Every process is started on a free port of 127.0.0.1 and stopped by its PID.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import aiohttp
from launchers import free_port  # noqa: F401  (re-exported for the tests)

VEZASTREAM = [sys.executable, "-m", "vezastream.cli"]
T = TypeVar("T")


def server_env(tmp_path: Path, redis_url: str | None = None, **settings: str) -> dict[str, str]:
    """The environment of a `vezastream serve` on a free port, its data under ``tmp_path``, GC off.

    ``redis_url``: a shared Redis (the test gets its own key prefix); without it the
    server starts its bundled Redis. ``settings``: more keys, as ``SERVER__BODY_IDLE_TIMEOUT="2"``.
    """
    env = {
        "VEZASTREAM_STORAGE__DATA_DIR": str(tmp_path / "data"),
        "VEZASTREAM_SERVER__PORT": str(free_port()),
        "VEZASTREAM_LIMITS__MIN_CHUNK_SIZE": "1",
        "VEZASTREAM_GC__ENABLED": "false",
        "VEZASTREAM_LOG__FORMAT": "text",
    }
    if redis_url:
        env.update({"VEZASTREAM_REDIS__URL": redis_url, "VEZASTREAM_REDIS__KEY_PREFIX": "t" + secrets.token_hex(4)})
    env.update({f"VEZASTREAM_{key}": value for key, value in settings.items()})
    return env


def run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(VEZASTREAM + args, env={**os.environ, **env}, cwd=cwd, capture_output=True,
                          text=True, timeout=60)


class Server:
    """`vezastream serve` as a child process, stopped by its PID."""

    def __init__(self, env: dict[str, str], cwd: Path, *args: str, stderr: int | None = None) -> None:
        """``stderr``: a descriptor for the server's log lines (default: ``server.log`` in ``cwd``)."""
        self.port = int(env["VEZASTREAM_SERVER__PORT"])
        self.proc = subprocess.Popen(VEZASTREAM + ["serve", *args], env={**os.environ, **env}, cwd=cwd,
                                     stdout=subprocess.DEVNULL,
                                     stderr=open(cwd / "server.log", "ab") if stderr is None else stderr)
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = cwd / "server.log" if stderr is None else None

    async def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as s:
            while time.monotonic() < deadline:
                assert self.proc.poll() is None, "server exited"
                try:
                    async with s.get(self.url + "/v1/health/deep") as r:
                        if r.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
        raise TimeoutError("server did not start")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` and wait 30 s for the exit; a server still running then (its workers too) is
        SIGKILLed, not left behind, and the failure says where each process waited and how its log ended."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            tree = [self.proc.pid, *descendants(self.proc.pid)]
            where = {pid: _waiting_in(pid) for pid in tree}
            for pid in reversed(tree):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self.proc.wait(10)
            log = self.log.read_text(errors="replace")[-3000:] if self.log is not None else "(not kept)"
            raise AssertionError(f"the server did not stop within 30 s of {signal.Signals(sig).name}; "
                                 f"waiting in {where}; its log ends: {log}") from None


def descendants(pid: int) -> list[int]:
    """The processes ``pid`` started, and theirs (Linux ``/proc``)."""
    try:
        children = [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []
    return [found for child in children for found in (child, *descendants(child))]


def _waiting_in(pid: int) -> str:
    """Where a process waits: its state and kernel wait channel (``/proc``)."""
    try:
        state = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                     if line.startswith("State:"))
        return f"{state.split(None, 1)[1]}, {Path(f'/proc/{pid}/wchan').read_text() or '-'}"
    except (OSError, StopIteration):
        return "gone"


def gc_pass(env: dict[str, str], cwd: Path, scheduled: bool = False) -> subprocess.Popen:
    """A GC pass in a child process: `vezastream gc`, or (``scheduled``) a `vezastream serve` whose
    scheduled GC runs a pass a second after it starts."""
    if scheduled:
        return Server({**env, "VEZASTREAM_GC__ENABLED": "true", "VEZASTREAM_GC__INTERVAL": "1"}, cwd).proc
    return subprocess.Popen(VEZASTREAM + ["gc"], env={**os.environ, **env}, cwd=cwd,
                            stdout=subprocess.DEVNULL, stderr=open(cwd / "gc.log", "ab"))


def kill_mid_pass(proc: subprocess.Popen, left: Callable[[], T], before: T, delay: float) -> T:
    """SIGKILL ``proc`` ``delay`` s after what ``left()`` sees first differs from ``before`` (its GC
    pass began removing), or after 20 s; what ``left()`` sees once it is dead."""
    try:
        deadline = time.monotonic() + 20
        while left() == before and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        time.sleep(delay)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    return left()
