"""Several nodes drill (issue 16): 3 `vezastream serve` nodes, a Redis Cluster, SeaweedFS, no shared disk.

Three nodes, each with its own data folder, share only a 3-master Redis Cluster with a replica each
(``redis.mode = "cluster"``, ``redis.min_replica_acks = 1``) and a SeaweedFS bucket (the S3 sink,
``storage.staging = "sink"``). 24 uploads run at once; every request goes to a random node, as
through a load balancer without sticky sessions, and one refused because its node is dead is sent
to another. Mid-run one node is SIGKILLed (by its PID; it is started again a few seconds later on
its own folder) and one Redis primary is SIGKILLed, so that its replica is promoted (the old
primary then comes back as a replica). Before that, two nodes are SIGKILLed at once, leaving one:
3 s later one is started again on its folder, the other replaced by a new node with an empty data
folder (a new machine).

Asserted: every upload completes, and the object in the bucket and ``GET .../content`` from a
random node are byte-identical to what was sent; no acknowledged chunk or offset is ever missing
(a client that had an error looks at the upload's state before it goes on); no answer is a 5xx
but 503; after one GC pass the bucket holds no open multipart upload and no object but the 24
uploads'; no node is left running.

Reported: the figures, and the Redis commands per chunk on the chunk path, counted with MONITOR on
every primary during a quiet phase after the run (no faults, the cluster whole again, one chunk at a
time, each to a random node): those the nodes send, and those Redis runs (the commands inside Lua
scripts too). The nodes' heartbeats (one SET a second per process) and sweeps of the noted whole
uploads (one SMEMBERS a minute) are not chunk work and are left out.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import secrets
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
import redis

from helpers import Job
from redis_topologies import RedisCluster, RedisProcess
from s3_servers import boto_client, new_bucket, object_keys, open_multipart_uploads, start_weed
from servers import Server, run, server_env
from vezastream.engine.leases import NODE_BEAT_SECONDS, NODE_SECONDS

KiB = 1024
MiB = 1024 * KiB
TUS = {"Tus-Resumable": "1.0.0"}
STREAM = {**TUS, "Content-Type": "application/offset+octet-stream"}
PREFIX = "up/"
#: Answers a client waits out and sends again (to any node): a failover under way (503), a lease
#: held by a node that has just died (409, 423, until its heartbeat lapses). 500 and 502 are
#: retried too, as a client would, but counted: the drill fails if any came.
RETRY = (409, 423, 500, 502, 503)
#: Seconds the whole run (uploads, kill, failover) may take.
RUN_S = 90


class Refused(Exception):
    """A node did not answer (dead, or died mid-request); the request goes to another."""


@dataclass
class Nodes:
    """Three `vezastream serve` processes and a client that sends each request to a random one."""

    servers: list[Server]
    envs: list[dict[str, str]]
    folders: list[Path]
    rng: random.Random
    #: The environment of a node whose data folder is the given one.
    env_of: Callable[[Path], dict[str, str]]
    session: aiohttp.ClientSession | None = None
    #: Every process started (the drill stops them all by PID, and checks none is left).
    started: list[Server] = field(default_factory=list)
    #: (status or 0 for no answer) -> count, over every request of the run.
    answers: dict[int, int] = field(default_factory=dict)
    #: Requests that had no answer or one to retry, so far.
    trouble: int = 0

    def start(self, i: int) -> Server:
        self.servers[i] = Server(self.envs[i], self.folders[i])
        self.started.append(self.servers[i])
        return self.servers[i]

    def replace(self, i: int) -> Server:
        """Start a new node in place of node ``i``: an empty data folder, a port of its own."""
        self.folders[i] = self.folders[i].with_name(self.folders[i].name + "-new")
        self.folders[i].mkdir()
        self.envs[i] = self.env_of(self.folders[i])
        return self.start(i)

    async def call(self, method: str, path: str, ok: tuple[int, ...], deadline: float, retry: tuple[int, ...] = RETRY,
                   **kw) -> tuple[int, dict[str, str], bytes]:
        """Send to a random node until one answers with ``ok``; a dead node's refusal goes to another."""
        assert self.session is not None
        tried: set[int] = set()
        while True:
            assert time.monotonic() < deadline, f"{method} {path}: no answer in {ok} before the deadline"
            choices = [i for i in range(len(self.servers)) if i not in tried] or list(range(len(self.servers)))
            i = self.rng.choice(choices)
            try:
                async with self.session.request(method, self.servers[i].url + path, **kw) as r:
                    body = await r.read()
                    status, headers = r.status, dict(r.headers)
            except (aiohttp.ClientConnectionError, asyncio.TimeoutError):
                self.answers[0] = self.answers.get(0, 0) + 1
                self.trouble += 1
                tried.add(i)
                if method == "PATCH":  # a tus client asks for the offset (HEAD) before it sends again
                    raise Refused(i)
                await asyncio.sleep(0.05)
                continue
            self.answers[status] = self.answers.get(status, 0) + 1
            if status in ok:
                return status, headers, body
            if status in retry:
                self.trouble += 1
                await asyncio.sleep(0.2)
                continue
            raise AssertionError(f"{method} {path} on node {i}: {status} {body[:300]!r}")


