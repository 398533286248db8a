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
import itertools
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
import bench_scale  # noqa: E402
import lean_http  # noqa: E402
from bench_targets import disk_rows, extra_target_rows, redis_aim_rows, target_rows  # noqa: E402
from vezastream.config import parse_size  # noqa: E402

if TYPE_CHECKING:
    import peers

CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- server-side measurements from /proc -----------------------------------------------------

def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            return [int(p) for p in fh.read().split()]
    except OSError:
        return []


Pids = int | list[int]


def _family(pids: Pids) -> list[int]:
    """``pids`` (one server, or several nodes and their Redis) and their live children."""
    roots = [pids] if isinstance(pids, int) else pids
    return [p for root in roots for p in (root, *_children(root))]


def cpu_seconds(pids: Pids) -> float:
    """User + system CPU of ``pids`` and their live children."""
    total = 0.0
    for p in _family(pids):
        try:
            with open(f"/proc/{p}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / CLK_TCK
        except OSError:
            continue
    return total


def _summed(pids: Pids, proc_file: str, field: str) -> int:
    """A ``/proc/<pid>/<proc_file>`` field (kB), in bytes, summed over ``pids`` and their live children."""
    total = 0
    for p in _family(pids):
        try:
            with open(f"/proc/{p}/{proc_file}") as fh:
                for line in fh:
                    if line.startswith(field):
                        total += int(line.split()[1]) * 1024
                        break
        except OSError:
            continue
    return total


def rss_bytes(pids: Pids) -> int:
    """Resident memory of ``pids`` and their live children (workers, the bundled Redis)."""
    return _summed(pids, "status", "VmRSS:")


def pss_bytes(pids: Pids) -> int:
    """The memory ``pids`` and their live children take from the machine: the sum of their PSS
    (each page counted once, its size split among the processes that share it: forked workers
    share what their parent had imported, which the sum of their RSS counts in each)."""
    return _summed(pids, "smaps_rollup", "Pss:")


@dataclass
class Sampler:
    """Peak RSS every 20 ms, peak PSS every 200 ms (reading it walks the page tables)."""
    pid: Pids
    peak: int = 0
    peak_pss: int = 0
    task: asyncio.Task | None = None

    async def _run(self) -> None:
        for tick in itertools.count(1):
            self.peak = max(self.peak, rss_bytes(self.pid))
            if tick % 10 == 0:
                self.peak_pss = max(self.peak_pss, pss_bytes(self.pid))
            await asyncio.sleep(0.02)

    def start(self) -> None:
        self.peak = rss_bytes(self.pid)
        self.peak_pss = pss_bytes(self.pid)
        self.task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass


# -- clients ----------------------------------------------------------------------------------

class AiohttpClient:
    """``--client aiohttp``: lean_http.LeanClient's one method over aiohttp's ClientSession."""

    def __init__(self, base_url: str, limit: int, timeout: float) -> None:
        self.base = base_url
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=limit),
                                             timeout=aiohttp.ClientTimeout(total=timeout))

    async def request(self, method: str, path: str, headers: dict[str, str] | None = None,
                      body=b"") -> lean_http.Response:
        async with self.session.request(method, self.base + path, data=body or None, headers=headers) as r:
            return lean_http.Response(r.status, r.headers, await r.read())  # type: ignore[arg-type]

    async def close(self) -> None:
        await self.session.close()


CLIENTS = {"lean": lean_http.LeanClient, "aiohttp": AiohttpClient}


class RoundRobin:
    """Several nodes as one client: each request goes to the next node (``--nodes``)."""

    def __init__(self, kind: str, urls: list[str], limit: int, timeout: float) -> None:
        self.clients = [CLIENTS[kind](url, limit, timeout) for url in urls]
        self.next = 0

    async def request(self, method: str, path: str, headers: dict[str, str] | None = None,
                      body=b"") -> lean_http.Response:
        client = self.clients[self.next]
        self.next = (self.next + 1) % len(self.clients)
        return await client.request(method, path, headers, body)

    async def close(self) -> None:
        for client in self.clients:
            await client.close()


Client = lean_http.LeanClient | AiohttpClient | RoundRobin


@dataclass
class Stats:
    requests: int = 0
    bytes: int = 0
    errors: list[str] = field(default_factory=list)
    completions: list[float] = field(default_factory=list)  # seconds each native complete request took
    latencies: list[float] = field(default_factory=list)  # seconds each chunk or PATCH request took


class Refused(RuntimeError):
    """The server answered a request with a status the upload cannot go on from."""

    def __init__(self, what: str, status: int, text: str) -> None:
        super().__init__(f"{what}: {status} {text}")
        self.status = status


#: What a server started without the bench's settings answers to a burst of creates, and how to lift it.
LIMITS_HINT = ("the server's per-user limits stop a benchmark's burst of uploads: start it with "
               "VEZASTREAM_LIMITS__MAX_CREATES_PER_MINUTE=0 VEZASTREAM_LIMITS__MAX_PENDING_UPLOADS=0 "
               "(as --spawn does), or use --spawn")


async def native_upload(client: Client, base: str, name: str, pieces: list[memoryview],
                        size: int, chunk: int, parallel: int, stats: Stats) -> str:
    r = await client.request("POST", "/v1/uploads", {"Content-Type": "application/json"}, json.dumps(
        {"filename": name, "total_size": size, "chunk_size": chunk}).encode())
    if r.status != 201:
        raise Refused("create", r.status, r.text())
    uid = r.json()["upload_id"]
    stats.requests += 1
    queue = list(enumerate(pieces, 1))

    async def sender() -> None:
        while queue:
            n, piece = queue.pop(0)
            sent = time.monotonic()
            r = await client.request("PUT", f"/v1/uploads/{uid}/chunks/{n}",
                                     {"Content-Type": "application/octet-stream"}, piece)
            stats.latencies.append(time.monotonic() - sent)
            if r.status not in (200, 201):
                raise Refused(f"chunk {n}", r.status, r.text())
            stats.requests += 1
            stats.bytes += len(piece)

    await asyncio.gather(*(sender() for _ in range(max(1, parallel))))
    started = time.monotonic()
    r = await client.request("POST", f"/v1/uploads/{uid}/complete")
    if r.status != 200:
        raise Refused("complete", r.status, r.text())
    stats.completions.append(time.monotonic() - started)
    stats.requests += 1
    return f"{base}/v1/uploads/{uid}"


