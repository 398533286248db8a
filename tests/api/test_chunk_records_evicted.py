"""A native upload whose chunk records Redis dropped (an eviction under a ``maxmemory-policy`` that
evicts, docs/configuration.md), while the upload's own record stayed.

The client sees no chunk received, and its status counts none (``received_count``,
``bytes_received``, ``progress``: what the records hold, not what the upload's hash last
counted), and sends them again; what the upload then reports counts each chunk once, never
past the upload's totals, and the upload completes with the right bytes.
"""

from __future__ import annotations

import pytest

from helpers import content, create, put_chunk, random_bytes
from vezastream.http.app import engine_key


@pytest.mark.parametrize("in_place", [True, False], ids=["in-place", "chunk-files"])
async def test_chunks_sent_again_after_their_records_went_are_counted_once(make_client, make_settings, in_place):
    client = await make_client(make_settings(**{"storage.in_place": in_place}))
    data = random_bytes(2500)
    uid = (await create(client, total_size=len(data), chunk_size=1000))["upload_id"]
    await put_chunk(client, uid, 1, data[:1000])
    await put_chunk(client, uid, 2, data[1000:2000])
    store = client.server.app[engine_key].store
    assert await store.redis.delete(store.chunks_key(uid)) == 1  # as an eviction would

    state = await (await client.get(f"/v1/uploads/{uid}")).json()
    # The client sees what to send again; the counters are the records' (they were 2 and 2000).
    assert (state["chunks_received"], state["received_count"], state["bytes_received"], state["progress"]) == (
        [], 0, 0, 0), state
    for n in (1, 2, 3):
        await put_chunk(client, uid, n, data[(n - 1) * 1000:n * 1000])
    state = await (await client.get(f"/v1/uploads/{uid}")).json()
    assert (state["received_count"], state["bytes_received"], state["progress"]) == (3, 2500, 100), state
    assert (await client.post(f"/v1/uploads/{uid}/complete")).status == 200
    assert await content(client, uid) == (200, data)


@pytest.mark.parametrize("in_place", [True, False], ids=["in-place", "chunk-files"])
async def test_the_status_counts_the_chunk_records_that_are_left(make_client, make_settings, in_place):
    """Some records gone (HDEL: what a hand at work, or a restore of an older copy of the key, leaves):
    the status counts those left, and a chunk sent again is counted once."""
    client = await make_client(make_settings(**{"storage.in_place": in_place}))
    data = random_bytes(2500)
    uid = (await create(client, total_size=len(data), chunk_size=1000))["upload_id"]
    for n in (1, 2, 3):
        await put_chunk(client, uid, n, data[(n - 1) * 1000:n * 1000])
    store = client.server.app[engine_key].store
    assert await store.redis.hdel(store.chunks_key(uid), "2") == 1

    state = await (await client.get(f"/v1/uploads/{uid}")).json()
    assert (state["chunks_received"], state["received_count"], state["bytes_received"], state["progress"]) == (
        [1, 3], 2, 1500, 60), state
    await put_chunk(client, uid, 2, data[1000:2000])
    state = await (await client.get(f"/v1/uploads/{uid}")).json()
    assert (state["received_count"], state["bytes_received"], state["progress"]) == (3, 2500, 100), state
    assert (await client.post(f"/v1/uploads/{uid}/complete")).status == 200
    assert await content(client, uid) == (200, data)
