"""What a dead process leaves behind is finished by whoever comes next (issue 15, findings 1 and 8).

A process killed mid-completion leaves the upload ``completing`` with its
completion lease (or, once that expired, none). The state is written here as
such a process leaves it; a lease token names its process (``<node>.<n>``) and
a process that no longer beats (no ``<p>:node:<node>`` key) is dead.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import signal
import subprocess
import sys

import pytest

from vezastream import gc as gc_module
from vezastream import hookimpl
from vezastream.engine import nodes
from vezastream.engine.layouts import append
from vezastream.http.app import engine_key, gc_key, settings_key
from vezastream.engine.leases import NODE_BEAT_SECONDS, NODE_SECONDS
from vezastream_local import make_local_sink
from vezastream.engine.engine import UploadEngine
from vezastream.gc import GarbageCollector
from vezastream.staging import ChunkStaging
from vezastream.state import topology
from vezastream.state.store import StateStore

from helpers import DEAD, create, random_bytes, scrape, sha256, status_of, store_of, strand, value
from vezastream.testing import send_chunks
from engine_parts import stranded
from tus_helpers import TUS, tus_create, tus_patch, upload_path

#: A lease token of a process that lives (the test beats for it).
ALIVE = "feedfacefeedface.3"


class FlakySinkPlugin:
    """The real local sink, failing (assemble and abort) while ``failing`` is set: storage that is down."""

    def __init__(self) -> None:
        self.failing = False

    @hookimpl
    def vezastream_register_sinks(self, register):
        def factory(config, settings):
            sink = make_local_sink(config, settings)
            assemble = sink.assemble

            async def flaky_assemble(upload, source):
                if self.failing:
                    raise OSError("the storage is down")
                return await assemble(upload, source)

            async def abort(upload):
                if self.failing:
                    raise OSError("the storage is down")

            sink.assemble = flaky_assemble
            sink.abort = abort
            return sink

        register("flaky", factory)


@pytest.fixture
def flaky():
    return FlakySinkPlugin()


@pytest.fixture
async def client(make_client, make_settings, flaky):
    return await make_client(make_settings(**{"storage.sink": "flaky", "limits.complete_wait": 2}),
                             plugins=[flaky])


async def full_tus_upload(client, flaky, data: bytes) -> str:
    """A tus upload whose every byte is recorded but which is not completed (its completion failed)."""
    path = upload_path(await tus_create(client, len(data)))
    flaky.failing = True
    await tus_patch(client, path, 0, data, expect=502)
    flaky.failing = False
    return path.rsplit("/", 1)[1]


async def full_native_upload(client, data: bytes) -> str:
    uid = (await create(client, total_size=len(data), chunk_size=65536))["upload_id"]
    await send_chunks(client, uid, data, 65536)
    return uid


@pytest.mark.parametrize("holder", [DEAD, None], ids=["dead-holder", "lease-expired"])
@pytest.mark.parametrize("first", ["HEAD", "GET"])
async def test_tus_head_or_get_finishes_a_dead_completion(client, flaky, holder, first):
    data = random_bytes(200_001)
    uid = await full_tus_upload(client, flaky, data)
    await strand(client, uid, holder)
    if first == "HEAD":
        resp = await client.head(f"/files/{uid}", headers=TUS)
        assert resp.status == 200 and resp.headers["Upload-Offset"] == str(len(data))
        assert await status_of(client, uid) == "completed"
    resp = await client.get(f"/files/{uid}")
    assert resp.status == 200 and await resp.read() == data
    assert await status_of(client, uid) == "completed"


async def test_tus_head_finishes_a_full_upload_whose_writer_died(client, flaky):
    """The final PATCH was recorded, then its process died under the append lease, before completing."""
    data = random_bytes(70_000)
    uid = await full_tus_upload(client, flaky, data)
    store = store_of(client)
    await store.redis.set(store.append_lease_key(uid), DEAD, px=10_000)
    resp = await client.head(f"/files/{uid}", headers=TUS)
    assert resp.status == 200 and resp.headers["Upload-Offset"] == str(len(data))
    assert await status_of(client, uid) == "completed"
    resp = await client.get(f"/files/{uid}")
    assert resp.status == 200 and await resp.read() == data


@pytest.mark.parametrize("state", ["pending", "completing"])
async def test_a_whole_upload_told_to_a_head_is_completed_once_its_writer_dies(client, flaky, state):
    """Found by tests/drills/test_drill_nodes.py: a node was SIGKILLed between recording a tus upload's
    last bytes and completing it. The client's HEAD, on another node, came while the dead node still
    beat: it answered the whole length (so the client was done) and nothing ever completed the
    upload. Now the node that answered sees it through: once the holder stops beating, the upload is
    completed without another request."""
    store = store_of(client)
    await store.beat(ALIVE.split(".")[0], 30)
    data = random_bytes(90_000)
    uid = await full_tus_upload(client, flaky, data)
    if state == "pending":  # the last PATCH's lease, kept to complete under it
        await store.redis.set(store.append_lease_key(uid), ALIVE, px=10_000)
    else:
        await strand(client, uid, ALIVE)
    resp = await client.head(f"/files/{uid}", headers=TUS)
    assert resp.status == 200 and resp.headers["Upload-Offset"] == str(len(data))
    assert await status_of(client, uid) == state  # its holder still beats: left alone
    await store.leave(ALIVE.split(".")[0])  # the holder is gone: no client asks again
    deadline = asyncio.get_running_loop().time() + 3
    while await status_of(client, uid) != "completed":
        assert asyncio.get_running_loop().time() < deadline, f"still {await status_of(client, uid)}"
        await asyncio.sleep(0.1)
    resp = await client.get(f"/files/{uid}")
    assert resp.status == 200 and await resp.read() == data


async def test_a_whole_upload_whose_completion_failed_through_its_watch_is_completed_by_the_next_gc_pass(
        client, flaky, monkeypatch):
    """A HEAD was told the whole length, the completing process died, and the completions the
    answering node then tried failed (the sink down) until its watch ended: the upload stays noted
    in Redis, and the next GC pass, the sink back, completes it."""
    monkeypatch.setattr(append, "SEE_THROUGH_SECONDS", 1.0)
    app = client.server.app
    store, gc, engine = store_of(client), app[gc_key], app[engine_key]
    await store.beat(ALIVE.split(".")[0], 30)
    data = random_bytes(60_000)
    uid = await full_tus_upload(client, flaky, data)
    await store.redis.set(store.append_lease_key(uid), ALIVE, px=10_000)
    resp = await client.head(f"/files/{uid}", headers=TUS)
    assert resp.status == 200 and resp.headers["Upload-Offset"] == str(len(data))
    flaky.failing = True
    await store.leave(ALIVE.split(".")[0])
    deadline = asyncio.get_running_loop().time() + 5
    while len(engine.give_back):  # the watch tries, fails, and ends
        assert asyncio.get_running_loop().time() < deadline, "the watch did not end"
        await asyncio.sleep(0.1)
    assert await status_of(client, uid) == "pending" and await store.unfinished() == [uid]
    assert (await gc.run_once()).recovered == []  # the sink still down: kept for the next pass
    assert await store.unfinished() == [uid]
    flaky.failing = False
    assert (await gc.run_once()).recovered == [uid]
    assert await status_of(client, uid) == "completed" and await store.unfinished() == []
    resp = await client.get(f"/files/{uid}")
    assert resp.status == 200 and await resp.read() == data


@pytest.mark.parametrize("state", ["pending", "completing"])
async def test_a_noted_whole_upload_whose_watcher_died_too_is_completed_by_any_node_without_a_gc_pass(
        make_client, make_settings, flaky, monkeypatch, state):
    """Two nodes died within a watch: the one completing a whole tus upload (its last PATCH's lease
    kept to complete under, or the completion begun) and the one whose HEAD told the client the whole
    length and watched it. Left: the note in Redis. No request comes, and this node runs no GC pass
    (gc.enabled off, as make_settings has it): every serving process sweeps the notes, so it
    completes the upload within UNFINISHED_SWEEP_SECONDS instead of at the next GC pass (an hour)."""
    monkeypatch.setattr(gc_module, "UNFINISHED_SWEEP_SECONDS", 0.2)
    client = await make_client(make_settings(**{"storage.sink": "flaky", "limits.complete_wait": 2}),
                               plugins=[flaky])
    store = store_of(client)
    data = random_bytes(80_000)
    uid = await full_tus_upload(client, flaky, data)
    if state == "pending":
        await store.redis.set(store.append_lease_key(uid), DEAD, px=10_000)
    else:
        await strand(client, uid, DEAD)
    await store.note_unfinished(uid)  # what the dead watcher left
    deadline = asyncio.get_running_loop().time() + 5
    while await status_of(client, uid) != "completed" or await store.unfinished():  # the note goes after
        assert asyncio.get_running_loop().time() < deadline, (await status_of(client, uid), await store.unfinished())
        await asyncio.sleep(0.1)
    resp = await client.get(f"/files/{uid}")
    assert resp.status == 200 and await resp.read() == data


async def test_a_sweep_of_the_notes_that_redis_fails_is_one_warning_and_the_next_sweep_completes(
        make_client, make_settings, flaky, own_redis, monkeypatch, caplog):
    """docs/operations.md: a sweep of the notes that Redis fails (here it hangs) logs ``unfinished sweep
    failed``, a warning naming the reason, without a traceback; the sweeps go on, and once Redis answers
    again one completes the noted upload."""
    monkeypatch.setattr(gc_module, "UNFINISHED_SWEEP_SECONDS", 0.2)
    client = await make_client(make_settings(**{
        "storage.sink": "flaky", "limits.complete_wait": 2, "redis.url": f"redis://{own_redis.address}/0",
        "redis.reply_timeout": 0.5, "redis.replica_ack_timeout": 100}), plugins=[flaky])
    store = store_of(client)
    data = random_bytes(30_000)
    uid = await full_tus_upload(client, flaky, data)
    await store.redis.set(store.append_lease_key(uid), DEAD, px=10_000)
    await store.note_unfinished(uid)
    own_redis.pause()  # hangs: the sweeps' commands time out after redis.reply_timeout
    try:
        deadline = asyncio.get_running_loop().time() + 5
        while not [r for r in caplog.records if r.getMessage() == "unfinished sweep failed"]:
            assert asyncio.get_running_loop().time() < deadline, "no sweep failed"
            await asyncio.sleep(0.05)
    finally:
        own_redis.resume()
    deadline = asyncio.get_running_loop().time() + 5
    while await status_of(client, uid) != "completed":
        assert asyncio.get_running_loop().time() < deadline, "the next sweep did not complete it"
        await asyncio.sleep(0.1)
    resp = await client.get(f"/files/{uid}")
    assert resp.status == 200 and await resp.read() == data
    failed = [r for r in caplog.records if r.getMessage() == "unfinished sweep failed"]
    assert {(r.levelno, r.reason, r.exc_info) for r in failed} == {(logging.WARNING, "timeout", None)}


async def test_gc_pass_completes_a_whole_upload_whose_writer_died(client, flaky):
    """A GC pass (and start-up's) that frees a dead writer's append lease completes its upload when every
    byte is there: a client may have been told so by a HEAD, and will not come back."""
    store, gc = store_of(client), client.server.app[gc_key]
    data = random_bytes(50_000)
    whole = await full_tus_upload(client, flaky, data)
    half = upload_path(await tus_create(client, len(data)))
    await tus_patch(client, half, 0, data[:20_000])
    half = half.rsplit("/", 1)[1]
    for uid in (whole, half):
        await store.redis.set(store.append_lease_key(uid), DEAD, px=10_000)
    assert (await gc.run_once(dry_run=True)).recovered == [whole]
    assert await status_of(client, whole) == "pending"
    report = await gc.run_once()
    assert report.recovered == [whole]
    assert sorted(report.released) == sorted(store.append_lease_key(uid) for uid in (whole, half))
    assert await status_of(client, whole) == "completed" and await status_of(client, half) == "pending"
    resp = await client.get(f"/files/{whole}")
    assert resp.status == 200 and await resp.read() == data


@pytest.mark.parametrize("holder", ["dead", "alive"])
async def test_a_patch_takes_over_the_append_lease_of_a_dead_writer(client, holder):
    """A node died mid-PATCH, its append lease held for 10 s more (found by tests/drills/test_drill_nodes.py:
    with no shared disk no restarted node releases it at once). The client's next PATCH, on any node,
    writes as soon as the holder's heartbeat has lapsed; a living holder's lease is left alone."""
    data = random_bytes(20_000)
    path = upload_path(await tus_create(client, len(data)))
    store, engine = store_of(client), client.server.app[engine_key]
    await store.redis.set(store.append_lease_key(path.rsplit("/", 1)[1]),
                          DEAD if holder == "dead" else engine.new_token(), px=10_000)
    resp = await tus_patch(client, path, 0, data, expect=None)
    assert resp.status == (204 if holder == "dead" else 409), await resp.text()


@pytest.mark.parametrize("holder", [DEAD, None], ids=["dead-holder", "lease-expired"])
@pytest.mark.parametrize("first", ["state", "complete", "content"])
async def test_native_get_or_complete_finishes_a_dead_completion(client, holder, first):
    data = random_bytes(300_001)
    uid = await full_native_upload(client, data)
    await strand(client, uid, holder)
    if first == "state":
        state = await (await client.get(f"/v1/uploads/{uid}")).json()
        assert state["status"] == "completed" and state["result"]["sha256"] == sha256(data)
    elif first == "complete":
        resp = await client.post(f"/v1/uploads/{uid}/complete")
        body = await resp.json()
        assert resp.status == 200 and body["sha256"] == sha256(data), body
    resp = await client.get(f"/v1/uploads/{uid}/content")
    assert resp.status == 200 and await resp.read() == data


async def test_a_living_holders_completion_is_left_alone(client, flaky):
    """A holder that still beats is not robbed: HEAD and GET report, complete waits, then 409."""
    store = store_of(client)
    await store.beat(ALIVE.split(".")[0], 30)
    data = random_bytes(1000)
    tus_uid = await full_tus_upload(client, flaky, data)
    native_uid = await full_native_upload(client, data)
    for uid in (tus_uid, native_uid):
        await strand(client, uid, ALIVE)
    resp = await client.head(f"/files/{tus_uid}", headers=TUS)
    assert resp.status == 200 and await status_of(client, tus_uid) == "completing"
    assert (await client.get(f"/files/{tus_uid}")).status == 409
    assert (await (await client.get(f"/v1/uploads/{native_uid}")).json())["status"] == "completing"
    assert (await client.post(f"/v1/uploads/{native_uid}/complete")).status == 409  # after complete_wait
    assert (await client.delete(f"/v1/uploads/{native_uid}")).status == 409
    await store.leave(ALIVE.split(".")[0])  # now it dies: the next request takes over
    resp = await client.post(f"/v1/uploads/{native_uid}/complete")
    assert resp.status == 200 and (await resp.json())["sha256"] == sha256(data)


async def test_a_dead_completion_does_not_block_deletion(client):
    data = random_bytes(1000)
    uid = await full_native_upload(client, data)
    await strand(client, uid, DEAD)
    assert (await client.delete(f"/v1/uploads/{uid}")).status == 204
    assert (await client.get(f"/v1/uploads/{uid}")).status == 404


async def test_gc_pass_recovers_what_a_dead_process_left(client, flaky):
    """One GC pass: a dead completion finished, one that cannot finish set back to pending, dead leases freed."""
    app = client.server.app
    store, gc = store_of(client), app[gc_key]
    data = random_bytes(150_000)
    finishable = await full_native_upload(client, data)
    await strand(client, finishable, DEAD)
    unfinishable = await full_tus_upload(client, flaky, data)
    await strand(client, unfinishable, None)
    await store.redis.delete(store.chunks_key(unfinishable))  # its segments no longer add up
    appending = await full_native_upload(client, data)
    part = store.part_lease_key(appending, 2)
    await store.redis.set(store.append_lease_key(appending), DEAD, px=60_000)
    await store.redis.set(part, DEAD, px=3_600_000)
    await store.redis.set(store.part_lease_key(appending, 3), ALIVE, px=3_600_000)
    await store.beat(ALIVE.split(".")[0], 30)

    report = await gc.run_once()

    assert sorted(report.recovered) == sorted([finishable, unfinishable])
    assert sorted(report.released) == sorted([store.append_lease_key(appending), part])
    assert await status_of(client, finishable) == "completed"
    resp = await client.get(f"/v1/uploads/{finishable}/content")
    assert resp.status == 200 and hashlib.sha256(await resp.read()).hexdigest() == sha256(data)
    assert await status_of(client, unfinishable) == "pending"
    assert await store.redis.get(store.part_lease_key(appending, 3)) == ALIVE
    assert (await gc.run_once()).recovered == []
    found = await scrape(client)  # metrics.md: what each pass did, counted
    assert [value(found, "vezastream_gc_removed_total", what=w) for w in ("recovered", "released")] == [2, 2]


async def test_gc_lease_of_a_dead_process_does_not_hold_the_next_pass_up(client):
    store, gc = store_of(client), client.server.app[gc_key]
    await store.redis.set(store.gc_lease_key, DEAD, px=3_600_000)  # a pass killed midway
    assert not (await gc.run_once()).skipped
    await store.beat(ALIVE.split(".")[0], 30)
    await store.redis.set(store.gc_lease_key, ALIVE, px=60_000)  # a pass running on another node
    assert (await gc.run_once()).skipped


async def test_start_up_recovery_that_redis_fails_is_a_warning_and_its_second_try_recovers(
        make_settings, own_redis, caplog, monkeypatch):
    """docs/operations.md: start-up recovery is tried at once and again once a dead node's heartbeat has
    lapsed. Redis hanging through the first try costs a warning naming why (``timeout``), not a
    traceback, and the second try finishes the completion a dead process left."""
    monkeypatch.setattr(gc_module, "NODE_SECONDS", 1.0)  # the second try 1 s after the first
    monkeypatch.setattr(gc_module, "NODE_BEAT_SECONDS", 0.0)
    settings = make_settings(**{"redis.url": f"redis://{own_redis.address}/0", "redis.reply_timeout": 0.5,
                                "redis.replica_ack_timeout": 100})
    async with topology.connect(settings.redis, settings.redis.url) as redis_client:
        store = StateStore(redis_client, settings.redis.key_prefix)
        staging = ChunkStaging(settings.storage.chunks_dir, durable=True)
        engine = UploadEngine(settings, store, staging, make_local_sink({}, settings))
        try:
            data = random_bytes(1000)
            upload_id = await stranded(engine, store, data)
            own_redis.pause()
            try:
                recovery = asyncio.create_task(GarbageCollector(settings, store, staging,
                                                                engine=engine).recover_after_start())
                deadline = asyncio.get_running_loop().time() + 5
                while not [r for r in caplog.records if r.getMessage() == "start-up recovery failed"]:
                    assert asyncio.get_running_loop().time() < deadline and not recovery.done()
                    await asyncio.sleep(0.05)
            finally:
                own_redis.resume()
            report = await asyncio.wait_for(recovery, 10)
            done, _ = await store.load(upload_id)
        finally:
            await engine.close()
            staging.close()
            await store.aclose()
    assert report.recovered == [upload_id]
    assert done.status.value == "completed" and done.result.sha256 == sha256(data)
    failed = [r for r in caplog.records if r.getMessage() == "start-up recovery failed"]
    assert [(r.levelno, r.reason, r.exc_info) for r in failed] == [(logging.WARNING, "timeout", None)]


async def test_startup_recovery_finishes_a_dead_completion(client, caplog):
    """A process starting up finishes, by itself, a completion its dead predecessor left, and logs it
    (docs/operations.md: the ``recovered`` event)."""
    caplog.set_level(logging.INFO, logger="vezastream.gc")
    data = random_bytes(1000)
    uid = await full_native_upload(client, data)
    await strand(client, uid, DEAD)
    deadline = asyncio.get_running_loop().time() + NODE_SECONDS + NODE_BEAT_SECONDS + 5
    while await status_of(client, uid) != "completed":  # no request touches it meanwhile
        assert asyncio.get_running_loop().time() < deadline, "not recovered after start-up"
        await asyncio.sleep(0.2)
    resp = await client.get(f"/v1/uploads/{uid}/content")
    assert resp.status == 200 and await resp.read() == data
    logged: list = []
    for _ in range(50):  # bounded: 5 s for the start-up's last pass to end and log
        logged = [(r.recovered, r.released) for r in caplog.records if getattr(r, "event", None) == "recovered"]
        if logged:
            break
        await asyncio.sleep(0.1)
    assert logged == [(1, 0)]


async def test_tus_termination_while_the_sink_fails(client, flaky):
    """Finding 8: DELETE must not try to complete first; it answers 204 and frees what is staged."""
    data = random_bytes(100_000)
    uid = await full_tus_upload(client, flaky, data)
    engine = client.server.app[engine_key]
    flaky.failing = True
    resp = await client.delete(f"/files/{uid}", headers=TUS)
    assert resp.status == 204, await resp.text()
    assert (await client.head(f"/files/{uid}", headers=TUS)).status == 404
    assert not engine.staging.holds(uid)


async def test_native_delete_while_the_sink_fails(client, flaky):
    uid = await full_native_upload(client, random_bytes(100_000))
    engine = client.server.app[engine_key]
    flaky.failing = True
    assert (await client.delete(f"/v1/uploads/{uid}")).status == 204
    assert (await client.get(f"/v1/uploads/{uid}")).status == 404
    assert not engine.staging.holds(uid)


def test_departed_names_only_the_dead_processes_of_a_data_folder(tmp_path):
    """A process holds its node file while it lives; once SIGKILLed, the next one to start knows it is gone."""
    folder = tmp_path / "nodes"
    script = ("import sys, time; from pathlib import Path; from vezastream.engine import nodes; "
              "nodes.hold(Path(sys.argv[1]), sys.argv[2]); print('held', flush=True); time.sleep(60)")
    procs = {name: subprocess.Popen([sys.executable, "-c", script, str(folder), name], stdout=subprocess.PIPE)
             for name in ("alive", "killed")}
    try:
        for proc in procs.values():
            assert proc.stdout.readline() == b"held\n"
        procs["killed"].send_signal(signal.SIGKILL)
        procs["killed"].wait(10)
        mine = nodes.hold(folder, "me")
        assert nodes.departed(folder) == ["killed"]
        assert sorted(os.listdir(folder)) == ["alive", "me"]
        assert nodes.departed(folder) == []
        nodes.release(folder, "me", mine)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            proc.wait(10)


async def test_gc_command_recovers_a_dead_completion(client, tmp_path):
    """`vezastream gc` (dry run, then for real) finishes what a dead process left, and says so."""
    settings = client.server.app[settings_key]
    data = random_bytes(1000)
    uid = await full_native_upload(client, data)
    await strand(client, uid, DEAD)
    env = {**os.environ, "VEZASTREAM_STORAGE__DATA_DIR": str(settings.storage.data_dir),
           "VEZASTREAM_STORAGE__SINK": "local", "VEZASTREAM_REDIS__URL": settings.redis.url,
           "VEZASTREAM_REDIS__KEY_PREFIX": settings.redis.key_prefix}
    cmd = [sys.executable, "-m", "vezastream.cli", "gc"]
    for args, said in ((["--dry-run"], "would recover 1 completion(s)"), ([], "recovered 1 completion(s)")):
        out = await asyncio.to_thread(subprocess.run, cmd + args, env=env, cwd=tmp_path, capture_output=True,
                                      text=True, timeout=60)
        assert out.returncode == 0 and said in out.stdout, (out.stdout, out.stderr)
    # The takeover's warning is a log line as the server writes it (log.format = "json"), not a bare message.
    logged = [json.loads(line) for line in out.stderr.splitlines()]
    assert [line["level"] for line in logged if line["msg"] == "completion of a dead process taken over"] == [
        "warning"], out.stderr
    assert await status_of(client, uid) == "completed"
    assert await (await client.get(f"/v1/uploads/{uid}/content")).read() == data
