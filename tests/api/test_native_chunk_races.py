"""A native chunk whose upload is deleted while the chunk's body streams: 404, and nothing of it kept."""

from __future__ import annotations

import asyncio

import pytest

from helpers import create

NOT_FOUND = "https://vezastream.dev/problems/not-found"


async def paused_body(first: bytes, rest: bytes, go_on: asyncio.Event):
    """A request body that sends ``first``, waits for ``go_on`` (bounded), then sends ``rest``."""
    yield first
    await asyncio.wait_for(go_on.wait(), 10)
    yield rest


@pytest.mark.parametrize("in_place, half", [(True, 100_000), (True, 2 << 20), (False, 100_000)],
                         ids=["in-place", "in-place-read-into-buffers", "chunk-files"])
async def test_a_chunk_whose_upload_is_deleted_mid_body_answers_404(make_client, make_settings, in_place, half):
    settings = make_settings(**{"storage.in_place": in_place})
    client = await make_client(settings)
    uid = (await create(client, total_size=4 * half, chunk_size=2 * half))["upload_id"]
    go_on = asyncio.Event()
    put = asyncio.create_task(client.put(f"/v1/uploads/{uid}/chunks/1", headers={"Content-Length": str(2 * half)},
                                         data=paused_body(b"a" * half, b"b" * half, go_on)))
    await asyncio.sleep(0.2)  # the first half is on its way
    resp = await client.delete(f"/v1/uploads/{uid}")
    assert resp.status == 204, await resp.text()
    go_on.set()
    resp = await asyncio.wait_for(put, 10)
    body = await resp.json(content_type=None)
    assert resp.status == 404, body
    assert body["type"] == NOT_FOUND
    assert (await client.get(f"/v1/uploads/{uid}")).status == 404
    # Nothing of the chunk is kept (an empty folder the body's file was made in is the GC's).
    assert not [p for p in settings.storage.chunks_dir.rglob("*") if p.is_file()]
