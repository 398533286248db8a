"""GC drill: the garbage collector SIGKILLed mid-sweep of the S3 sink (moto), with
``storage.staging = "sink"``, then one more pass.

Nodes that share no disk (``storage.staging = "sink"``, direct mode on) on the test's own Redis
leave in the bucket: abandoned direct uploads' multipart uploads, at ``<prefix><upload id>`` and
at keys that name no upload (``key_template = "n/{filename}"``: each with its note,
``<prefix>.vezastream-open/<hash>``), and abandoned uploads' staging objects
(``<prefix>.staging/<upload id>/...``), their Redis records deleted as their TTL would; beside
them live uploads half sent (direct: a 5 MiB part acknowledged; staged: 4 of 8 chunks) and
completed ones; and one note whose multipart upload is gone (what a pass killed between the abort
and the note's removal leaves). Everything is older than ``gc.max_age`` (1 s). `vezastream gc`, or a
`vezastream serve` whose scheduled GC runs, in turn, is started and SIGKILLed 0-150 ms after the
count it watches first falls (``WATCH``: open multipart uploads for the first two kills, notes for
the next two, staging objects for the last four: the sweep's steps, in order), 8 times; then one
`vezastream gc` pass runs to its end.

Asserted: that pass exits 0 without a failed sweep or a traceback in its log; after it the bucket
holds no multipart upload but the live ones', no note, no staging object but the live uploads'
(as many as were acknowledged), and every completed object; every completed upload reads back
byte-identical, and every live upload completes byte-identical.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from typing import Any

import aiohttp
import pytest

from helpers import random_bytes
from s3_servers import PREFIX, boto_client, new_bucket
from servers import Server, gc_pass, kill_mid_pass, run, server_env

pytestmark = [pytest.mark.slow, pytest.mark.drill]

MiB = 1024 * 1024
#: Abandoned: direct uploads at ``<prefix><id>``, at keys naming no upload, uploads staged in the bucket.
NAMED, UNNAMED, STAGED = 80, 60, 60
LIVE, DONE, PIECE = 3, 3, 1024
NOTES, STAGING = PREFIX + ".vezastream-open/", PREFIX + ".staging/"
#: What each kill waits to see fall, of (multipart uploads, notes, staging objects): the sweep's steps in turn.
WATCH = (0, 0, 1, 1, 2, 2, 2, 2)


def _left(s3: Any, bucket: str) -> tuple[int, int, int]:
    """(open multipart uploads, notes, staging objects) in the bucket."""
    uploads = s3.list_multipart_uploads(Bucket=bucket, Prefix=PREFIX).get("Uploads", [])
    return len(uploads), len(_all_keys(s3, bucket, NOTES)), len(_all_keys(s3, bucket, STAGING))


def _all_keys(s3: Any, bucket: str, prefix: str) -> list[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def _objects(s3: Any, bucket: str) -> list[str]:
    """The keys of uploads' objects: neither notes nor staging objects."""
    return [k for k in _all_keys(s3, bucket, PREFIX) if not k.startswith((NOTES, STAGING))]


async def _create(s: aiohttp.ClientSession, size: int, chunk: int, name: str = "g.bin") -> str:
    async with s.post("/v1/uploads", json={"filename": name, "total_size": size, "chunk_size": chunk}) as r:
        assert r.status == 201, await r.text()
        return (await r.json())["upload_id"]


async def _send(s: aiohttp.ClientSession, uid: str, data: bytes, chunk: int, numbers: range) -> None:
    for n in numbers:
        async with s.put(f"/v1/uploads/{uid}/chunks/{n}", data=data[(n - 1) * chunk:n * chunk]) as r:
            assert r.status == 201, await r.text()


async def _complete(s: aiohttp.ClientSession, uid: str) -> None:
    async with s.post(f"/v1/uploads/{uid}/complete") as r:
        assert r.status == 200, await r.text()


async def _staged(s: aiohttp.ClientSession, data: bytes, chunks: int, name: str = "g.bin") -> str:
    """An upload of ``PIECE``-sized chunks (staged in the bucket), its first ``chunks`` sent."""
    uid = await _create(s, len(data), PIECE, name)
    await _send(s, uid, data, PIECE, range(1, chunks + 1))
    return uid


async def _identical(s: aiohttp.ClientSession, uploads: dict[str, bytes]) -> int:
    same = 0
    for uid, data in uploads.items():
        async with s.get(f"/v1/uploads/{uid}/content") as r:
            same += r.status == 200 and await r.read() == data
    return same


async def _many(n: int, make) -> list[str]:
    sem = asyncio.Semaphore(8)

    async def one(i: int) -> str:
        async with sem:
            return await make(i)
    return list(await asyncio.gather(*(one(i) for i in range(n))))


