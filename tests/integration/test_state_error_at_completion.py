"""A Redis error while a completion reads its state is the state store's 503, not the sink's 502
(found by tests/drills/test_drill_nodes.py: a primary failing over while a node read an upload's
staging-object names from Redis answered ``502 sink failed``).

The Redis error here is a real one: the upload's claims hash (where ``storage.staging = "sink"``
names each chunk's staging object) is made a string for a moment, so the completion's read of it
fails with WRONGTYPE. The client is told to retry (503, ``Retry-After``), the upload stays pending,
and once the state is readable again the same completion succeeds.
"""

from __future__ import annotations

import os

from helpers import content, create, put_chunk, random_bytes, split
from s3_servers import s3_overrides

from vezastream.http.app import engine_key


async def test_a_redis_error_while_completing_answers_503_and_the_upload_completes_later(
        make_client, make_settings, s3_server, bucket, sink_defaults, tmp_path):
    settings = make_settings(**{"storage.data_dir": str(tmp_path / "a"), "storage.staging": "sink",
                                "redis.key_prefix": "t" + os.urandom(4).hex(), "gc.enabled": False,
                                **s3_overrides(s3_server, bucket, **{**sink_defaults, "content": "proxy"})})
    client = await make_client(settings)
    data = random_bytes(3 * 256 * 1024 + 11)
    uid = (await create(client, total_size=len(data), chunk_size=256 * 1024))["upload_id"]
    for n, piece in enumerate(split(data, 256 * 1024), 1):
        await put_chunk(client, uid, n, piece)
    store = client.server.app[engine_key].store
    claims = store.claims_key(uid)
    names = await store.redis.hgetall(claims)
    assert names, "the chunks' staging objects are named in the claims hash"
    await store.redis.delete(claims)
    await store.redis.set(claims, "not a hash")
    try:
        resp = await client.post(f"/v1/uploads/{uid}/complete")
        problem = await resp.json()
        assert resp.status == 503 and resp.headers["Retry-After"] == "1", problem
        assert "state store" in problem["detail"] and "sink" not in problem, problem  # not the sink's failure
    finally:
        await store.redis.delete(claims)
        await store.redis.hset(claims, mapping=names)
    state = await (await client.get(f"/v1/uploads/{uid}")).json()
    assert state["status"] == "pending", state
    resp = await client.post(f"/v1/uploads/{uid}/complete")
    assert resp.status == 200, await resp.text()
    assert await content(client, uid) == (200, data)