async def tus_upload(client: Client, base: str, name: str, pieces: list[memoryview],
                     size: int, chunk: int, parallel: int, stats: Stats, prefix: str = "/files/") -> str:
    """Create with POST, then PATCH the pieces in order; returns the upload URL."""
    import base64

    meta = "filename " + base64.b64encode(name.encode()).decode()
    r = await client.request("POST", prefix, {"Tus-Resumable": "1.0.0", "Upload-Length": str(size),
                                              "Upload-Metadata": meta})
    if r.status != 201:
        raise Refused("tus create", r.status, r.text())
    location = r.headers["location"]
    stats.requests += 1
    url = location if location.startswith("http") else base + location
    path = urlparse(url).path
    offset = 0
    for piece in pieces:
        sent = time.monotonic()
        r = await client.request("PATCH", path, {"Tus-Resumable": "1.0.0", "Upload-Offset": str(offset),
                                                 "Content-Type": "application/offset+octet-stream"}, piece)
        stats.latencies.append(time.monotonic() - sent)
        if r.status != 204:
            raise Refused("tus patch", r.status, r.text())
        offset = int(r.headers["upload-offset"])
        stats.requests += 1
        stats.bytes += len(piece)
    return url


# -- the run --------------------------------------------------------------------------------------

WORKLOADS = {
    "W1": dict(files=16, size="64MiB", chunk="8MiB", concurrency=16, chunk_parallel=1),
    "W2": dict(files=1000, size="1MiB", chunk="256KiB", concurrency=200, chunk_parallel=1),
    "W3": dict(files=1, size="1GiB", chunk="16MiB", concurrency=1, chunk_parallel=1),
    # One client, one 1 GiB file as 8 MiB chunks, 8 at a time (native API only: a tus upload is sequential).
    "P8": dict(files=1, size="1GiB", chunk="8MiB", concurrency=1, chunk_parallel=8),
    "smoke": dict(files=4, size="2MiB", chunk="512KiB", concurrency=4, chunk_parallel=1),  # checks the bench itself
}


#: Files with a first piece of their own; past it, files repeat these (the 5,000 uploads of a
#: cost curve would otherwise hold 1.2 GiB of first pieces in the client).
DISTINCT_FILES = 1000


def make_files(count: int, size: int, chunk: int) -> list[tuple[str, list[memoryview], str]]:
    """``count`` files sharing one random buffer (only their first bytes differ, up to
    :data:`DISTINCT_FILES` distinct ones)."""
    base = os.urandom(size)
    files = []
    for i in range(count):
        if i >= DISTINCT_FILES:
            _, pieces, digest = files[i % DISTINCT_FILES]
            files.append((f"bench-{i}.bin", pieces, digest))
            continue
        first = bytearray(base[:min(size, chunk)])
        first[:8] = i.to_bytes(8, "little")[:len(first[:8])]
        pieces = [memoryview(bytes(first))] + [memoryview(base)[o:o + chunk] for o in range(chunk, size, chunk)]
        h = hashlib.sha256()
        for p in pieces:
            h.update(p)
        files.append((f"bench-{i}.bin", pieces, h.hexdigest()))
    return files


async def stored_sha256_over_http(session: aiohttp.ClientSession, upload_url: str) -> str:
    """vezastream: read the completed upload back through /v1/uploads/{id}/content."""
    uid = upload_url.rstrip("/").rsplit("/", 1)[1]
    base = upload_url.split("/v1/")[0].split("/files/")[0]
    h = hashlib.sha256()
    async with session.get(f"{base}/v1/uploads/{uid}/content") as r:
        if r.status != 200:
            return f"HTTP {r.status}"
        async for block in r.content.iter_chunked(1 << 20):
            h.update(block)
    return h.hexdigest()


async def upload_all(client_kind: str, url: str | list[str], files: list, size: int, chunk: int, protocol: str,
                     prefix: str, concurrency: int, chunk_parallel: int, timeout: float,
                     stats: Stats, tolerate: bool = False) -> list[tuple[str, str, str]]:
    """Upload ``files`` (``concurrency`` at once); returns (name, upload URL, SHA-256) of each.
    Several URLs (nodes): each request goes to the next one. ``tolerate``: an upload that fails
    goes into ``stats.errors`` instead of ending the run."""
    sem = asyncio.Semaphore(concurrency)
    done: list[tuple[str, str, str]] = []
    limit = concurrency * max(1, chunk_parallel) + 8
    if isinstance(url, list):
        client: Client = RoundRobin(client_kind, url, limit, timeout)
        url = url[0]
    else:
        client = CLIENTS[client_kind](url, limit, timeout)

    async def one(name: str, pieces: list[memoryview], digest: str) -> None:
        async with sem:
            try:
                if protocol == "tus":
                    where = await tus_upload(client, url, name, pieces, size, chunk, 1, stats, prefix)
                else:
                    where = await native_upload(client, url, name, pieces, size, chunk, chunk_parallel, stats)
            except (OSError, RuntimeError, asyncio.IncompleteReadError) as exc:
                if not tolerate:
                    raise
                stats.errors.append(f"{name}: {type(exc).__name__}: {exc}")
                return
            done.append((name, where, digest))

    try:
        await asyncio.wait_for(asyncio.gather(*(one(*f) for f in files)), timeout)
    finally:
        await client.close()
    return done


_SHARED: dict = {}  # what forked client processes inherit: the files and the upload parameters


