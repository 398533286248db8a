"""Promises of docs/api.md and docs/tus.md that no other test held the code to, as a client sees them."""

from __future__ import annotations

import pytest

from helpers import create, put_chunk, random_bytes, sha256, split


@pytest.fixture
def settings(both_layouts):
    return both_layouts


# -- api.md: HEAD /v1/uploads/{id}/chunks/{n} --------------------------------------------------
async def test_head_chunk_answers_its_digest_and_size_and_404_for_a_chunk_not_stored(client):
    """api.md: ``200`` with ``X-Chunk-Sha256`` and ``X-Chunk-Size`` (the chunk's own size, so a short
    last chunk says its own), or ``404``."""
    data = random_bytes(25)
    pieces = split(data, 10)  # 10, 10, 5
    uid = (await create(client, total_size=len(data), chunk_size=10))["upload_id"]
    for n in (1, 3):
        await put_chunk(client, uid, n, pieces[n - 1])
    for n in (1, 3):
        resp = await client.head(f"/v1/uploads/{uid}/chunks/{n}")
        assert resp.status == 200, n
        assert resp.headers["X-Chunk-Sha256"] == sha256(pieces[n - 1])
        assert resp.headers["X-Chunk-Size"] == str(len(pieces[n - 1]))
    assert (await client.head(f"/v1/uploads/{uid}/chunks/3")).headers["X-Chunk-Size"] == "5"
    not_stored = await client.head(f"/v1/uploads/{uid}/chunks/2")
    assert not_stored.status == 404 and "X-Chunk-Sha256" not in not_stored.headers
    assert (await client.head(f"/v1/uploads/{uid}/chunks/4")).status == 404  # past total_chunks
    await put_chunk(client, uid, 2, pieces[1])
    resp = await client.head(f"/v1/uploads/{uid}/chunks/2")
    assert resp.status == 200 and resp.headers["X-Chunk-Size"] == "10"
    assert resp.headers["X-Chunk-Sha256"] == sha256(pieces[1])
