"""Redis commands of many requests sent together (vezastream/state/batching.py), against a real Redis."""

from __future__ import annotations

import asyncio
import secrets
import signal
import subprocess

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError, ResponseError

from vezastream.engine.leases import GiveBack
from vezastream.state import batching
from vezastream.state.batching import CommandBatcher, NoReply, hangs, packed
from vezastream.testing import server_binary, wait_for_redis

from helpers import create, put_chunk, random_bytes, sha256


@pytest.fixture
async def redis_client(redis_url):
    client = aioredis.Redis.from_pool(aioredis.BlockingConnectionPool.from_url(redis_url, decode_responses=True))
    yield client
    await client.aclose()


@pytest.mark.parametrize("args", [
    ("EVALSHA", "a" * 40, 2, "vz:{id}", "vz:{id}:lease", "node-1:ab", 30000, 262144, 1733238000.123456, 0.1, -5),
    ("SET", "k\u00e9", b"\x00\xff", 2 ** 70, memoryview(b"mv")),
    ("SET", "k", bytearray(b"taken by redis-py 8 only")),
], ids=["script", "bytes-and-big-int", "bytearray"])
async def test_commands_are_packed_as_redis_py_packs_them(redis_client, args):
    """hiredis's C packer, where it is installed, sends the bytes redis-py's would."""
    conn = redis_client.connection_pool.make_connection()
    commands = [args, ("PING",)]
    try:
        expected = b"".join(conn.pack_commands(commands))
    except DataError:  # a bytearray before redis-py 8
        with pytest.raises(DataError):
            packed(conn, commands)
        return
    assert b"".join(packed(conn, commands)) == expected


async def test_without_hiredis_redis_py_packs(redis_client, monkeypatch):
    monkeypatch.setattr(batching, "_c_pack", None)  # as where the ``fast`` extra is not installed
    batcher = CommandBatcher(redis_client)
    assert await asyncio.gather(*(batcher.execute("ECHO", f"{i}") for i in range(20))) == [f"{i}" for i in range(20)]
    await batcher.aclose()


@pytest.mark.parametrize("hiredis", [True, False], ids=["hiredis", "redis-py"])
async def test_a_value_no_packer_takes_fails_its_caller_alone(redis_client, monkeypatch, hiredis):
    """A command redis-py would refuse (a value Redis has no type for) fails with redis-py's own
    DataError, not as a lost Redis; the commands of other callers in the same pipeline are sent."""
    if not hiredis:
        monkeypatch.setattr(batching, "_c_pack", None)
    batcher = CommandBatcher(redis_client)
    key = "bad-" + secrets.token_hex(4)
    before, bad, after = (batcher.execute("SET", f"{key}:before", 1), batcher.execute("SET", key, True),
                          batcher.execute("SET", f"{key}:after", 2))
    assert await before == "OK" and await after == "OK"
    with pytest.raises(DataError):
        await bad
    assert await redis_client.mget([f"{key}:before", key, f"{key}:after"]) == ["1", None, "2"]
    assert await batcher.execute("ECHO", "goes on") == "goes on"
    await batcher.aclose()


async def test_each_caller_gets_its_own_reply(redis_client):
    batcher = CommandBatcher(redis_client, max_in_flight=2, max_batch=50)
    prefix = secrets.token_hex(4)
    replies = await asyncio.gather(*(batcher.execute("ECHO", f"{prefix}-{i}") for i in range(500)))
    assert replies == [f"{prefix}-{i}" for i in range(500)]
    # Writes land too, in the order each caller awaited them.
    await asyncio.gather(*(batcher.execute("SET", f"{prefix}:{i}", i) for i in range(300)))
    assert await redis_client.mget([f"{prefix}:{i}" for i in range(300)]) == [str(i) for i in range(300)]
    await batcher.aclose()


async def test_concurrent_commands_share_connections(redis_url, redis_client):
    """500 callers at once: their commands go out on at most max_in_flight connections."""
    name = "batched-" + secrets.token_hex(4)
    pool = aioredis.BlockingConnectionPool.from_url(redis_url, decode_responses=True, client_name=name,
                                                    max_connections=64)
    own = aioredis.Redis.from_pool(pool)
    batcher = CommandBatcher(own, max_in_flight=2)
    assert await asyncio.gather(*(batcher.execute("ECHO", str(i)) for i in range(500))) == [str(i) for i in range(500)]
    clients = await redis_client.client_list()
    assert 1 <= sum(c["name"] == name for c in clients) <= 2
    await own.aclose()


async def test_an_error_reply_reaches_only_its_caller(redis_client):
    batcher = CommandBatcher(redis_client)
    key = secrets.token_hex(4)
    await redis_client.hset(key, "f", "v")
    calls = [batcher.execute("ECHO", "before"), batcher.execute("INCR", key), batcher.execute("ECHO", "after")]
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert results[0] == "before" and results[2] == "after"
    assert isinstance(results[1], ResponseError) and "WRONGTYPE" in str(results[1])