def _upload_share(index: int) -> tuple[int, int, list, float, list[float]]:
    """In a forked client process: upload every N-th file; return requests, bytes, done, CPU-s,
    the body requests' latencies."""
    p = _SHARED
    cpu0, stats = time.process_time(), Stats()
    done = asyncio.run(upload_all(p["client"], p["url"], p["files"][index::p["procs"]], p["size"], p["chunk"],
                                  p["protocol"], p["prefix"], -(-p["concurrency"] // p["procs"]),
                                  p["chunk_parallel"], p["timeout"], stats))
    return stats.requests, stats.bytes, done, time.process_time() - cpu0, stats.latencies


async def upload_in_processes(procs: int, timeout: float, stats: Stats) -> tuple[list, float]:
    """Run _upload_share in ``procs`` forked processes (started before, and outside, the timed part)."""
    import multiprocessing

    loop = asyncio.get_running_loop()
    with multiprocessing.get_context("fork").Pool(procs) as pool:
        await loop.run_in_executor(None, pool.map, time.sleep, [0] * procs)  # the workers are up
        pending = pool.map_async(_upload_share, range(procs))
        shares = await loop.run_in_executor(None, pending.get, timeout)
    done, cpu = [], 0.0
    for requests, sent, share_done, share_cpu, latencies in shares:
        stats.latencies += latencies
        stats.requests += requests
        stats.bytes += sent
        done += share_done
        cpu += share_cpu
    return done, cpu


async def run(args: argparse.Namespace, url: str | list[str], pid: Pids | None, protocol: str = "native",
              prefix: str = "/files/", stored_sha256=None, redis_url: str | list[str] | None = None) -> dict:
    """One timed run. ``url``: a server, or several nodes (requests round-robin); ``pid``: the
    processes whose CPU and RSS count; ``redis_url``: vezastream's Redis, whose commands are counted."""
    size, chunk = int(parse_size(args.size, "--size")), int(parse_size(args.chunk, "--chunk"))
    files = make_files(args.files, size, chunk)
    stats = Stats()
    procs = max(1, args.client_procs)
    _SHARED.update(client=args.client, url=url, files=files, size=size, chunk=chunk, protocol=protocol,
                   prefix=prefix, concurrency=args.concurrency, chunk_parallel=args.chunk_parallel,
                   timeout=args.timeout, procs=procs)
    # Start with nothing left for the kernel to write back: a server that never syncs (the
    # peers, the limit) leaves its bytes in the page cache, and their writeback, up to 30 s
    # later, would otherwise land in whichever server's timed run comes next.
    os.sync()
    counts = bench_scale.RedisCounts(redis_url, url if isinstance(url, list) else [url]) if redis_url else None
    if counts:
        counts.start()
    sampler = Sampler(pid) if pid else None
    cpu0 = cpu_seconds(pid) if pid else 0.0
    if sampler:
        sampler.start()
    started, client_cpu0 = time.monotonic(), time.process_time()
    try:
        if procs > 1:
            done, children_cpu = await upload_in_processes(procs, args.timeout, stats)
        else:
            done = await upload_all(args.client, url, files, size, chunk, protocol, prefix, args.concurrency,
                                    args.chunk_parallel, args.timeout, stats, getattr(args, "tolerate", False))
            children_cpu = 0.0
    finally:
        _SHARED.clear()
    wall = time.monotonic() - started
    client_cpu = time.process_time() - client_cpu0 + children_cpu
    cpu = (cpu_seconds(pid) - cpu0) if pid else None
    if sampler:
        await sampler.stop()
    body_requests = args.files * -(-size // chunk)
    redis_figures = counts.per(body_requests) if counts else {}
    latencies = sorted(stats.latencies)
    pick = lambda q: round(1000 * latencies[min(len(latencies) - 1, int(q * len(latencies)))], 1)  # noqa: E731
    # Verification, outside the timed part: the stored bytes' SHA-256 against what was sent.
    mismatches = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=args.timeout)) as session:
        for name, where, digest in done:
            got = stored_sha256(where, name) if stored_sha256 else await stored_sha256_over_http(session, where)
            if got != digest:
                mismatches.append(name)
    total = size * len(done)  # the uploads that completed (all of them, unless failures were tolerated)
    gib = total / 2**30
    return {
        "protocol": protocol, "client": args.client, "client_procs": procs, "files": args.files, "size": size,
        "chunk": chunk, "concurrency": args.concurrency, "chunk_parallel": args.chunk_parallel,
        "seconds": round(wall, 3), "MB_per_s": round(total / 1e6 / wall, 1),
        "requests_per_s": round(stats.requests / wall, 1),
        "cpu_s_per_GiB": round(cpu / gib, 2) if cpu is not None and total else None,
        "client_cpu_s_per_GiB": round(client_cpu / gib, 2) if total else None,
        "peak_rss_MiB": round(sampler.peak / 2**20, 1) if sampler else None,
        "peak_pss_MiB": round(sampler.peak_pss / 2**20, 1) if sampler else None,
        "sha256_ok": not mismatches and len(done) == args.files, "mismatches": mismatches[:5],
        "failed_uploads": len(stats.errors), "failures": stats.errors[:3],
        # The slowest native completion (one client process only; None through tus).
        "complete_max_s": round(max(stats.completions), 3) if stats.completions else None,
        # Each chunk or PATCH request's time, as the client saw it.
        "p50_ms": pick(0.5) if latencies else None, "p99_ms": pick(0.99) if latencies else None,
        "nodes": len(url) if isinstance(url, list) else 1,
        # vezastream only: the commands its Redis ran (inside Lua scripts too), the scripts among them
        # and the pipelines the node(s) sent, per chunk or PATCH (the creates' and completions' shared out).
        **redis_figures,
    }


PROBE = """
import http.client, json, sys, time
from urllib.parse import urlparse
u = urlparse(sys.argv[1]); end = time.monotonic() + float(sys.argv[2]); out = []
while time.monotonic() < end:
    t0 = time.monotonic()
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    c.request("GET", "/v1/health"); c.getresponse().read(); c.close()
    out.append(time.monotonic() - t0)
    time.sleep(0.05)
print(json.dumps(out))
"""


