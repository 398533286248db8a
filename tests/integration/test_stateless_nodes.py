"""Stateless nodes: two servers on one Redis and one bucket, each with its OWN data_dir.

``storage.staging = "sink"`` with the S3 sink: tus PATCHes and native chunks of any
size wait in the bucket (staging objects), so any node takes any request and any node
completes. Run against moto (server mode) and SeaweedFS (``slow``).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import random
import signal
import time
from pathlib import Path

import pytest

import aiohttp

from helpers import create, put_chunk, random_bytes, split
from s3_servers import PREFIX, bucket_contents, free_port, read_object, s3_overrides, stateless_nodes
from tus_helpers import TUS, tus_create, tus_patch, upload_path

from vezastream import hookimpl
from vezastream.config import ConfigError
from vezastream.http.app import create_app, engine_key, gc_key
from vezastream.testing import running_app

KiB = 1024
MiB = 1024 * KiB


@pytest.fixture(params=["moto", pytest.param("seaweedfs", marks=pytest.mark.slow)])
def s3_server(request):
    return request.getfixturevalue("moto_server" if request.param == "moto" else "weed_server")


@pytest.fixture
async def nodes(make_client, make_settings, s3_server, bucket, sink_defaults, tmp_path):
    """Two apps sharing Redis (one key prefix) and the bucket, each with its own data_dir."""
    prefix = "t" + os.urandom(4).hex()
    clients = []
    for name in ("a", "b"):
        settings = make_settings(**{"storage.data_dir": str(tmp_path / name), "redis.key_prefix": prefix,
                                    "storage.staging": "sink", "gc.enabled": False,
                                    **s3_overrides(s3_server, bucket, **{**sink_defaults, "content": "proxy"})})
        clients.append(await make_client(settings))
    return clients


def upload_bytes_in(data_dir: Path) -> list[str]:
    """Files a node keeps of uploads (its chunk folders): none on a stateless node."""
    return [str(p) for p in (data_dir / "chunks").rglob("*") if p.is_file()]


def sha1_header(data: bytes) -> str:
    return "sha1 " + base64.b64encode(hashlib.sha1(data).digest()).decode()


async def leaves_nothing(s3, bucket: str, uid: str, data: bytes, tmp_path: Path) -> None:
    """The object holds exactly ``data``; no staging object, no multipart upload, no local byte is left."""
    assert await read_object(s3, bucket, PREFIX + uid) == data
    assert await asyncio.to_thread(bucket_contents, s3, bucket) == ([PREFIX + uid], [])
    assert upload_bytes_in(tmp_path / "a") == upload_bytes_in(tmp_path / "b") == []


async def test_a_refused_patch_then_patches_on_other_nodes_store_the_sent_bytes(nodes, s3, bucket, tmp_path):
    """The issue's case: 460 on A, the next PATCHes on B then A: the object is the uploaded file."""
    a, b = nodes
    data = random_bytes(600 * KiB + 7)
    first, second, third = data[:200 * KiB], data[200 * KiB:450 * KiB], data[450 * KiB:]
    path = upload_path(await tus_create(a, len(data)))
    refused = random_bytes(len(first))
    await tus_patch(a, path, 0, refused, expect=460, headers={"Upload-Checksum": sha1_header(first)})
    await tus_patch(b, path, 0, first, headers={"Upload-Checksum": sha1_header(first)})
    await tus_patch(a, path, len(first), second)
    head = await b.head(path, headers=TUS)
    assert head.headers["Upload-Offset"] == str(len(first) + len(second))
    await tus_patch(b, path, len(first) + len(second), third)
    uid = path.rsplit("/", 1)[1]
    assert (await (await a.get(f"/v1/uploads/{uid}")).json())["status"] == "completed"
    await leaves_nothing(s3, bucket, uid, data, tmp_path)


async def test_small_native_chunks_spread_over_nodes_complete_on_either(nodes, s3, bucket, tmp_path):
    a, b = nodes
    data = random_bytes(10 * 256 * KiB + 999)
    state = await create(a, total_size=len(data), chunk_size=256 * KiB, sha256=hashlib.sha256(data).hexdigest())
    uid = state["upload_id"]
    pieces = list(enumerate(split(data, 256 * KiB), 1))
    random.Random(16).shuffle(pieces)
    await asyncio.gather(*(put_chunk(random.choice(nodes), uid, n, piece) for n, piece in pieces))
    # A retry of a stored chunk on the other node is recognised; different bytes are a conflict.
    n, piece = pieces[0]
    await put_chunk(b, uid, n, piece, expect=200)
    await put_chunk(a, uid, n, bytes(len(piece)), expect=409)
    resp = await b.post(f"/v1/uploads/{uid}/complete")
    result = await resp.json()
    assert resp.status == 200, result
    assert result["sha256"] == hashlib.sha256(data).hexdigest()
    await leaves_nothing(s3, bucket, uid, data, tmp_path)