async def test_cancelled_callers_do_not_shift_the_replies(redis_client):
    batcher = CommandBatcher(redis_client)
    futures = [batcher.execute("ECHO", str(i)) for i in range(100)]
    for future in futures[::3]:
        future.cancel()  # gone before the batch is sent
    replies = await asyncio.gather(*futures[1::3], *futures[2::3])
    assert replies == [str(i) for i in range(1, 100, 3)] + [str(i) for i in range(2, 100, 3)]
    # Cancelled while the pipeline is in flight: the others still get theirs.
    blocked = batcher.execute("BLPOP", secrets.token_hex(4), 0.3)
    late = [batcher.execute("ECHO", str(i)) for i in range(10)]
    await asyncio.sleep(0.05)
    late[4].cancel()
    assert await blocked is None
    assert [await f for i, f in enumerate(late) if i != 4] == [str(i) for i in range(10) if i != 4]


async def test_a_lost_connection_fails_its_pipeline_and_the_next_one_reconnects(redis_url, redis_client):
    name = "batch-" + secrets.token_hex(4)  # every connection of the batcher's own pool carries it
    own = aioredis.Redis.from_pool(aioredis.BlockingConnectionPool.from_url(redis_url, decode_responses=True,
                                                                           client_name=name))
    batcher = CommandBatcher(own)
    blocked = batcher.execute("BLPOP", secrets.token_hex(4), 3)  # holds its connection
    behind = batcher.execute("ECHO", "behind")  # same pipeline
    ours: list[dict] = []
    for _ in range(100):  # until Redis runs the BLPOP (at most 5 s)
        ours = [c for c in await redis_client.client_list() if c["name"] == name and c["cmd"] == "blpop"]
        if ours:
            break
        await asyncio.sleep(0.05)
    assert ours, "the pipeline never reached Redis"
    await redis_client.execute_command("CLIENT", "KILL", "ID", ours[0]["id"])
    for future in (blocked, behind):
        with pytest.raises(RedisConnectionError):
            await asyncio.wait_for(future, 5)
    assert await asyncio.wait_for(batcher.execute("ECHO", "again"), 5) == "again"
    await own.aclose()


async def test_a_pipeline_without_replies_in_time_fails_its_callers_and_the_next_one_goes_on(redis_url):
    """The connection's reply timeout bounds a pipeline's replies: past it, every caller without
    one gets ConnectionError (a hung Redis then costs a request that long, then 503), and the next
    pipeline runs on a fresh connection."""
    own = aioredis.Redis.from_pool(aioredis.BlockingConnectionPool.from_url(redis_url, decode_responses=True,
                                                                           socket_timeout=0.5))
    batcher = CommandBatcher(own)
    first = batcher.execute("ECHO", "first")
    blocked = batcher.execute("BLPOP", secrets.token_hex(4), 3)  # Redis answers it after 3 s
    behind = batcher.execute("ECHO", "behind")
    started = asyncio.get_running_loop().time()
    assert await first == "first"
    for future in (blocked, behind):
        with pytest.raises(RedisConnectionError):
            await asyncio.wait_for(future, 5)
    assert asyncio.get_running_loop().time() - started < 2.5  # the deadline, not Redis's own 3 s
    assert await asyncio.wait_for(batcher.execute("ECHO", "again"), 5) == "again"
    await own.aclose()


async def test_commands_queued_behind_a_hung_redis_fail_with_the_pipeline_ahead(tmp_path):
    """Redis stops answering (SIGSTOP): a command queued behind the pipelines in flight (never sent)
    fails when the first of them runs out of time, with NoReply, instead of being sent then and
    waiting a whole reply timeout of its own; after SIGCONT the batcher goes on."""
    proc = _start_redis(tmp_path)
    own = aioredis.Redis.from_pool(aioredis.BlockingConnectionPool.from_url(f"unix://{tmp_path / 'r.sock'}",
                                                                           decode_responses=True, socket_timeout=0.5))
    batcher = CommandBatcher(own, max_in_flight=1)
    loop = asyncio.get_running_loop()
    try:
        assert await batcher.execute("ECHO", "up") == "up"
        proc.send_signal(signal.SIGSTOP)
        ahead = batcher.execute("ECHO", "ahead")
        await asyncio.sleep(0.2)  # in flight now; the next one waits in the queue
        queued_at = loop.time()
        behind = batcher.execute("ECHO", "behind")
        for future in (ahead, behind):
            with pytest.raises(NoReply):
                await asyncio.wait_for(future, 5)
        assert loop.time() - queued_at < 0.45  # with the pipeline ahead (0.3 s on), not 0.5 s after being sent
        assert hangs(NoReply("x")) and not hangs(RedisConnectionError("refused"))
        proc.send_signal(signal.SIGCONT)
        assert await asyncio.wait_for(batcher.execute("ECHO", "again"), 5) == "again"
    finally:
        proc.send_signal(signal.SIGCONT)
        await own.aclose()
        _stop(proc)


