"""A staged chunk file that is gone at completion (removed by hand, a disk swapped, another node's folder).

The client is told to resend the upload's chunks (409, no server path), the upload stays
pending, and resending the lost chunk is enough to complete it with the right bytes. A
completion a dead process left over such an upload does not break the upload's state either.
"""

from __future__ import annotations

import logging

import pytest

from helpers import DEAD, content, create, put_chunk, sha256, status_of, strand

CONFLICT = "https://vezastream.dev/problems/conflict"
DATA = b"abcdefgh"


@pytest.fixture
def settings(make_settings):
    """The chunk files layout: each chunk waits in a file of its own."""
    return make_settings(**{"storage.in_place": False})


async def sent_with_chunk_2_lost(client, settings) -> str:
    """An upload whose two chunks were received, then chunk 2's staged file removed."""
    uid = (await create(client, total_size=len(DATA), chunk_size=4))["upload_id"]
    await put_chunk(client, uid, 1, DATA[:4])
    await put_chunk(client, uid, 2, DATA[4:])
    (settings.storage.chunks_dir / uid / f"2.{sha256(DATA[4:])}").unlink()
    return uid


async def test_completion_without_a_staged_chunk_asks_for_the_chunks_again(client, settings, caplog):
    uid = await sent_with_chunk_2_lost(client, settings)
    with caplog.at_level(logging.ERROR, logger="vezastream.engine"):
        resp = await client.post(f"/v1/uploads/{uid}/complete")
    text = await resp.text()
    assert resp.status == 409, text
    body = await resp.json(content_type=None)
    assert body["type"] == CONFLICT
    assert body["detail"] == "a staged chunk is missing on this node; resend the upload's chunks"
    assert str(settings.storage.data_dir) not in text  # the path is for the log only
    assert [r.getMessage() for r in caplog.records if r.name == "vezastream.engine"] == ["staged chunk missing"]
    assert await status_of(client, uid) == "pending"
    # As told: the lost chunk sent again (the same bytes: 200, already registered) completes the upload.
    await put_chunk(client, uid, 2, DATA[4:], expect=200)
    resp = await client.post(f"/v1/uploads/{uid}/complete")
    assert resp.status == 200, await resp.text()
    assert await content(client, uid) == (200, DATA)


async def test_a_dead_processs_completion_that_cannot_finish_leaves_the_upload_pending(client, settings, caplog):
    uid = await sent_with_chunk_2_lost(client, settings)
    await strand(client, uid, DEAD)
    with caplog.at_level(logging.WARNING, logger="vezastream.engine"):
        resp = await client.get(f"/v1/uploads/{uid}")
    state = await resp.json()
    assert resp.status == 200, state
    assert state["status"] == "pending" and state["chunks_received"] == [1, 2]
    assert "abandoned completion not finished" in [r.getMessage() for r in caplog.records]
