"""A completion a dead process left is finished by the next request, on the S3 sink (issue 15, finding 1).

Both native modes (staged chunks streamed into S3; direct, the parts in S3
already) and tus, against a real S3 server (moto). See test_takeover.py for
the local sink and for how a dead process's state is written.
"""

from __future__ import annotations

from typing import Any

import pytest

from helpers import content, create, put_chunk, random_bytes, sha256, split
from s3_servers import Faulty, client_error, open_multipart_uploads, the_sink
from s3_servers import PREFIX, read_object
from helpers import DEAD, status_of, strand
from tus_helpers import TUS, tus_create, tus_patch, upload_path

from vezastream.http.app import engine_key

MiB = 1024 * 1024
MODES = {"staged": 1 * MiB, "direct": 5 * MiB}  # direct mode needs 5 MiB chunks (S3's smallest part)


@pytest.fixture
async def client(make_client, sink_settings):
    return await make_client(sink_settings(retry_attempts=2))


async def tus_full_while_s3_fails(client, data: bytes, fault: Exception, expect: int) -> tuple[str, str, Any]:
    """A tus upload whose every byte is recorded while S3 refuses its completion: (path, id, the real client)."""
    path = upload_path(await tus_create(client, len(data)))
    sink = the_sink(client)
    real = await sink.api()
    sink.use_client(Faulty(real, create_multipart_upload=[fault] * 10))
    await tus_patch(client, path, 0, data, expect=expect)
    return path, path.rsplit("/", 1)[1], real


async def ready_native(client, data: bytes, chunk: int) -> str:
    uid = (await create(client, total_size=len(data), chunk_size=chunk))["upload_id"]
    for n, piece in enumerate(split(data, chunk), 1):
        await put_chunk(client, uid, n, piece)
    return uid


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("first", ["state", "complete"])
async def test_native_dead_completion_is_taken_over(client, s3, bucket, mode, first):
    data = random_bytes(MODES[mode] + 12_345)
    uid = await ready_native(client, data, MODES[mode])
    await strand(client, uid, DEAD)
    if first == "state":
        state = await (await client.get(f"/v1/uploads/{uid}")).json()
        assert state["status"] == "completed" and state["mode"] == mode
    else:
        resp = await client.post(f"/v1/uploads/{uid}/complete")
        assert resp.status == 200 and (await resp.json())["sha256"] == sha256(data)
    assert await read_object(s3, bucket, PREFIX + uid) == data
    assert await content(client, uid) == (200, data)
    assert open_multipart_uploads(s3, bucket) == []


async def test_direct_completion_that_landed_in_s3_but_was_never_recorded(client, s3, bucket):
    """The dead process had completed the multipart upload, then died before recording the result."""
    data = random_bytes(MODES["direct"] + 7)
    uid = await ready_native(client, data, MODES["direct"])
    assert (await client.post(f"/v1/uploads/{uid}/complete")).status == 200
    store = client.server.app[engine_key].store
    await store.redis.hdel(store.key(uid), "result")
    await strand(client, uid, DEAD)
    state = await (await client.get(f"/v1/uploads/{uid}")).json()
    assert state["status"] == "completed" and state["result"]["sha256"] == sha256(data)
    assert await content(client, uid) == (200, data)


async def test_tus_dead_completion_is_taken_over_by_head(client, s3, bucket):
    data = random_bytes(300_001)
    denied = client_error("AccessDenied", 403, "CreateMultipartUpload")
    path, uid, real = await tus_full_while_s3_fails(client, data, denied, 502)
    the_sink(client).use_client(real)  # S3 is back
    await strand(client, uid, DEAD)
    resp = await client.head(path, headers=TUS)
    assert resp.status == 200 and resp.headers["Upload-Offset"] == str(len(data))
    assert await status_of(client, uid) == "completed"
    assert await read_object(s3, bucket, PREFIX + uid) == data
    resp = await client.get(path)
    assert resp.status == 200 and await resp.read() == data


async def test_tus_termination_while_s3_is_down(client, s3, bucket):
    """Finding 8 on S3: DELETE answers 204 without completing, and frees the staged bytes."""
    down = client_error("ServiceUnavailable", 503, "CreateMultipartUpload")
    path, uid, _ = await tus_full_while_s3_fails(client, random_bytes(100_000), down, 503)
    resp = await client.delete(path, headers=TUS)
    assert resp.status == 204, await resp.text()
    assert (await client.head(path, headers=TUS)).status == 404
    assert not client.server.app[engine_key].staging.holds(uid)


async def test_direct_chunk_whose_sender_died_is_taken_over(client, s3, bucket):
    """A chunk whose sending process died mid-body (its part lease left behind) is accepted at once."""
    data = random_bytes(MODES["direct"] + 99)
    uid = (await create(client, total_size=len(data), chunk_size=MODES["direct"]))["upload_id"]
    store = client.server.app[engine_key].store
    await store.redis.set(store.part_lease_key(uid, 1), DEAD, px=3_600_000)
    for n, piece in enumerate(split(data, MODES["direct"]), 1):
        await put_chunk(client, uid, n, piece)
    resp = await client.post(f"/v1/uploads/{uid}/complete")
    assert resp.status == 200 and (await resp.json())["sha256"] == sha256(data)
