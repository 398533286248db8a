"""vezastream on real Redis topologies: a 3-master Cluster with replicas, and Sentinel (tests/redis_topologies.py).

Uploads through both front doors on each, the start-up check of ``redis.mode``, what readiness
shows, ``redis.min_replica_acks`` (WAIT) with a replica up and paused, and a failover drill.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

from tests.redis_topologies import SERVICE, RedisCluster, SentinelSetup, _start
from tests.tus_helpers import TUS, tus_create, tus_patch, upload_path
from helpers import scrape, value
from servers import free_port
from tus_table import MAX, TABLE, check_row
from vezastream.engine.quotas import QUOTA_GRACE
from vezastream.models import UploadSpec, new_upload_id
from vezastream.http.app import engine_key, gc_key
from vezastream.state.batching import CommandBatcher
from vezastream.cli import main
from vezastream.config import ConfigError
from vezastream.testing import content, create, put_chunk, random_bytes, running_app, sha256, upload

TOPOLOGIES = ["cluster", "sentinel"]


def cluster_settings(cluster: RedisCluster) -> dict:
    return {"redis.url": "", "redis.mode": "cluster", "redis.cluster_nodes": [n.address for n in cluster.nodes[:2]]}


def sentinel_settings(setup: SentinelSetup) -> dict:
    return {"redis.url": "", "redis.mode": "sentinel", "redis.sentinels": setup.sentinel_addresses,
            "redis.sentinel_master": SERVICE}


@pytest.fixture(params=TOPOLOGIES)
def on_topology(request, make_settings):
    """``make(**overrides)``: settings pointing at the Cluster, then at the Sentinel setup."""
    if request.param == "cluster":
        base = cluster_settings(request.getfixturevalue("redis_cluster"))
    else:
        base = sentinel_settings(request.getfixturevalue("redis_sentinel"))
    return lambda **extra: make_settings(**{**base, **extra})


async def tus_upload(client, data: bytes, piece: int) -> str:
    path = upload_path(await tus_create(client, len(data)))
    for offset in range(0, len(data), piece):
        await tus_patch(client, path, offset, data[offset:offset + piece])
    return path


async def test_native_and_tus_uploads_read_back_byte_identical(make_client, on_topology):
    client = await make_client(on_topology())
    blobs = [random_bytes(300_000 + i) for i in range(6)]  # six uploads: their ids hash to every master
    results = await asyncio.gather(*(upload(client, b, 64 * 1024) for b in blobs))
    for blob, result in zip(blobs, results):
        assert result["sha256"] == sha256(blob)
        assert await content(client, result["upload_id"]) == (200, blob)
    tus_blob = random_bytes(200_000)
    path = await tus_upload(client, tus_blob, 50_000)
    head = await client.head(path, headers=TUS)
    assert head.headers["Upload-Offset"] == str(len(tus_blob))
    assert await content(client, path.rsplit("/", 1)[1]) == (200, tus_blob)


async def test_scan_and_gc_cover_every_primary(make_client, make_settings, redis_cluster):
    """What GC and recovery walk (StateStore.scan) holds the uploads of every master."""
    client = await make_client(make_settings(**cluster_settings(redis_cluster), **{"gc.max_age": 1}))
    store = client.app[engine_key].store
    ids: set[str] = set()

    def masters() -> set[int]:
        return {redis_cluster.node_for(store.key(i)).port for i in ids}

    # Upload ids are random: 12 of them missed one of the 3 masters about once in 40 runs, so more
    # are made until each master holds one (bounded).
    while len(ids) < 12 or (len(ids) < 60 and len(masters()) < 3):
        ids.add((await create(client, total_size=20, chunk_size=10))["upload_id"])
    for upload_id in ids:  # a staged chunk each: a folder the GC looks at
        await put_chunk(client, upload_id, 1, b"x" * 10)
    assert len(masters()) == 3  # spread over the masters
    seen = {upload_id async for upload_id, what in store.scan() if what == ""}
    assert ids <= seen
    await asyncio.sleep(1.1)  # older than gc.max_age: kept only because their state is found
    report = await client.app[gc_key].run_once()  # a GC pass (its lease, its reads) on the cluster
    assert not report.skipped and not report.removed and report.kept >= len(ids)
    # An upload's keys gone with its place still held (a process killed mid-DELETE): the pass finds the
    # user's counters on their shard and gives the place back.
    gone = sorted(ids)[0]
    await store.redis.delete(store.key(gone), store.chunks_key(gone))
    await store.note_unfinished(gone)  # noted by a watch (tus, a whole upload): the pass drops its note
    # And places other users left, their counters on every master, read in one batch of users.
    quotas = client.app[engine_key].quotas
    strays = [UploadSpec(id=new_upload_id(), owner=f"user{n}", filename="f", total_size=10, chunk_size=10,
                         total_chunks=1, created_at=time.time()) for n in range(6)]
    assert len({redis_cluster.node_for(quotas._key(spec.owner, "pending")).port for spec in strays}) == 3
    for spec in strays:
        assert await quotas.reserve(spec)
    client.app[gc_key].clock = lambda: time.time() + QUOTA_GRACE + 1
    assert sorted((await client.app[gc_key].run_once()).quota_released) == sorted(
        [f"anonymous/{gone}", *(f"{spec.owner}/{spec.id}" for spec in strays)])
    assert await store.unfinished() == []


@pytest.mark.parametrize("mode", ["cluster", "sentinel"])
async def test_redis_round_trips_are_measured_on_a_cluster_and_a_sentinel_master(make_client, make_settings, mode,
                                                                                request):
    """``vezastream_redis_roundtrip_seconds`` is fed by every primary's pipelines (or the master Sentinel
    names), not only standalone's."""
    if mode == "cluster":
        settings = cluster_settings(request.getfixturevalue("redis_cluster"))
    else:
        settings = sentinel_settings(request.getfixturevalue("redis_sentinel"))
    client = await make_client(make_settings(**settings))
    for _ in range(6):  # uploads on several primaries
        data = random_bytes(25)
        assert (await upload(client, data, 10))["sha256"] == sha256(data)
    assert value(await scrape(client), "vezastream_redis_roundtrip_seconds_count") >= 6 * 5


