"""Promises of docs/api.md and docs/tus.md that no other test held the code to, as a client sees them."""

from __future__ import annotations

import re
import time
from email.utils import parsedate_to_datetime
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from helpers import create, put_chunk, random_bytes, sha256, split
from tus_helpers import TUS, tus_create, tus_patch, upload_path
from vezastream import errors


@pytest.fixture
def settings(both_layouts):
    return both_layouts


# -- api.md: HEAD /v1/uploads/{id}/chunks/{n} --------------------------------------------------
async def test_head_chunk_answers_its_digest_and_size_and_404_for_a_chunk_not_stored(client):
    """api.md: ``200`` with ``X-Chunk-Sha256`` and ``X-Chunk-Size`` (the chunk's own size, so a short
    last chunk says its own), or ``404``."""
    data = random_bytes(25)
    pieces = split(data, 10)  # 10, 10, 5
    uid = (await create(client, total_size=len(data), chunk_size=10))["upload_id"]
    for n in (1, 3):
        await put_chunk(client, uid, n, pieces[n - 1])
    for n in (1, 3):
        resp = await client.head(f"/v1/uploads/{uid}/chunks/{n}")
        assert resp.status == 200, n
        assert resp.headers["X-Chunk-Sha256"] == sha256(pieces[n - 1])
        assert resp.headers["X-Chunk-Size"] == str(len(pieces[n - 1]))
    assert (await client.head(f"/v1/uploads/{uid}/chunks/3")).headers["X-Chunk-Size"] == "5"
    not_stored = await client.head(f"/v1/uploads/{uid}/chunks/2")
    assert not_stored.status == 404 and "X-Chunk-Sha256" not in not_stored.headers
    assert (await client.head(f"/v1/uploads/{uid}/chunks/4")).status == 404  # past total_chunks
    await put_chunk(client, uid, 2, pieces[1])
    resp = await client.head(f"/v1/uploads/{uid}/chunks/2")
    assert resp.status == 200 and resp.headers["X-Chunk-Size"] == "10"
    assert resp.headers["X-Chunk-Sha256"] == sha256(pieces[1])


# -- api.md: metadata holds at most 64 string pairs ----------------------------------------------
async def redis_keys(settings) -> set[bytes]:
    """Every key in Redis under this test's prefix (records, indexes, counters)."""
    r = aioredis.from_url(settings.redis.url)
    try:
        return {k async for k in r.scan_iter(f"{settings.redis.key_prefix}:*")}
    finally:
        await r.aclose()


def staged_entries(settings) -> list[str]:
    root = settings.storage.chunks_dir
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


async def test_metadata_of_65_pairs_is_refused_and_creates_nothing(client, settings):
    """api.md: ``metadata`` holds at most 64 string pairs. 64 are kept; 65 answer 422 problem+json,
    and nothing is created: no record or key in Redis, nothing staged."""
    pairs = {f"k{i}": f"v{i}" for i in range(64)}
    kept = await create(client, total_size=10, chunk_size=10, metadata=pairs)
    assert kept["metadata"] == pairs
    state = await (await client.get(f"/v1/uploads/{kept['upload_id']}")).json()
    assert state["metadata"] == pairs

    keys, staged = await redis_keys(settings), staged_entries(settings)
    resp = await client.post("/v1/uploads", json={"filename": "f.bin", "total_size": 10, "chunk_size": 10,
                                                  "metadata": {**pairs, "k64": "v64"}})
    problem = await resp.json(content_type=None)
    assert resp.status == 422 and resp.content_type == "application/problem+json", problem
    assert problem["status"] == 422 and problem["field"] == "metadata", problem
    assert "Location" not in resp.headers
    assert await redis_keys(settings) == keys
    assert staged_entries(settings) == staged


# -- tus.md: tus.cors_origins = [] sends no CORS headers; the native door's setting is its own ----
WEB = "https://app.example.com"


def cors_headers(resp) -> dict[str, str]:
    return {k: v for k, v in resp.headers.items() if k.lower().startswith("access-control-")}


async def tus_door_cors(client) -> list[dict[str, str]]:
    """The CORS headers of the tus door's answers to a page at WEB: a preflight, a creation, an error."""
    preflight = await client.options("/files/", headers={
        "Origin": WEB, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "tus-resumable, upload-length, upload-metadata"})
    assert preflight.status == 204 and preflight.headers["Tus-Version"] == "1.0.0"
    created = await client.post("/files/", headers={**TUS, "Upload-Length": "3", "Origin": WEB})
    assert created.status == 201, await created.text()
    unknown = await client.head("/files/" + "U" * 22, headers={**TUS, "Origin": WEB})
    assert unknown.status == 404
    return [cors_headers(preflight), cors_headers(created), cors_headers(unknown)]


