"""Sink staging (``storage.staging = "sink"``) when S3 fails: the answer says the sink failed, never
that the client sent too little, and names no endpoint, host, object key or library message.

A native chunk or a tus PATCH whose staging object cannot be written answers 502 ``sink-failed``
(S3 cannot be asked: no credentials) or 503 ``unavailable`` (S3 does not answer), and records
nothing; the server log has the whole error. A body that really ends short is still 422
``chunk-too-short``. Against moto (server mode).
"""

from __future__ import annotations

import asyncio
import json
import logging

from helpers import create, put_chunk, random_bytes
from s3_servers import bucket_contents, free_port, s3_overrides, without_credentials
from tus_helpers import TUS, tus_create, tus_patch, upload_path

CHUNK = 100_000


async def staging_node(make_client, make_settings, s3_server, bucket, sink_defaults, **sink):
    """A stateless node (its uploads' bytes wait in the bucket) with the S3 sink's table changed by ``sink``."""
    table = {**sink_defaults, "retry_attempts": 1, **sink}
    return await make_client(make_settings(**{"storage.staging": "sink", **s3_overrides(s3_server, bucket, **table)}))


async def nothing_recorded(client, uid: str) -> None:
    state = await (await client.get(f"/v1/uploads/{uid}")).json()
    assert state["status"] == "pending" and state["chunks_received"] == [] and state["received_count"] == 0, state


async def test_a_chunk_whose_staging_object_cannot_be_written_is_a_sink_failure_not_a_short_body(
        make_client, make_settings, s3_server, bucket, sink_defaults, s3, monkeypatch, caplog):
    """The operator's case: no credentials, a whole 100,000-byte body: 502 sink-failed (it was 422 chunk-too-short)."""
    without_credentials(monkeypatch)
    client = await staging_node(make_client, make_settings, s3_server, bucket, sink_defaults)
    uid = (await create(client, total_size=2 * CHUNK, chunk_size=CHUNK))["upload_id"]
    with caplog.at_level(logging.WARNING):
        status, problem = await put_chunk(client, uid, 1, random_bytes(CHUNK), expect=None)
    assert status == 502 and problem["type"].endswith("/sink-failed") and problem["sink"] == "s3", problem
    assert "short" not in problem["detail"] and "received_size" not in problem, problem
    assert "NoCredentialsError" in caplog.text  # the operator gets the cause
    await nothing_recorded(client, uid)
    assert await asyncio.to_thread(bucket_contents, s3, bucket) == ([], [])


async def test_a_tus_patch_whose_staging_object_cannot_be_written_is_a_sink_failure(
        make_client, make_settings, s3_server, bucket, sink_defaults, monkeypatch):
    without_credentials(monkeypatch)
    client = await staging_node(make_client, make_settings, s3_server, bucket, sink_defaults)
    path = upload_path(await tus_create(client, 2 * CHUNK))
    resp = await tus_patch(client, path, 0, random_bytes(CHUNK), expect=None)
    problem = await resp.json(content_type=None)
    assert resp.status == 502 and problem["type"].endswith("/sink-failed"), problem
    head = await client.head(path, headers=TUS)
    assert head.headers["Upload-Offset"] == "0"


async def test_s3_not_answering_is_503_without_its_endpoint_or_the_library_error(
        make_client, make_settings, s3_server, bucket, sink_defaults, caplog):
    port = free_port()  # nothing listens there
    client = await staging_node(make_client, make_settings, s3_server, bucket, sink_defaults,
                                endpoint_url=f"http://127.0.0.1:{port}")
    uid = (await create(client, total_size=2 * CHUNK, chunk_size=CHUNK))["upload_id"]
    with caplog.at_level(logging.WARNING):
        resp = await client.put(f"/v1/uploads/{uid}/chunks/1", data=random_bytes(CHUNK))
        text = await resp.text()
    assert resp.status == 503 and resp.content_type == "application/problem+json", text
    problem = json.loads(text)
    assert problem["type"].endswith("/unavailable") and problem["sink"] == "s3", problem
    assert resp.headers["Retry-After"] == str(problem["retry_after"])
    assert "s3" in problem["detail"] and "retry later" in problem["detail"], problem
    for leak in ("127.0.0.1", str(port), "ClientConnectorError", "Cannot connect", "Connect call failed",
                 ".staging", "http://"):
        assert leak not in text, (leak, text)
    assert uid not in problem["detail"], problem  # no object key (the instance names the request's path)
    logged = "\n".join(f"{r.getMessage()} {r.__dict__.get('call', '')} {r.__dict__.get('error', '')}"
                       for r in caplog.records)
    assert f"127.0.0.1:{port}" in logged and "PutObject" in logged, logged  # the operator gets all of it
    await nothing_recorded(client, uid)


async def test_a_body_that_really_ends_short_is_still_422(make_client, make_settings, s3_server, bucket,
                                                          sink_defaults, s3):
    client = await staging_node(make_client, make_settings, s3_server, bucket, sink_defaults)
    uid = (await create(client, total_size=2 * CHUNK, chunk_size=CHUNK))["upload_id"]
    status, problem = await put_chunk(client, uid, 1, random_bytes(CHUNK - 1000), expect=None)
    assert status == 422 and problem["type"].endswith("/chunk-too-short"), problem
    assert problem["expected_size"] == CHUNK and problem["received_size"] == CHUNK - 1000, problem
    await nothing_recorded(client, uid)
    assert await asyncio.to_thread(bucket_contents, s3, bucket) == ([], [])
    await put_chunk(client, uid, 1, random_bytes(CHUNK))  # the bucket was fine all along