async def test_a_declared_digest_that_does_not_match_leaves_the_upload_pending(nodes, s3, bucket):
    a, b = nodes
    data = random_bytes(3 * 100 * KiB)
    state = await create(a, total_size=len(data), chunk_size=100 * KiB, sha256="0" * 64)
    uid = state["upload_id"]
    for n, piece in enumerate(split(data, 100 * KiB), 1):
        await put_chunk(nodes[n % 2], uid, n, piece)
    resp = await b.post(f"/v1/uploads/{uid}/complete")
    assert resp.status == 422, await resp.text()
    state = await (await a.get(f"/v1/uploads/{uid}")).json()
    assert state["status"] == "pending" and state["chunks_received"] == [1, 2, 3]
    keys, multipart = await asyncio.to_thread(bucket_contents, s3, bucket)
    assert multipart == [] and PREFIX + uid not in keys and len(keys) == 3  # the three staged chunks wait
    assert (await a.delete(f"/v1/uploads/{uid}")).status == 204
    assert await asyncio.to_thread(bucket_contents, s3, bucket) == ([], [])


async def test_tus_concatenation_of_partials_sent_to_different_nodes(nodes, s3, bucket, tmp_path):
    a, b = nodes
    data = random_bytes(700 * KiB + 3)
    halves = data[:300 * KiB], data[300 * KiB:]
    parts = []
    for node, piece in zip(nodes, halves):
        path = upload_path(await tus_create(node, len(piece), headers={"Upload-Concat": "partial"}))
        await tus_patch(node, path, 0, piece[:100 * KiB])
        await tus_patch(nodes[1] if node is a else a, path, 100 * KiB, piece[100 * KiB:])
        parts.append(path)
    final = upload_path(await tus_create(b, None, headers={"Upload-Concat": "final;" + " ".join(parts)}))
    uid = final.rsplit("/", 1)[1]
    await leaves_nothing(s3, bucket, uid, data, tmp_path)
    resp = await a.get(final, headers=TUS)
    assert resp.status == 200 and await resp.read() == data


async def test_delete_and_gc_leave_no_staging_object(nodes, s3, bucket, tmp_path):
    a, b = nodes
    # DELETE of a pending upload with staged chunks, on the node that received none of them.
    state = await create(a, total_size=3 * 64 * KiB, chunk_size=64 * KiB)
    await put_chunk(a, state["upload_id"], 1, random_bytes(64 * KiB))
    path = upload_path(await tus_create(a, 500 * KiB))
    await tus_patch(a, path, 0, random_bytes(100 * KiB))
    assert len((await asyncio.to_thread(bucket_contents, s3, bucket))[0]) == 2
    assert (await b.delete(f"/v1/uploads/{state['upload_id']}")).status == 204
    assert (await b.delete(path, headers=TUS)).status == 204
    assert await asyncio.to_thread(bucket_contents, s3, bucket) == ([], [])
    # An abandoned upload: its state expired in Redis, its staged bytes are left in the bucket.
    state = await create(b, total_size=2 * 64 * KiB, chunk_size=64 * KiB)
    live = await create(b, total_size=2 * 64 * KiB, chunk_size=64 * KiB)
    for uid in (state["upload_id"], live["upload_id"]):
        await put_chunk(a, uid, 1, random_bytes(64 * KiB))
    engine = a.server.app[engine_key]
    await engine.store.delete(state["upload_id"])
    gc = a.server.app[gc_key]
    report = await gc.run_once()
    assert report.aborted == []  # not old yet
    gc.clock = lambda: time.time() + 2 * gc.settings.gc.max_age
    report = await gc.run_once()
    assert len(report.aborted) == 1 and state["upload_id"] in report.aborted[0]
    keys, multipart = await asyncio.to_thread(bucket_contents, s3, bucket)
    assert multipart == [] and len(keys) == 1 and live["upload_id"] in keys[0]  # the live upload's chunk stays
    assert upload_bytes_in(tmp_path / "a") == upload_bytes_in(tmp_path / "b") == []