async def native_door_cors(client) -> list[dict[str, str]]:
    """The same for the native door: a preflight and a creation."""
    preflight = await client.options("/v1/uploads", headers={
        "Origin": WEB, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"})
    assert preflight.status == 204
    created = await client.post("/v1/uploads", json={"filename": "a", "total_size": 1}, headers={"Origin": WEB})
    assert created.status == 201, await created.text()
    return [cors_headers(preflight), cors_headers(created)]


async def test_tus_cors_origins_empty_sends_no_cors_headers_while_the_native_door_keeps_its_own(
        make_client, make_settings):
    """tus.md: ``cors_origins = []`` sends no CORS headers (preflight, simple request, error); the
    native door, allowing WEB through ``native.cors_origins``, still answers that page."""
    client = await make_client(make_settings(**{"tus.cors_origins": [], "native.cors_origins": [WEB]}))
    assert await tus_door_cors(client) == [{}, {}, {}]
    native = await native_door_cors(client)
    assert all(h.get("Access-Control-Allow-Origin") == WEB for h in native), native
    assert "POST" in native[0]["Access-Control-Allow-Methods"]


async def test_native_cors_origins_empty_leaves_the_tus_door_answering_its_origins(make_client, make_settings):
    """The other way round: ``native.cors_origins = []`` does not silence the tus door."""
    client = await make_client(make_settings(**{"tus.cors_origins": [WEB], "native.cors_origins": []}))
    tus = await tus_door_cors(client)
    assert all(h.get("Access-Control-Allow-Origin") == WEB for h in tus), tus
    assert "PATCH" in tus[0]["Access-Control-Allow-Methods"]
    assert "Upload-Offset" in tus[1]["Access-Control-Expose-Headers"]
    assert await native_door_cors(client) == [{}, {}]


# -- tus.md: Upload-Expires while unfinished ----------------------------------------------------
async def test_upload_expires_is_sent_while_pending_and_not_once_completed(make_client, make_settings):
    """tus.md: HEAD answers ``Upload-Expires`` (an HTTP date ``limits.upload_ttl`` ahead) while the
    upload is unfinished; once the last PATCH completed it, HEAD sends none (an upload of length 0,
    completed on creation, neither)."""
    settings = make_settings()
    client = await make_client(settings)
    data = random_bytes(10)
    path = upload_path(await tus_create(client, len(data)))
    for offset, end in ((0, 4), (4, 10)):
        head = await client.head(path, headers=TUS)
        assert head.status == 200 and head.headers["Upload-Offset"] == str(offset)
        when = parsedate_to_datetime(head.headers["Upload-Expires"]).timestamp()
        assert abs(when - (time.time() + settings.limits.upload_ttl)) < 5
        await tus_patch(client, path, offset, data[offset:end])
    head = await client.head(path, headers=TUS)
    assert head.status == 200 and head.headers["Upload-Offset"] == "10"
    assert "Upload-Expires" not in head.headers
    got = await client.get(path)
    assert got.status == 200 and await got.read() == data
    empty = upload_path(await tus_create(client, 0))
    head = await client.head(empty, headers=TUS)
    assert head.status == 200 and head.headers["Upload-Offset"] == "0" and "Upload-Expires" not in head.headers


# -- api.md: Problem types ----------------------------------------------------------------------
def test_the_problem_types_table_names_every_problem_the_server_has():
    """api.md's table of problem types: one row per error of the catalog, with its status."""
    text = (Path(__file__).parents[2] / "docs" / "api.md").read_text()
    table = text.split("## Problem types", 1)[1]
    documented = {code: int(status) for code, status in re.findall(r"^\| `([a-z-]+)` \| (\d{3}) \|", table, re.M)}
    catalog = {cls.code: cls.status for cls in vars(errors).values()
               if isinstance(cls, type) and issubclass(cls, errors.UploadError) and cls is not errors.UploadError
               and cls is not errors.BodyIdle}  # its connection is closed: no client reads it (the table's note)
    assert documented == catalog


# -- api.md: a tus upload's state ---------------------------------------------------------------
async def test_a_tus_uploads_native_state_numbers_its_segments(client):
    """api.md: for a tus upload ``chunk_size`` and ``total_chunks`` are 0, ``chunks_received``
    numbers the PATCH bodies kept, and ``total_size`` is -1 while the length is deferred."""
    path = upload_path(await tus_create(client, 10))
    await tus_patch(client, path, 0, b"01234")
    await tus_patch(client, path, 5, b"56")
    state = await (await client.get("/v1/uploads/" + path.rsplit("/", 1)[1])).json()
    assert (state["chunk_size"], state["total_chunks"], state["chunks_received"], state["received_count"],
            state["bytes_received"], state["total_size"]) == (0, 0, [1, 2], 2, 7, 10)
    deferred = upload_path(await tus_create(client, headers={"Upload-Defer-Length": "1"}))
    assert (await (await client.get("/v1/uploads/" + deferred.rsplit("/", 1)[1])).json())["total_size"] == -1


# -- api.md: the 409s, told apart by their type ---------------------------------------------------
async def test_each_409_says_which_by_its_type_and_members(client):
    """api.md: a client tells answers of one status apart by ``type``: a different body for a stored
    chunk, a complete with chunks missing, content asked of a pending upload, a chunk sent to a
    completed upload."""
    data = random_bytes(30)
    uid = (await create(client, total_size=len(data), chunk_size=10))["upload_id"]
    await put_chunk(client, uid, 1, data[:10])

    async def problem(resp) -> dict:
        assert resp.status == 409 and resp.content_type == "application/problem+json", await resp.text()
        return await resp.json()

    other = await problem(await client.put(f"/v1/uploads/{uid}/chunks/1", data=b"x" * 10))
    assert other["type"].endswith("/chunk-conflict"), other
    missing = await problem(await client.post(f"/v1/uploads/{uid}/complete"))
    assert missing["type"].endswith("/missing-chunks") and missing["missing_chunks"] == [2, 3], missing
    early = await problem(await client.get(f"/v1/uploads/{uid}/content"))
    assert early["type"].endswith("/not-completed") and early["upload_status"] == "pending", early
    for n in (2, 3):
        await put_chunk(client, uid, n, data[(n - 1) * 10:n * 10])
    assert (await client.post(f"/v1/uploads/{uid}/complete")).status == 200
    late = await problem(await client.put(f"/v1/uploads/{uid}/chunks/1", data=data[:10]))
    assert late["type"].endswith("/upload-not-pending") and late["upload_status"] == "completed", late