async def test_gc_killed_mid_s3_sweep_then_one_pass_leaves_only_the_live(tmp_path, own_redis, moto_server,  # noqa: F811
                                                                         report):
    rng = random.Random(int(os.environ.get("DRILL_SEED", "0")) or random.randrange(1 << 30))
    s3 = boto_client(moto_server.endpoint)
    bucket = new_bucket(s3)
    table = {"BUCKET": bucket, "ENDPOINT_URL": moto_server.endpoint, "ADDRESSING_STYLE": "path", "PREFIX": PREFIX,
             "CONTENT": "proxy"}
    env = server_env(tmp_path, f"redis://{own_redis.address}/0", GC__MAX_AGE="1", STORAGE__SINK="s3",
                     STORAGE__STAGING="sink", **{f"SINKS__S3__{k}": v for k, v in table.items()})
    unnamed_env = {**env, "VEZASTREAM_SINKS__S3__KEY_TEMPLATE": "n/{filename}"}
    direct = 2 * 5 * MiB  # two chunks of 5 MiB: a multipart upload opened at creation
    done: dict[str, bytes] = {}
    server = Server(env, tmp_path)
    try:
        await server.wait_ready()
        async with aiohttp.ClientSession(server.url) as s:
            live_direct = {await _create(s, 5 * MiB + 1000, 5 * MiB): random_bytes(5 * MiB + 1000)
                           for _ in range(LIVE)}
            for uid, data in live_direct.items():
                await _send(s, uid, data, 5 * MiB, range(1, 2))
            live_staged = {}
            for _ in range(LIVE):
                data = random_bytes(8 * PIECE)
                live_staged[await _staged(s, data, 4)] = data
            for _ in range(DONE):
                data = random_bytes(3 * PIECE)
                uid = await _staged(s, data, 3)
                await _complete(s, uid)
                done[uid] = data
            abandoned = await _many(NAMED, lambda i: _create(s, direct, 5 * MiB))
            abandoned += await _many(STAGED, lambda i: _staged(s, b"a" * 4 * PIECE, 4))
    finally:
        server.kill(signal.SIGTERM)
    server = Server(unnamed_env, tmp_path)
    try:
        await server.wait_ready()
        async with aiohttp.ClientSession(server.url) as s:
            abandoned += await _many(UNNAMED, lambda i: _create(s, direct, 5 * MiB, f"a{i}.bin"))
            for i in range(DONE):
                data = random_bytes(3 * PIECE)
                uid = await _staged(s, data, 3, f"c{i}.bin")
                await _complete(s, uid)
                done[uid] = data
    finally:
        server.kill(signal.SIGTERM)
    r = own_redis.client()
    for uid in abandoned:  # what the upload's TTL does
        r.delete(*r.keys(f"{env['VEZASTREAM_REDIS__KEY_PREFIX']}:up:{{{uid}}}*"))
    completed_keys = _objects(s3, bucket)
    live_staging = {uid: len(_all_keys(s3, bucket, f"{STAGING}{uid}/")) for uid in live_staged}
    # What a pass killed between aborting a multipart upload and deleting its note leaves: the note alone.
    (cut,) = s3.list_multipart_uploads(Bucket=bucket, Prefix=PREFIX + "n/a0.bin")["Uploads"]
    s3.abort_multipart_upload(Bucket=bucket, Key=cut["Key"], UploadId=cut["UploadId"])
    time.sleep(2.5)  # everything older than gc.max_age (S3 keeps times to the second)
    kills, exits = [_left(s3, bucket)], []
    # Listings taken while a pass deletes: moto's server may answer one 500 (a key deleted under the listing).
    watch = boto_client(moto_server.endpoint, attempts=5)
    for kill, step in enumerate(WATCH):  # the command's pass and the server's scheduled one, in turn
        proc = gc_pass(env, tmp_path, scheduled=kill % 2 == 1)
        if kills[-1][step]:  # else the step is done: any change
            kill_mid_pass(proc, lambda: _left(watch, bucket)[step], kills[-1][step], rng.uniform(0, 0.15))
        else:
            kill_mid_pass(proc, lambda: _left(watch, bucket), kills[-1], rng.uniform(0, 0.15))
        kills.append(_left(s3, bucket))
        exits.append(proc.returncode)
    started = time.monotonic()
    gc = run(["gc"], env, tmp_path)
    pass_s = time.monotonic() - started
    uploads = s3.list_multipart_uploads(Bucket=bucket, Prefix=PREFIX).get("Uploads", [])
    staging = {uid: len(_all_keys(s3, bucket, f"{STAGING}{uid}/")) for uid in live_staged}
    after = {"multipart": sorted(u["Key"] for u in uploads), "notes": _all_keys(s3, bucket, NOTES),
             "staging": len(_all_keys(s3, bucket, STAGING)),
             "objects": _objects(s3, bucket)}
    server = Server(env, tmp_path)
    try:
        await server.wait_ready()
        async with aiohttp.ClientSession(server.url) as s:
            done_same = await _identical(s, done)
            for uid, data in live_direct.items():
                await _send(s, uid, data, 5 * MiB, range(2, 3))
                await _complete(s, uid)
            for uid, data in live_staged.items():
                await _send(s, uid, data, PIECE, range(5, 9))
                await _complete(s, uid)
            live_same = await _identical(s, {**live_direct, **live_staged})
    finally:
        server.kill(signal.SIGTERM)
    report("gc-killed mid-S3-sweep (staging in the sink)", abandoned=f"{NAMED}+{UNNAMED} multipart, {STAGED} staged",
           live=2 * LIVE, completed=2 * DONE, left_after_each_kill=kills, exits=exits, last_pass_s=round(pass_s, 1),
           multipart_after=len(after["multipart"]), notes_after=len(after["notes"]),
           staging_after=after["staging"], completed_identical=done_same, live_identical=live_same)
    assert gc.returncode == 0, gc.stderr
    assert "sweep failed" not in gc.stderr and "Traceback" not in gc.stderr, gc.stderr
    assert after["multipart"] == sorted(PREFIX + uid for uid in live_direct)
    assert after["notes"] == []
    assert staging == live_staging and after["staging"] == sum(live_staging.values())
    assert after["objects"] == completed_keys and len(completed_keys) == 2 * DONE
    assert done_same == 2 * DONE
    assert live_same == 2 * LIVE