@dataclass
class Progress:
    """How far the uploads are (the sum over uploads of the share of their bytes acknowledged), when
    each acknowledgement came, and what was found missing of what had been acknowledged."""

    done: float = 0.0
    acks: list[tuple[str, float]] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)

    def ack(self, name: str, share: float) -> None:
        self.done += share
        self.acks.append((name, time.monotonic()))

    def gaps(self) -> list[tuple[str, float, float]]:
        """(upload, an acknowledgement, the next one) for every pair in a row."""
        out = []
        for name in {n for n, _ in self.acks}:
            times = sorted(t for n, t in self.acks if n == name)
            out.extend((name, a, b) for a, b in zip(times, times[1:]))
        return out

    def longest_gap(self, across: float | None = None, avoiding: tuple[float, ...] = ()) -> str:
        """The longest an upload went without an acknowledgement, and which: across the moment ``across``
        (a fault's), or (a baseline) between moments none of ``avoiding`` falls in."""
        gaps = [(b - a, name) for name, a, b in self.gaps() if (a <= across < b if across is not None else
                                                                not any(a <= m < b for m in avoiding))]
        gap, name = max(gaps, default=(0.0, "none"))
        return f"{gap:.1f} ({name})"


async def native_upload(nodes: Nodes, job: Job, i: int, p: Progress, deadline: float) -> str:
    """Create on a random node, each chunk to a random node, complete on a random node; returns the id."""
    data, piece = job.data, job.piece
    total = -(-len(data) // piece)
    _, _, body = await nodes.call("POST", "/v1/uploads", (201,), deadline,
                                  json={"filename": f"n{i}.bin", "total_size": len(data), "chunk_size": piece})
    uid = _json(body)["upload_id"]
    acked: set[int] = set()

    async def all_acknowledged_there() -> None:
        _, _, body = await nodes.call("GET", f"/v1/uploads/{uid}", (200,), deadline)
        missing = acked - set(_json(body)["chunks_received"])
        if missing:
            p.lost.append(f"native {i}: acknowledged chunks {sorted(missing)} missing")

    for n in range(1, total + 1):
        chunk = data[(n - 1) * piece:n * piece]
        before = nodes.trouble
        await nodes.call("PUT", f"/v1/uploads/{uid}/chunks/{n}", (200, 201), deadline, data=chunk)
        acked.add(n)
        p.ack(f"native {piece // KiB} KiB #{i}", len(chunk) / len(data))
        if nodes.trouble != before:  # a node died, or Redis failed over, meanwhile: is all we were told there?
            await all_acknowledged_there()
    await all_acknowledged_there()
    await nodes.call("POST", f"/v1/uploads/{uid}/complete", (200,), deadline)
    return uid


async def tus_upload(nodes: Nodes, job: Job, i: int, p: Progress, deadline: float) -> str:
    """Create on a random node, PATCH to random nodes; "tus-concat": two partial uploads sent at once,
    then a final upload (their concatenation) created on a random node. Returns the id."""
    if job.door == "tus":
        return await tus_send(nodes, job.data, job.piece, {}, f"tus #{i}", p, deadline)
    half = len(job.data) // 2
    partial = {"Upload-Concat": "partial"}
    parts = await asyncio.gather(*(tus_send(nodes, data, job.piece, partial, f"tus partial #{i}.{n}", p, deadline,
                                            share=len(data) / len(job.data))
                                   for n, data in enumerate((job.data[:half], job.data[half:]))))
    _, headers, _ = await nodes.call("POST", "/files/", (201,), deadline, headers={
        **TUS, "Upload-Concat": "final;" + " ".join(f"/files/{pid}" for pid in parts)})
    return headers["Location"].rsplit("/", 1)[1]


async def tus_send(nodes: Nodes, data: bytes, piece: int, headers: dict[str, str], name: str, p: Progress,
                   deadline: float, share: float = 1.0) -> str:
    """One tus upload; after a refused PATCH or a 409, HEAD (any node) and go on from its offset."""
    _, answer, _ = await nodes.call("POST", "/files/", (201,), deadline,
                                    headers={**TUS, **headers, "Upload-Length": str(len(data))})
    path = "/files/" + answer["Location"].rsplit("/", 1)[1]
    offset = acked = 0
    while offset < len(data):
        end = min(offset + piece, len(data))
        try:
            status, answer, _ = await nodes.call("PATCH", path, (204, 409), deadline, retry=(423, 500, 502, 503),
                                                 headers={**STREAM, "Upload-Offset": str(offset)},
                                                 data=data[offset:end])
        except Refused:
            status = 409
        if status == 204:
            p.ack(name, share * (int(answer["Upload-Offset"]) - offset) / len(data))
            offset = acked = int(answer["Upload-Offset"])
            continue
        await asyncio.sleep(0.2)  # 409: another request's lease (perhaps our own lost one's), or an offset moved
        _, answer, _ = await nodes.call("HEAD", path, (200,), deadline, headers=TUS)
        offset = int(answer["Upload-Offset"])
        if offset < acked:
            p.lost.append(f"{name}: offset {offset} after {acked} was acknowledged")
    return path.rsplit("/", 1)[1]


def _json(body: bytes) -> dict:
    return json.loads(body)


# -- Redis commands per chunk: MONITOR on every primary --------------------------------------------

class Monitors:
    """MONITOR on each primary, in threads; stopped by an ECHO of a marker each one sees last."""

    def __init__(self, primaries: list[RedisProcess], prefix: str) -> None:
        self.primaries = primaries
        self.heartbeat = f"{prefix}:node:"
        self.sweep = f"{prefix}:unfinished"  # each node's sweep of noted uploads, once a minute
        self.marker = "vz-drill-" + secrets.token_hex(4)
        self.seen: list[dict] = []
        self.lock = threading.Lock()
        self.threads: list[threading.Thread] = []
        self.markers: list[redis.Redis] = []

    def _watch(self, node: RedisProcess, ready: threading.Event) -> None:
        quiet_spells_are_fine = redis.Redis(port=node.port, decode_responses=True, socket_timeout=None)
        with quiet_spells_are_fine.monitor() as m:
            ready.set()
            while True:
                cmd = m.next_command()
                if self.marker in cmd["command"]:
                    return
                with self.lock:
                    self.seen.append(cmd)

    def start(self) -> None:
        # The marker's connections are opened (their handshake sent) before anything is watched:
        # a HELLO of the drill's own is not the nodes' chunk work.
        self.markers = [node.client() for node in self.primaries]
        for client in self.markers:
            client.ping()
        for node in self.primaries:
            ready = threading.Event()
            t = threading.Thread(target=self._watch, args=(node, ready), daemon=True)
            t.start()
            ready.wait(10)
            self.threads.append(t)

    def stop(self) -> tuple[Counter[str], int]:
        """(the commands the nodes sent, by name; how many Redis ran: those inside Lua scripts too),
        heartbeats and sweeps aside."""
        if any(t.is_alive() for t in self.threads):
            for client in self.markers:
                client.echo(self.marker)
            for t in self.threads:
                t.join(10)
        work = [c for c in self.seen if self.heartbeat not in c["command"] and self.sweep not in c["command"]
                and c["command"].split(" ", 1)[0].lower() not in ("replconf", "echo")]
        sent = Counter(c["command"].split(" ", 1)[0].upper() for c in work if c["client_type"] != "lua")
        return sent, len(work)


async def commands_per_chunk(nodes: Nodes, cluster: RedisCluster, prefix: str, job: Job) -> str:
    """One upload, one request at a time to random nodes, its chunk path watched:
    "<sent> sent (<each command> <count>...), <run> run", per chunk or PATCH.
    The upload is deleted afterwards (nothing of it is left in the bucket)."""
    deadline = time.monotonic() + 60
    data, piece = job.data, job.piece
    pieces = -(-len(data) // piece)
    monitors = Monitors(cluster.primaries(), prefix)
    try:
        if job.door == "native":
            _, _, body = await nodes.call("POST", "/v1/uploads", (201,), deadline, json={
                "filename": "quiet.bin", "total_size": len(data), "chunk_size": piece})
            path = f"/v1/uploads/{_json(body)['upload_id']}"
            await asyncio.to_thread(monitors.start)
            for n in range(1, pieces + 1):
                await nodes.call("PUT", f"{path}/chunks/{n}", (201,), deadline, data=data[(n - 1) * piece:n * piece])
            sent, ran = await asyncio.to_thread(monitors.stop)
            await nodes.call("POST", f"{path}/complete", (200,), deadline)
        else:  # every PATCH but the last (which completes the upload)
            _, headers, _ = await nodes.call("POST", "/files/", (201,), deadline,
                                             headers={**TUS, "Upload-Length": str(len(data))})
            path = "/files/" + headers["Location"].rsplit("/", 1)[1]
            await asyncio.to_thread(monitors.start)
            for n in range(pieces):
                if n == pieces - 1:
                    sent, ran = await asyncio.to_thread(monitors.stop)
                await nodes.call("PATCH", path, (204,), deadline, data=data[n * piece:(n + 1) * piece],
                                 headers={**STREAM, "Upload-Offset": str(n * piece)})
            pieces -= 1
    finally:
        await asyncio.to_thread(monitors.stop)  # (again: a no-op once stopped)
    await nodes.call("DELETE", path, (204,), deadline, headers=TUS)
    names = " ".join(f"{name} {count / pieces:.2g}" for name, count in sent.most_common())
    return f"{sent.total() / pieces:.1f} sent ({names}), {ran / pieces:.1f} run"


# -- the faults ------------------------------------------------------------------------------------

def fail_over_a_primary(cluster: RedisCluster) -> float:
    """SIGKILL a primary; once its replica is promoted, start it again (it comes back as a replica).
    Returns the seconds from the kill to the promotion."""
    victim = cluster.primaries()[0]
    heir = cluster.replica_of(victim)
    killed_at = time.monotonic()
    victim.kill()
    deadline = killed_at + 30
    while heir.client().execute_command("ROLE")[0] != "master":
        assert time.monotonic() < deadline, "no replica promoted in 30 s"
        time.sleep(0.05)
    promoted_s = time.monotonic() - killed_at
    victim.restart()
    return promoted_s


def stop(server: Server) -> None:
    """SIGTERM, and SIGKILL after 15 s (a node still busy with a dead client's request)."""
    try:
        server.proc.terminate()
        server.proc.wait(15)
    except subprocess.TimeoutExpired:
        server.kill()


async def when(progress: Progress, share: float, uploads: asyncio.Future, count: int, deadline: float) -> None:
    """Once the uploads are ``share`` through on average, or over (an upload's failure is raised by
    awaiting ``uploads``)."""
    while progress.done < share * count and not uploads.done():
        assert time.monotonic() < deadline, f"uploads did not reach {share:.0%} in time"
        await asyncio.sleep(0.05)


# -- the drill -------------------------------------------------------------------------------------

#: The kinds of upload: (door, count, (smallest size, largest), chunk or PATCH size). Native chunks of
#: 8 MiB go straight to S3 as parts (direct mode); the others wait in the bucket (storage.staging = "sink").
#: "tus-concat": two partial uploads sent at once, then their final upload.
KINDS = [("native", 8, (16 * MiB + 1, 20 * MiB), 8 * MiB), ("native", 8, (1 * MiB, 2 * MiB), 256 * KiB),
         ("tus", 4, (600_000, 1_500_000), 200_000), ("tus-concat", 4, (600_000, 1_500_000), 150_000)]
#: The chunk paths whose Redis commands are counted: name -> the quiet phase's upload (door, size, piece).
QUIET = {"native_8MiB": ("native", 6 * 8 * MiB, 8 * MiB), "native_256KiB": ("native", 16 * 256 * KiB, 256 * KiB),
         "tus_patch": ("tus", 17 * 200_000, 200_000)}
def jobs_of(rng: random.Random, kinds: list[tuple[str, int, tuple[int, int], int]]) -> list[Job]:
    return [Job(door, rng.randbytes(rng.randrange(*sizes)), piece)
            for door, count, sizes, piece in kinds for _ in range(count)]


def node_env(folder: Path, cluster: RedisCluster, prefix: str, bucket: str, endpoint: str, aws: dict[str, str]
             ) -> dict[str, str]:
    return {**server_env(folder), **aws,
            "VEZASTREAM_REDIS__MODE": "cluster",
            "VEZASTREAM_REDIS__CLUSTER_NODES": "[%s]" % ", ".join(f'"{n.address}"' for n in cluster.nodes),
            "VEZASTREAM_REDIS__KEY_PREFIX": prefix,
            "VEZASTREAM_REDIS__MIN_REPLICA_ACKS": "1",
            "VEZASTREAM_STORAGE__SINK": "s3", "VEZASTREAM_STORAGE__STAGING": "sink",
            "VEZASTREAM_SINKS__S3__BUCKET": bucket, "VEZASTREAM_SINKS__S3__ENDPOINT_URL": endpoint,
            "VEZASTREAM_SINKS__S3__ADDRESSING_STYLE": "path", "VEZASTREAM_SINKS__S3__PREFIX": PREFIX,
            "VEZASTREAM_SINKS__S3__CONTENT": "proxy", "VEZASTREAM_LOG__FORMAT": "json"}


@pytest.mark.slow
@pytest.mark.drill
async def test_three_nodes_a_killed_node_and_a_failed_over_primary(tmp_path, redis_cluster, aws_env, report):
    seed = int(os.environ.get("DRILL_SEED", random.randrange(1 << 30)))
    print(f"nodes drill seed: {seed} (DRILL_SEED={seed} repeats it)")
    rng = random.Random(seed)
    jobs = jobs_of(rng, KINDS)
    prefix = "t" + secrets.token_hex(4)
    weed = start_weed(tmp_path / "weed")
    s3 = boto_client(weed.endpoint)
    bucket = new_bucket(s3)
    folders = [tmp_path / f"node{i}" for i in range(3)]
    for f in folders:
        f.mkdir()
    def env_of(folder: Path) -> dict[str, str]:
        return node_env(folder, redis_cluster, prefix, bucket, weed.endpoint, aws_env)

    nodes = Nodes([None] * 3, [env_of(f) for f in folders], folders, rng, env_of)  # type: ignore[list-item]
    started = time.monotonic()
    try:
        for i in range(3):
            nodes.start(i)
        await asyncio.gather(*(s.wait_ready() for s in nodes.servers))
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            nodes.session = session
            figures = await _run(nodes, redis_cluster, jobs, rng)
            ids = figures.pop("ids")
            # Counted once every node and primary has done all kinds of work (scripts loaded, pools open),
            # and the restarted node's second start-up recovery (a SCAN and a read of every upload) is over.
            await asyncio.to_thread(redis_cluster.healthy)
            await asyncio.sleep(figures.pop("restarted_at") + NODE_SECONDS + NODE_BEAT_SECONDS + 1 - time.monotonic())
            per_chunk = {}
            for name in QUIET:
                door, size, piece = QUIET[name]
                quiet = Job(door, rng.randbytes(size), piece)
                per_chunk[name] = await commands_per_chunk(nodes, redis_cluster, prefix, quiet)
            # Read back: the bucket's object, and the content through a random node.
            for uid, job in zip(ids, jobs):
                key = PREFIX + uid
                stored = await asyncio.to_thread(lambda: s3.get_object(Bucket=bucket, Key=key)["Body"].read())
                assert hashlib.sha256(stored).digest() == hashlib.sha256(job.data).digest(), f"{uid}: object differs"
                _, _, body = await nodes.call("GET", f"/v1/uploads/{uid}/content", (200,), time.monotonic() + 30)
                assert body == job.data, f"{uid}: content differs"
        await asyncio.to_thread(redis_cluster.healthy)
        # What the dead node left in the bucket is swept by one GC pass.
        left = len(open_multipart_uploads(s3, bucket))
        strays = len(set(object_keys(s3, bucket)) - {PREFIX + uid for uid in ids})
        await asyncio.sleep(1.1)
        gc = await asyncio.to_thread(run, ["gc"], {**nodes.envs[0], "VEZASTREAM_GC__MAX_AGE": "1"}, nodes.folders[0])
        assert gc.returncode == 0, gc.stderr
        assert open_multipart_uploads(s3, bucket) == []
        left_over = set(object_keys(s3, bucket)) ^ {PREFIX + uid for uid in ids}
        assert not left_over, f"objects not of the uploads, or missing: {sorted(left_over)}"
    finally:
        for server in nodes.servers:
            if server is not None:
                stop(server)
        weed.stop()
        assert all(server.proc.poll() is not None for server in nodes.started)
        await asyncio.to_thread(redis_cluster.healthy)  # the session's cluster is left whole
    report("several nodes", seed=seed, uploads=len(jobs), nodes=3, kills=3, failovers=1,
           **figures, multipart_left_then_swept=left, other_objects_left_then_swept=strays,
           seconds=round(time.monotonic() - started, 1),
           **{f"redis_commands_per_chunk_{k}": v for k, v in per_chunk.items()})


async def _run(nodes: Nodes, cluster: RedisCluster, jobs: list[Job], rng: random.Random) -> dict[str, object]:
    """The uploads, with two nodes SIGKILLed at once when they are 15 % through (on average; 3 s later
    one is started again on its folder, the other replaced by a new node on an empty folder), a node
    SIGKILLed at 30 % (started again 5 s later) and a primary failed over at 55 %."""
    deadline = time.monotonic() + RUN_S
    progress = Progress()
    uploads = asyncio.gather(*((native_upload if job.door == "native" else tus_upload)(nodes, job, i, progress,
                                                                                        deadline)
                               for i, job in enumerate(jobs)))
    try:
        await when(progress, 0.15, uploads, len(jobs), deadline)
        back, replaced = rng.sample(range(3), 2)
        nodes.servers[back].kill()
        nodes.servers[replaced].kill()
        two_killed_at = time.monotonic()
        await asyncio.sleep(3)
        await asyncio.gather(nodes.start(back).wait_ready(), nodes.replace(replaced).wait_ready())
        await when(progress, 0.3, uploads, len(jobs), deadline)
        victim = rng.randrange(3)
        nodes.servers[victim].kill()  # SIGKILL, by its PID
        killed_at = time.monotonic()
        await when(progress, 0.55, uploads, len(jobs), deadline)
        failed_over_at = time.monotonic()
        promoted_s = await asyncio.to_thread(fail_over_a_primary, cluster)
        await asyncio.sleep(max(0.0, killed_at + 5 - time.monotonic()))
        await nodes.start(victim).wait_ready()  # the load balancer sends it requests again
        restarted_at = time.monotonic()
        ids = await uploads
    finally:
        uploads.cancel()
    assert progress.lost == [], progress.lost
    other = {status: n for status, n in nodes.answers.items() if status >= 500 and status != 503}
    assert not other, f"answers other than 503 while Redis failed over: {other} (the nodes' server.log say why)"
    return {"ids": ids, "restarted_at": restarted_at, "lost": len(progress.lost),
            "longest_wait_across_two_killed_s": progress.longest_gap(across=two_killed_at),
            "longest_wait_across_kill_s": progress.longest_gap(across=killed_at),
            "failover_promoted_s": round(promoted_s, 2),
            "longest_wait_across_failover_s": progress.longest_gap(across=failed_over_at),
            "longest_wait_elsewhere_s": progress.longest_gap(avoiding=(killed_at, failed_over_at, two_killed_at)),
            "no_answer": nodes.answers.get(0, 0),
            "answers_503": nodes.answers.get(503, 0),
            "answers_other_5xx": sum(n for s, n in nodes.answers.items() if s >= 500 and s != 503),
            "answers_409_423": nodes.answers.get(409, 0) + nodes.answers.get(423, 0)}
