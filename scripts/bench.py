#!/usr/bin/env python3
"""Upload benchmark: N concurrent uploads against a running (or spawned) vezastream.

    python scripts/bench.py --spawn --files 16 --size 64MiB --chunk 8MiB --concurrency 16
    python scripts/bench.py --url http://127.0.0.1:8080 --server-pid 1234 --files 1000 --size 1MiB \
        --chunk 256KiB --concurrency 200

Prints MB/s (10^6 bytes/s), requests/s, the server's CPU-seconds per GiB
ingested and its peak RSS (read from /proc, server process plus its children,
e.g. the bundled Redis), and checks every upload's SHA-256. Only loopback
addresses are accepted. Every run is bounded by --timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from vezastream.config import parse_size  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- server-side measurements from /proc -----------------------------------------------------

def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            return [int(p) for p in fh.read().split()]
    except OSError:
        return []


def cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid`` and its live children."""
    total = 0.0
    for p in [pid, *_children(pid)]:
        try:
            with open(f"/proc/{p}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / CLK_TCK
        except OSError:
            continue
    return total


def rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


@dataclass
class Sampler:
    pid: int
    peak: int = 0
    task: asyncio.Task | None = None

    async def _run(self) -> None:
        while True:
            self.peak = max(self.peak, rss_bytes(self.pid))
            await asyncio.sleep(0.02)

    def start(self) -> None:
        self.peak = rss_bytes(self.pid)
        self.task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass


# -- clients ----------------------------------------------------------------------------------

@dataclass
class Stats:
    requests: int = 0
    bytes: int = 0
    errors: list[str] = field(default_factory=list)


async def native_upload(session: aiohttp.ClientSession, base: str, name: str, pieces: list[memoryview],
                        size: int, chunk: int, parallel: int, stats: Stats) -> str:
    async with session.post(f"{base}/v1/uploads", json={"filename": name, "total_size": size,
                                                        "chunk_size": chunk}) as r:
        if r.status != 201:
            raise RuntimeError(f"create: {r.status} {await r.text()}")
        uid = (await r.json())["upload_id"]
    stats.requests += 1
    queue = list(enumerate(pieces, 1))

    async def sender() -> None:
        while queue:
            n, piece = queue.pop(0)
            async with session.put(f"{base}/v1/uploads/{uid}/chunks/{n}", data=piece,
                                   headers={"Content-Type": "application/octet-stream"}) as r:
                if r.status not in (200, 201):
                    raise RuntimeError(f"chunk {n}: {r.status} {await r.text()}")
                await r.read()
            stats.requests += 1
            stats.bytes += len(piece)

    await asyncio.gather(*(sender() for _ in range(max(1, parallel))))
    async with session.post(f"{base}/v1/uploads/{uid}/complete") as r:
        if r.status != 200:
            raise RuntimeError(f"complete: {r.status} {await r.text()}")
        result = await r.json()
    stats.requests += 1
    return result["sha256"]


async def tus_upload(session: aiohttp.ClientSession, base: str, name: str, pieces: list[memoryview],
                     size: int, chunk: int, parallel: int, stats: Stats, prefix: str = "/files/") -> str:
    import base64

    meta = "filename " + base64.b64encode(name.encode()).decode()
    headers = {"Tus-Resumable": "1.0.0", "Upload-Length": str(size), "Upload-Metadata": meta}
    async with session.post(base + prefix, headers=headers) as r:
        if r.status != 201:
            raise RuntimeError(f"tus create: {r.status} {await r.text()}")
        location = r.headers["Location"]
    stats.requests += 1
    url = location if location.startswith("http") else base + location
    offset = 0
    for piece in pieces:
        async with session.patch(url, data=piece, headers={
                "Tus-Resumable": "1.0.0", "Upload-Offset": str(offset),
                "Content-Type": "application/offset+octet-stream"}) as r:
            if r.status != 204:
                raise RuntimeError(f"tus patch: {r.status} {await r.text()}")
            offset = int(r.headers["Upload-Offset"])
        stats.requests += 1
        stats.bytes += len(piece)
    # The upload completed into the sink with its last PATCH; read its SHA-256 from the engine's state.
    uid = url.rstrip("/").rsplit("/", 1)[1]
    async with session.get(f"{base}/v1/uploads/{uid}") as r:
        state = await r.json()
    return (state.get("result") or {}).get("sha256", "")


# -- a spawned server ---------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Spawned:
    """`vezastream serve` on a free loopback port with a throwaway data folder."""

    def __init__(self, extra_env: dict[str, str], args: list[str]) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="vezabench-"))
        self.port = free_port()
        env = {**os.environ, "VEZASTREAM_STORAGE__DATA_DIR": str(self.tmp / "data"),
               "VEZASTREAM_SERVER__PORT": str(self.port), "VEZASTREAM_LOG__LEVEL": "WARNING",
               "VEZASTREAM_LIMITS__MIN_CHUNK_SIZE": "1", **extra_env}
        self.proc = subprocess.Popen([sys.executable, "-m", "vezastream.cli", "serve", *args], env=env,
                                     cwd=self.tmp, stdout=subprocess.DEVNULL,
                                     stderr=open(self.tmp / "server.log", "wb"))
        self.url = f"http://127.0.0.1:{self.port}"

    async def ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as s:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError((self.tmp / "server.log").read_text()[-2000:])
                try:
                    async with s.get(self.url + "/v1/health/deep") as r:
                        if r.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
        raise TimeoutError("server did not start")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.tmp, ignore_errors=True)


