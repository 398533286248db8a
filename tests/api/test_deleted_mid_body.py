"""A body still streaming when its upload is deleted (native DELETE, tus termination).

The request must answer 404 (the upload is gone), as for any unknown upload: not a 500, not
a 409 that reads as a misconfigured node, and it must keep nothing of the body or recreate
the upload.
"""

from __future__ import annotations

import asyncio

import pytest

from helpers import create
from tus_helpers import STREAM, TUS, tus_create, upload_path

NOT_FOUND = "https://vezastream.dev/problems/not-found"


async def paused_body(first: bytes, rest: bytes, go_on: asyncio.Event):
    """A request body that sends ``first``, waits for ``go_on`` (bounded), then sends ``rest``."""
    yield first
    await asyncio.wait_for(go_on.wait(), 10)
    yield rest


async def deleted_mid_body(client, send, url: str, half: int, headers: dict[str, str]) -> None:
    """``send`` (client.put, client.patch) a body of ``2 * half`` bytes to ``url``; once half of it is on
    its way, the upload is deleted (DELETE ``url``'s upload); the request must answer 404 problem+json."""
    go_on = asyncio.Event()
    sending = asyncio.create_task(send(url, headers=headers, data=paused_body(b"a" * half, b"b" * half, go_on)))
    await asyncio.sleep(0.2)  # the first half is on its way
    resp = await client.delete(url.split("/chunks/")[0], headers=TUS)
    assert resp.status == 204, await resp.text()
    go_on.set()
    resp = await asyncio.wait_for(sending, 10)
    body = await resp.json(content_type=None)
    assert resp.status == 404, body
    assert body["type"] == NOT_FOUND


def files_under(folder) -> list:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


@pytest.mark.parametrize("in_place, half", [(True, 100_000), (True, 2 << 20), (False, 100_000)],
                         ids=["in-place", "in-place-read-into-buffers", "chunk-files"])
async def test_a_chunk_whose_upload_is_deleted_mid_body_answers_404(make_client, make_settings, in_place, half):
    settings = make_settings(**{"storage.in_place": in_place})
    client = await make_client(settings)
    uid = (await create(client, total_size=4 * half, chunk_size=2 * half))["upload_id"]
    await deleted_mid_body(client, client.put, f"/v1/uploads/{uid}/chunks/1", half,
                           {"Content-Length": str(2 * half)})
    assert (await client.get(f"/v1/uploads/{uid}")).status == 404
    # Nothing of the chunk is kept (an empty folder the body's file was made in is the GC's).
    assert not files_under(settings.storage.chunks_dir)


@pytest.mark.parametrize("half, declared", [(100_000, True), (2 << 20, True), (100_000, False)],
                         ids=["content-length", "content-length-read-into-buffers", "chunked"])
async def test_a_patch_whose_upload_is_terminated_mid_body_answers_404(client, settings, half, declared):
    path = upload_path(await tus_create(client, length=2 * half))
    headers = {**TUS, **STREAM, "Upload-Offset": "0", **({"Content-Length": str(2 * half)} if declared else {})}
    await deleted_mid_body(client, client.patch, path, half, headers)
    assert (await client.head(path, headers=TUS)).status == 404  # still gone: the PATCH recreated nothing
    assert not files_under(settings.storage.chunks_dir)
