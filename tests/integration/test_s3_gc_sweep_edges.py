"""The S3 sink's GC sweep at its edges, against a real S3 (moto): an abort S3 refuses, a note
younger than ``gc.max_age``, a multipart upload without its note (found through its intent), a note
its completion could not delete, a dry run over staging objects. What a pass reports is what it
did, and what it leaves a later pass finds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest

from helpers import create, put_chunk, random_bytes, upload
from s3_servers import (Faulty, bucket_contents, client_error, open_multipart_uploads, PREFIX, s3_overrides,
                        the_sink)

from vezastream.http.app import engine_key, gc_key

MiB = 1024 * 1024
NOTES = PREFIX + ".vezastream-open/"
INTENTS = PREFIX + ".vezastream-intent/"


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


async def killed_before_its_note(client, s3: Any, bucket: str, live: bool = False, noted: bool = False
                                 ) -> tuple[str, dict[str, Any], str]:
    """What a server killed between CreateMultipartUpload and its note's PutObject leaves: the
    intent written before it, a multipart upload at a key that names no upload, and no note (or,
    ``noted``, killed after the note, before dropping the intent). The real create writes all of
    them; the intent stays because its DeleteObject fails, the note is then deleted here. The
    upload is abandoned unless ``live``. Returns (upload id, multipart upload, intent key)."""
    sink = the_sink(client)
    real = await sink.api()
    sink.use_client(Faulty(real, delete_object=[client_error("AccessDenied", 403, "DeleteObject")]))
    body = {"filename": "f.bin", "total_size": 5 * MiB + 1, "chunk_size": 5 * MiB}
    uid = (await create(client, **body))["upload_id"] if live else await abandoned(client, **body)
    sink.use_client(real)
    (mpu,) = await asyncio.to_thread(open_multipart_uploads, s3, bucket)
    objects, _ = await contents(s3, bucket)
    (intent,) = [k for k in objects if k.startswith(INTENTS)]
    (note,) = [k for k in objects if k.startswith(NOTES)]
    if not noted:
        await asyncio.to_thread(s3.delete_object, Bucket=bucket, Key=note)
    return uid, mpu, intent


async def test_a_templated_multipart_upload_without_its_note_is_aborted_through_its_intent(make_client,
                                                                                           sink_settings, s3,
                                                                                           bucket):
    """Before this, the sweep could not tell such a multipart upload from a foreign one and left it
    (parts billed until something else aborted it)."""
    client = await make_client(sink_settings(key_template="{upload_id}/{filename}"))
    uid, mpu, intent = await killed_before_its_note(client, s3, bucket)
    assert mpu["Key"] == f"{PREFIX}{uid}/f.bin" and intent.startswith(f"{INTENTS}{uid}-")
    assert (await gc_of(client, ahead=2).run_once()).aborted == [f"{mpu['Key']}#{mpu['UploadId']}"]
    assert await contents(s3, bucket) == ([], [])


async def test_an_intent_is_left_alone_in_a_dry_run_and_while_young(make_client, sink_settings, s3, bucket):
    """moto dates every multipart upload 2010: only the intent's own age keeps a young one."""
    client = await make_client(sink_settings(key_template="{upload_id}/{filename}"))
    _, mpu, intent = await killed_before_its_note(client, s3, bucket)
    before = await contents(s3, bucket)
    assert before == ([intent], [mpu["Key"]])
    assert (await gc_of(client).run_once()).aborted == []
    assert await contents(s3, bucket) == before
    gc = gc_of(client, ahead=2)
    assert (await gc.run_once(dry_run=True)).aborted == [f"{mpu['Key']}#{mpu['UploadId']}"]
    assert await contents(s3, bucket) == before
    assert (await gc.run_once()).aborted == [f"{mpu['Key']}#{mpu['UploadId']}"]
    assert await contents(s3, bucket) == ([], [])