# -- the run --------------------------------------------------------------------------------------

async def run(args: argparse.Namespace, url: str, pid: int | None) -> dict:
    size, chunk = int(parse_size(args.size, "--size")), int(parse_size(args.chunk, "--chunk"))
    base = os.urandom(size)
    files = []
    for i in range(args.files):
        head = bytearray(base[:min(size, 16)])
        head[:8] = i.to_bytes(8, "little")[:len(head[:8])]
        first = bytes(head) + base[len(head):min(size, chunk)]
        pieces = [memoryview(first)] + [memoryview(base)[o:o + chunk] for o in range(chunk, size, chunk)]
        h = hashlib.sha256()
        for p in pieces:
            h.update(p)
        files.append((f"bench-{i}.bin", pieces, h.hexdigest()))
    upload = tus_upload if args.protocol == "tus" else native_upload
    stats = Stats()
    sampler = Sampler(pid) if pid else None
    cpu0 = cpu_seconds(pid) if pid else 0.0
    if sampler:
        sampler.start()
    sem = asyncio.Semaphore(args.concurrency)
    connector = aiohttp.TCPConnector(limit=args.concurrency * max(1, args.chunk_parallel) + 8)
    timeout = aiohttp.ClientTimeout(total=args.timeout)
    mismatches = []

    async def one(name: str, pieces: list[memoryview], digest: str) -> None:
        async with sem:
            got = await upload(session, url, name, pieces, size, chunk, args.chunk_parallel, stats)
            if got != digest:
                mismatches.append(name)

    started = time.monotonic()
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.wait_for(asyncio.gather(*(one(*f) for f in files)), args.timeout)
    wall = time.monotonic() - started
    cpu = (cpu_seconds(pid) - cpu0) if pid else None
    if sampler:
        await sampler.stop()
    total = size * args.files
    return {
        "protocol": args.protocol, "files": args.files, "size": size, "chunk": chunk,
        "concurrency": args.concurrency, "chunk_parallel": args.chunk_parallel,
        "seconds": round(wall, 3), "MB_per_s": round(total / 1e6 / wall, 1),
        "requests_per_s": round(stats.requests / wall, 1),
        "cpu_s_per_GiB": round(cpu / (total / 2**30), 2) if cpu is not None and total else None,
        "peak_rss_MiB": round(sampler.peak / 2**20, 1) if sampler else None,
        "sha256_ok": not mismatches, "mismatches": mismatches[:5],
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", help="a running server (loopback only)")
    p.add_argument("--server-pid", type=int, help="its PID, for CPU and RSS")
    p.add_argument("--spawn", action="store_true", help="start `vezastream serve` for the run")
    p.add_argument("--serve-arg", action="append", default=[], help="extra argument to `vezastream serve`")
    p.add_argument("--protocol", choices=["native", "tus"], default="native")
    p.add_argument("--files", type=int, default=16)
    p.add_argument("--size", default="64MiB")
    p.add_argument("--chunk", default="8MiB")
    p.add_argument("--concurrency", type=int, default=16, help="uploads at once")
    p.add_argument("--chunk-parallel", type=int, default=1, help="chunks of one upload at once (native)")
    p.add_argument("--timeout", type=float, default=600, help="upper bound for the whole run (s)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args()
    if not args.spawn and not args.url:
        p.error("give --url (and --server-pid) or --spawn")
    spawned = None
    try:
        if args.spawn:
            spawned = Spawned({}, args.serve_arg)
            asyncio.run(spawned.ready())
            url, pid = spawned.url, spawned.proc.pid
        else:
            host = urlparse(args.url).hostname
            if host not in ("127.0.0.1", "localhost", "::1"):
                p.error("benchmarks only target loopback addresses")
            url, pid = args.url.rstrip("/"), args.server_pid
        out = asyncio.run(run(args, url, pid))
    finally:
        if spawned:
            spawned.stop()
    if args.json:
        print(json.dumps(out))
    else:
        print(f"{out['protocol']}: {out['files']} x {args.size} in {args.chunk} chunks, "
              f"{out['concurrency']} at once: {out['MB_per_s']} MB/s, {out['requests_per_s']} req/s, "
              f"server {out['cpu_s_per_GiB']} CPU-s/GiB, peak RSS {out['peak_rss_MiB']} MiB, "
              f"sha256 {'ok' if out['sha256_ok'] else 'MISMATCH'} ({out['seconds']} s)")
    return 0 if out["sha256_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
