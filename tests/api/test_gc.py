"""The garbage collector, through run_once() and the CLI."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time

import pytest

from vezastream.http.app import engine_key, gc_key
from vezastream.models import Layout, UploadSpec, new_upload_id
from vezastream.testing import EventRecorder

from helpers import create, put_chunk, random_bytes, scrape, upload, value


def staged(client, upload_id: str) -> bool:
    """Does anything of the upload wait in the staging area (its data file, its folder)?"""
    return client.server.app[engine_key].staging.holds(upload_id)


async def test_gc_removes_abandoned_upload_and_keeps_live_one(make_client, make_settings):
    settings = make_settings(**{"limits.upload_ttl": 2, "gc.max_age": 1})
    client = await make_client(settings)
    abandoned = (await create(client, total_size=20, chunk_size=10))["upload_id"]
    await put_chunk(client, abandoned, 1, b"a" * 10)
    await asyncio.sleep(1.2)
    live = (await create(client, total_size=20, chunk_size=10))["upload_id"]
    await put_chunk(client, live, 1, b"b" * 10)
    await asyncio.sleep(1.1)  # the abandoned upload's state has expired, the live one's has not
    gc = client.server.app[gc_key]
    dry = await gc.run_once(dry_run=True)
    assert dry.removed == [abandoned]
    assert staged(client, abandoned)
    report = await gc.run_once()
    assert report.removed == [abandoned] and report.kept == 1
    assert not staged(client, abandoned)
    assert staged(client, live)
    assert (await client.get(f"/v1/uploads/{live}")).status == 200
    await put_chunk(client, live, 2, b"c" * 10)
    assert (await client.post(f"/v1/uploads/{live}/complete")).status == 200


async def test_gc_keeps_young_orphans_and_removes_leftovers_of_completed(make_client, make_settings):
    settings = make_settings(**{"gc.max_age": 3600})
    client = await make_client(settings)
    stranger = settings.storage.chunks_dir / "not-an-upload-id"
    stranger.mkdir(parents=True)
    orphan = settings.storage.chunks_dir / ("O" * 22)
    orphan.mkdir(parents=True)
    (orphan / "1.abc").write_bytes(b"x")
    uid = (await create(client, total_size=1, chunk_size=1))["upload_id"]
    await put_chunk(client, uid, 1, b"z")
    assert (await client.post(f"/v1/uploads/{uid}/complete")).status == 200
    # Simulate a crash between recording the result and removing the chunks.
    (settings.storage.chunks_dir / uid).mkdir()
    report = await client.server.app[gc_key].run_once()
    assert report.removed == [uid]
    assert orphan.exists()  # no state, but younger than gc.max_age
    old = time.time() - 7200
    os.utime(orphan, (old, old))
    os.utime(stranger, (old, old))
    report = await client.server.app[gc_key].run_once()
    assert report.removed == ["O" * 22] and not orphan.exists()
    assert stranger.exists()  # the collector only touches folders named like upload ids


async def test_gc_removes_abandoned_data_files_flat_and_in_an_older_versions_folder(make_client, make_settings):
    settings = make_settings(**{"gc.max_age": 3600})
    root = settings.storage.chunks_dir
    root.mkdir(parents=True)
    older = root / ("L" * 22)  # an older version kept each data file in a folder of its own
    older.mkdir()
    (older / "data").write_bytes(b"x" * 10)
    client = await make_client(settings)
    flat = root / ("F" * 22 + ".data")
    flat.write_bytes(b"y" * 10)
    stranger = root / "not-an-upload-id.data"
    stranger.write_bytes(b"z")
    assert staged(client, "L" * 22) and staged(client, "F" * 22)
    old = time.time() - 7200
    for path in (older, flat, stranger):
        os.utime(path, (old, old))
    report = await client.server.app[gc_key].run_once()
    assert sorted(report.removed) == ["F" * 22, "L" * 22]
    assert not older.exists() and not flat.exists() and stranger.exists()


async def test_a_pass_over_hundreds_judges_each_upload_and_shares_redis_round_trips(make_client, make_settings):
    """Each staged upload is judged by its own status and age, whatever batch it falls in; the
    pass's status look-ups share pipelines (far fewer Redis round trips than uploads)."""
    settings = make_settings(**{"gc.max_age": 3600})
    events = EventRecorder()
    client = await make_client(settings, plugins=[("events", events)])
    engine = client.server.app[engine_key]
    root, now = settings.storage.chunks_dir, time.time()
    old = now - 7200
    completed = [(await upload(client, random_bytes(10), 10))["upload_id"] for _ in range(3)]
    pending = [new_upload_id() for _ in range(300)]
    expired = [new_upload_id() for _ in range(300)]  # no record (expired), older than gc.max_age
    young = [new_upload_id() for _ in range(40)]  # no record, younger than gc.max_age: kept
    await asyncio.gather(*(engine.store.create(UploadSpec(
        id=uid, owner="anonymous", filename="f", total_size=20, chunk_size=10, total_chunks=2, created_at=now,
        layout=Layout.IN_PLACE), settings.limits.upload_ttl) for uid in pending))
    for i, uid in enumerate(pending + expired + young + completed):
        if i % 4 == 0:  # the chunk files' layout: a folder of its own
            entry = root / uid
            entry.mkdir()
            (entry / "1.abc").write_bytes(b"x")
        else:
            entry = root / f"{uid}.data"
            entry.write_bytes(b"x")
        if uid not in young:  # a pending upload is kept however old its files are
            os.utime(entry, (old, old))
    (root / "not-an-upload-id.data").write_bytes(b"z")
    doomed = sorted(expired + completed)

    before = value(await scrape(client), "vezastream_redis_roundtrip_seconds_count")
    dry = await client.server.app[gc_key].run_once(dry_run=True)
    trips = value(await scrape(client), "vezastream_redis_roundtrip_seconds_count") - before
    assert sorted(dry.removed) == doomed and dry.kept == len(pending) + len(young) + 1
    assert all(staged(client, uid) for uid in doomed) and not events.of("expiry")
    looked_up = len(pending + expired + young + completed)
    assert trips < looked_up / 10, f"{trips} Redis round trips for {looked_up} look-ups"

    report = await client.server.app[gc_key].run_once()
    assert sorted(report.removed) == doomed and report.kept == len(pending) + len(young) + 1
    assert not any(staged(client, uid) for uid in doomed)
    assert all(staged(client, uid) for uid in pending + young)
    assert (root / "not-an-upload-id.data").exists()
    assert sorted(e.upload_id for e in await events.wait_for("expiry", count=len(expired))) == sorted(expired)
    await asyncio.sleep(0.05)
    assert len(events.of("expiry")) == len(expired)  # not for the completed ones
    assert (await client.get(f"/v1/uploads/{pending[0]}")).status == 200


