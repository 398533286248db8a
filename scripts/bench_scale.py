"""What `bench.py` measures beyond MB/s: Redis's work per request, several nodes, cost as load grows.

- :class:`RedisCounts`: ``INFO commandstats`` of the server's Redis before and
  after a run (every command Redis ran, those inside Lua scripts included:
  an ``EVALSHA`` counts once, plus once for each ``redis.call`` inside it),
  and the nodes' own count of the pipelines they sent (their ``/metrics``:
  ``vezastream_redis_roundtrip_seconds_count``).
- :func:`redis_steps`: one upload through each door, request by request,
  under ``MONITOR``: what each step sent and what Redis ran for it.
- :class:`Nodes`: N ``vezastream serve`` processes on one Redis that the
  bench starts (``redis-server``, persistence as the bundled one's; or a
  3-master Redis Cluster), one ``data_dir`` shared or one each.
- :func:`redis_memory_per_upload` and :func:`gc_pass_seconds`: the cost
  curves' Redis memory and GC points.

Loopback only; every process started here is stopped by its PID.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import redis

import launchers
import peers

#: What the bench's own Redis connection runs (its snapshots), left out of the counts.
OWN_COMMANDS = ("info", "hello", "client", "monitor")
SCRIPT_COMMANDS = ("evalsha", "eval")


def connect(url: str) -> redis.Redis:
    if url.startswith("unix://"):
        return redis.Redis(unix_socket_path=url[len("unix://"):], socket_timeout=30)
    return redis.Redis.from_url(url, socket_timeout=30)


def command_calls(client: redis.Redis) -> dict[str, int]:
    """Calls per command since Redis started (``INFO commandstats``), the bench's own left out."""
    stats = client.info("commandstats")
    calls = {name[len("cmdstat_"):]: int(v["calls"]) for name, v in stats.items() if name.startswith("cmdstat_")}
    return {name: n for name, n in calls.items() if name not in OWN_COMMANDS}


def node_round_trips(urls: list[str]) -> int | None:
    """Redis pipelines the nodes sent (their ``/metrics``); None if a node serves no metrics."""
    total = 0
    for url in urls:
        try:
            with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
                text = r.read().decode()
        except OSError:
            return None
        lines = [line for line in text.splitlines() if line.startswith("vezastream_redis_roundtrip_seconds_count")]
        if not lines:
            return None
        total += int(float(lines[0].split()[-1]))
    return total