async def slow_clients(url: str, pid: int | None, clients: int, seconds: float) -> dict:
    """``clients`` uploads trickling one chunk each (1 KiB every 100 ms) for ``seconds``,
    while a probe measures ``/v1/health``; then every client goes away mid-chunk."""
    chunk = 256 * 1024
    connector = aiohttp.TCPConnector(limit=clients + 16)
    sampler = Sampler(pid) if pid else None
    stop = asyncio.Event()
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=seconds + 60)) as s:
        ids = []
        for _ in range(clients):
            async with s.post(f"{url}/v1/uploads", json={"filename": "slow", "total_size": chunk,
                                                         "chunk_size": chunk}) as r:
                ids.append((await r.json())["upload_id"])

        async def trickle(uid: str) -> None:
            async def body():
                for _ in range(int(seconds * 10)):
                    if stop.is_set():
                        return
                    yield b"s" * 1024
                    await asyncio.sleep(0.1)

            try:
                async with s.put(f"{url}/v1/uploads/{uid}/chunks/1", data=body(),
                                 headers={"Content-Length": str(chunk)}) as r:
                    await r.read()
            except (aiohttp.ClientError, asyncio.TimeoutError):
                pass

        if sampler:
            sampler.start()
        cpu0 = cpu_seconds(pid) if pid else 0.0
        tasks = [asyncio.create_task(trickle(uid)) for uid in ids]
        # The probe runs in its own process, so the busy client loop does not delay it.
        prober = await asyncio.create_subprocess_exec(
            sys.executable, "-c", PROBE, url, str(seconds), stdout=asyncio.subprocess.PIPE)
        probe_out, _ = await prober.communicate()
        latencies = json.loads(probe_out)
        stop.set()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        cpu = cpu_seconds(pid) - cpu0 if pid else None
        if sampler:
            await sampler.stop()
    latencies.sort()
    pick = lambda q: round(1000 * latencies[min(len(latencies) - 1, int(q * len(latencies)))], 1)  # noqa: E731
    return {"clients": clients, "seconds": seconds, "health_probes": len(latencies),
            "health_p50_ms": pick(0.5) if latencies else None, "health_p99_ms": pick(0.99) if latencies else None,
            "peak_rss_MiB": round(sampler.peak / 2**20, 1) if sampler else None,
            "server_cores_busy": round(cpu / seconds, 2) if cpu is not None else None}


def summary(name: str, out: dict) -> str:
    redis_part = (f"Redis per {'chunk' if out['protocol'] == 'native' else 'PATCH'}: "
                  f"{out['redis_commands_per_request']} commands run, {out['redis_scripts_per_request']} scripts, "
                  f"{out['redis_round_trips_per_request']} round trips, "
                  if out.get("redis_commands_per_request") is not None else "")
    nodes = f" over {out['nodes']} nodes" if out.get("nodes", 1) > 1 else ""
    return (f"{name} {out['protocol']}: {out['files']} x {out['size']} B in {out['chunk']} B requests, "
            f"{out['concurrency']} at once{nodes}: "
            f"{out['MB_per_s']} MB/s, {out['requests_per_s']} req/s, "
            f"p50/p99 {out.get('p50_ms')}/{out.get('p99_ms')} ms, {redis_part}"
            + (f"server {out['cpu_s_per_GiB']} CPU-s/GiB, peak RSS {out['peak_rss_MiB']} MiB "
               f"(PSS {out.get('peak_pss_MiB')}), " if out.get("cpu_s_per_GiB") is not None
               else "server CPU and RSS not measured (no --server-pid), ") +
            f"client ({out['client']} x{out['client_procs']}) {out['client_cpu_s_per_GiB']} CPU-s/GiB, "
            f"stored bytes {'verified' if out['sha256_ok'] else 'MISMATCH'} ({out['seconds']} s)")


def cpu_name(cpuinfo: str) -> str:
    """The first CPU's model name in ``/proc/cpuinfo``'s text, with its family and model numbers where
    given: a virtual machine's name can be as vague as "AMD EPYC" for CPUs generations apart."""
    first: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        if not line.strip():
            break  # the end of the first CPU's block
        key, _, value = line.partition(":")
        first.setdefault(key.strip(), value.strip())
    name = first.get("model name", "unknown CPU")
    if first.get("cpu family") and first.get("model"):
        name += f" (family {first['cpu family']}, model {first['model']})"
    return name


def machine() -> str:
    """One line naming the machine: CPU model, cores, memory, kernel, Python."""
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as fh:
            model = cpu_name(fh.read())
        with open("/proc/meminfo") as fh:
            mem = int(fh.readline().split()[1]) / 2**20
    except OSError:
        mem = 0.0
    return (f"{model}, {os.cpu_count()} cores, {mem:.0f} GiB, Linux {os.uname().release}, "
            f"Python {sys.version.split()[0]}")


