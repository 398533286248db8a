"""Parallel and retried chunks, concurrent completes, several nodes, disconnects."""

from __future__ import annotations

import asyncio
import random
import threading

from vezastream import hookimpl, staging
from vezastream.http.app import engine_key
from vezastream.staging import WRITE_BUFFER
from vezastream.staging import files as staging_files
from vezastream_local import make_local_sink

import pytest

from helpers import content, create, held_open, put_chunk, random_bytes, sha256, split


@pytest.fixture
def settings(both_layouts):
    return both_layouts


async def test_64_chunks_from_16_tasks_none_lost(client):
    data = random_bytes(64 * 4096 + 123)
    pieces = split(data, 4096)
    state = await create(client, total_size=len(data), chunk_size=4096)
    uid = state["upload_id"]
    order = list(enumerate(pieces, 1))
    random.shuffle(order)
    queue: asyncio.Queue = asyncio.Queue()
    for item in order:
        queue.put_nowait(item)

    async def worker() -> None:
        while not queue.empty():
            n, piece = queue.get_nowait()
            await put_chunk(client, uid, n, piece)

    await asyncio.gather(*(worker() for _ in range(16)))
    st = await (await client.get(f"/v1/uploads/{uid}")).json()
    assert st["chunks_received"] == list(range(1, len(pieces) + 1))
    assert st["received_count"] == len(pieces) and st["bytes_received"] == len(data)
    result = await (await client.post(f"/v1/uploads/{uid}/complete")).json()
    assert result["sha256"] == sha256(data)
    assert await content(client, uid) == (200, data)


async def test_same_chunk_sent_concurrently_is_stored_once(client):
    data = random_bytes(1000)
    state = await create(client, total_size=1000, chunk_size=1000)
    uid = state["upload_id"]
    codes = await asyncio.gather(*(put_chunk(client, uid, 1, data, expect=None) for _ in range(8)))
    statuses = sorted(code for code, _ in codes)
    assert statuses == [200] * 7 + [201]
    st = await (await client.get(f"/v1/uploads/{uid}")).json()
    assert st["received_count"] == 1 and st["bytes_received"] == 1000


async def test_two_nodes_share_one_upload(make_client, settings):
    """Two app instances (nodes) on one Redis and one data folder take chunks of one upload."""
    node_a = await make_client(settings)
    node_b = await make_client(settings)
    data = random_bytes(40 * 1000)
    state = await create(node_a, total_size=len(data), chunk_size=1000)
    uid = state["upload_id"]
    nodes = [node_a, node_b]
    await asyncio.gather(*(put_chunk(nodes[n % 2], uid, n, piece) for n, piece in enumerate(split(data, 1000), 1)))
    result = await (await node_b.post(f"/v1/uploads/{uid}/complete")).json()
    assert result["sha256"] == sha256(data)
    assert await content(node_a, uid) == (200, data)


class CountingSinkPlugin:
    """A real local sink that counts assemblies and takes its time."""

    def __init__(self) -> None:
        self.assembled = 0

    @hookimpl
    def vezastream_register_sinks(self, register):
        plugin = self

        def factory(config, settings):
            sink = make_local_sink(config, settings)
            original = sink.assemble

            async def assemble(upload, source):
                plugin.assembled += 1
                await asyncio.sleep(0.3)
                return await original(upload, source)

            sink.assemble = assemble
            sink.name = "counting"
            return sink

        register("counting", factory)


async def test_concurrent_completes_assemble_once(make_client, make_settings):
    plugin = CountingSinkPlugin()
    settings = make_settings(**{"storage.sink": "counting"})
    node_a = await make_client(settings, plugins=[plugin])
    node_b = await make_client(settings, plugins=[plugin])
    data = random_bytes(3000)
    state = await create(node_a, total_size=3000, chunk_size=1000)
    uid = state["upload_id"]
    for n, piece in enumerate(split(data, 1000), 1):
        await put_chunk(node_a, uid, n, piece)
    responses = await asyncio.gather(*(
        (node_a if i % 2 else node_b).post(f"/v1/uploads/{uid}/complete") for i in range(6)))
    bodies = [await r.json() for r in responses]
    assert [r.status for r in responses] == [200] * 6
    assert all(b == bodies[0] for b in bodies) and bodies[0]["sha256"] == sha256(data)
    assert plugin.assembled == 1


