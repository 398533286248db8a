"""An upload whose state expired in Redis while this node still knows its spec (it keeps specs in memory).

Specs never change, so each node caches them (engine.remember) and a chunk costs one round
trip. The upload's Redis keys expire with ``limits.upload_ttl`` whatever a node remembers:
the next request on it must answer 404, as for any unknown upload, and keep no bytes.
"""

from __future__ import annotations

import pytest

from helpers import create, put_chunk, store_of
from tus_helpers import tus_create, tus_patch, upload_path
from vezastream.http.app import engine_key

NOT_FOUND = "https://vezastream.dev/problems/not-found"


async def expire(client, uid: str) -> None:
    """What ``limits.upload_ttl`` does to an upload: every Redis key of it gone (its spec stays cached)."""
    store = store_of(client)
    keys = [key async for key in store.redis.scan_iter(match=store.key(uid) + "*")]
    assert keys, "the upload has no keys to expire"
    await store.redis.delete(*keys)
    assert uid in client.server.app[engine_key]._specs  # this node still knows it


async def assert_not_found(resp) -> None:
    body = await resp.json(content_type=None)
    assert resp.status == 404, body
    assert resp.headers["Content-Type"].startswith("application/problem+json")
    assert body["type"] == NOT_FOUND and body["detail"] == "no such upload"


@pytest.mark.parametrize("in_place", [True, False], ids=["in-place", "chunk-files"])
async def test_a_chunk_for_an_expired_upload_is_404_and_leaves_no_file(make_client, make_settings, in_place):
    settings = make_settings(**{"storage.in_place": in_place})
    client = await make_client(settings)
    uid = (await create(client, total_size=8, chunk_size=4))["upload_id"]
    await put_chunk(client, uid, 1, b"abcd")
    await expire(client, uid)
    status, body = await put_chunk(client, uid, 2, b"efgh", expect=None)
    assert (status, body["type"]) == (404, NOT_FOUND)
    # Chunk 1's bytes are the GC's now (their upload is gone); chunk 2's were never written:
    # no file of its own, nothing in the upload's data file.
    assert not list((settings.storage.chunks_dir / uid).glob("2.*"))
    data_file = settings.storage.chunks_dir / f"{uid}.data"
    assert b"efgh" not in (data_file.read_bytes() if data_file.exists() else b"")
    assert uid not in client.server.app[engine_key]._specs  # forgotten: the next request asks Redis


async def test_completing_an_expired_upload_is_404(client):
    uid = (await create(client, total_size=4, chunk_size=4))["upload_id"]
    await put_chunk(client, uid, 1, b"abcd")
    await expire(client, uid)
    await assert_not_found(await client.post(f"/v1/uploads/{uid}/complete"))


async def test_a_tus_patch_to_an_expired_upload_is_404(client):
    path = upload_path(await tus_create(client, length=8))
    await tus_patch(client, path, 0, b"abcd")
    await expire(client, path.rsplit("/", 1)[1])
    await assert_not_found(await tus_patch(client, path, 4, b"efgh", expect=None))
