"""A Redis that answers but refuses writes, or whose keys go: out of memory (``maxmemory`` with
``noeviction``), a read-only replica (a failover the node did not follow), a password that changed
under a running node, a ``maxmemory-policy`` that evicts (docs/reliability.md, docs/configuration.md).

Each test starts its own ``redis-server`` (the kit's, as tests/redis_topologies.py does) and runs the
real app on it. What a client sees: a ``503`` problem+json naming the cause, with ``Retry-After``,
never a ``500``; nothing half-recorded; readiness failing with the reason; every upload completing
once Redis takes writes again.
"""

from __future__ import annotations

import asyncio
import base64
import time
from pathlib import Path

import pytest
import redis

import servers
from redis_topologies import RedisProcess, _start
from vezastream import hookimpl
from vezastream.http.keys import hooks_key
from helpers import scrape, value
from vezastream.testing import content, create, put_chunk, random_bytes

TUS = {"Tus-Resumable": "1.0.0"}
PROBLEM = "https://vezastream.dev/problems/"

pytestmark = pytest.mark.slow



@pytest.fixture
async def app_on(own_redis, make_settings, make_client):
    settings = make_settings(**{"redis.url": f"redis://{own_redis.address}/0"})
    return await make_client(settings)


async def refused(resp, code: str) -> dict:
    """``resp`` is a 503 problem+json of type ``code`` with Retry-After."""
    body = await resp.json(content_type=None)
    assert (resp.status, resp.content_type, body["type"]) == (503, "application/problem+json", PROBLEM + code), body
    assert int(resp.headers["Retry-After"]) >= 1 and body["retry_after"] == int(resp.headers["Retry-After"])
    return body


async def readiness_reason(client) -> str | None:
    resp = await client.get("/v1/health/deep")
    body = await resp.json()
    return None if resp.status == 200 else body["checks"]["redis"].get("reason")


async def tus_create(client, length: int) -> str:
    resp = await client.post("/files/", headers={**TUS, "Upload-Length": str(length),
                                                 "Upload-Metadata": "filename " + base64.b64encode(b"t").decode()})
    assert resp.status == 201, await resp.text()
    return "/files/" + resp.headers["Location"].rstrip("/").rsplit("/", 1)[1]


def patch(client, path: str, offset: int, data: bytes):
    return client.patch(path, data=data, headers={**TUS, "Upload-Offset": str(offset),
                                                  "Content-Type": "application/offset+octet-stream"})


async def offset_of(client, path: str) -> int:
    resp = await client.head(path, headers=TUS)
    assert resp.status == 200
    return int(resp.headers["Upload-Offset"])


def synced_replica(primary: RedisProcess, folder: Path) -> RedisProcess:
    """A new redis-server holding ``primary``'s data: its replica, synced (for a test to promote)."""
    replica = _start(folder)
    replica.client().replicaof("127.0.0.1", primary.port)
    deadline = time.monotonic() + 10
    while replica.client().info("replication").get("master_link_status") != "up":
        if time.monotonic() > deadline:
            replica.stop()
            raise AssertionError("the replica did not sync")
        time.sleep(0.05)
    return replica


def keys_of(server: RedisProcess) -> dict[str, str]:
    """Every key Redis holds, with its value (DUMP): what a refused request must not change."""
    c = redis.Redis(port=server.port, socket_timeout=5)
    return {k: c.dump(k) for k in c.keys("*") if b":node:" not in k}


