"""A chunk body that trickles in: hundreds of tiny pieces of a chunked request body.

The staging area gathers at most MAX_PIECES pieces for one worker-thread trip and
joins the rest (vezastream/staging/writer.py); joined or not, every byte must land
in order, under the digest the client computes.
"""

from __future__ import annotations

import asyncio

import pytest

from vezastream.staging.writer import MAX_PIECES
from vezastream.testing import content, create, random_bytes, sha256

PIECE = 40


async def trickle(data: bytes):
    """``data`` in PIECE-byte pieces, each sent on its own (Transfer-Encoding: chunked)."""
    for at in range(0, len(data), PIECE):
        yield data[at:at + PIECE]
        await asyncio.sleep(0.001)


@pytest.mark.parametrize("in_place", [True, False], ids=["in-place", "chunk-files"])
async def test_a_body_of_hundreds_of_tiny_pieces_lands_in_order(make_client, make_settings, in_place):
    client = await make_client(make_settings(**{"storage.in_place": in_place, "storage.kernel_io": "off"}))
    data = random_bytes((2 * MAX_PIECES + 44) * PIECE)
    uid = (await create(client, total_size=len(data), chunk_size=len(data)))["upload_id"]
    resp = await client.put(f"/v1/uploads/{uid}/chunks/1", data=trickle(data))
    receipt = await resp.json()
    assert resp.status == 201 and receipt["sha256"] == sha256(data), receipt
    assert (await client.post(f"/v1/uploads/{uid}/complete")).status == 200
    assert await content(client, uid) == (200, data)
