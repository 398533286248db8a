"""Deleting a completed upload while S3 does not answer, against a real S3 (moto in server mode,
stopped with SIGSTOP by its PID, then let go with SIGCONT).

The DELETE answers 503 and changes nothing: the upload stays completed, so that the client's
retry, once S3 answers again, removes the object. Forgetting the upload first (as before) left an
object in the bucket that no request could remove any more.
"""

from __future__ import annotations

import asyncio
import os
import signal

from helpers import random_bytes, upload
from s3_servers import PREFIX, boto_client, new_bucket, object_keys, s3_overrides


async def test_a_delete_while_s3_does_not_answer_changes_nothing_and_its_retry_removes_the_object(
        make_client, make_settings, own_moto, sink_defaults):  # noqa: F811
    s3 = boto_client(own_moto.endpoint)
    bucket = new_bucket(s3)
    client = await make_client(make_settings(**s3_overrides(own_moto, bucket, **{
        **sink_defaults, "read_timeout": 1.0, "connect_timeout": 1.0, "retry_attempts": 2,
        "retry_base_delay": 0.1, "retry_max_delay": 0.1})))
    data = random_bytes(3000)
    uid = (await upload(client, data, chunk_size=1000))["upload_id"]
    assert await asyncio.to_thread(object_keys, s3, bucket) == [PREFIX + uid]

    os.kill(own_moto.proc.pid, signal.SIGSTOP)
    try:
        resp = await client.delete(f"/v1/uploads/{uid}")
        problem = await resp.json(content_type=None)
        assert resp.status == 503 and resp.content_type == "application/problem+json", problem
        assert resp.headers.get("Retry-After"), resp.headers
        state = await client.get(f"/v1/uploads/{uid}")
        assert state.status == 200 and (await state.json())["status"] == "completed"
    finally:
        os.kill(own_moto.proc.pid, signal.SIGCONT)

    assert (await client.delete(f"/v1/uploads/{uid}")).status == 204
    assert (await client.get(f"/v1/uploads/{uid}")).status == 404
    assert await asyncio.to_thread(object_keys, s3, bucket) == []