async def test_out_of_memory_answers_503_state_store_full_changes_nothing_and_uploads_complete_after(
        app_on, own_redis, caplog):
    client = app_on
    data = random_bytes(4 * 1000)
    native = (await create(client, total_size=len(data), chunk_size=1000))["upload_id"]
    await put_chunk(client, native, 1, data[:1000])
    path = await tus_create(client, len(data))
    assert (await patch(client, path, 0, data[:1000])).status == 204
    done = (await create(client, total_size=1000, chunk_size=1000))["upload_id"]
    await put_chunk(client, done, 1, data[:1000])
    assert (await client.post(f"/v1/uploads/{done}/complete")).status == 200
    whole = (await create(client, total_size=len(data), chunk_size=1000))["upload_id"]  # sent, not completed
    for n in (1, 2, 3, 4):
        await put_chunk(client, whole, n, data[(n - 1) * 1000:n * 1000])

    c = own_redis.client()
    c.config_set("maxmemory", int(c.info("memory")["used_memory"]) - 100_000)  # full: every write refused
    before = keys_of(own_redis)
    await refused(await client.post("/v1/uploads", json={"filename": "f", "total_size": 10}), "state-store-full")
    await refused(await client.put(f"/v1/uploads/{native}/chunks/2", data=data[1000:2000]), "state-store-full")
    await refused(await client.post("/files/", headers={**TUS, "Upload-Length": "10"}), "state-store-full")
    await refused(await patch(client, path, 1000, data[1000:2000]), "state-store-full")
    await refused(await client.post(f"/v1/uploads/{whole}/complete"), "state-store-full")  # configuration.md
    assert (await (await client.get(f"/v1/uploads/{whole}")).json())["status"] == "pending"
    assert await readiness_reason(client) == "out-of-memory"
    assert (await client.get(f"/v1/uploads/{native}")).status == 200  # reads go on
    assert await content(client, done) == (200, data[:1000])  # and downloads (configuration.md)
    assert keys_of(own_redis) == before  # nothing half-recorded: no upload, no quota count, no chunk, no offset
    logged = [r for r in caplog.records if r.getMessage() == "state store error"]  # operations.md: Redis's words
    assert logged and all("command not allowed when used memory > 'maxmemory'" in r.error
                          and r.problem == "state-store-full" for r in logged), [r.error for r in logged]

    c.config_set("maxmemory", 0)
    assert await readiness_reason(client) is None
    for n in (2, 3, 4):
        await put_chunk(client, native, n, data[(n - 1) * 1000:n * 1000])
    assert (await client.post(f"/v1/uploads/{native}/complete")).status == 200
    assert await content(client, native) == (200, data)
    assert (await client.post(f"/v1/uploads/{whole}/complete")).status == 200
    assert await content(client, whole) == (200, data)
    assert await offset_of(client, path) == 1000
    assert (await patch(client, path, 1000, data[1000:])).status == 204
    assert await (await client.get(path, headers=TUS)).read() == data


async def test_a_read_only_replica_answers_503_state_store_read_only_and_readiness_says_so(
        app_on, own_redis, tmp_path):
    """A failover the node did not follow: the server it writes to became a replica (with the data)."""
    client = app_on
    native = (await create(client, total_size=20, chunk_size=10))["upload_id"]
    promoted = synced_replica(own_redis, tmp_path / "promoted")
    try:
        promoted.client().replicaof("NO", "ONE")
        own_redis.client().replicaof("127.0.0.1", promoted.port)  # demoted, keeps the data

        await refused(await client.put(f"/v1/uploads/{native}/chunks/1", data=b"0123456789"), "state-store-read-only")
        await refused(await client.post("/v1/uploads", json={"filename": "f", "total_size": 10}),
                      "state-store-read-only")
        assert await readiness_reason(client) == "read-only"
        assert (await client.get(f"/v1/uploads/{native}")).status == 200  # reads go on
    finally:
        own_redis.client().replicaof("NO", "ONE")
        promoted.stop()
    assert await readiness_reason(client) is None
    await put_chunk(client, native, 1, b"0123456789")


async def test_a_password_changed_under_a_running_node_answers_503_state_store_refused(app_on, own_redis):
    client = app_on
    native = (await create(client, total_size=20, chunk_size=10))["upload_id"]
    c = own_redis.client()
    c.config_set("requirepass", "changed")
    locked = redis.Redis(port=own_redis.port, password="changed", decode_responses=True)
    try:
        locked.client_kill_filter(_type="normal", skipme=True)  # the node's connections must authenticate again
        # A request that takes a pooled connection Redis closed answers "unavailable"; once the pool
        # connects afresh, Redis's refusal is named.
        for _ in range(20):
            resp = await client.put(f"/v1/uploads/{native}/chunks/1", data=b"0123456789")
            if (await resp.json())["type"] != PROBLEM + "unavailable":
                break
            assert resp.status == 503
        await refused(resp, "state-store-refused")
        await refused(await client.get(f"/v1/uploads/{native}"), "state-store-refused")
        assert await readiness_reason(client) == "auth-failed"
    finally:
        locked.config_set("requirepass", "")
    await put_chunk(client, native, 1, b"0123456789")