def _median(values: list) -> float | None:
    values = sorted(v for v in values if v is not None)
    return values[len(values) // 2] if values else None


def _spawned(args: argparse.Namespace, workload: str, serve_args: list[str], attic: peers.Attic | None) -> dict:
    """One run of ``workload`` through the native API against a fresh `vezastream serve`."""
    import peers

    params = argparse.Namespace(**{**vars(args), **WORKLOADS[workload]})
    server = peers.Vezastream([*args.serve_arg, *serve_args], env=serve_env(args), attic=attic)
    try:
        server.start()
        out = asyncio.run(run(params, server.url, server.pid, "native", redis_url=server.redis_url))
    finally:
        server.close()
    print(workload, summary(f"vezastream {' '.join(serve_args)}".strip(), out), flush=True)
    return out


def sha256sum_seconds(size: int) -> float | None:
    """Wall time of coreutils ``sha256sum`` over ``size`` random bytes just written (page cache warm)."""
    import shutil
    import subprocess
    import tempfile

    tool = shutil.which("sha256sum")
    if tool is None:
        return None
    with tempfile.NamedTemporaryFile() as fh:
        for _ in range(0, size, 1 << 24):
            fh.write(os.urandom(1 << 24))
        fh.flush()
        started = time.monotonic()
        subprocess.run([tool, fh.name], check=True, capture_output=True, timeout=300)
        return time.monotonic() - started


#: What :func:`disk_write_rate` writes at most (as much as W1 and W3 upload; a workload that uploads less:
#: that much), in the 4 MiB buffers large bodies are written from.
DISK_PROBE_BYTES, DISK_PROBE_WRITE = 1 << 30, 4 << 20


def disk_write_rate(folder: Path, size: int = DISK_PROBE_BYTES) -> float | None:
    """MB/s at which the disk under ``folder`` takes ``size`` bytes durably: a new file written in
    4 MiB ``O_DIRECT`` writes, one in flight, then ``fdatasync`` (None where ``O_DIRECT`` is refused).

    A server that makes each body durable before it answers cannot store faster than this.
    The file is cut to nothing afterwards and kept (``disk-probe`` in ``folder``): its blocks go,
    and its inode waits with the rest of the sitting's (:class:`peers.Attic`).
    """
    import mmap

    path = folder / "disk-probe"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT | os.O_CLOEXEC, 0o600)
    except OSError:  # a filesystem that refuses O_DIRECT
        return None
    block = mmap.mmap(-1, DISK_PROBE_WRITE)  # page-aligned, as O_DIRECT wants
    block.write(os.urandom(DISK_PROBE_WRITE))
    try:
        started = time.monotonic()
        written = 0
        while written < size:  # whole writes: O_DIRECT wants aligned lengths
            written += os.pwrite(fd, block, written)
        os.fdatasync(fd)
        seconds = time.monotonic() - started
        os.ftruncate(fd, 0)
    finally:
        os.close(fd)
        block.close()
    return round(written / seconds / 1e6, 1)


def measure_extras(args: argparse.Namespace, attic: peers.Attic | None) -> dict[str, float | None]:
    """vezastream alone, ``--runs`` rounds alternating: W1 and P8, W2 with one and two workers;
    then the slow clients once, and sha256sum over as many bytes as P8 uploads. Medians."""
    rounds: dict[str, list[dict]] = {"W1": [], "P8": [], "W2x1": [], "W2x2": []}
    for _ in range(args.runs):
        for key, workload, serve_args in (("W1", "W1", []), ("P8", "P8", []), ("W2x1", "W2", []),
                                          ("W2x2", "W2", ["--workers", "2"])):
            rounds[key].append(_spawned(args, workload, serve_args, attic))
    m: dict[str, float | None] = {key: _median([o["MB_per_s"] for o in outs]) for key, outs in rounds.items()}
    m["complete"] = _median([o["complete_max_s"] for o in rounds["P8"]])
    import peers

    server = peers.Vezastream(args.serve_arg, env=serve_env(args), attic=attic)
    try:
        server.start()
        slow = asyncio.run(slow_clients(server.url, server.pid, 2000, args.slow_seconds))
    finally:
        server.close()
    print("slow clients:", json.dumps(slow), flush=True)
    m["slow_rss"], m["slow_p99"] = slow["peak_rss_MiB"], slow["health_p99_ms"]
    m["sha256sum"] = sha256sum_seconds(int(parse_size(WORKLOADS["P8"]["size"], "size")))
    return m


def compare(args: argparse.Namespace) -> int:
    """Every workload against vezastream (both doors) and each peer, ``--runs`` rounds, medians.
    The servers are installed once for the sitting, and what they store and install is removed
    only after its last run (:class:`peers.Attic`)."""
    import peers

    attic = peers.Attic()
    chosen = [p for p in (args.compare.split(",") if args.compare != "all" else list(peers.PEERS)) if p]
    targets: list[tuple[peers.Target, str]] = [
        (peers.Vezastream(args.serve_arg, env=serve_env(args), attic=attic), proto) for proto in ("native", "tus")]
    targets += [(peers.PEERS[p](attic), "tus") for p in chosen]
    limits = [] if args.no_limit else [(cls(attic), "tus") for cls in peers.LIMITS.values()]
    targets += limits
    try:
        return _sitting(args, targets, {t.name for t, _ in limits}, attic)
    finally:
        for target, _ in targets:
            target.close()
        attic.close()


