"""What one native chunk costs Redis, as docs/design.md ("One round trip per chunk") states it: the
upload's description is cached per process after first use, and registering a chunk is one Lua
script; writing in place (``storage.in_place``, the default) adds the claim, a second one.

Redis's own ``MONITOR`` lists every command the server sent that names the upload (its keys carry
the upload id), while a chunk is sent alone; nothing else (the node's heartbeat) names it, and what
a script runs inside Redis is not counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import uuid
from collections.abc import AsyncIterator

import pytest
import redis

from helpers import create, put_chunk


@contextlib.asynccontextmanager
async def commands_naming(redis_url: str, word: str) -> AsyncIterator[list[str]]:
    """The commands Redis runs while the block lasts that name ``word``, filled in when it ends."""
    marker, seen, found = f"end-{uuid.uuid4().hex}", [], []
    client = redis.Redis.from_url(redis_url, decode_responses=True, socket_timeout=30)
    monitor = client.monitor()
    started = threading.Event()

    def read() -> None:
        with monitor as m:
            started.set()
            while (line := m.next_command())["command"] != f"ECHO {marker}":
                if line["client_type"] != "lua":  # not what a script ran inside Redis
                    seen.append(line["command"])

    reader = asyncio.create_task(asyncio.to_thread(read))
    assert await asyncio.to_thread(started.wait, 10)
    await asyncio.to_thread(client.ping)  # MONITOR is on before the block's first command
    try:
        yield found
    finally:
        await asyncio.to_thread(client.echo, marker)
        await asyncio.wait_for(reader, 30)
        client.close()
        found.extend(line for line in seen if word in line)


@pytest.mark.parametrize("in_place, scripts", [(True, 2), (False, 1)], ids=["in-place", "chunk-files"])
async def test_a_chunk_costs_one_script_to_register_and_one_more_to_claim_in_place(
        make_client, make_settings, redis_url, in_place, scripts):
    settings = make_settings(**{"storage.in_place": in_place})
    client = await make_client(settings)
    uid = (await create(client, total_size=12, chunk_size=4))["upload_id"]
    await put_chunk(client, uid, 1, b"abcd")  # the scripts are loaded, the description is known
    async with commands_naming(redis_url, uid) as sent:
        await put_chunk(client, uid, 2, b"efgh")
    assert len(sent) == scripts and all(line.upper().startswith("EVALSHA") for line in sent), sent
    # A process that has not seen the upload reads its description once, then it too needs no more.
    other = await make_client(settings)
    async with commands_naming(redis_url, uid) as first:
        await put_chunk(other, uid, 3, b"ijkl")
    assert [c.split()[0] for c in first if not c.startswith("HGET ")] == ["EVALSHA"] * scripts, first
    assert any(c.startswith("HGET ") and c.endswith(" spec") for c in first), first
    assert (await client.post(f"/v1/uploads/{uid}/complete")).status == 200
