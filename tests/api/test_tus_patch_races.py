"""tus PATCHes that meet something a client (or another client) did meanwhile.

A termination (DELETE) may arrive while a PATCH's body is still streaming: the PATCH must
then answer 404 (the upload is gone) rather than claim the bytes, and the upload stays gone.
An empty PATCH body without a Content-Length (chunked transfer coding) stores nothing and
answers the offset unchanged (nor does it count as one of ``limits.max_segments``).
"""

from __future__ import annotations

import asyncio

import pytest

from tus_helpers import STREAM, TUS, tus_create, tus_patch, upload_path

NOT_FOUND = "https://vezastream.dev/problems/not-found"


async def paused_body(first: bytes, rest: bytes, go_on: asyncio.Event):
    """A request body that sends ``first``, waits for ``go_on`` (bounded), then sends ``rest``."""
    yield first
    await asyncio.wait_for(go_on.wait(), 10)
    yield rest


@pytest.mark.parametrize("half, declared", [(100_000, True), (2 << 20, True), (100_000, False)],
                         ids=["content-length", "content-length-read-into-buffers", "chunked"])
async def test_a_patch_whose_upload_is_terminated_mid_body_answers_404(client, settings, half, declared):
    path = upload_path(await tus_create(client, length=2 * half))
    uid = path.rsplit("/", 1)[1]
    go_on = asyncio.Event()
    headers = {**TUS, **STREAM, "Upload-Offset": "0", **({"Content-Length": str(2 * half)} if declared else {})}
    patch = asyncio.create_task(client.patch(path, headers=headers,
                                             data=paused_body(b"a" * half, b"b" * half, go_on)))
    await asyncio.sleep(0.2)  # the first half is on its way
    resp = await client.delete(path, headers=TUS)
    assert resp.status == 204, await resp.text()
    go_on.set()
    resp = await asyncio.wait_for(patch, 10)
    body = await resp.json(content_type=None)
    assert resp.status == 404, body
    assert body["type"] == NOT_FOUND
    resp = await client.head(path, headers=TUS)
    assert resp.status == 404  # still gone: the PATCH recreated nothing
    assert not (settings.storage.chunks_dir / f"{uid}.data").exists()


async def test_an_empty_chunked_patch_stores_nothing(make_client, make_settings):
    client = await make_client(make_settings(**{"limits.max_segments": 2}))
    path = upload_path(await tus_create(client, length=12))
    await tus_patch(client, path, 0, b"abcd")

    async def nothing():
        return
        yield  # an async generator: aiohttp sends it chunked, with no Content-Length

    resp = await tus_patch(client, path, 4, nothing())
    assert resp.headers["Upload-Offset"] == "4"
    resp = await client.head(path, headers=TUS)
    assert resp.headers["Upload-Offset"] == "4"
    # Not a segment either: the upload holds one of its two, so this one is let in.
    resp = await tus_patch(client, path, 4, b"efgh")
    assert resp.headers["Upload-Offset"] == "8"
    resp = await tus_patch(client, path, 8, b"ijkl")
    assert resp.headers["Upload-Offset"] == "12"
    resp = await client.get(path, headers=TUS)
    assert (resp.status, await resp.read()) == (200, b"abcdefghijkl")