def _sitting(args: argparse.Namespace, targets: list[tuple[peers.Target, str]], limit_names: set[str],
             attic: peers.Attic) -> int:
    """:func:`compare`'s runs and tables, with its servers."""
    import peers

    workloads = args.workload or ["W1", "W2", "W3"]
    print(f"machine: {machine()}; {args.runs} run(s) per server and workload, alternating; medians",
          flush=True)
    rows = []
    ours: dict[str, dict[str, dict]] = {}  # workload -> door -> vezastream's medians
    best_peer: dict[str, float | None] = {}
    limit_of: dict[str, float | None] = {}
    disk_of: dict[str, tuple[float | None, ...]] = {}  # workload -> the disk's durable MB/s: median, lowest, highest
    ok = True
    for wl in workloads:
        for key, value in WORKLOADS[wl].items():
            setattr(args, key, value)
        results: dict[tuple[str, str], list[dict]] = {}
        disk: list[float | None] = []
        for _ in range(args.runs):  # rounds: each server once per round, so drift hits all alike
            if not args.no_disk:
                uploaded = args.files * int(parse_size(args.size, "size"))
                disk.append(disk_write_rate(attic.path, min(DISK_PROBE_BYTES, uploaded)))
                print(f"{wl} the disk takes {disk[-1]} MB/s durably", flush=True)
            for target, proto in targets:
                try:
                    target.start()
                    is_ours = isinstance(target, peers.Vezastream)
                    out = asyncio.run(run(args, target.url, target.pid, proto, target.prefix,
                                          None if is_ours else target.stored_sha256,
                                          target.redis_url if is_ours else None))
                except Exception as exc:  # a peer that fails to install or run is reported, not fatal
                    print(f"{wl} {target.name} {proto}: failed: {exc}", file=sys.stderr)
                    ok = False
                    continue
                finally:
                    target.stop()
                print(wl, summary(target.name, out), flush=True)
                ok = ok and out["sha256_ok"]
                results.setdefault((target.name, proto), []).append(out)
        setups = {target.name: target.describe() for target, _ in targets}  # as each server reported it
        medians = {key: {m: _median([o.get(m) for o in outs]) for m in MEDIANS} for key, outs in results.items()}
        best = best_peer[wl] = max((o["MB_per_s"] for (n, _), o in medians.items()
                                    if n != "vezastream" and n not in limit_names), default=None)
        limit = limit_of[wl] = max((o["MB_per_s"] for (n, _), o in medians.items() if n in limit_names),
                                   default=None)
        ours[wl] = {proto: out for (name, proto), out in medians.items() if name == "vezastream"}
        disk_of[wl] = (_median(disk), min(filter(None, disk), default=None), max(filter(None, disk), default=None))
        for (name, proto), out in medians.items():
            ratios = [f"{out['MB_per_s'] / b:.2f}x" if b else "-" for b in (best, limit)]
            redis_cell = (f"{out['redis_commands_per_request']} / {out['redis_round_trips_per_request']}"
                          if out["redis_commands_per_request"] is not None else "")
            rows.append((wl, f"{name} ({proto})", out["MB_per_s"], out["cpu_s_per_GiB"], out["peak_rss_MiB"],
                         out["p50_ms"], out["p99_ms"], redis_cell,
                         *(ratios if name == "vezastream" else ("", "")), setups[name]))
    print(f"\nmachine: {machine()}; medians of {args.runs} run(s)\n")
    print_table(("workload", "server", "MB/s", "CPU-s/GiB", "peak RSS MiB", "p50 ms", "p99 ms",
                 "Redis commands run / round trips per request", "vs best peer", "vs limit", "setup"), rows)
    if not args.no_disk:
        _print_disk_table(ours, best_peer, disk_of)
    checked = target_rows(ours, best_peer, limit_of)
    checked += redis_aim_rows(_vezastream_steps(args, attic))
    if not args.workload:  # the whole run: the first round's other checks too (vezastream alone)
        print("\nThe first round's other checks (vezastream alone, alternating rounds):", flush=True)
        checked += extra_target_rows(measure_extras(args, attic))
    if checked:
        print("\nThe project's targets (docs/performance.md), as measured here:\n")
        print_table(("target", "measured", "status"), checked)
    return 0 if ok else 1


def _print_disk_table(ours: dict[str, dict[str, dict]], best_peer: dict[str, float | None],
                      disk_of: dict[str, tuple[float | None, ...]]) -> None:
    """The disk's durable rate per workload beside vezastream's MB/s and what its ratio target asks."""
    print("\nThe servers' disk, timed before each round (as many bytes as the workload uploads, at most "
          "1 GiB, in 4 MiB O_DIRECT writes, one in flight, then fdatasync), against what vezastream stored "
          "and what its ratio target asks. vezastream makes each body durable before it answers, so it "
          "cannot store faster than the disk; the peers and the limit write into the page cache and do "
          "not sync:\n")
    print_table(("workload", "disk MB/s (median, range)", "vezastream native / disk", "vezastream tus / disk",
                 "the ratio target needs MB/s", "past the disk"), disk_rows(ours, best_peer, disk_of))
    print()


#: What ``--compare`` takes the median of, per server, workload and door.
MEDIANS = ("MB_per_s", "cpu_s_per_GiB", "peak_rss_MiB", "p50_ms", "p99_ms", "redis_commands_per_request",
           "redis_round_trips_per_request")


def _vezastream_steps(args: argparse.Namespace, attic: peers.Attic | None = None) -> dict[str, dict]:
    """:func:`bench_scale.redis_steps` against a fresh `vezastream serve`, printed."""
    import peers

    server = peers.Vezastream(args.serve_arg, env=serve_env(args), attic=attic)
    try:
        server.start()
        steps = bench_scale.redis_steps(server.url, server.redis_url)
    finally:
        server.close()
    print("Redis commands per request, one upload through each door, one request at a time "
          "(sent by the node / run by Redis, inside Lua scripts too):")
    print_table(("step", "requests", "sent per request", "run per request"),
                [(name, s["requests"], s["sent_per_request"], s["ran_per_request"]) for name, s in steps.items()])
    return steps


def serve_env(args: argparse.Namespace) -> dict[str, str]:
    """``--serve-env KEY=VALUE`` as a dict (settings for `vezastream serve`, e.g.
    ``VEZASTREAM_STORAGE__STAGING=sink``)."""
    out = {}
    for item in args.serve_env:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--serve-env wants KEY=VALUE, got {item!r}")
        out[key] = value
    return out


def _points(text: str) -> list[int]:
    return [int(x) for x in text.replace("_", "").split(",") if x]


def _shapes(text: str) -> list[tuple[int, int]]:
    """``OWNERSxPLACES,...`` -> [(owners, places)]."""
    return [(int(o), int(p)) for o, _, p in (x.partition("x") for x in text.replace("_", "").split(",") if x)]


