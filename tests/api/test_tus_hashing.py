"""tus bytes are hashed once, as they arrive in order; the result stays right when they do not."""

from __future__ import annotations

import asyncio
import base64
import hashlib

import pytest

from vezastream import staging
from vezastream.http.app import engine_key

from helpers import random_bytes, sha256, split
from tus_helpers import TUS, tus_create, tus_patch, upload_path


async def result_sha256(client, path: str) -> str:
    state = await (await client.get("/v1/uploads/" + path.rsplit("/", 1)[1])).json()
    assert state["status"] == "completed"
    return state["result"]["sha256"]


async def test_small_bodies_of_many_uploads_at_once_are_hashed_two_by_two_and_stay_right(client):
    """``PATCH``es of many uploads reach their digests in the same loop turn (one Redis pipeline's
    replies wake them together), and those are hashed two by two in one pass (staging/digests.py)."""
    chunk_staging = client.server.app[engine_key].staging
    if chunk_staging.kernel is None or staging.digests._Sha256x2 is None:
        pytest.skip("small bodies go to worker threads here, or the C module is not usable")
    files = [random_bytes(3 * 100_000 + 1 + i) for i in range(16)]

    async def send(data: bytes) -> str:
        path = upload_path(await tus_create(client, len(data)))
        offset = 0
        for piece in split(data, 100_000):
            await tus_patch(client, path, offset, piece)
            offset += len(piece)
        return await result_sha256(client, path)
    assert await asyncio.gather(*map(send, files)) == [sha256(data) for data in files]
    pairs = chunk_staging.loop_pairs
    assert pairs.paired + pairs.alone == 4 * 16
    assert pairs.paired >= 16, (pairs.paired, pairs.alone)


async def test_in_order_upload_is_not_read_again_at_completion(client, monkeypatch):
    data = random_bytes(5 * 70_000 + 17)
    reads = []
    real = staging.sha256_of_files
    monkeypatch.setattr("vezastream.engine.layouts.staged.sha256_of_files", lambda paths, *sizes: reads.append(paths) or real(paths, *sizes))
    path = upload_path(await tus_create(client, len(data)))
    offset = 0
    for piece in split(data, 70_000):
        await tus_patch(client, path, offset, piece)
        offset += len(piece)
    assert await result_sha256(client, path) == sha256(data)
    assert reads == []  # the digest came from the running hash
    assert len(client.server.app[engine_key].digests) == 0


@pytest.mark.parametrize("order", ["alternating", "second node finishes"])
async def test_requests_spread_over_two_nodes_still_give_the_whole_files_sha256(make_client, settings, order):
    node_a, node_b = await make_client(settings), await make_client(settings)
    data = random_bytes(6 * 50_000)
    path = upload_path(await tus_create(node_a, len(data)))
    offset = 0
    for i, piece in enumerate(split(data, 50_000)):
        node = (node_a, node_b)[i % 2] if order == "alternating" else (node_a if i < 5 else node_b)
        await tus_patch(node, path, offset, piece)
        offset += len(piece)
    assert await result_sha256(node_a, path) == sha256(data)
    response = await node_b.get(path)
    assert await response.read() == data


@pytest.mark.parametrize("algorithm", ["sha1", "sha256"])
async def test_a_large_body_with_a_wrong_checksum_is_refused_and_the_right_one_taken(client, algorithm):
    """Bodies of megabytes: the client's checksum is computed beside the upload's SHA-256 (a sha256 one
    in the same pass where the CPU allows, staging/sha256x2.c), the second body from a running digest
    whose last block is half full."""
    def declared(data: bytes) -> dict[str, str]:
        return {"Upload-Checksum": f"{algorithm} " + base64.b64encode(hashlib.new(algorithm, data).digest()).decode()}
    data = random_bytes(2 * (5 * 1024 * 1024 + 3))
    first, second = data[:len(data) // 2], data[len(data) // 2:]
    path = upload_path(await tus_create(client, len(data)))
    await tus_patch(client, path, 0, first, expect=460, headers=declared(first[1:]))
    assert (await client.head(path, headers=TUS)).headers["Upload-Offset"] == "0"
    await tus_patch(client, path, 0, first, headers=declared(first))
    await tus_patch(client, path, len(first), second, expect=460, headers=declared(second[:-1] + b"x"))
    await tus_patch(client, path, len(first), second, headers=declared(second))
    assert await result_sha256(client, path) == sha256(data)
    assert await (await client.get(path)).read() == data