class RedisCounts:
    """Snapshots around a run: ``start()`` then ``per(requests)`` for the run's figures."""

    def __init__(self, redis_url: str | list[str], node_urls: list[str]) -> None:
        """``redis_url``: the server, or a cluster's masters (their counts are added up; the
        nodes' round trips are then not counted: a cluster's pipelines go to each master apart)."""
        urls = redis_url if isinstance(redis_url, list) else [redis_url]
        self.clients = [connect(url) for url in urls]
        self.node_urls = node_urls if len(urls) == 1 else []
        self.calls0: dict[str, int] = {}
        self.trips0: int | None = None

    def _calls(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for client in self.clients:
            for name, n in command_calls(client).items():
                total[name] = total.get(name, 0) + n
        return total

    def start(self) -> None:
        self.calls0 = self._calls()
        self.trips0 = node_round_trips(self.node_urls) if self.node_urls else None

    def per(self, requests: int) -> dict:
        """The run's commands (and pipelines) per body request: chunks or PATCHes, the creates'
        and completions' commands shared out over them."""
        calls = self._calls()
        trips = node_round_trips(self.node_urls) if self.node_urls else None
        for client in self.clients:
            client.close()
        delta = {name: n - self.calls0.get(name, 0) for name, n in calls.items()}
        delta = {name: n for name, n in delta.items() if n > 0}
        ran = sum(delta.values())
        scripts = sum(delta.get(name, 0) for name in SCRIPT_COMMANDS)
        per = (lambda n: round(n / requests, 2) if requests and n is not None else None)  # noqa: E731
        return {
            "redis_commands_per_request": per(ran),
            "redis_scripts_per_request": per(scripts),
            "redis_round_trips_per_request": per(trips - self.trips0) if trips is not None and self.trips0 is not None
            else None,
            "redis_commands": dict(sorted(delta.items(), key=lambda kv: -kv[1])[:12]),
        }


# -- one upload, request by request, under MONITOR --------------------------------------------

def redis_steps(base_url: str, redis_url: str) -> dict[str, dict[str, int]]:
    """One native upload (3 chunks) and one tus upload (3 PATCHes, the last of which completes it),
    one request at a time, after
    one of each unwatched; for each step, the commands the node sent, and those Redis ran (the
    sent ones plus, inside scripts, ``MONITOR``'s ``lua`` lines)."""
    import hashlib

    from vezastream.engine.leases import NODE_BEAT_SECONDS, NODE_SECONDS

    # A server's start-up recovery looks again once other nodes' heartbeats could have lapsed:
    # past that, what MONITOR sees between steps is the requests' own (and heartbeats, left out).
    time.sleep(NODE_SECONDS + NODE_BEAT_SECONDS + 1)
    chunk = 64 * 1024
    data = os.urandom(3 * chunk)
    steps: dict[str, dict[str, int]] = {}

    def request(method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None):
        req = urllib.request.Request(base_url + path, data=body or None, method=method, headers=headers or {})
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, dict(r.headers), r.read()

    def watched(name: str, watch: bool, *call) -> tuple:
        if not watch:
            return request(*call)
        time.sleep(0.3)  # what the node does between requests stays out
        lines: list[tuple[str, bool]] = []
        stop, ready = threading.Event(), threading.Event()
        t = threading.Thread(target=_watch, args=(redis_url, lines, stop, ready), daemon=True)
        t.start()
        ready.wait(10)
        out = request(*call)
        time.sleep(0.2)
        stop.set()
        t.join(10)
        sent = sum(1 for _, lua in lines if not lua)
        step = steps.setdefault(name, {"requests": 0, "sent": 0, "ran": 0})
        step["requests"] += 1
        step["sent"] += sent
        step["ran"] += len(lines)
        return out

    def both_doors(watch: bool) -> None:
        _, _, body = watched("native create", watch, "POST", "/v1/uploads", json.dumps(
            {"filename": "steps.bin", "total_size": len(data), "chunk_size": chunk}).encode(),
            {"Content-Type": "application/json"})
        uid = json.loads(body)["upload_id"]
        for n in (1, 2, 3):
            watched("native chunk", watch, "PUT", f"/v1/uploads/{uid}/chunks/{n}", data[(n - 1) * chunk:n * chunk],
                    {"Content-Type": "application/octet-stream"})
        watched("native complete", watch, "POST", f"/v1/uploads/{uid}/complete")
        with urllib.request.urlopen(f"{base_url}/v1/uploads/{uid}/content", timeout=30) as r:
            assert hashlib.sha256(r.read()).digest() == digest, "native upload read back wrong"
        tus = {"Tus-Resumable": "1.0.0"}
        _, headers, _ = watched("tus create", watch, "POST", "/files/", b"", {**tus, "Upload-Length": str(len(data))})
        path = "/files/" + headers["Location"].rstrip("/").rsplit("/", 1)[1]
        for n in range(3):  # the last one also completes the upload: its own step, as native complete is
            watched("tus PATCH" if n < 2 else "tus last PATCH (completes)", watch, "PATCH", path, data[n * chunk:(n + 1) * chunk],
                    {**tus, "Upload-Offset": str(n * chunk), "Content-Type": "application/offset+octet-stream"})

    digest = hashlib.sha256(data).digest()
    both_doors(False)  # first use: the node loads its scripts into Redis
    both_doors(True)
    return {name: {"requests": s["requests"], "sent_per_request": round(s["sent"] / s["requests"], 2),
                   "ran_per_request": round(s["ran"] / s["requests"], 2)} for name, s in steps.items()}


def warm_up(base_url: str) -> None:
    """One small upload through each door, so that every Lua script is in Redis's cache before a
    timed run. On a fresh Redis Cluster, a burst of requests that each find a script missing made
    some answer 503 (each loads the script on a connection of its own, past ``redis.max_connections``:
    docs/performance.md, "Cost curves, Redis commands and several nodes")."""
    def request(method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None) -> dict:
        req = urllib.request.Request(base_url + path, data=body or None, method=method, headers=headers or {})
        with urllib.request.urlopen(req, timeout=30) as r:
            return {"headers": dict(r.headers), "body": r.read()}

    spec = {"filename": "warm", "total_size": 1, "chunk_size": 1}
    created = request("POST", "/v1/uploads", json.dumps(spec).encode(), {"Content-Type": "application/json"})
    uid = json.loads(created["body"])["upload_id"]
    request("PUT", f"/v1/uploads/{uid}/chunks/1", b"w", {"Content-Type": "application/octet-stream"})
    request("POST", f"/v1/uploads/{uid}/complete")
    tus = {"Tus-Resumable": "1.0.0"}
    where = request("POST", "/files/", b"", {**tus, "Upload-Length": "1"})["headers"]["Location"]
    request("PATCH", "/files/" + where.rstrip("/").rsplit("/", 1)[1], b"w",
            {**tus, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"})


def _watch(redis_url: str, lines: list[tuple[str, bool]], stop: threading.Event,
           ready: threading.Event) -> None:
    """Collect MONITOR's lines (command, run inside a script?) until ``stop``; the bench's own left out."""
    client = connect(redis_url)
    with client.monitor() as m:
        ready.set()
        conn = m.connection
        while not stop.is_set():
            if not conn.can_read(timeout=0.05):
                continue
            response = conn.read_response()
            text = response.decode() if isinstance(response, bytes) else str(response)
            # 1700000000.123456 [0 unix:/path] "EVALSHA" ... or, inside a script, [0 lua] "hget" ...
            head, _, rest = text.partition("] ")
            words = rest.split(" ", 2)
            name = words[0].strip('"').lower()
            if name in OWN_COMMANDS or (name == "set" and len(words) > 1 and ":node:" in words[1]) or (
                    name == "smembers" and len(words) > 1 and words[1].endswith(':unfinished"')):
                continue  # the bench's own, and the nodes' heartbeats and sweeps of noted uploads (once a minute)
            lines.append((name, head.endswith(" lua")))
    client.close()


# -- a Redis the bench starts, and several nodes on it ------------------------------------------

class BenchRedis:
    """``redis-server`` (the one vezastream bundles) on a unix socket in a temp folder, persisting
    as the bundled one does (append-only, ``appendfsync always``); stopped by its PID."""

    def __init__(self) -> None:
        from vezastream.state.redis_server import redis_binary

        self.dir = Path(tempfile.mkdtemp(prefix="vezabench-redis-"))
        self.socket = self.dir / "redis.sock"
        self.url = f"unix://{self.socket}"
        self.proc = subprocess.Popen(
            [redis_binary(), "--port", "0", "--unixsocket", str(self.socket), "--unixsocketperm", "700",
             "--dir", str(self.dir), "--appendonly", "yes", "--appendfsync", "always", "--save", "",
             "--maxclients", "20000"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _until_ping(self.url)
        except RuntimeError:
            self.close()
            raise

    @property
    def pid(self) -> int:
        return self.proc.pid

    def close(self) -> None:
        _stop(self.proc)
        shutil.rmtree(self.dir, ignore_errors=True)


class BenchCluster:
    """A Redis Cluster of ``masters`` masters (no replicas): ``redis-server`` (the bundled binary) on
    free loopback ports, persisting as :class:`BenchRedis`, joined by ``redis-cli --cluster create``;
    stopped by their PIDs."""

    def __init__(self, masters: int = 3) -> None:
        from vezastream.state.redis_server import redis_binary

        binary = redis_binary()
        self.dir = Path(tempfile.mkdtemp(prefix="vezabench-cluster-"))
        self.procs: list[subprocess.Popen[bytes]] = []
        self.addresses: list[str] = []
        try:
            for i in range(masters):
                port = launchers.cluster_port()
                folder = self.dir / str(i)
                folder.mkdir()
                self.procs.append(subprocess.Popen(
                    [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder), "--cluster-enabled",
                     "yes", "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--maxclients", "20000"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
                self.addresses.append(f"127.0.0.1:{port}")
            for url in self.urls:
                _until_ping(url)
            subprocess.run([str(Path(binary).with_name("redis-cli")), "--cluster", "create", *self.addresses,
                            "--cluster-yes"], check=True, capture_output=True, timeout=60)
            clients = [connect(url) for url in self.urls]
            deadline = time.monotonic() + 30
            while not all(c.cluster("INFO")["cluster_state"] == "ok" for c in clients):
                if time.monotonic() > deadline:
                    raise RuntimeError("the bench's Redis Cluster did not come up")
                time.sleep(0.2)
            for c in clients:
                c.close()
        except BaseException:
            self.close()
            raise

    @property
    def urls(self) -> list[str]:
        return [f"redis://{address}" for address in self.addresses]

    @property
    def env(self) -> dict[str, str]:
        return {"VEZASTREAM_REDIS__MODE": "cluster", "VEZASTREAM_REDIS__CLUSTER_NODES": json.dumps(self.addresses)}

    @property
    def pids(self) -> list[int]:
        return [proc.pid for proc in self.procs]

    def close(self) -> None:
        for proc in self.procs:
            _stop(proc)
        shutil.rmtree(self.dir, ignore_errors=True)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM (Redis then flushes its append-only file), SIGKILL after 15 s; by its PID."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _until_ping(url: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            c = connect(url)
            c.ping()
            c.close()
            return
        except (redis.RedisError, OSError):
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer")


class Nodes:
    """``count`` `vezastream serve` processes on one :class:`BenchRedis` (or, ``cluster``, one
    :class:`BenchCluster`), each on its own port.

    ``shared_data``: one ``storage.data_dir`` for all (as ``storage.staging = "local"`` needs),
    else one each (for ``storage.staging = "sink"``, given by ``serve_env``)."""

    def __init__(self, count: int, serve_args: list[str], serve_env: dict[str, str], shared_data: bool = True,
                 cluster: bool = False, attic: peers.Attic | None = None) -> None:
        """``attic``: where the nodes' folders go when closed (:class:`peers.Attic`); else removed."""
        self.attic = attic
        self.redis: BenchRedis | BenchCluster = BenchCluster() if cluster else BenchRedis()
        self.root = Path(tempfile.mkdtemp(prefix="vezabench-nodes-"))
        env = {**serve_env, **(self.redis.env if cluster else {"VEZASTREAM_REDIS__URL": self.redis.url})}
        self.nodes = [peers.Vezastream(serve_args, env=env,
                                       data_dir=self.root / ("data" if shared_data else f"data{i}"), attic=attic)
                      for i in range(count)]

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        if isinstance(self.redis, BenchCluster):
            warm_up(self.nodes[0].url)

    @property
    def redis_urls(self) -> str | list[str]:
        """What :class:`RedisCounts` reads: the one server, or the cluster's masters."""
        return self.redis.urls if isinstance(self.redis, BenchCluster) else self.redis.url

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    @property
    def pids(self) -> list[int]:
        redis_pids = self.redis.pids if isinstance(self.redis, BenchCluster) else [self.redis.pid]
        return [node.pid for node in self.nodes] + redis_pids

    def log_tails(self) -> str:
        """Each node's last log lines, for a run that failed."""
        return "\n".join(f"-- node {i} ({node.url}, pid {node.proc.pid if node.proc else '-'}, "
                         f"{'running' if node.proc and node.proc.poll() is None else 'exited'}):\n{node.log_tail()}"
                         for i, node in enumerate(self.nodes))

    def close(self) -> None:
        for node in self.nodes:
            node.close()
        self.redis.close()
        peers.remove(self.root, self.attic)


# -- cost curves: Redis memory per pending upload, GC pass time -----------------------------------

def redis_memory_per_upload(base_url: str, redis_url: str, count: int, protocol: str) -> dict:
    """Create ``count`` pending uploads with one 4 KiB chunk (or PATCH) each out of two; Redis's
    ``used_memory`` growth per upload."""
    client = connect(redis_url)
    client.execute_command("MEMORY", "PURGE")  # jemalloc builds: return freed pages (libc builds: a no-op)
    before = int(client.info("memory")["used_memory"])
    piece = os.urandom(4096)

    async def go() -> None:
        import lean_http

        http = lean_http.LeanClient(base_url, 64, 120)
        sem = asyncio.Semaphore(64)

        async def one(i: int) -> None:
            async with sem:
                if protocol == "native":
                    r = await http.request("POST", "/v1/uploads", {"Content-Type": "application/json"}, json.dumps(
                        {"filename": f"m{i}", "total_size": 2 * len(piece), "chunk_size": len(piece)}).encode())
                    uid = r.json()["upload_id"]
                    r = await http.request("PUT", f"/v1/uploads/{uid}/chunks/1",
                                           {"Content-Type": "application/octet-stream"}, memoryview(piece))
                    assert r.status == 201, r.text()
                else:
                    r = await http.request("POST", "/files/", {"Tus-Resumable": "1.0.0",
                                                               "Upload-Length": str(2 * len(piece))})
                    path = "/files/" + r.headers["location"].rstrip("/").rsplit("/", 1)[1]
                    r = await http.request("PATCH", path, {"Tus-Resumable": "1.0.0", "Upload-Offset": "0",
                                                           "Content-Type": "application/offset+octet-stream"},
                                           memoryview(piece))
                    assert r.status == 204, r.text()
        try:
            await asyncio.gather(*(one(i) for i in range(count)))
        finally:
            await http.close()

    asyncio.run(go())
    after = int(client.info("memory")["used_memory"])
    keys = client.dbsize()
    client.close()
    return {"protocol": protocol, "pending_uploads": count, "redis_bytes_per_upload": round((after - before) / count),
            "redis_keys": keys}


def gc_pass_seconds(count: int, kind: str, timeout: float = 300, owners: int = 0) -> dict:
    """One GC pass (``run_once()``, in this process) over ``count`` uploads, all of one ``kind``:
    "pending" (a Redis record and an empty staged data file each: kept) or "expired" (a staged
    folder and data file whose record is gone, older than ``gc.max_age``: removed). The
    uploads are made directly (records through the state store, pipelined; files without fsync).

    With ``owners``, the per-user limits are on and each pending upload holds a place of one of
    ``owners`` users (round robin), made older than ``QUOTA_GRACE``: what the pass's
    ``Quotas.reconcile`` looks at. Its share of the pass is "reconcile", and the Redis round trips
    it made (writes of a command or pipeline) "reconcile_round_trips"."""
    from vezastream.cli import _started
    from vezastream.config import load_settings
    from vezastream.engine.quotas import QUOTA_GRACE
    from vezastream.http.app import create_app
    from vezastream.http.keys import engine_key, gc_key
    from vezastream.models import Layout, UploadSpec, new_upload_id

    store_redis = BenchRedis()
    root = Path(tempfile.mkdtemp(prefix="vezabench-gc-"))
    try:
        settings = load_settings(None, environ={}, overrides={
            "storage.data_dir": str(root / "data"), "redis.url": store_redis.url, "gc.enabled": False,
            "log.level": "WARNING", "limits.max_pending_uploads": -(-count // owners) if owners else 0,
            "limits.max_creates_per_minute": 0})
        max_age = settings.gc.max_age

        async def go() -> dict:
            app = create_app(settings)
            async with _started(app):
                engine = app[engine_key]
                ids = [new_upload_id() for _ in range(count)]
                now = time.time()
                chunks = settings.storage.chunks_dir

                def make_files() -> None:
                    chunks.mkdir(parents=True, exist_ok=True)
                    old = now - 2 * max_age
                    for uid in ids:  # each upload's data file, flat in the staging folder (staging/writer.py)
                        data = engine.staging.data_path(uid)
                        data.touch()
                        if kind == "expired":
                            os.utime(data, (old, old))

                made = time.monotonic()
                await asyncio.to_thread(make_files)
                if kind == "pending":
                    held = now - 2 * QUOTA_GRACE
                    for i in range(0, count, 2000):
                        specs = [UploadSpec(id=uid, owner=f"u{(i + j) % owners}" if owners else "anonymous",
                                            filename="gc", total_size=1 << 20, chunk_size=1 << 18, total_chunks=4,
                                            created_at=held if owners else now, layout=Layout.IN_PLACE)
                                 for j, uid in enumerate(ids[i:i + 2000])]
                        await asyncio.gather(*(engine.store.create(spec, settings.limits.upload_ttl) for spec in specs),
                                             *(engine.quotas.reserve(spec) for spec in specs if owners))
                made = time.monotonic() - made
                collector = app[gc_key]
                phases, undo = _timed_phases(collector, engine.quotas)
                started = time.monotonic()
                try:
                    report = await asyncio.wait_for(collector.run_once(), timeout)
                finally:
                    undo()
                seconds = time.monotonic() - started
                left = sum(1 for _ in os.scandir(chunks))
            # The rest of the pass: a status look-up per folder (one round trip each), and the loop.
            trips = int(phases.pop("reconcile_round_trips"))
            phases["lookups"] = seconds - sum(phases.values())
            return {"uploads": count, "kind": kind, "owners": owners, "gc_pass_s": round(seconds, 4),
                    "us_per_upload": round(1e6 * seconds / count, 1), "removed": len(report.removed),
                    "kept": report.kept, "folders_left": left, "made_in_s": round(made, 1),
                    **{f"{name}_s": round(t, 4) for name, t in phases.items()}, "reconcile_round_trips": trips}

        return asyncio.run(go())
    finally:
        store_redis.close()
        shutil.rmtree(root, ignore_errors=True)


def _timed_phases(collector, quotas) -> tuple[dict[str, float], Callable[[], None]]:
    """Wrap a collector's steps (this instance only) to add up their wall time: "recover" (what dead
    processes left: a SCAN of every upload key, statuses in batches), "reconcile" (the per-user
    places: a SCAN of every user's, then their look-ups), "list" (the staged folders), "remove"
    (removing the folders of expired or completed uploads). Calls of a step that overlap
    (removals run together) count once: the wall time while at least one of them runs. And
    "reconcile_round_trips": what Redis connections sent while reconcile ran (a command or a
    pipeline each; the pass runs it alone), counted until ``undo()``."""
    from redis.asyncio.connection import AbstractConnection

    phases = {"recover": 0.0, "reconcile": 0.0, "list": 0.0, "remove": 0.0, "reconcile_round_trips": 0}
    running = {name: [0, 0.0] for name in ("recover", "reconcile", "list", "remove")}  # calls in flight, and since when

    def timed_async(name: str, fn):
        async def wrapper(*args, **kwargs):
            flight = running[name]
            if flight[0] == 0:
                flight[1] = time.monotonic()
            flight[0] += 1
            try:
                return await fn(*args, **kwargs)
            finally:
                flight[0] -= 1
                if flight[0] == 0:
                    phases[name] += time.monotonic() - flight[1]
        return wrapper

    def timed(name: str, fn):
        def wrapper(*args, **kwargs):
            started = time.monotonic()
            try:
                return fn(*args, **kwargs)
            finally:
                phases[name] += time.monotonic() - started
        return wrapper

    send = AbstractConnection.send_packed_command

    async def counted(conn, *args, **kwargs):
        phases["reconcile_round_trips"] += running["reconcile"][0] > 0
        return await send(conn, *args, **kwargs)

    AbstractConnection.send_packed_command = counted  # this process's: it only runs the bench's pass
    collector.recover = timed_async("recover", collector.recover)
    quotas.reconcile = timed_async("reconcile", quotas.reconcile)
    collector.staging.list_uploads = timed("list", collector.staging.list_uploads)
    collector.staging.remove_upload = timed_async("remove", collector.staging.remove_upload)
    return phases, lambda: setattr(AbstractConnection, "send_packed_command", send)