async def test_scripts_missing_on_the_primaries_cost_no_503(make_client, make_settings, redis_cluster):
    """A fresh cluster (or a restarted primary) lacks the Lua scripts: a burst of creates loads them
    through the shared pipelines, without opening a connection per command (MaxConnectionsError, 503)."""
    client = await make_client(make_settings(**cluster_settings(redis_cluster), **{"redis.max_connections": 8}))
    for node in redis_cluster.primaries():
        node.client().script_flush()
    replies = await asyncio.gather(*(client.post("/v1/uploads", json={"filename": f"f{i}.bin", "total_size": 10,
                                                                       "chunk_size": 10}) for i in range(200)))
    assert [r.status for r in replies] == [201] * 200
    upload_id = (await replies[-1].json())["upload_id"]
    await put_chunk(client, upload_id, 1, b"x" * 10)


async def test_tus_protocol_table_on_cluster(make_client, make_settings, redis_cluster):
    """The tus acceptance table (which failed with MovedError on a Cluster) passes against one."""
    client = await make_client(make_settings(**cluster_settings(redis_cluster), **{"tus.max_size": MAX}))
    for row in TABLE:
        await check_row(client, *row)


async def test_deep_health_shows_the_cluster(make_client, make_settings, redis_cluster):
    client = await make_client(make_settings(**cluster_settings(redis_cluster)))
    body = await (await client.get("/v1/health/deep")).json()
    assert body["checks"]["redis"] == {"ok": True}
    assert body["redis"] == {"mode": "cluster", "primaries": 3, "replicas": 3, "slots_covered": 16384,
                             "cluster_state": "ok"}


async def test_deep_health_shows_the_sentinel_master(make_client, make_settings, redis_sentinel):
    client = await make_client(make_settings(**sentinel_settings(redis_sentinel)))
    body = await (await client.get("/v1/health/deep")).json()
    assert body["redis"]["mode"] == "sentinel"
    assert body["redis"]["master"] == redis_sentinel.current_master().address
    assert sorted(body["redis"]["replicas"]) == sorted(n.address for n in redis_sentinel.replicas())


async def started(settings) -> None:
    async with running_app(settings):
        pass


@pytest.mark.parametrize("mismatch", ["standalone-at-cluster", "standalone-at-sentinel", "cluster-at-standalone",
                                      "sentinel-at-standalone"])