async def test_what_a_hung_redis_kept_a_request_from_giving_back_is_given_back_once_it_answers(tmp_path):
    """GiveBack (engine/leases.py) tries a release again in the background while Redis hangs, and
    it lands once Redis answers; one still failing after ``within`` seconds is let go."""
    proc = _start_redis(tmp_path)
    own = aioredis.Redis.from_pool(aioredis.BlockingConnectionPool.from_url(f"unix://{tmp_path / 'r.sock'}",
                                                                           decode_responses=True, socket_timeout=0.3))
    give_back = GiveBack()
    loop = asyncio.get_running_loop()
    try:
        await own.set("lease", "mine")
        proc.send_signal(signal.SIGSTOP)
        give_back.later("the lease", lambda: own.delete("lease"), within=10)
        give_back.later("a short one", lambda: own.delete("other"), within=0.5)
        await asyncio.sleep(1.5)  # tries time out meanwhile; the short one has given up
        assert len(give_back) == 1
        proc.send_signal(signal.SIGCONT)
        resumed = loop.time()
        while await own.exists("lease"):
            assert loop.time() - resumed < 3, "not given back once Redis answered"
            await asyncio.sleep(0.05)
        while len(give_back):  # (a try sent while Redis was stopped may have run first, once it resumed)
            assert loop.time() - resumed < 3
            await asyncio.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGCONT)
        await give_back.close()
        await own.aclose()
        _stop(proc)


async def test_uploads_go_on_after_redis_forgets_the_scripts(client, redis_url):
    """SCRIPT FLUSH (as after a Redis restart): the next EVALSHA fails, the script is loaded, the chunk lands."""
    data = random_bytes(3000)
    uid = (await create(client, total_size=len(data), chunk_size=1000))["upload_id"]
    await put_chunk(client, uid, 1, data[:1000])
    other = aioredis.Redis.from_url(redis_url)
    await other.script_flush()
    await other.aclose()
    await put_chunk(client, uid, 2, data[1000:2000])
    await put_chunk(client, uid, 3, data[2000:])
    done = await (await client.post(f"/v1/uploads/{uid}/complete")).json()
    assert done["sha256"] == sha256(data)


def _start_redis(folder) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([server_binary(), "--port", "0", "--unixsocket", str(folder / "r.sock"), "--dir", str(folder),
                             "--save", "", "--appendonly", "yes"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_redis(folder / "r.sock", proc)
    return proc


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)  # flushes its AOF
    proc.wait(10)


async def test_redis_down_answers_503_and_the_upload_resumes_when_it_is_back(make_settings, make_client, tmp_path):
    folder = tmp_path / "own-redis"
    folder.mkdir()
    proc = _start_redis(folder)
    try:
        client = await make_client(make_settings(**{"redis.url": f"unix://{folder / 'r.sock'}"}))
        data = random_bytes(2000)
        uid = (await create(client, total_size=len(data), chunk_size=1000))["upload_id"]
        await put_chunk(client, uid, 1, data[:1000])
        _stop(proc)
        resp = await client.put(f"/v1/uploads/{uid}/chunks/2", data=data[1000:])
        assert resp.status == 503
        assert resp.content_type == "application/problem+json"
        assert "state store" in (await resp.json(content_type=None))["detail"]
        proc = _start_redis(folder)
        await put_chunk(client, uid, 2, data[1000:])
        done = await (await client.post(f"/v1/uploads/{uid}/complete")).json()
        assert done["sha256"] == sha256(data)
    finally:
        if proc.poll() is None:
            _stop(proc)


async def test_waits_of_one_turn_share_one_wait_sent_last(redis_client):
    """WAIT (redis.min_replica_acks) goes once a pipeline, after its other commands (a PING when it has none)."""
    batcher = CommandBatcher(redis_client)
    prefix = secrets.token_hex(4)

    async def calls() -> dict[str, int]:
        stats = await redis_client.info("commandstats")
        return {name: int(stats.get(f"cmdstat_{name}", {"calls": 0})["calls"]) for name in ("wait", "ping", "set")}

    before = await calls()
    writes = [batcher.execute("SET", f"{prefix}:{i}", i) for i in range(20)]
    waits = [batcher.wait(f"{prefix}:{i}", 0, 100) for i in range(30)]  # no replica: each answers 0
    assert await asyncio.gather(*writes) == ["OK"] * 20
    assert await asyncio.gather(*waits) == [0] * 30
    after = await calls()
    assert {name: after[name] - before[name] for name in after} == {"wait": 1, "ping": 0, "set": 20}
    assert await asyncio.gather(*(batcher.wait(f"{prefix}:{i}", 0, 100) for i in range(3))) == [0] * 3
    assert {name: value - after[name] for name, value in (await calls()).items()} == {"wait": 1, "ping": 1, "set": 0}
    await batcher.aclose()
