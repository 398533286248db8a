"""Completion and creation on the S3 sink when S3 answers badly, against a real S3 (moto).

A CompleteMultipartUpload whose answer is lost, a note that cannot be written, a HeadObject
refused, staging objects gone from the bucket, a bucket that is not there, an upload stored
in a bucket the server no longer uses: each answers what a client can act on, and nothing
is left in the bucket that no upload owns.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from helpers import create, put_chunk, random_bytes, sha256, upload
from s3_servers import (Faulty, bucket_contents, chunks_sent, client_error, completes,
                        deleted_leaves_nothing, new_bucket, object_keys, PREFIX, read_object, s3_overrides,
                        the_sink)
from tus_helpers import tus_create, tus_patch, upload_path

MiB = 1024 * 1024


async def refused(client, uid: str, status: int) -> dict[str, Any]:
    """Complete answers ``status`` (problem+json) and the upload stays pending; a 502 or 503, which
    S3 caused here, names the sink."""
    resp = await client.post(f"/v1/uploads/{uid}/complete")
    problem = await resp.json(content_type=None)
    assert resp.status == status and resp.content_type == "application/problem+json", problem
    assert status not in (502, 503) or problem["sink"] == "s3", problem
    assert (await (await client.get(f"/v1/uploads/{uid}")).json())["status"] == "pending"
    return problem


class AnswerLost:
    """The real client, but the first CompleteMultipartUpload lands and its answer is lost (the
    connection drops); later ones raise ``then`` in turn (S3 answers NoSuchUpload for an upload it
    completed already: moto completes it again instead, so that answer is raised here)."""

    def __init__(self, real: Any, *then: Exception) -> None:
        self.real, self.then, self.calls = real, list(then), 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    async def complete_multipart_upload(self, **kw: Any) -> Any:
        self.calls += 1
        if self.calls == 1:
            await self.real.complete_multipart_upload(**kw)
            raise aiohttp.ServerDisconnectedError()
        if self.then:
            raise self.then.pop(0)
        return await self.real.complete_multipart_upload(**kw)


# -- streamed mode ------------------------------------------------------------------------------
async def test_a_file_of_exactly_two_parts_is_sent_as_two_parts(make_client, sink_settings, s3, bucket):
    client = await make_client(sink_settings())
    sink = the_sink(client)
    spy = Faulty(await sink.api())
    sink.use_client(spy)
    data = random_bytes(10 * MiB)  # part_size is 5 MiB: no bytes left over for a third part
    result = await upload(client, data, chunk_size=MiB)
    assert spy.calls["upload_part"] == 2
    assert await read_object(s3, bucket, PREFIX + result["upload_id"]) == data


async def test_a_completion_whose_answer_was_lost_is_found_done_on_its_retry(make_client, sink_settings, s3, bucket):
    client = await make_client(sink_settings())
    data = random_bytes(MiB + 3)
    uid = await chunks_sent(client, data, MiB)
    sink = the_sink(client)
    lost = AnswerLost(await sink.api(), client_error("NoSuchUpload", 404, "CompleteMultipartUpload"))
    sink.use_client(lost)
    await completes(client, s3, bucket, uid, data)
    assert lost.calls == 2


async def test_a_completion_that_landed_then_failed_leaves_no_object_and_can_complete_again(
        make_client, sink_settings, s3, bucket):
    """The object landed, but S3 stayed unavailable for every retry: 503, and the object the upload
    no longer stands behind is deleted (a pending upload owns no object)."""
    client = await make_client(sink_settings(retry_attempts=2))
    data = random_bytes(MiB + 3)
    uid = await chunks_sent(client, data, MiB)
    sink = the_sink(client)
    real = await sink.api()
    sink.use_client(AnswerLost(real, client_error("ServiceUnavailable", 503, "CompleteMultipartUpload")))
    problem = await refused(client, uid, 503)
    assert problem["retry_after"] == 5, problem
    assert await asyncio.to_thread(bucket_contents, s3, bucket) == ([], [])
    sink.use_client(real)
    await completes(client, s3, bucket, uid, data)


async def test_a_tus_upload_whose_last_patch_s3_fails_answers_503_naming_the_sink(make_client, sink_settings, s3,
                                                                                   bucket):
    client = await make_client(sink_settings(retry_attempts=2))
    sink = the_sink(client)
    real = await sink.api()
    down = [client_error("ServiceUnavailable", 503, "CompleteMultipartUpload")] * 2
    sink.use_client(Faulty(real, complete_multipart_upload=down))
    data = random_bytes(MiB + 3)
    path = upload_path(await tus_create(client, len(data)))
    last = await tus_patch(client, path, 0, data, expect=503)
    problem = await last.json()
    assert problem["type"].endswith("/unavailable") and problem["sink"] == "s3", problem


# -- key templates: the note, and the key's owner ---------------------------------------------------
@pytest.mark.parametrize("refused", [0, 1], ids=["intent", "note"])
async def test_a_note_that_cannot_be_written_aborts_its_multipart_upload(make_client, sink_settings, s3, bucket,
                                                                        refused):
    """A templated key does not name its upload: without the note beside it (or the intent written
    before CreateMultipartUpload) the GC could never tell whose its multipart upload is. Creation
    fails and leaves nothing behind: no multipart upload, no intent."""
    client = await make_client(sink_settings(key_template="{filename}"))
    sink = the_sink(client)
    real = await sink.api()
    sink.use_client(Faulty(real, put_object=[None] * refused + [client_error("AccessDenied", 403, "PutObject")]))
    resp = await client.post("/v1/uploads", json={"filename": "a.bin", "total_size": 5 * MiB + 1,
                                                  "chunk_size": 5 * MiB})
    assert resp.status == 502 and resp.content_type == "application/problem+json", await resp.text()
    assert await asyncio.to_thread(bucket_contents, s3, bucket) == ([], [])
    sink.use_client(real)
    data = random_bytes(5 * MiB + 1)
    result = await upload(client, data, chunk_size=5 * MiB, filename="a.bin")
    assert await read_object(s3, bucket, PREFIX + "a.bin") == data and result["sha256"] == sha256(data)
    assert await asyncio.to_thread(bucket_contents, s3, bucket) == ([PREFIX + "a.bin"], [])  # its note went


async def test_a_refused_headobject_is_a_502_not_a_free_key(make_client, sink_settings, s3, bucket):
    """Whether a templated key is taken cannot be told: the completion fails rather than assume it is free."""
    client = await make_client(sink_settings(key_template="{filename}"))
    data = random_bytes(MiB + 3)
    uid = await chunks_sent(client, data, MiB, filename="b.bin")
    sink = the_sink(client)
    real = await sink.api()
    sink.use_client(Faulty(real, head_object=[client_error("403", 403, "HeadObject")]))
    await refused(client, uid, 502)
    assert await asyncio.to_thread(bucket_contents, s3, bucket) == ([], [])
    sink.use_client(real)
    resp = await client.post(f"/v1/uploads/{uid}/complete")
    assert resp.status == 200 and (await resp.json())["sha256"] == sha256(data)
    assert await read_object(s3, bucket, PREFIX + "b.bin") == data


# -- sink staging: staging objects gone, a bucket gone ----------------------------------------------
@pytest.fixture
def staging_in_sink(make_settings, s3_server, bucket, sink_defaults):
    """Settings whose uploads wait in the bucket (``storage.staging = "sink"``)."""
    return make_settings(**{"storage.staging": "sink", **s3_overrides(s3_server, bucket, **sink_defaults)})


async def test_a_staging_object_removed_from_the_bucket_answers_409(make_client, staging_in_sink, s3, bucket):
    client = await make_client(staging_in_sink)
    uid = await chunks_sent(client, random_bytes(250_000), 100_000)
    staged = await asyncio.to_thread(object_keys, s3, bucket, f"{PREFIX}.staging/{uid}/")
    assert len(staged) == 3
    await asyncio.to_thread(s3.delete_object, Bucket=bucket, Key=staged[1])
    problem = await refused(client, uid, 409)
    assert "is missing from the bucket; delete the upload and upload it again" in problem["detail"], problem
    await deleted_leaves_nothing(client, uid, s3, bucket)


async def test_a_staging_object_s3_will_not_read_answers_502_and_stays(make_client, staging_in_sink, s3, bucket):
    client = await make_client(staging_in_sink)
    data = random_bytes(250_000)
    uid = await chunks_sent(client, data, 100_000)
    sink = the_sink(client)
    real = await sink.api()
    sink.use_client(Faulty(real, get_object=[client_error("AccessDenied", 403, "GetObject")]))
    await refused(client, uid, 502)
    sink.use_client(real)
    await completes(client, s3, bucket, uid, data)


async def test_a_chunk_for_a_bucket_that_is_gone_answers_502_naming_s3s_refusal(make_client, staging_in_sink, s3,
                                                                              bucket):
    client = await make_client(staging_in_sink)
    uid = (await create(client, total_size=10, chunk_size=10))["upload_id"]
    await asyncio.to_thread(s3.delete_bucket, Bucket=bucket)
    status, problem = await put_chunk(client, uid, 1, b"0123456789", expect=None)
    assert status == 502 and problem["type"].endswith("sink-failed"), problem
    assert "404 NoSuchBucket" in problem["detail"], problem
    assert (await (await client.get(f"/v1/uploads/{uid}")).json())["received_count"] == 0


# -- an upload stored before the bucket was changed ---------------------------------------------------
async def test_content_stored_in_a_bucket_no_longer_configured_answers_501_naming_it(
        make_client, make_settings, s3_server, s3, bucket, sink_defaults):
    before = make_settings(**s3_overrides(s3_server, bucket, **sink_defaults, content="proxy"))
    old = await make_client(before)
    result = await upload(old, b"kept where it was", chunk_size=5)
    moved = await make_client(make_settings(**{"redis.key_prefix": before.redis.key_prefix, **s3_overrides(
        s3_server, await asyncio.to_thread(new_bucket, s3), **sink_defaults, content="proxy")}))
    resp = await moved.get(f"/v1/uploads/{result['upload_id']}/content")
    problem = await resp.json()
    assert resp.status == 501 and resp.content_type == "application/problem+json", problem
    assert f"stored at s3://{bucket}/{PREFIX}{result['upload_id']}, outside bucket" in problem["detail"], problem
    assert await (await old.get(f"/v1/uploads/{result['upload_id']}/content")).read() == b"kept where it was"


class CutMidBody:
    """The real client, but the body of the first GetObject breaks after its first block, as a
    server killed while it sends does (aiohttp's ``ClientPayloadError``)."""

    def __init__(self, real: Any) -> None:
        self.real, self.cut = real, False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    async def get_object(self, **kw: Any) -> Any:
        reply = await self.real.get_object(**kw)
        if not self.cut:
            self.cut = True
            reply["Body"] = Broken(reply["Body"])
        return reply


class Broken:
    def __init__(self, body: Any) -> None:
        self.body, self.reads = body, 0

    async def __aenter__(self) -> "Broken":
        await self.body.__aenter__()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.body.__aexit__(*exc)

    async def read(self, n: int = -1) -> bytes:
        self.reads += 1
        if self.reads > 1:
            raise aiohttp.ClientPayloadError("Response payload is not completed")
        return await self.body.read(min(n, 1000))


async def test_a_staging_object_cut_mid_read_answers_503_and_completes_later(make_client, staging_in_sink, s3,
                                                                             bucket):
    client = await make_client(staging_in_sink)
    data = random_bytes(250_000)
    uid = await chunks_sent(client, data, 100_000)
    sink = the_sink(client)
    real = await sink.api()
    sink.use_client(CutMidBody(real))
    problem = await refused(client, uid, 503)
    assert problem["type"].endswith("/unavailable") and "GetObject" in problem["detail"], problem
    sink.use_client(real)
    await completes(client, s3, bucket, uid, data)
