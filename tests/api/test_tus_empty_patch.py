"""An empty tus PATCH body without a Content-Length (chunked transfer coding) stores nothing and
answers the offset unchanged (nor does it count as one of ``limits.max_segments``).
"""

from __future__ import annotations

from tus_helpers import TUS, tus_create, tus_patch, upload_path


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