async def test_readiness_asks_every_cluster_primary_whether_it_takes_writes(make_client, make_settings,
                                                                             redis_cluster):
    """Each primary holds a third of the uploads: one that is full fails readiness, whichever it is."""
    client = await make_client(make_settings(**{"redis.url": "", "redis.mode": "cluster",
                                                "redis.cluster_nodes": [redis_cluster.nodes[0].address]}))
    assert await readiness_reason(client) is None
    for primary in redis_cluster.primaries():
        c = primary.client()
        c.config_set("maxmemory", 1)
        try:
            assert await readiness_reason(client) == "out-of-memory", primary.address
            c.config_set("maxmemory", 512 * 1024 * 1024)
            c.config_set("maxmemory-policy", "volatile-lru")  # operations.md: each primary asked whether it may evict
            redis_check = (await (await client.get("/v1/health/deep")).json())["checks"]["redis"]
            assert redis_check == {"ok": True, "warnings": ["may-evict"]}, (primary.address, redis_check)
        finally:
            c.config_set("maxmemory", 0)
            c.config_set("maxmemory-policy", "noeviction")
    assert await readiness_reason(client) is None


async def test_a_maxmemory_policy_that_evicts_is_warned_of_at_start_and_in_readiness(own_redis, make_settings,
                                                                                      make_client, caplog):
    """Redis may then drop an upload's keys to make room: the start says so, and readiness (still 200) too."""
    c = own_redis.client()
    c.config_set("maxmemory", 512 * 1024 * 1024)
    c.config_set("maxmemory-policy", "allkeys-lru")
    client = await make_client(make_settings(**{"redis.url": f"redis://{own_redis.address}/0"}))
    [warned] = [r for r in caplog.records if getattr(r, "event", None) == "redis-may-evict"]
    assert warned.levelname == "WARNING" and warned.policies == {own_redis.address: "allkeys-lru"}
    resp = await client.get("/v1/health/deep")
    assert resp.status == 200
    assert (await resp.json())["checks"]["redis"] == {"ok": True, "warnings": ["may-evict"]}

    c.config_set("maxmemory-policy", "noeviction")  # what the docs ask for
    assert (await (await client.get("/v1/health/deep")).json())["checks"]["redis"] == {"ok": True}


async def test_a_tus_upload_whose_segment_records_were_evicted_answers_410_and_is_removed(app_on, own_redis,
                                                                                          tmp_path, caplog):
    """Redis evicted the upload's segment records (``...:chunks``) but not its offset: its last PATCH
    cannot complete it. It answers 410 upload-lost (tus clients start again), and the upload goes,
    staged bytes and all, instead of answering 409 to every try until it expires."""
    client = app_on
    data = random_bytes(2000)
    path = await tus_create(client, len(data))
    assert (await patch(client, path, 0, data[:1000])).status == 204
    upload_id = path.rsplit("/", 1)[1]
    c = own_redis.client()
    [records] = [k for k in c.keys("*") if k.endswith(f"{{{upload_id}}}:chunks")]
    c.delete(records)  # as an eviction would

    resp = await patch(client, path, 1000, data[1000:])
    body = await resp.json(content_type=None)
    assert (resp.status, body["type"], body["upload_id"]) == (410, PROBLEM + "upload-lost", upload_id), body
    assert lost_logged(caplog) == [upload_id]
    assert (await client.head(path, headers=TUS)).status == 404
    assert not [k for k in c.keys("*") if f"{{{upload_id}}}" in k]
    assert not list((tmp_path / "data" / "chunks").glob(f"{upload_id}*"))
    new = await tus_create(client, len(data))  # starting again works
    assert (await patch(client, new, 0, data)).status == 204
    assert await (await client.get(new, headers=TUS)).read() == data