async def test_client_disconnect_mid_chunk_leaves_nothing(client, settings):
    state = await create(client, total_size=200_000, chunk_size=100_000)
    uid = state["upload_id"]
    host, port = client.server.host, client.server.port
    reader, writer = await asyncio.open_connection(host, port)
    writer.write((f"PUT /v1/uploads/{uid}/chunks/1 HTTP/1.1\r\nHost: {host}\r\n"
                  "Content-Type: application/octet-stream\r\nContent-Length: 100000\r\n\r\n").encode())
    writer.write(b"z" * 40_000)
    await writer.drain()
    await asyncio.sleep(0.2)
    writer.close()
    folder = settings.storage.chunks_dir / uid

    def leftovers() -> list[str]:  # an in-place upload's data file is there from the start
        return [p.name for p in folder.iterdir() if p.name != "data"] if folder.exists() else []

    store = client.server.app[engine_key].store
    for _ in range(100):  # the server notices the disconnect and cleans up (and gives back its claim)
        if not leftovers() and not await store.claims(uid):
            break
        await asyncio.sleep(0.05)
    assert leftovers() == [] and await store.claims(uid) == {}
    st = await (await client.get(f"/v1/uploads/{uid}")).json()
    assert st["chunks_received"] == [] and st["bytes_received"] == 0
    data = random_bytes(200_000)
    await put_chunk(client, uid, 1, data[:100_000], expect=201)  # and the chunk can be retried
    if settings.storage.in_place:
        assert leftovers() == []  # in place, not staged on its own: the range was free again
    await put_chunk(client, uid, 2, data[100_000:], expect=201)
    assert (await client.post(f"/v1/uploads/{uid}/complete")).status == 200
    assert await content(client, uid) == (200, data)


async def test_disconnect_after_several_buffers_leaves_nothing_open(client, settings):
    """Cut off once the body has gone to the writing threads (the file is open by then)."""
    size = 2 * WRITE_BUFFER + 1_000_000
    state = await create(client, total_size=size, chunk_size=size)
    uid = state["upload_id"]
    host, port = client.server.host, client.server.port
    reader, writer = await asyncio.open_connection(host, port)
    writer.write((f"PUT /v1/uploads/{uid}/chunks/1 HTTP/1.1\r\nHost: {host}\r\n"
                  f"Content-Type: application/octet-stream\r\nContent-Length: {size}\r\n\r\n").encode())
    writer.write(b"z" * (WRITE_BUFFER + 500_000))
    await writer.drain()
    await asyncio.sleep(0.3)
    writer.close()
    folder = settings.storage.chunks_dir / uid
    store = client.server.app[engine_key].store

    def leftovers() -> list[str]:
        return [p.name for p in folder.iterdir() if p.name != "data"] if folder.exists() else []

    for _ in range(100):  # bounded: the server notices, closes the file and gives back its claim
        if not leftovers() and not await store.claims(uid) and not held_open(folder):
            break
        await asyncio.sleep(0.05)
    assert (leftovers(), await store.claims(uid), held_open(folder)) == ([], {}, [])
    data = random_bytes(size)
    await put_chunk(client, uid, 1, data, expect=201)
    assert (await client.post(f"/v1/uploads/{uid}/complete")).status == 200
    assert await content(client, uid) == (200, data)
    assert held_open(folder) == []


async def test_a_body_cancelled_while_its_first_write_is_in_flight_leaves_no_file(tmp_path, monkeypatch):
    """The body fails, then its handler is cancelled (aiohttp's handler_cancellation) before the
    thread that creates the file has run: the file is removed once that thread is done."""
    entered, go = threading.Event(), threading.Event()
    real_open = staging_files.open_new

    def slow_open(path):
        entered.set()
        go.wait(10)
        return real_open(path)
    monkeypatch.setattr(staging_files, "open_new", slow_open)

    async def body():
        yield random_bytes(WRITE_BUFFER + 1000)  # a whole buffer: its write (and the open) goes to a thread
        raise ConnectionResetError("the client went away")

    area = staging.ChunkStaging(tmp_path / "chunks")
    task = asyncio.create_task(area.receive("u", 1, body(), limit=3 * WRITE_BUFFER))
    for _ in range(200):
        if entered.is_set():
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)  # the body has failed; the request now waits for the thread
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    go.set()
    folder = tmp_path / "chunks" / "u"
    for _ in range(200):
        if folder.exists() and not list(folder.iterdir()) and not held_open(folder):
            break
        await asyncio.sleep(0.01)
    assert list(folder.iterdir()) == [] and held_open(folder) == []
