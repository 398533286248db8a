"""The S3 sink's GC sweep at its edges, against a real S3 (moto): an abort S3 refuses, a note
younger than ``gc.max_age``, a multipart upload without its note, a note its completion could not
delete, a dry run over staging objects. What a pass reports is what it did, and what it leaves a
later pass finds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest

from helpers import create, put_chunk, random_bytes, upload
from s3_servers import (Faulty, aws_env, bucket, bucket_contents, client_error, moto_server,  # noqa: F401
                        open_multipart_uploads, PREFIX, s3, s3_overrides, s3_server, sink_defaults, sink_settings,
                        the_sink)

from vezastream.http.app import engine_key, gc_key

MiB = 1024 * 1024
NOTES = PREFIX + ".vezastream-open/"


async def abandoned(client, **body: Any) -> str:
    """A new upload whose state then expired in Redis (what it left in the bucket stays): its id."""
    uid = (await create(client, **body))["upload_id"]
    store = client.server.app[engine_key].store
    await store.redis.delete(store.key(uid), store.chunks_key(uid))
    return uid


def gc_of(client, ahead: float = 0.0):
    """The app's GC, its clock ``ahead`` times ``gc.max_age`` past now."""
    gc = client.server.app[gc_key]
    gc.clock = lambda: time.time() + ahead * gc.settings.gc.max_age
    return gc


async def contents(s3: Any, bucket: str) -> tuple[list[str], list[str]]:
    return await asyncio.to_thread(bucket_contents, s3, bucket)


@pytest.mark.parametrize("template", ["{upload_id}", "{upload_id}/{filename}"], ids=["named", "templated"])
async def test_an_abort_s3_refuses_is_not_reported_and_the_next_pass_aborts_it(make_client, sink_settings, s3,
                                                                              bucket, caplog, template):
    client = await make_client(sink_settings(key_template=template))
    uid = await abandoned(client, filename="f.bin", total_size=5 * MiB + 1, chunk_size=5 * MiB)
    (left,) = await asyncio.to_thread(open_multipart_uploads, s3, bucket)
    assert uid in left["Key"]
    sink = the_sink(client)
    real = await sink.api()
    sink.use_client(Faulty(real, abort_multipart_upload=[client_error("AccessDenied", 403, "AbortMultipartUpload")]))
    caplog.set_level(logging.WARNING, logger="vezastream.s3")
    gc = gc_of(client, ahead=2)
    assert (await gc.run_once()).aborted == []
    assert [u["UploadId"] for u in await asyncio.to_thread(open_multipart_uploads, s3, bucket)] == [left["UploadId"]]
    assert [r.key for r in caplog.records if r.getMessage() == "abort failed"] == [left["Key"]]
    sink.use_client(real)
    assert (await gc.run_once()).aborted == [f"{left['Key']}#{left['UploadId']}"]
    assert await contents(s3, bucket) == ([], [])  # the note went with it


async def test_a_note_younger_than_max_age_is_left_for_a_later_pass(make_client, sink_settings, s3, bucket):
    """A templated multipart upload's note is written before its upload's state (creation asks S3
    first): a pass must not take a young note's upload for dead. moto dates every multipart upload
    2010, so only the note's own age keeps this one."""
    client = await make_client(sink_settings(key_template="{upload_id}/{filename}"))
    uid = await abandoned(client, filename="f.bin", total_size=5 * MiB + 1, chunk_size=5 * MiB)
    before = await contents(s3, bucket)
    assert [k.startswith(NOTES) for k in before[0]] == [True] and len(before[1]) == 1
    assert (await gc_of(client).run_once()).aborted == []
    assert await contents(s3, bucket) == before
    report = await gc_of(client, ahead=2).run_once()
    assert [a.split("#")[0] for a in report.aborted] == [f"{PREFIX}{uid}/f.bin"]
    assert await contents(s3, bucket) == ([], [])


async def test_a_templated_multipart_upload_without_its_note_is_left_alone(make_client, sink_settings, s3, bucket):
    """What a process killed between CreateMultipartUpload and its note's PutObject leaves: a
    multipart upload whose key names no upload, and no note. The sweep cannot tell it from a
    foreign one, and touches neither (docs/reliability.md: what is not covered yet)."""
    client = await make_client(sink_settings(key_template="{upload_id}/{filename}"))
    await abandoned(client, filename="f.bin", total_size=5 * MiB + 1, chunk_size=5 * MiB)
    (note,), (key,) = await contents(s3, bucket)
    await asyncio.to_thread(s3.delete_object, Bucket=bucket, Key=note)
    assert (await gc_of(client, ahead=2).run_once()).aborted == []
    assert await contents(s3, bucket) == ([], [key])


async def test_a_note_its_completion_could_not_delete_goes_in_a_later_pass(make_client, sink_settings, s3, bucket,
                                                                          caplog):
    """The completion logs the failed delete and succeeds; the sweep then drops the stale note
    (not in a dry run), aborting nothing and keeping the object."""
    client = await make_client(sink_settings(key_template="{upload_id}/{filename}"))
    sink = the_sink(client)
    real = await sink.api()
    sink.use_client(Faulty(real, delete_object=[client_error("AccessDenied", 403, "DeleteObject")]))
    caplog.set_level(logging.WARNING, logger="vezastream.s3")
    result = await upload(client, random_bytes(1000), chunk_size=400, filename="f.bin")
    key = f"{PREFIX}{result['upload_id']}/f.bin"
    (note,) = [r.key for r in caplog.records if r.getMessage() == "delete failed"]
    assert note.startswith(NOTES)
    assert await contents(s3, bucket) == (sorted([key, note]), [])
    sink.use_client(real)
    gc = gc_of(client, ahead=2)
    assert (await gc.run_once(dry_run=True)).aborted == []
    assert await contents(s3, bucket) == (sorted([key, note]), [])
    assert (await gc.run_once()).aborted == []
    assert await contents(s3, bucket) == ([key], [])


async def test_a_dry_run_lists_stale_staging_objects_and_keeps_them(make_client, make_settings, s3_server, s3,
                                                                   bucket, sink_defaults):
    client = await make_client(make_settings(**{"storage.staging": "sink",
                                                **s3_overrides(s3_server, bucket, **sink_defaults)}))
    uid = (await create(client, total_size=20, chunk_size=10))["upload_id"]
    for n in (1, 2):
        await put_chunk(client, uid, n, random_bytes(10))
    store = client.server.app[engine_key].store
    await store.redis.delete(store.key(uid), store.chunks_key(uid))
    staged = (await contents(s3, bucket))[0]
    assert len(staged) == 2 and all(f"/.staging/{uid}/" in k for k in staged)
    gc = gc_of(client, ahead=2)
    assert sorted((await gc.run_once(dry_run=True)).aborted) == staged
    assert (await contents(s3, bucket))[0] == staged
    assert sorted((await gc.run_once()).aborted) == staged
    assert await contents(s3, bucket) == ([], [])