async def test_one_gc_pass_sweeps_staging_objects_and_templated_multipart_uploads(make_client, make_settings, s3_server,
                                                                                   bucket, s3, sink_defaults):
    """Both halves of the S3 sink's sweep run: an abandoned upload's staging objects (sink staging) and an
    abandoned direct upload under a key_template (found through its note) go in one GC pass."""
    client = await make_client(make_settings(**{
        "storage.staging": "sink", "gc.enabled": False,
        **s3_overrides(s3_server, bucket, **{**sink_defaults, "key_template": "{upload_id}/{filename}"})}))
    staged = await create(client, total_size=2 * 64 * KiB, chunk_size=64 * KiB)
    direct = await create(client, total_size=5 * MiB + 1, chunk_size=5 * MiB)
    assert (staged["mode"], direct["mode"]) == ("staged", "direct")
    await put_chunk(client, staged["upload_id"], 1, random_bytes(64 * KiB))
    await put_chunk(client, direct["upload_id"], 1, random_bytes(5 * MiB))
    keys, multipart = await asyncio.to_thread(bucket_contents, s3, bucket)
    assert len(multipart) == 1 and any(".staging/" in k for k in keys) and any(".vezastream-open/" in k for k in keys)
    store = client.server.app[engine_key].store
    for state in (staged, direct):  # both expired in Redis
        await store.redis.delete(store.key(state["upload_id"]), store.chunks_key(state["upload_id"]))
    gc = client.server.app[gc_key]
    gc.clock = lambda: time.time() + 2 * gc.settings.gc.max_age
    report = await gc.run_once()
    assert any(direct["upload_id"] in a for a in report.aborted)
    assert any(staged["upload_id"] in a for a in report.aborted)
    assert await asyncio.to_thread(bucket_contents, s3, bucket) == ([], [])


async def test_big_native_chunks_still_go_direct(nodes, s3, bucket, tmp_path):
    a, b = nodes
    data = random_bytes(5 * MiB + 10)
    state = await create(a, total_size=len(data), chunk_size=5 * MiB)
    assert state["mode"] == "direct"
    await put_chunk(b, state["upload_id"], 2, data[5 * MiB:])
    await put_chunk(a, state["upload_id"], 1, data[:5 * MiB])
    assert (await b.post(f"/v1/uploads/{state['upload_id']}/complete")).status == 200
    await leaves_nothing(s3, bucket, state["upload_id"], data, tmp_path)


def test_sink_staging_with_a_sink_that_cannot_hold_bytes_is_a_config_error(make_settings):
    settings = make_settings(**{"storage.staging": "sink"})  # the local sink
    with pytest.raises(ConfigError, match="storage.staging"):
        create_app(settings)


async def test_a_patch_of_unknown_length_is_spooled_for_its_request_only(nodes, s3, bucket, tmp_path):
    a, b = nodes
    data = random_bytes(300 * KiB + 11)
    path = upload_path(await tus_create(a, len(data)))

    async def chunked(piece: bytes):  # no Content-Length: Transfer-Encoding: chunked
        for i in range(0, len(piece), 64 * KiB):
            yield piece[i:i + 64 * KiB]

    await tus_patch(b, path, 0, chunked(data[:100 * KiB]))
    await tus_patch(a, path, 100 * KiB, chunked(data[100 * KiB:]))
    await leaves_nothing(s3, bucket, path.rsplit("/", 1)[1], data, tmp_path)
    assert [p for node in "ab" for p in (tmp_path / node / "spool").glob("*")] == []


async def test_a_sink_that_is_down_at_creation_answers_503(make_client, make_settings, s3_server, bucket,
                                                           sink_defaults, tmp_path):
    down = s3_overrides(s3_server, bucket, **{**sink_defaults, "retry_attempts": 1,
                                              "endpoint_url": f"http://127.0.0.1:{free_port()}"})
    client = await make_client(make_settings(**{"storage.staging": "sink", **down}))
    resp = await client.post("/v1/uploads", json={"filename": "f", "total_size": 6 * MiB, "chunk_size": 5 * MiB})
    assert resp.status == 503 and resp.content_type == "application/problem+json"
    assert upload_bytes_in(tmp_path / "data") == []