def nodes_runs(args: argparse.Namespace) -> dict:
    """``--nodes 1,2,3``: the workload against each count of nodes on one Redis (requests
    round-robin), ``--runs`` rounds alternating; medians, and each count's ratio to the first."""
    import peers

    counts = _points(args.nodes)
    shared = args.node_data == "shared"
    results: dict[int, list[dict]] = {n: [] for n in counts}
    attic = peers.Attic()  # each run's data kept until the last run (peers.Attic)
    try:
        for _ in range(args.runs):
            for n in counts:
                nodes = bench_scale.Nodes(n, args.serve_arg, serve_env(args), shared_data=shared,
                                          cluster=args.node_redis == "cluster", attic=attic)
                try:
                    nodes.start()
                    out = asyncio.run(run(args, nodes.urls, nodes.pids, args.protocol, redis_url=nodes.redis_urls))
                except Exception:
                    print(f"{n} node(s): the run failed; the nodes' logs:\n{nodes.log_tails()}", file=sys.stderr)
                    raise
                finally:
                    nodes.close()
                print(summary(f"vezastream, {n} node(s)", out), flush=True)
                results[n].append(out)
    finally:
        attic.close()
    medians = {n: {m: _median([o.get(m) for o in outs]) for m in MEDIANS} for n, outs in results.items()}
    first = medians[counts[0]]["MB_per_s"]
    rows = [(n, m["MB_per_s"], f"{m['MB_per_s'] / first:.2f}x" if first else "-", m["cpu_s_per_GiB"],
             m["peak_rss_MiB"], m["p50_ms"], m["p99_ms"], m["redis_commands_per_request"],
             m["redis_round_trips_per_request"]) for n, m in medians.items()]
    print(f"\nmachine: {machine()}; {args.protocol}, {args.files} x {args.size} in {args.chunk} requests, "
          f"{args.concurrency} at once, round-robin over the nodes, data_dir {args.node_data}, "
          f"Redis {args.node_redis}; "
          f"medians of {args.runs} run(s)\n")
    print_table(("nodes", "MB/s", f"vs {counts[0]} node(s)", "CPU-s/GiB (nodes + Redis)", "peak RSS MiB",
                 "p50 ms", "p99 ms", "Redis commands run per request", "round trips per request"), rows)
    ok = all(o["sha256_ok"] for outs in results.values() for o in outs)
    return {"nodes": {str(n): m for n, m in medians.items()}, "sha256_ok": ok}


def curves(args: argparse.Namespace) -> dict:
    """The cost curves: W2's shape at growing concurrency, Redis memory per pending upload, GC pass
    time at growing counts, and Redis commands per request of each step."""
    import peers

    attic = peers.Attic()  # each point's data kept until the last point (peers.Attic)
    try:
        return _curves(args, attic)
    finally:
        attic.close()


def _curves(args: argparse.Namespace, attic: peers.Attic) -> dict:
    """:func:`curves`, its servers' folders going into ``attic``."""
    import peers

    out: dict = {"machine": machine(), "concurrency": [], "redis_memory": [], "gc": []}
    size, chunk = "1MiB", "256KiB"
    for concurrency in _points(args.curve_points):
        params = argparse.Namespace(**{**vars(args), "size": size, "chunk": chunk, "concurrency": concurrency,
                                       "files": max(args.curve_files, concurrency), "chunk_parallel": 1,
                                       "tolerate": True})  # a point past what the server takes shows its failures
        server = peers.Vezastream(args.serve_arg, env=serve_env(args), attic=attic)
        try:
            server.start()
            point = asyncio.run(run(params, server.url, server.pid, args.protocol, redis_url=server.redis_url))
        finally:
            server.close()
        print(summary("curve point", point), flush=True)
        out["concurrency"].append(point)
    out["steps"] = _vezastream_steps(args, attic)
    for protocol in ("native", "tus") if args.memory_uploads else ():
        server = peers.Vezastream(args.serve_arg, env=serve_env(args), attic=attic)
        try:
            server.start()
            out["redis_memory"].append(bench_scale.redis_memory_per_upload(
                server.url, server.redis_url, args.memory_uploads, protocol))
        finally:
            server.close()
        print("Redis memory:", json.dumps(out["redis_memory"][-1]), flush=True)
    for count in _points(args.gc_points):
        for kind in ("pending", "expired"):
            out["gc"].append(bench_scale.gc_pass_seconds(count, kind, args.timeout))
            print("GC pass:", json.dumps(out["gc"][-1]), flush=True)
    for owners, places in _shapes(args.gc_owners):
        out["gc"].append(bench_scale.gc_pass_seconds(owners * places, "pending", args.timeout, owners=owners))
        print("GC pass:", json.dumps(out["gc"][-1]), flush=True)
    print(f"\nmachine: {out['machine']}; {args.protocol}, 1 MiB uploads in 256 KiB requests\n")
    print_table(("uploads at once", "uploads", "failed", "MB/s", "CPU-s/GiB", "peak RSS MiB", "p50 ms", "p99 ms",
                 "Redis commands run per request", "round trips per request", "completed ones read back right"),
                [(p["concurrency"], p["files"], p["failed_uploads"], p["MB_per_s"], p["cpu_s_per_GiB"],
                  p["peak_rss_MiB"], p["p50_ms"], p["p99_ms"], p.get("redis_commands_per_request"),
                  p.get("redis_round_trips_per_request"), not p["mismatches"]) for p in out["concurrency"]])
    print()
    print_table(("door", "pending uploads (one 4 KiB chunk or PATCH each)", "Redis bytes per upload", "keys"),
                [(m["protocol"], m["pending_uploads"], m["redis_bytes_per_upload"], m["redis_keys"])
                 for m in out["redis_memory"]])
    print()
    print_table(("uploads", "kind", "owners (quotas on)", "GC pass s", "µs per upload", "recover s", "reconcile s",
                 "reconcile round trips", "list s", "look-ups s", "remove s", "removed", "kept"),
                [(g["uploads"], g["kind"], g["owners"] or "-", g["gc_pass_s"], g["us_per_upload"], g["recover_s"],
                  g["reconcile_s"], g["reconcile_round_trips"], g["list_s"], g["lookups_s"], g["remove_s"],
                  g["removed"], g["kept"]) for g in out["gc"]])
    # Failures at a point are a figure of the curve; a completed upload read back wrong is a defect.
    out["sha256_ok"] = not any(p["mismatches"] for p in out["concurrency"])
    return out


def print_table(header: tuple[str, ...], rows: list[tuple]) -> None:
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(str(c) for c in row) + " |")


