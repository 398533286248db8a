"""Benchmark: the CPU the event loop spends per Redis command sent through the batcher.

Run with the project's venv: ``python scripts/bench_batcher.py [rounds]``
(default 5). It starts a ``redis-server`` of its own (the binary the bundled
Redis uses) on a Unix socket in a temporary folder, loads a small Lua script
of the shape a chunk's register has (a hash written, given a time to live,
read back), and has 200 callers send 100 ``EVALSHA`` each through one
:class:`~vezastream.state.batching.CommandBatcher`, the way concurrent
requests do in W2. Each round prints this process's CPU (user + system) per
command and the commands per second; Redis's own CPU is not counted. Only
the client side of a command is measured here: whole W2 runs move by more
between runs than a change of a few microseconds per command.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import subprocess
import tempfile
import time
from pathlib import Path

import redis.asyncio as aioredis

from vezastream.state.batching import CommandBatcher
from vezastream.state.redis_server import redis_binary

CALLERS = 200
PER_CALLER = 100
SCRIPT = ("redis.call('HSET', KEYS[1], 'size', ARGV[1]); redis.call('EXPIRE', KEYS[1], 60); "
          "return {1, redis.call('HGET', KEYS[1], 'size'), 'stored'}")


async def _until_up(client: aioredis.Redis, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            await client.ping()
            return
        except (OSError, aioredis.ConnectionError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


async def measure(socket: Path, rounds: int) -> None:
    pool = aioredis.BlockingConnectionPool.from_url(f"unix://{socket}", max_connections=8, socket_timeout=30)
    client = aioredis.Redis.from_pool(pool)
    try:
        await _until_up(client)
        sha = await client.script_load(SCRIPT)
        batcher = CommandBatcher(client)

        async def caller(n: int) -> None:
            for i in range(PER_CALLER):
                await batcher.execute("EVALSHA", sha, 1, f"bench:{n}", i)

        commands = CALLERS * PER_CALLER
        for r in range(1, rounds + 1):
            cpu, wall = time.process_time(), time.perf_counter()
            await asyncio.gather(*(caller(n) for n in range(CALLERS)))
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            print(f"round {r}: {1e6 * cpu / commands:.2f} us of CPU per command, "
                  f"{commands / wall:,.0f} commands/s ({commands} commands, {CALLERS} callers)", flush=True)
        await batcher.aclose()
    finally:
        await client.aclose()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("rounds", nargs="?", type=int, default=5, help="rounds of 20,000 commands (default 5)")
    rounds = p.parse_args().rounds
    with tempfile.TemporaryDirectory(prefix="bench-batcher-") as folder:
        socket = Path(folder) / "redis.sock"
        server = subprocess.Popen([redis_binary(), "--port", "0", "--unixsocket", str(socket), "--save", "",
                                   "--appendonly", "no", "--dir", folder], stdout=subprocess.DEVNULL)
        try:
            with contextlib.suppress(ImportError):
                import uvloop  # what `vezastream serve` runs on when installed (the fast extra)
                asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
            asyncio.run(measure(socket, rounds))
        finally:
            server.terminate()  # by its PID
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


if __name__ == "__main__":
    main()
