"""``limits.completed_ttl``: how long a completed upload's record (state, result, content) is kept
(config.toml; docs/api.md: "Calling ``complete`` again returns the same answer for as long as the
record is kept"). Before it the upload answers as completed; after it, ``404``, with nothing of it
left in Redis (docs/operations.md sizes Redis's memory on that)."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime

import pytest

from vezastream.http.app import engine_key
from vezastream.testing import content, random_bytes, upload

from tus_helpers import TUS, tus_create, tus_patch, upload_path

TTL = 4
#: Seconds of slack either side of the expiry, for a loaded machine (the record's clock starts a
#: little before the test's, when the answer was being made).
SLACK = 1.5


async def keys_of(client, upload_id: str) -> list[str]:
    store = client.server.app[engine_key].store
    return [k async for k in store.redis.scan_iter(match=f"{store.prefix}:*{upload_id}*")]


async def test_a_completed_upload_is_kept_completed_ttl_then_gone(make_client, make_settings):
    client = await make_client(make_settings(**{"limits.completed_ttl": TTL}))
    data = random_bytes(1000)
    result = await upload(client, data, 400)
    completed = time.monotonic()  # the record's expiry was set just before the answer
    uid = result["upload_id"]
    state = await (await client.get(f"/v1/uploads/{uid}")).json()
    assert state["status"] == "completed"
    kept = datetime.fromisoformat(state["expires_at"]) - datetime.fromisoformat(state["updated_at"])
    assert abs(kept.total_seconds() - TTL) < 0.01, state

    # Until completed_ttl: the state, the content and the same answer to a repeated complete.
    while time.monotonic() - completed < TTL - SLACK:
        resp = await client.get(f"/v1/uploads/{uid}")
        assert resp.status == 200, f"gone after {time.monotonic() - completed:.2f} s, before {TTL} s"
        assert (await resp.json())["status"] == "completed"
        await asyncio.sleep(0.1)
    assert await content(client, uid) == (200, data)
    again = await client.post(f"/v1/uploads/{uid}/complete")
    assert again.status == 200 and (await again.json())["location"] == result["location"]

    # Then gone: within a second of completed_ttl.
    while (resp := await client.get(f"/v1/uploads/{uid}")).status == 200:
        assert time.monotonic() - completed < TTL + 2, f"still there {TTL + 2} s after completion"
        await asyncio.sleep(0.05)
    assert resp.status == 404, await resp.text()
    assert time.monotonic() - completed > TTL - SLACK
    assert (await content(client, uid))[0] == 404
    assert (await client.post(f"/v1/uploads/{uid}/complete")).status == 404
    assert await keys_of(client, uid) == []


async def test_a_completed_tus_upload_is_kept_completed_ttl_then_gone(make_client, make_settings):
    client = await make_client(make_settings(**{"limits.completed_ttl": TTL}))
    data = random_bytes(1000)
    path = upload_path(await tus_create(client, len(data)))
    await tus_patch(client, path, 0, data)  # the last byte completes it
    completed = time.monotonic()
    uid = path.rsplit("/", 1)[1]
    head = await client.head(path, headers=TUS)
    assert head.status == 200 and head.headers["Upload-Offset"] == str(len(data))
    await asyncio.sleep(TTL - SLACK)
    head = await client.head(path, headers=TUS)
    assert head.status == 200 and head.headers["Upload-Offset"] == str(len(data))
    assert await content(client, uid) == (200, data)

    while (head := await client.head(path, headers=TUS)).status == 200:
        assert time.monotonic() - completed < TTL + 2, f"still there {TTL + 2} s after completion"
        await asyncio.sleep(0.05)
    assert head.status in (404, 410), head.status  # tus 1.0.0: either says the upload is gone
    assert time.monotonic() - completed > TTL - SLACK
    assert (await client.get(f"/v1/uploads/{uid}")).status == 404
    assert (await content(client, uid))[0] == 404
    assert await keys_of(client, uid) == []


@pytest.mark.parametrize("ttl", [0, -1])
def test_completed_ttl_must_be_at_least_a_second(make_settings, ttl):
    from vezastream.config import ConfigError
    with pytest.raises(ConfigError, match="limits.completed_ttl"):
        make_settings(**{"limits.completed_ttl": ttl})


async def test_every_key_but_the_unfinished_set_expires(make_client, settings):
    """docs/configuration.md: vezastream's keys carry a TTL (so Redis's volatile-* eviction may take
    them), but for the set of whole tus uploads awaiting completion, emptied as each completes."""
    client = await make_client(settings)
    data = random_bytes(3000)
    await upload(client, data, 1000)  # completed
    pending = (await (await client.post("/v1/uploads", json={"filename": "p", "total_size": 3000,
                                                              "chunk_size": 1000})).json())["upload_id"]
    assert (await client.put(f"/v1/uploads/{pending}/chunks/2", data=data[1000:2000])).status == 201
    tus = upload_path(await tus_create(client, len(data)))
    await tus_patch(client, tus, 0, data[:1000])
    store = client.server.app[engine_key].store
    keys = [k async for k in store.redis.scan_iter(match=f"{store.prefix}:*")]
    lasting = [k for k in keys if await store.redis.ttl(k) < 0]
    assert len(keys) >= 8 and any(":user:" in k for k in keys), keys  # records, chunks, quotas, the node
    assert set(lasting) <= {f"{store.prefix}:unfinished"}, lasting