def parse_args(argv: list[str] | None = None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    """The command line; a ``--workload`` preset's sizes are defaults that the options given beside it override."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", help="a running server (loopback only)")
    p.add_argument("--server-pid", type=int, help="its PID, for CPU and RSS")
    p.add_argument("--spawn", action="store_true", help="start `vezastream serve` for the run")
    p.add_argument("--serve-arg", action="append", default=[], help="extra argument to `vezastream serve`")
    p.add_argument("--serve-env", action="append", default=[], metavar="KEY=VALUE",
                   help="a setting for `vezastream serve` as an environment variable, e.g. "
                        "VEZASTREAM_STORAGE__STAGING=sink (repeat for more)")
    p.add_argument("--redis-url", help="with --url: the server's Redis, to count its commands")
    p.add_argument("--protocol", choices=["native", "tus"], default="native")
    p.add_argument("--files", type=int, default=16)
    p.add_argument("--size", default="64MiB")
    p.add_argument("--chunk", default="8MiB")
    p.add_argument("--concurrency", type=int, default=16, help="uploads at once")
    p.add_argument("--chunk-parallel", type=int, default=1, help="chunks of one upload at once (native)")
    p.add_argument("--client", choices=sorted(CLIENTS), default="lean",
                   help="the upload requests' HTTP client: lean (scripts/lean_http.py, cheap) or aiohttp")
    p.add_argument("--client-procs", type=int, default=1, metavar="N",
                   help="split the files over N client processes (forked before the timed part)")
    p.add_argument("--timeout", type=float, default=600, help="upper bound for the whole run (s)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--workload", action="append", choices=sorted(WORKLOADS),
                   help="a preset (W1: 16 x 64MiB/8MiB c16; W2: 1000 x 1MiB/256KiB c200; W3: 1 x 1GiB/16MiB; "
                        "P8: 1 x 1GiB/8MiB, 8 chunks at a time)")
    p.add_argument("--compare", nargs="?", const="all", metavar="PEERS",
                   help="install peers (tus-node, tuspyserver, aiohttp-tus; default all) in temp folders, each "
                        "in its production setup, and run the "
                        "workloads against vezastream and each of them, printing the ratios; without "
                        "--workload, also the first round's other checks (P8, --workers 2, slow clients, "
                        "completion time), then every target, met or not")
    p.add_argument("--slow-clients", type=int, metavar="N",
                   help="instead: N clients trickling chunks; report /v1/health latency and peak RSS")
    p.add_argument("--slow-seconds", type=float, default=20, help="how long the slow clients trickle")
    p.add_argument("--runs", type=int, default=3, help="--compare: rounds per server and workload (medians)")
    p.add_argument("--no-disk", action="store_true",
                   help="--compare: leave out timing the servers' disk before each round")
    p.add_argument("--no-limit", action="store_true",
                   help="--compare: leave out the bare aiohttp handler that shows the machine's limit")
    p.add_argument("--nodes", metavar="N[,N...]",
                   help="instead: N `vezastream serve` nodes on one Redis the bench starts, each request to "
                        "the next node; several counts (1,2,3) alternate over --runs rounds, with ratios")
    p.add_argument("--node-data", choices=["shared", "separate"], default="shared",
                   help="--nodes: one storage.data_dir for all nodes (storage.staging \"local\" needs it) or "
                        "one each (with --serve-env VEZASTREAM_STORAGE__STAGING=sink)")
    p.add_argument("--node-redis", choices=["standalone", "cluster"], default="standalone",
                   help="--nodes: one redis-server, or a 3-master Redis Cluster (no replicas; the nodes' "
                        "round trips are then not counted)")
    p.add_argument("--curves", action="store_true",
                   help="instead: the cost curves (W2's shape at --curve-points uploads at once, Redis memory "
                        "per pending upload, GC pass time at --gc-points uploads)")
    p.add_argument("--curve-points", default="50,200,1000,5000", help="--curves: uploads at once")
    p.add_argument("--curve-files", type=int, default=2000,
                   help="--curves: uploads per point (at least as many as at once)")
    p.add_argument("--memory-uploads", type=int, default=5000, help="--curves: pending uploads for Redis memory")
    p.add_argument("--gc-points", default="10000,100000", help="--curves: pending (and expired) uploads per GC pass")
    p.add_argument("--gc-owners", default="10000x1,100000x1,10x1000", metavar="OWNERSxPLACES[,...]",
                   help="--curves: GC passes with the per-user limits on, over OWNERS users holding PLACES "
                        "pending uploads each (what the pass's quota reconcile reads)")
    args = p.parse_args(argv)
    if args.workload and not args.compare:  # (--compare runs each preset as it is: the targets are set for them)
        p.set_defaults(**WORKLOADS[args.workload[0]])
        args = p.parse_args(argv)
    return p, args


def main() -> int:
    p, args = parse_args()
    if args.compare:
        return compare(args)
    if args.curves or args.nodes:
        result = curves(args) if args.curves else nodes_runs(args)
        if args.json:
            print(json.dumps(result))
        return 0 if result["sha256_ok"] else 1
    if not args.spawn and not args.url:
        p.error("give --url (and --server-pid), --spawn or --compare")
    spawned = None
    try:
        if args.spawn:
            import peers

            spawned = peers.Vezastream(args.serve_arg, env=serve_env(args))
            spawned.start()
            url, pid, redis_url = spawned.url, spawned.pid, spawned.redis_url
        else:
            host = urlparse(args.url).hostname
            if host not in ("127.0.0.1", "localhost", "::1"):
                p.error("benchmarks only target loopback addresses")
            url, pid, redis_url = args.url.rstrip("/"), args.server_pid, args.redis_url
        if args.slow_clients:
            result = asyncio.run(slow_clients(url, pid, args.slow_clients, args.slow_seconds))
            print(json.dumps(result))
            return 0
        try:
            out = asyncio.run(run(args, url, pid, args.protocol, redis_url=redis_url))
        except Refused as exc:
            print(f"bench.py: the server refused an upload: {exc}", file=sys.stderr)
            if exc.status == 429 and not args.spawn:
                print(f"bench.py: {LIMITS_HINT}", file=sys.stderr)
            return 1
    finally:
        if spawned:
            spawned.close()
    if args.json:
        print(json.dumps(out))
    else:
        print(summary("vezastream", out))
    return 0 if out["sha256_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