async def test_a_wrong_mode_stops_the_start_with_the_fix(make_settings, redis_cluster, redis_sentinel, mismatch):
    plain = f"127.0.0.1:{redis_sentinel.current_master().port}"
    settings = {
        "standalone-at-cluster": {"redis.url": redis_cluster.url},
        "standalone-at-sentinel": {"redis.url": f"redis://{redis_sentinel.sentinel_addresses[0]}"},
        "cluster-at-standalone": {"redis.url": "", "redis.mode": "cluster", "redis.cluster_nodes": [plain]},
        "sentinel-at-standalone": {"redis.url": "", "redis.mode": "sentinel", "redis.sentinels": [plain],
                                   "redis.sentinel_master": SERVICE},
    }[mismatch]
    fix = {"standalone-at-cluster": 'set redis.mode = "cluster"',
           "standalone-at-sentinel": 'set redis.mode = "sentinel"',
           "cluster-at-standalone": 'set redis.mode = "standalone"',
           "sentinel-at-standalone": 'is not a Sentinel; name the sentinels, or set redis.mode = "standalone"'}[mismatch]
    with pytest.raises(ConfigError, match=fix):
        await started(make_settings(**settings))


def test_the_cli_names_the_fix_for_a_wrong_mode(tmp_path, monkeypatch, capsys, redis_cluster):
    """``vezastream gc`` with redis.url at a cluster node: exit status 2, one line naming the fix."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VEZASTREAM_REDIS__URL", redis_cluster.url)
    monkeypatch.setenv("VEZASTREAM_STORAGE__DATA_DIR", str(tmp_path / "data"))
    assert main(["gc"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ('vezastream: config error: redis.mode: redis.url names a Redis Cluster node; '
                   'set redis.mode = "cluster" and redis.cluster_nodes'), err


def test_a_master_name_the_sentinels_do_not_monitor_is_a_config_error(tmp_path, monkeypatch, capsys, redis_sentinel):
    """The sentinels answered, without the name: not "did not answer" (exit status 1) but the key, and
    the names they do monitor (exit status 2)."""
    monkeypatch.chdir(tmp_path)
    for key, value in {"URL": "", "MODE": "sentinel", "SENTINELS": json.dumps(redis_sentinel.sentinel_addresses),
                       "SENTINEL_MASTER": "wrongname"}.items():
        monkeypatch.setenv(f"VEZASTREAM_REDIS__{key}", value)
    monkeypatch.setenv("VEZASTREAM_STORAGE__DATA_DIR", str(tmp_path / "data"))
    assert main(["gc"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("vezastream: config error: redis.sentinel_master: the sentinels monitor no master named "
                   f"'wrongname'; they monitor: {SERVICE}"), err


@pytest.mark.parametrize("key,value,problem", [
    ("redis.mode", "sharded", "redis.mode"),
    ("redis.cluster_nodes", [], "redis.cluster_nodes"),
    ("redis.sentinel_master", "", "redis.sentinel_master"),
])
def test_incomplete_topology_config_is_refused(make_settings, redis_cluster, redis_sentinel, key, value, problem):
    base = cluster_settings(redis_cluster) if "cluster" in key or key == "redis.mode" else \
        sentinel_settings(redis_sentinel)
    with pytest.raises(ConfigError, match=problem):
        make_settings(**{**base, key: value})


def test_replica_acks_need_replicas(make_settings):
    with pytest.raises(ConfigError, match="bundled Redis"):
        make_settings(**{"redis.url": "", "redis.min_replica_acks": 1})


async def test_deep_health_fails_while_the_master_has_fewer_replicas_than_min_replica_acks(
        make_client, make_settings, tmp_path, caplog):
    """A master without the replicas redis.min_replica_acks asks for answers every chunk 503: the node
    says so at start-up, and readiness fails ("too-few-replicas") until a replica attaches."""
    caplog.set_level(logging.WARNING, logger="vezastream.http")
    master = _start(tmp_path / "master")
    replica = None
    try:
        client = await make_client(make_settings(**{"redis.url": f"redis://{master.address}/0",
                                                    "redis.min_replica_acks": 1, "redis.replica_ack_timeout": 100}))
        warned = [r for r in caplog.records if getattr(r, "event", None) == "too-few-replicas"]
        assert len(warned) == 1 and warned[0].replicas == {master.address: 0}, caplog.text
        deep = await client.get("/v1/health/deep")
        body = await deep.json()
        assert deep.status == 503 and body["checks"]["redis"] == {"ok": False, "reason": "too-few-replicas"}, body
        upload_id = (await create(client, total_size=10, chunk_size=10))["upload_id"]
        assert (await put_chunk(client, upload_id, 1, b"x" * 10, expect=None))[0] == 503  # what it warned of
        replica = _start(tmp_path / "replica", f"replicaof 127.0.0.1 {master.port}")
        deadline = time.monotonic() + 15
        while master.client().info("replication")["connected_slaves"] < 1:
            assert time.monotonic() < deadline, "the replica did not attach in 15 s"
            await asyncio.sleep(0.1)
        deep = await client.get("/v1/health/deep")
        assert deep.status == 200, await deep.text()
    finally:
        for server in (replica, master):
            if server is not None:
                server.stop()


@pytest.mark.parametrize("on", TOPOLOGIES)
async def test_deep_health_counts_the_replicas_of_every_primary(request, make_client, make_settings, on):
    """A Cluster's primaries have one replica each, the Sentinel master two: as many acks as that is
    ready, one more is not."""
    topology = request.getfixturevalue("redis_cluster" if on == "cluster" else "redis_sentinel")
    base = cluster_settings(topology) if on == "cluster" else sentinel_settings(topology)
    replicas = 1 if on == "cluster" else len(topology.replicas())
    for acks, status in ((replicas, 200), (replicas + 1, 503)):
        client = await make_client(make_settings(**base, **{"redis.min_replica_acks": acks}))
        deep = await client.get("/v1/health/deep")
        body = await deep.json()
        assert deep.status == status, body
        assert body["checks"]["redis"] == ({"ok": True} if status == 200 else {"ok": False, "reason": "too-few-replicas"})


async def _first(make, wanted, tries: int = 100):
    """What ``make()`` answers the first time ``wanted`` takes it, within ``tries``."""
    for _ in range(tries):
        made = await make()
        if wanted(made):
            return made
    raise AssertionError(f"none of {tries} was wanted")


def replicas_of_upload(topology, on: str, store, upload_id: str) -> list:
    if on == "cluster":
        return [topology.replica_of(topology.node_for(store.key(upload_id)))]
    return topology.replicas()


@pytest.mark.parametrize("on", TOPOLOGIES)
async def test_replica_acks_wait_and_answer_503_when_the_replica_is_away(request, make_client, make_settings, on):
    topology = request.getfixturevalue("redis_cluster" if on == "cluster" else "redis_sentinel")
    base = cluster_settings(topology) if on == "cluster" else sentinel_settings(topology)
    client = await make_client(make_settings(**base, **{"redis.min_replica_acks": 1,
                                                        "redis.replica_ack_timeout": 300}))
    data = random_bytes(30_000)
    state = await create(client, total_size=len(data), chunk_size=10_000)
    upload_id = state["upload_id"]
    await put_chunk(client, upload_id, 1, data[:10_000])  # a replica holds it: 201
    store = client.app[engine_key].store
    replicas = replicas_of_upload(topology, on, store, upload_id)

    def same_primary(uid: str) -> bool:  # on a cluster, a third of the uploads
        return replicas_of_upload(topology, on, store, uid) == replicas

    tus_path = upload_path(await _first(lambda: tus_create(client, 100),
                                        lambda r: same_primary(upload_path(r).rsplit("/", 1)[1])))
    whole = (await _first(lambda: create(client, total_size=5), lambda s: same_primary(s["upload_id"])))["upload_id"]
    await put_chunk(client, whole, 1, b"whole")
    for replica in replicas:
        replica.pause()
    try:
        status, problem = await put_chunk(client, upload_id, 2, data[10_000:20_000], expect=None)
        resp = await client.put(f"/v1/uploads/{upload_id}/chunks/3", data=data[20_000:])
        tus = await tus_patch(client, tus_path, 0, b"x" * 50, expect=None)
        # A creation and a completion do not wait for a replica (docs/configuration.md): answered at once.
        created = [(await create(client, total_size=5))["upload_id"] for _ in range(30)]  # each 201
        completed = await client.post(f"/v1/uploads/{whole}/complete")
    finally:
        for replica in replicas:
            replica.resume()
    assert completed.status == 200, await completed.text()
    assert [uid for uid in created if same_primary(uid)]  # some on its primary (a cluster: all but (2/3)^30 of runs)
    assert status == 503 and "not known to be replicated" in problem["detail"], problem
    assert resp.status == 503 and resp.headers["Retry-After"] == "1"
    assert resp.content_type == "application/problem+json"
    assert tus.status == 503
    topology.healthy()
    # The client retries: the records were kept, and now a replica holds them.
    for n in (2, 3):
        assert (await put_chunk(client, upload_id, n, data[(n - 1) * 10_000:n * 10_000], expect=None))[0] in (200, 201)
    head = await client.head(tus_path, headers=TUS)
    assert head.headers["Upload-Offset"] == "50"
    done = await client.post(f"/v1/uploads/{upload_id}/complete")
    assert done.status == 200
    assert await content(client, upload_id) == (200, data)


# -- the failover drill --------------------------------------------------------------------------
async def _drill_upload(client, data: bytes, piece: int, tus: bool, answers: list[tuple[float, int]]
                        ) -> tuple[str, bool]:
    """Send every piece until acknowledged (503 and lost connections are retried), complete, return the id."""
    deadline = time.monotonic() + 45

    async def until_ok(send) -> None:
        while True:
            try:
                resp = await send()
                answers.append((time.monotonic(), resp.status))
                if resp.status < 500:
                    return resp
            except Exception:
                answers.append((time.monotonic(), 0))
            assert time.monotonic() < deadline, "no answer but 5xx for 45 s"
            await asyncio.sleep(0.2)

    async def paced(send):
        await asyncio.sleep(0.05)
        return await until_ok(send)

    if tus:
        resp = await until_ok(lambda: client.post("/files/", headers={**TUS, "Upload-Length": str(len(data))}))
        path = upload_path(resp)
        offset = 0
        while offset < len(data):
            resp = await paced(lambda: client.patch(path, data=data[offset:offset + piece], headers={
                **TUS, "Content-Type": "application/offset+octet-stream", "Upload-Offset": str(offset)}))
            if resp.status == 409:  # our earlier try was stored after all: continue from the server's offset
                head = await until_ok(lambda: client.head(path, headers=TUS))
                offset = int(head.headers["Upload-Offset"])
                continue
            assert resp.status == 204, (resp.status, await resp.text())
            offset = int(resp.headers["Upload-Offset"])
        return path.rsplit("/", 1)[1], True
    resp = await until_ok(lambda: client.post("/v1/uploads", json={"filename": "f", "total_size": len(data),
                                                                   "chunk_size": piece}))
    upload_id = (await resp.json())["upload_id"]
    for n in range(1, (len(data) + piece - 1) // piece + 1):
        resp = await paced(lambda: client.put(f"/v1/uploads/{upload_id}/chunks/{n}",
                                                 data=data[(n - 1) * piece:n * piece]))
        assert resp.status in (200, 201), (resp.status, await resp.text())
    resp = await until_ok(lambda: client.post(f"/v1/uploads/{upload_id}/complete"))
    assert resp.status == 200, await resp.text()
    return upload_id, False


def _commands(nodes) -> int:
    """Commands served so far by ``nodes`` (INFO commandstats), the test's own and replication's aside."""
    total = 0
    for node in nodes:
        for name, stat in node.client().info("commandstats").items():
            if name not in ("cmdstat_info", "cmdstat_cluster", "cmdstat_role", "cmdstat_sentinel", "cmdstat_replconf",
                            "cmdstat_config"):
                total += int(stat["calls"])
    return total


@contextlib.contextmanager
def _sent() -> Iterator[list[int]]:
    """Counts the commands this process's batchers queue (a WAIT too; on a cluster, every primary's),
    while it lasts: ``[count]``. The PINGs that go before a WAIT alone in its pipeline are not seen here."""
    count = [0]
    execute = CommandBatcher.execute

    def counted(batcher, *args):
        count[0] += 1
        return execute(batcher, *args)
    CommandBatcher.execute = counted  # type: ignore[method-assign]
    try:
        yield count
    finally:
        CommandBatcher.execute = execute  # type: ignore[method-assign]


async def _chunk_path_commands(client, primaries, tus: bool, pieces: int = 16, piece: int = 16 * 1024
                               ) -> tuple[float, float]:
    """(commands sent, commands Redis ran: those inside Lua scripts too) per chunk or tus PATCH,
    creation aside (a tus upload's last PATCH completes it: counted)."""
    data = random_bytes(pieces * piece)
    if tus:
        path = upload_path(await tus_create(client, len(data)))
    else:
        upload_id = (await create(client, total_size=len(data), chunk_size=piece))["upload_id"]
    before = _commands(primaries)
    with _sent() as sent, _pings(primaries) as pings:
        for i in range(pieces):
            if tus:
                await tus_patch(client, path, i * piece, data[i * piece:(i + 1) * piece], expect=None)
            else:
                await put_chunk(client, upload_id, i + 1, data[i * piece:(i + 1) * piece])
    sent[0] += pings[0]
    return round(sent[0] / pieces, 1), round((_commands(primaries) - before) / pieces, 1)


def _calls(nodes, *names: str) -> dict[str, int]:
    """How often ``nodes`` ran each command of ``names`` so far (INFO commandstats)."""
    stats = [node.client().info("commandstats") for node in nodes]
    return {name: sum(int(s.get(f"cmdstat_{name}", {}).get("calls", 0)) for s in stats) for name in names}


@contextlib.contextmanager
def _pings(nodes) -> Iterator[list[int]]:
    """Counts the PINGs ``nodes`` run while it lasts, from every client but Sentinel's own: ``[count]``,
    set when it ends. Sentinel PINGs a master every second, which INFO commandstats counts too; MONITOR
    names each command's client, and CLIENT LIST names Sentinel's (``sentinel-...``)."""
    marker, count = f"end-{uuid.uuid4().hex}", [0]
    monitors = [redis.Redis(port=node.port, decode_responses=True, socket_timeout=30).monitor() for node in nodes]

    def read(node, monitor) -> int:
        pings = []
        for _ in range(1_000_000):
            line = monitor.next_command()
            if line["command"] == f"ECHO {marker}":
                break
            if line["command"].upper() == "PING":
                pings.append(f"{line['client_address']}:{line['client_port']}")
        sentinel = {c["addr"] for c in node.client().client_list() if c["name"].startswith("sentinel-")}
        return sum(addr not in sentinel for addr in pings)

    with contextlib.ExitStack() as stack, ThreadPoolExecutor(len(nodes)) as pool:
        counted = [pool.submit(read, node, stack.enter_context(m)) for node, m in zip(nodes, monitors)]
        try:
            yield count
        finally:
            for node in nodes:
                node.client().echo(marker)
            count[0] = sum(c.result(timeout=60) for c in counted)


@pytest.mark.parametrize("on", TOPOLOGIES)
async def test_a_chunk_and_its_replica_wait_share_one_round_trip(request, make_client, make_settings, on):
    """Issue 19: with redis.min_replica_acks, a chunk's WAIT goes in the register's pipeline, after the
    register script: no PING before it (one command less per chunk and per tus PATCH)."""
    topology = request.getfixturevalue("redis_cluster" if on == "cluster" else "redis_sentinel")
    base = cluster_settings(topology) if on == "cluster" else sentinel_settings(topology)
    client = await make_client(make_settings(**base, **{"redis.min_replica_acks": 1}))
    primaries = topology.primaries() if on == "cluster" else [topology.current_master()]
    data, piece = random_bytes(8 * 1000), 1000
    upload_id = (await create(client, total_size=len(data), chunk_size=piece))["upload_id"]
    path = upload_path(await tus_create(client, len(data) + 1))
    await put_chunk(client, upload_id, 1, data[:piece])  # the scripts are loaded (on both uploads' primaries)
    await tus_patch(client, path, 0, data[:piece])
    before = _calls(primaries, "wait")["wait"]
    with _pings(primaries) as pings:
        for n in range(2, 9):
            await put_chunk(client, upload_id, n, data[(n - 1) * piece:n * piece])
            await tus_patch(client, path, (n - 1) * piece, data[(n - 1) * piece:n * piece])
    assert {"ping": pings[0], "wait": _calls(primaries, "wait")["wait"] - before} == {"ping": 0, "wait": 7 + 7}
    assert (await (await client.post(f"/v1/uploads/{upload_id}/complete")).json())["sha256"] == sha256(data)


def _fail_over(topology, how: str):
    """Start a failover of one primary; returns a check that is true once a replica serves in its
    place (a killed primary is then started again, to come back as a replica)."""
    victim = topology.primaries()[0] if how.startswith("cluster") else topology.current_master()
    if how == "cluster":
        topology.replica_of(victim).client().execute_command("CLUSTER FAILOVER")
        return lambda: topology.role_of(victim) == "slave"
    if how == "sentinel":
        topology.sentinels[0].client().execute_command("SENTINEL FAILOVER", SERVICE)
        return lambda: topology.current_master() is not victim
    heir = topology.replica_of(victim) if how == "cluster-kill" else None
    victim.kill()

    def promoted() -> bool:
        if heir is not None and heir.client().execute_command("ROLE")[0] != "master":
            return False
        if heir is None and topology.current_master() is victim:
            return False
        victim.restart()
        return True
    return promoted


#: The failovers: (how, redis.min_replica_acks). A planned Sentinel failover leaves the old master
#: taking writes until Sentinel re-attaches it, and the replica not promoted follows it for a while:
#: only an acknowledgement from every replica (2 here) is sure to survive it.
FAILOVERS = [("cluster", 1), ("cluster-kill", 1), ("sentinel", 2), ("sentinel-kill", 1)]


@pytest.mark.slow
@pytest.mark.drill
@pytest.mark.parametrize("how,acks", FAILOVERS, ids=[how for how, _ in FAILOVERS])
async def test_failover_mid_upload_loses_no_acknowledged_chunk(request, make_settings, report, how, acks):
    """A primary fails over (CLUSTER FAILOVER or SENTINEL FAILOVER; or SIGKILL, then a replica takes
    over) while 8 uploads run (native and tus, a piece every 50 ms), with redis.min_replica_acks set:
    every upload completes byte-identical."""
    on = how.split("-")[0]
    topology = request.getfixturevalue("redis_cluster" if on == "cluster" else "redis_sentinel")
    base = cluster_settings(topology) if on == "cluster" else sentinel_settings(topology)
    settings = make_settings(**base, **{"redis.min_replica_acks": acks, "redis.replica_ack_timeout": 1000})
    piece = 32 * 1024
    blobs = [random_bytes(piece * 40 + i) for i in range(8)]
    answers: list[tuple[float, int]] = []
    async with running_app(settings) as client:
        primaries = topology.primaries() if on == "cluster" else [topology.current_master()]
        per_chunk = {kind: await _chunk_path_commands(client, primaries, kind == "tus") for kind in ("native", "tus")}
        runs = asyncio.gather(*(_drill_upload(client, b, piece, i % 2 == 1, answers) for i, b in enumerate(blobs)))
        await asyncio.sleep(0.5)
        started_at = time.monotonic()
        served = await asyncio.to_thread(_fail_over, topology, how)
        while not await asyncio.to_thread(served):
            await asyncio.sleep(0.05)
        failover_s = time.monotonic() - started_at
        ids = await runs
        await asyncio.to_thread(topology.healthy)
        lost = 0
        for blob, (upload_id, _) in zip(blobs, ids):
            status, body = await content(client, upload_id)
            lost += status != 200 or body != blob
    other_failures = sum(status != 503 and not 200 <= status < 500 for _, status in answers)
    report(f"redis failover ({how})", uploads=len(blobs), min_replica_acks=acks, failover_s=round(failover_s, 2),
           answers_503=sum(status == 503 for _, status in answers), other_failures=other_failures,
           writes_again_after_s=round(max([t for t, status in answers if status >= 500] or [started_at]) - started_at, 2),
           lost=lost,
           commands_per_native_chunk="%s sent, %s run" % per_chunk["native"],
           commands_per_tus_patch="%s sent, %s run" % per_chunk["tus"])
    assert lost == 0 and other_failures == 0, answers  # reliability.md: only 503s meanwhile


@pytest.mark.slow
async def test_a_master_restarted_during_its_failover_takes_no_writes(make_client, make_settings, redis_sentinel):
    """A killed master that its supervisor starts again (empty) before Sentinel has ended the failover
    answers pings, and Sentinel still names it until the failover ends: no request may write there.
    Every upload created (201) meanwhile is still there once the failover is over; the others got 503."""
    topology = redis_sentinel
    client = await make_client(make_settings(**sentinel_settings(topology)))
    victim = topology.current_master()
    await create(client, total_size=10, chunk_size=10)  # connected to it
    victim.kill()
    deadline = time.monotonic() + 30
    while await asyncio.to_thread(topology.current_master) is victim:  # until a replica is promoted
        assert time.monotonic() < deadline, "no failover in 30 s"
        await asyncio.sleep(0.02)
    heir = topology.current_master()
    other = next(n for n in topology.servers if n is not victim and n is not heir)
    other.pause()  # the failover's last step (the other replica follows the heir) waits for it
    created: list[str] = []
    statuses: set[int] = set()
    try:
        await asyncio.to_thread(victim.restart)
        sentinel = topology.sentinels[0].client()
        ended_at = None
        while ended_at is None or time.monotonic() < ended_at + 0.5:  # until just after the failover ends
            assert time.monotonic() < deadline, "the failover did not end in 30 s"
            resp = await client.post("/v1/uploads", json={"filename": "f", "total_size": 10, "chunk_size": 10})
            statuses.add(resp.status)
            if resp.status == 201:
                created.append((await resp.json())["upload_id"])
            flags = (await asyncio.to_thread(sentinel.sentinel_master, SERVICE))["flags"]
            if ended_at is None and "failover_in_progress" not in flags:
                ended_at = time.monotonic()
            await asyncio.sleep(0.05)
    finally:
        other.resume()
    await asyncio.to_thread(topology.healthy)
    assert statuses <= {201, 503}, statuses
    assert created, "no upload was created after the failover"
    lost = [u for u in created if (await client.get(f"/v1/uploads/{u}")).status != 200]
    assert not lost, f"{len(lost)} of {len(created)} acknowledged uploads are gone"


async def test_sentinels_that_do_not_answer_stop_the_start_with_their_addresses(make_settings):
    """redis-py 8 names in its MasterNotFoundError each sentinel it asked, as the repr of a whole client
    (about 1,500 characters of pool settings each): the one line an operator reads names the setting
    and the addresses instead."""
    sentinels = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
    settings = make_settings(**{"redis.url": "", "redis.mode": "sentinel", "redis.sentinels": sentinels,
                                "redis.sentinel_master": SERVICE})
    with pytest.raises(RuntimeError) as info:
        await started(settings)
    message = str(info.value)
    assert message.startswith("cannot start: Redis (redis.sentinels) did not answer: MasterNotFoundError"), message
    assert "<redis." not in message and len(message) < 600 and "\n" not in message, message
    assert all(address in message for address in sentinels), message


async def test_a_sentinel_that_fails_is_asked_once_and_the_next_one_answers_at_once(make_settings, make_client,
                                                                                    redis_sentinel):
    """Several sentinels are there so that one may fail. One that does (here it hangs up on every
    connection), listed first, is left for the next at once: redis-py's default retries asked it 11
    times over about 4 s each time the master was looked up, the start-up's look-up included."""
    asked = 0

    async def hang_up(reader, writer) -> None:
        nonlocal asked
        asked += 1
        writer.close()

    failing = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    address = "127.0.0.1:%d" % failing.sockets[0].getsockname()[1]
    try:
        settings = make_settings(**{"redis.url": "", "redis.mode": "sentinel", "redis.sentinel_master": SERVICE,
                                    "redis.sentinels": [address, *redis_sentinel.sentinel_addresses]})
        began = time.monotonic()
        client = await make_client(settings)
        data = random_bytes(3000)
        result = await upload(client, data, 1000)
        took = time.monotonic() - began
        assert await content(client, result["upload_id"]) == (200, data)
    finally:
        failing.close()
    assert asked == 1 and took < 2, (asked, took)


async def test_a_cluster_node_listed_first_that_is_down_does_not_stop_the_start(make_settings, make_client,
                                                                                 redis_cluster):
    """docs/configuration.md: list more cluster_nodes to start while one is down. The first listed
    answers nothing (no server on its port); the server starts on the next one and takes uploads."""
    down = f"127.0.0.1:{free_port()}"
    settings = make_settings(**{**cluster_settings(redis_cluster),
                                "redis.cluster_nodes": [down, redis_cluster.nodes[0].address]})
    client = await make_client(settings)
    assert (await client.get("/v1/health/deep")).status == 200
    data = random_bytes(3000)
    result = await upload(client, data, 1000)
    assert await content(client, result["upload_id"]) == (200, data)