async def test_a_stalled_writer_whose_lease_expired_never_counts(nodes, s3, bucket, tmp_path):
    """A PATCH stalls on A and its append lease lapses; B writes the same offset; A's late bytes never count."""
    a, b = nodes
    data, late = random_bytes(200 * KiB), random_bytes(100 * KiB)
    path = upload_path(await tus_create(a, len(data)))
    uid = path.rsplit("/", 1)[1]
    store = a.server.app[engine_key].store
    lease, resume = store.append_lease_key(uid), asyncio.Event()

    async def stalled():
        yield late[:40 * KiB]
        await resume.wait()
        yield late[40 * KiB:]

    headers = {**TUS, "Content-Type": "application/offset+octet-stream", "Upload-Offset": "0",
               "Content-Length": str(len(late))}
    writer = asyncio.create_task(a.patch(path, headers=headers, data=stalled()))
    for _ in range(100):
        if holder := await store.holder(lease):
            break
        await asyncio.sleep(0.05)
    assert holder, "the stalled PATCH never took the append lease"
    assert await store.release_lease(lease, holder)  # as if it had expired while A's event loop stalled
    await tus_patch(b, path, 0, data[:100 * KiB])
    resume.set()
    assert (await writer).status == 409
    await tus_patch(a, path, 100 * KiB, data[100 * KiB:])
    await leaves_nothing(s3, bucket, uid, data, tmp_path)


@pytest.mark.slow
async def test_two_served_processes_share_only_redis_and_the_bucket(tmp_path, redis_url, s3_server, s3, bucket,
                                                                    sink_defaults):
    """Two `vezastream serve` processes, each with its own data_dir: tus and native uploads through both."""
    procs = stateless_nodes(tmp_path, redis_url, s3_server, bucket, CONTENT="proxy")
    try:
        await asyncio.gather(*(p.wait_ready() for p in procs))
        a, b = (aiohttp.ClientSession(p.url) for p in procs)
        async with a, b:
            data = random_bytes(300 * KiB + 5)
            async with a.post("/files/", headers={**TUS, "Upload-Length": str(len(data))}) as r:
                path = upload_path(r)
            for node, start, end in ((b, 0, 100 * KiB), (a, 100 * KiB, len(data))):
                headers = {**TUS, "Content-Type": "application/offset+octet-stream", "Upload-Offset": str(start)}
                async with node.patch(path, headers=headers, data=data[start:end]) as r:
                    assert r.status == 204, await r.text()
            async with b.get(path, headers=TUS) as r:
                assert r.status == 200 and await r.read() == data
            native = random_bytes(3 * 128 * KiB)
            async with b.post("/v1/uploads", json={"filename": "n", "total_size": len(native),
                                                   "chunk_size": 128 * KiB}) as r:
                uid = (await r.json())["upload_id"]
            for n, piece in enumerate(split(native, 128 * KiB), 1):
                async with (a, b)[n % 2].put(f"/v1/uploads/{uid}/chunks/{n}", data=piece) as r:
                    assert r.status == 201, await r.text()
            async with a.post(f"/v1/uploads/{uid}/complete") as r:
                assert r.status == 200, await r.text()
            assert await read_object(s3, bucket, PREFIX + uid) == native
    finally:
        for p in procs:
            p.kill(signal.SIGTERM)
    keys, multipart = await asyncio.to_thread(bucket_contents, s3, bucket)
    assert multipart == [] and sorted(keys) == sorted([PREFIX + uid, PREFIX + path.rsplit("/", 1)[1]])
    assert upload_bytes_in(tmp_path / "a" / "data") == upload_bytes_in(tmp_path / "b" / "data") == []


