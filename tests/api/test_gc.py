"""The garbage collector, through run_once() and the CLI."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

from vezastream.http.app import engine_key, gc_key

from helpers import create, put_chunk


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
    orphan = settings.storage.chunks_dir / ("Q" * 22)
    orphan.mkdir(parents=True)
    old = time.time() - 10 * 86400
    os.utime(orphan, (old, old))
    env = {**os.environ, "VEZASTREAM_STORAGE__DATA_DIR": str(settings.storage.data_dir),
           "VEZASTREAM_REDIS__URL": settings.redis.url, "VEZASTREAM_REDIS__KEY_PREFIX": settings.redis.key_prefix}
    cmd = [sys.executable, "-m", "vezastream.cli", "gc"]
    out = subprocess.run(cmd + ["--dry-run"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert f"would remove {'Q' * 22}" in out.stdout and orphan.exists()
    out = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and f"removed {'Q' * 22}" in out.stdout
    assert not orphan.exists()