class Forwarder:
    """A TCP forwarder on 127.0.0.1 to ``port``, which a test changes (as a DNS name or a virtual IP
    moves to a promoted replica): a new connection goes to the new port, an open one stays."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> Forwarder:
        self.server = await asyncio.start_server(self._forward, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.writers:
            writer.close()

    @property
    def address(self) -> str:
        assert self.server is not None
        return "127.0.0.1:%d" % self.server.sockets[0].getsockname()[1]

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.writers += [writer, up_writer]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                dst.close()
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


async def test_after_a_failover_behind_one_address_the_node_writes_to_the_promoted_server(
        own_redis, make_settings, make_client, tmp_path):
    """One address for "the master" (a managed Redis's endpoint, a virtual IP) moves to the promoted
    replica; the node's open connections still reach the old master, now a read-only replica. Those
    that meet READONLY are dropped, so the next requests connect to the new master: a few 503s
    (state-store-read-only), then writes again, and readiness 200."""
    promoted = synced_replica(own_redis, tmp_path / "promoted")
    try:
        async with Forwarder(own_redis.port) as endpoint:
            client = await make_client(make_settings(**{"redis.url": f"redis://{endpoint.address}/0"}))
            data = random_bytes(3000)
            native = (await create(client, total_size=len(data), chunk_size=1000))["upload_id"]
            await put_chunk(client, native, 1, data[:1000])
            assert await readiness_reason(client) is None
            # A planned failover: the replica has every write first (replication is asynchronous, and
            # a replica promoted a moment early lacked the upload: 404 instead of the 503s tested here).
            assert own_redis.client().wait(1, 5000) == 1

            promoted.client().replicaof("NO", "ONE")  # the failover...
            own_redis.client().replicaof("127.0.0.1", promoted.port)
            endpoint.port = promoted.port  # ...and the address follows it
            reasons = [await readiness_reason(client) for _ in range(3)]  # a load balancer asks first
            assert reasons[0] == "read-only" and reasons[-1] is None, reasons
            statuses = []
            for _ in range(20):
                resp = await client.put(f"/v1/uploads/{native}/chunks/2", data=data[1000:2000])
                statuses.append(resp.status)
                if resp.status == 201:
                    break
                await refused(resp, "state-store-read-only")
            assert statuses[-1] == 201, statuses
            await put_chunk(client, native, 3, data[2000:])
            assert (await client.post(f"/v1/uploads/{native}/complete")).status == 200
            assert await content(client, native) == (200, data)
    finally:
        own_redis.client().replicaof("NO", "ONE")
        promoted.stop()


def lost_logged(caplog) -> list[str]:
    """The uploads of the ``upload-lost`` warnings (operations.md's event table)."""
    return [r.upload_id for r in caplog.records if getattr(r, "event", None) == "upload-lost"
            and r.levelname == "WARNING"]


class EmptiesRedis:
    """An inspector during which Redis loses everything (a restart without persistence, FLUSHALL)."""

    def __init__(self, server: RedisProcess) -> None:
        self.server = server
        self.aborts: list[tuple[str, str]] = []

    @hookimpl
    async def vezastream_inspect_upload(self, upload, source):
        self.server.client().flushall()

    @hookimpl
    def vezastream_observe_abort(self, upload, reason):
        self.aborts.append((upload.id, reason))


async def test_a_completion_whose_state_redis_lost_meanwhile_answers_410_and_leaves_nothing(
        own_redis, make_settings, make_client, tmp_path, caplog):
    """The object is assembled, but its upload's record is gone and cannot be completed: not a 200
    for an upload the server no longer knows (whose object no DELETE could remove), but 410
    upload-lost, the object and staged bytes removed."""
    empties = EmptiesRedis(own_redis)
    client = await make_client(make_settings(**{"redis.url": f"redis://{own_redis.address}/0"}), plugins=[empties])
    upload_id = (await create(client, total_size=20, chunk_size=10))["upload_id"]
    await put_chunk(client, upload_id, 1, b"0123456789")
    await put_chunk(client, upload_id, 2, b"abcdefghij")
    resp = await client.post(f"/v1/uploads/{upload_id}/complete")
    body = await resp.json()
    assert (resp.status, body["type"]) == (410, PROBLEM + "upload-lost"), body
    await client.server.app[hooks_key].drain()  # observers run in the background, a plain one in a thread
    assert lost_logged(caplog) == [upload_id] and empties.aborts == [(upload_id, "lost")]  # plugins.md
    assert value(await scrape(client), "vezastream_uploads_aborted_total", reason="lost") == 1  # metrics.md
    left = [p for p in (tmp_path / "data").rglob("*") if upload_id in str(p)]
    assert left == []


@pytest.mark.parametrize("command", ["serve", "gc"])
def test_a_start_on_a_redis_that_refuses_writes_prints_one_line(own_redis, tmp_path, command):
    """operations.md: a start that cannot go on prints one line and exits (1: not the configuration's
    fault), not a traceback from the first write (the node's heartbeat)."""
    c = own_redis.client()
    c.set("other-data", "x")
    c.config_set("maxmemory", 1)
    done = servers.run([command], servers.server_env(tmp_path, f"redis://{own_redis.address}/0"), tmp_path)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1, done.stderr[-2000:]
    assert lines[0].startswith("vezastream: cannot start: Redis (redis.url) refuses writes (out-of-memory): "), lines