async def test_a_changed_staging_setting_applies_to_new_uploads_only(make_client, make_settings, s3_server, s3,
                                                                    bucket, sink_defaults, tmp_path):
    """docs/configuration.md: uploads pending when storage.staging changes keep where their bytes are.
    A node restarted from "local" to "sink" (one data_dir) finishes the uploads it had begun from its
    disk, and stages the new ones in the bucket."""
    common = {"storage.data_dir": str(tmp_path / "n"), "redis.key_prefix": "t" + os.urandom(4).hex(),
              "gc.enabled": False, **s3_overrides(s3_server, bucket, **{**sink_defaults, "content": "proxy"})}
    first = await make_client(make_settings(**common, **{"storage.staging": "local"}))
    tus_data, native_data = random_bytes(200 * KiB), random_bytes(128 * KiB)
    tus = upload_path(await tus_create(first, len(tus_data)))
    await tus_patch(first, tus, 0, tus_data[:100 * KiB])
    native = (await create(first, total_size=len(native_data), chunk_size=64 * KiB))["upload_id"]
    await put_chunk(first, native, 1, native_data[:64 * KiB])
    assert upload_bytes_in(tmp_path / "n")  # staged on the node's disk
    await first.close()

    again = await make_client(make_settings(**common, **{"storage.staging": "sink"}))
    head = await again.head(tus, headers=TUS)
    assert head.headers["Upload-Offset"] == str(100 * KiB)
    await tus_patch(again, tus, 100 * KiB, tus_data[100 * KiB:])
    await put_chunk(again, native, 2, native_data[64 * KiB:])
    assert (await again.post(f"/v1/uploads/{native}/complete")).status == 200
    assert await read_object(s3, bucket, PREFIX + tus.rsplit("/", 1)[1]) == tus_data
    assert await read_object(s3, bucket, PREFIX + native) == native_data
    assert upload_bytes_in(tmp_path / "n") == []  # removed once stored
    new = upload_path(await tus_create(again, 10))
    await tus_patch(again, new, 0, b"0123")
    assert upload_bytes_in(tmp_path / "n") == []  # a new upload's bytes wait in the bucket
    objects, _ = await asyncio.to_thread(bucket_contents, s3, bucket)
    assert len(objects) == 3, objects  # the two stored objects and the new upload's staging object


@pytest.mark.parametrize("first, second", [("sink", "local"), ("local", "sink")])
async def test_a_node_staging_otherwise_than_the_live_nodes_refuses_to_start(make_settings, s3_server, bucket,
                                                                             sink_defaults, tmp_path, first, second):
    """Before, a node left at storage.staging = "local" among stateless nodes started, and each kind
    took bytes of the other's uploads where the other could not read them (a tus upload made on the
    local node had its first PATCH stored in the bucket by a stateless node, one made on a stateless
    node its first PATCH on the local node's disk, and a native chunk of a stateless node's upload
    too). Now the second refuses to start, naming both settings; the first runs on."""
    prefix = "t" + os.urandom(4).hex()

    def settings(name: str, staging: str):
        return make_settings(**{"storage.data_dir": str(tmp_path / name), "redis.key_prefix": prefix,
                                "storage.staging": staging, "gc.enabled": False,
                                **s3_overrides(s3_server, bucket, **sink_defaults)})

    async with running_app(settings("a", first)) as running:
        refusal = rf'^storage.staging: 1 live node\(s\) .* storage.staging = "{first}", this node with "{second}"'
        with pytest.raises(ConfigError, match=refusal):
            async with running_app(settings("b", second)):
                pass
        ready = await running.get("/v1/health/deep")
        assert ready.status == 200, await ready.text()


class Scanner:
    """An inspector that reads what it is handed: the staged files' count and the bytes, in order."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, bytes]] = []

    @hookimpl
    async def vezastream_inspect_upload(self, upload, source):
        self.seen.append((len(source.files), b"".join([block async for block in source.iter_bytes()])))


async def test_an_inspector_reads_the_bytes_and_is_handed_no_files_when_they_wait_in_the_sink(
        make_client, make_settings, s3_server, bucket, sink_defaults, tmp_path):
    """docs/plugins.md: with storage.staging = "sink" no staged file is on the node's disk, so
    ``source.files`` is empty (a scanner that takes only paths would scan nothing); ``iter_bytes``
    has every byte, from the bucket, for both doors."""
    scanner = Scanner()
    settings = make_settings(**{"storage.data_dir": str(tmp_path / "a"), "storage.staging": "sink",
                                **s3_overrides(s3_server, bucket, **sink_defaults)})
    client = await make_client(settings, plugins=[("scanner", scanner)])
    data = random_bytes(300 * KiB + 5)
    uid = (await create(client, total_size=len(data), chunk_size=100 * KiB))["upload_id"]
    for n, piece in enumerate(split(data, 100 * KiB), 1):
        await put_chunk(client, uid, n, piece)
    assert (await client.post(f"/v1/uploads/{uid}/complete")).status == 200
    path = upload_path(await tus_create(client, len(data)))
    await tus_patch(client, path, 0, data)
    assert scanner.seen == [(0, data), (0, data)]