async def test_a_live_uploads_multipart_upload_keeps_its_intent_until_the_upload_expires(make_client,
                                                                                          sink_settings, s3, bucket):
    client = await make_client(sink_settings(key_template="{upload_id}/{filename}"))
    uid, mpu, intent = await killed_before_its_note(client, s3, bucket, live=True)
    gc = gc_of(client, ahead=2)
    assert (await gc.run_once()).aborted == []
    assert await contents(s3, bucket) == ([intent], [mpu["Key"]])
    store = client.server.app[engine_key].store
    await store.redis.delete(store.key(uid), store.chunks_key(uid))
    assert (await gc.run_once()).aborted == [f"{mpu['Key']}#{mpu['UploadId']}"]
    assert await contents(s3, bucket) == ([], [])


@pytest.mark.parametrize("live", [False, True], ids=["abandoned", "live"])
async def test_a_noted_multipart_upload_at_an_intents_key_is_left_to_its_note(make_client, sink_settings, s3,
                                                                             bucket, live):
    """Killed after the note, before dropping the intent: the note's path decides (one report, not
    two); the intent goes."""
    client = await make_client(sink_settings(key_template="{upload_id}/{filename}"))
    _, mpu, intent = await killed_before_its_note(client, s3, bucket, live=live, noted=True)
    report = await gc_of(client, ahead=2).run_once()
    objects, multipart = await contents(s3, bucket)
    assert intent not in objects
    if live:
        assert report.aborted == [] and multipart == [mpu["Key"]] and [k.startswith(NOTES) for k in objects] == [True]
    else:
        assert report.aborted == [f"{mpu['Key']}#{mpu['UploadId']}"] and (objects, multipart) == ([], [])


async def test_a_create_s3_refused_leaves_its_intent_for_the_sweep_which_then_drops_it(make_client, sink_settings,
                                                                                     s3, bucket):
    """A CreateMultipartUpload that failed may still have opened one (a reply lost), so its intent
    stays for the sweep: once it is older than gc.max_age, the sweep looks at its key, finds nothing
    to abort here, and drops it."""
    client = await make_client(sink_settings(key_template="{upload_id}/{filename}"))
    sink = the_sink(client)
    real = await sink.api()
    refusal = client_error("AccessDenied", 403, "CreateMultipartUpload")
    sink.use_client(Faulty(real, create_multipart_upload=[refusal]))
    resp = await client.post("/v1/uploads", json={"filename": "f.bin", "total_size": 5 * MiB + 1,
                                                  "chunk_size": 5 * MiB})
    assert resp.status == 502, await resp.text()
    sink.use_client(real)
    objects, multipart = await contents(s3, bucket)
    assert [k.startswith(INTENTS) for k in objects] == [True] and multipart == []
    assert (await gc_of(client).run_once()).aborted == []  # young: left
    assert (await contents(s3, bucket))[0] == objects
    assert (await gc_of(client, ahead=2).run_once()).aborted == []
    assert await contents(s3, bucket) == ([], [])


async def test_a_templated_upload_completed_or_deleted_leaves_no_intent(make_client, sink_settings, s3, bucket):
    client = await make_client(sink_settings(key_template="{upload_id}/{filename}"))
    result = await upload(client, random_bytes(5 * MiB + 1), chunk_size=5 * MiB, filename="f.bin")
    uid = (await create(client, filename="g.bin", total_size=5 * MiB + 1, chunk_size=5 * MiB))["upload_id"]
    objects, _ = await contents(s3, bucket)
    assert [k for k in objects if k.startswith(INTENTS)] == []
    assert (await client.delete(f"/v1/uploads/{uid}")).status == 204
    assert await contents(s3, bucket) == ([f"{PREFIX}{result['upload_id']}/f.bin"], [])


async def test_a_note_its_completion_could_not_delete_goes_in_a_later_pass(make_client, sink_settings, s3, bucket,
                                                                          caplog):
    """The completion logs the failed delete and succeeds; the sweep then drops the stale note
    (not in a dry run), aborting nothing and keeping the object."""
    client = await make_client(sink_settings(key_template="{upload_id}/{filename}"))
    sink = the_sink(client)
    real = await sink.api()
    # the first DeleteObject drops the intent written before CreateMultipartUpload; the second, the note
    sink.use_client(Faulty(real, delete_object=[None, client_error("AccessDenied", 403, "DeleteObject")]))
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
