"""A tus PATCH that finds another request writing to its upload waits half a second for that
writer to let go, and only then answers ``409 append-busy``.

The case a client meets: a PATCH registers its bytes (so a HEAD shows the new offset) and only
then gives the append lease back and closes the data file. A client that resumes at once (HEAD,
then PATCH) can reach the server in between. It was answered 409, which a client that does not
retry (tuspy's default) reports as a failed upload.

Here the test itself holds what that writer holds: the data file's writer lock (``flock``) with
local staging, the append lease in Redis with ``storage.staging = "sink"`` (moto).
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import time
from collections.abc import Awaitable, Callable

import pytest

from vezastream.http.app import engine_key

from helpers import random_bytes
from s3_servers import s3_overrides
from tus_helpers import TUS, tus_create, tus_patch, upload_path

SIZE = 300_000
PIECE = 100_000


@pytest.fixture(params=["local", "s3-staging-sink"])
async def node(request, make_client, make_settings):
    if request.param == "local":
        return await make_client(make_settings())
    s3_settings = s3_overrides(request.getfixturevalue("s3_server"), request.getfixturevalue("bucket"),
                               **request.getfixturevalue("sink_defaults"))
    return await make_client(make_settings(**{"storage.staging": "sink", **s3_settings}))


async def hold(node, path: str) -> Callable[[], Awaitable[None]]:
    """Hold what a writer of the upload at ``path`` holds; returns how to let it go."""
    engine = node.server.app[engine_key]
    upload_id = path.rsplit("/", 1)[1]
    if engine.settings.storage.staging == "sink":
        lease = engine.store.append_lease_key(upload_id)
        assert await engine.store.redis.set(lease, "another-request", px=10_000, nx=True)

        async def let_go() -> None:
            await engine.store.redis.delete(lease)
        return let_go
    held = os.open(engine.staging.data_path(upload_id), os.O_WRONLY | os.O_CLOEXEC)
    fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)

    async def close() -> None:
        os.close(held)
    return close


async def offset(node, path: str) -> int:
    return int((await node.head(path, headers=TUS)).headers["Upload-Offset"])


async def test_a_writer_that_lets_go_within_a_moment_is_waited_for(node):
    data = random_bytes(SIZE)
    path = upload_path(await tus_create(node, SIZE))
    await tus_patch(node, path, 0, data[:PIECE])
    let_go = await hold(node, path)

    async def letting_go() -> None:
        await asyncio.sleep(0.1)
        await let_go()
    released = asyncio.create_task(letting_go())
    try:
        await tus_patch(node, path, PIECE, data[PIECE:2 * PIECE])  # 204, not 409
    finally:
        await released
    await tus_patch(node, path, 2 * PIECE, data[2 * PIECE:])
    assert await (await node.get(path)).read() == data


async def test_a_writer_that_holds_on_gets_409_append_busy_after_half_a_second_and_nothing_changes(node):
    data = random_bytes(SIZE)
    path = upload_path(await tus_create(node, SIZE))
    await tus_patch(node, path, 0, data[:PIECE])
    let_go = await hold(node, path)
    try:
        started = time.monotonic()
        busy = await tus_patch(node, path, PIECE, data[PIECE:2 * PIECE], expect=409)
        waited = time.monotonic() - started
    finally:
        await let_go()
    assert (await busy.json())["type"].endswith("/append-busy")
    assert 0.4 < waited < 5, waited  # the wait for a writer to let go is bounded
    assert await offset(node, path) == PIECE
    await tus_patch(node, path, PIECE, data[PIECE:])  # once it let go
    assert await (await node.get(path)).read() == data