async def test_a_removal_that_fails_fails_the_pass_and_frees_the_lease(make_client, make_settings):
    settings = make_settings(**{"gc.max_age": 3600})
    client = await make_client(settings)
    gc = client.server.app[gc_key]
    root, old = settings.storage.chunks_dir, time.time() - 7200
    ids = [new_upload_id() for _ in range(20)]
    for uid in ids:
        (root / f"{uid}.data").write_bytes(b"x")
        os.utime(root / f"{uid}.data", (old, old))
    remove = gc.staging.remove_upload

    async def failing(upload_id: str) -> None:
        if upload_id == ids[3]:
            raise OSError("disk gone")
        await remove(upload_id)
    gc.staging.remove_upload = failing
    try:
        with pytest.raises(OSError, match="disk gone"):
            await gc.run_once()
    finally:
        del gc.staging.remove_upload
    assert [uid for uid in ids if staged(client, uid)] == [ids[3]]  # the rest of the batch was removed
    report = await gc.run_once()  # the lease was given back
    assert not report.skipped and report.removed == [ids[3]]


async def test_only_one_gc_pass_at_a_time(make_client, settings):
    client = await make_client(settings)
    gc = client.server.app[gc_key]
    store = gc.store
    assert await store.acquire_lease(store.gc_lease_key, "other-node", 30)
    report = await gc.run_once()
    assert report.skipped
    await store.release_lease(store.gc_lease_key, "other-node")
    assert not (await gc.run_once()).skipped


def test_gc_command_dry_run_and_real(settings, tmp_path):
    """It prints each upload whose staged data it removes (or would), then how many it removed and
    kept: here one expired upload's data file younger than gc.max_age is kept (operations.md)."""
    orphan = settings.storage.chunks_dir / ("Q" * 22)
    orphan.mkdir(parents=True)
    old = time.time() - 10 * 86400
    os.utime(orphan, (old, old))
    (settings.storage.chunks_dir / ("R" * 22 + ".data")).write_bytes(b"young")
    env = {**os.environ, "VEZASTREAM_STORAGE__DATA_DIR": str(settings.storage.data_dir),
           "VEZASTREAM_REDIS__URL": settings.redis.url, "VEZASTREAM_REDIS__KEY_PREFIX": settings.redis.key_prefix}
    cmd = [sys.executable, "-m", "vezastream.cli", "gc"]
    out = subprocess.run(cmd + ["--dry-run"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [f"would remove {'Q' * 22}",
                                       "would remove the staged data of 1 upload(s), would keep 1"], out.stdout
    assert orphan.exists()
    assert gc_lines(out.stderr) == [(1, 1, True)]
    out = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    assert out.stdout.splitlines() == [f"removed {'Q' * 22}", "removed the staged data of 1 upload(s), kept 1"]
    assert not orphan.exists()
    assert gc_lines(out.stderr) == [(1, 1, False)]


def gc_lines(stderr: str) -> list[tuple[int, int, bool]]:
    """The ``gc`` event lines of a command's JSON log (docs/operations.md): (removed, kept, dry_run)."""
    lines = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    return [(line["removed"], line["kept"], line["dry_run"]) for line in lines if line.get("event") == "gc"]
