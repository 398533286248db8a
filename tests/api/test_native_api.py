"""The native API, endpoint by endpoint, against a real Redis and the local sink."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest
from aiohttp import FormData

from helpers import content, create, put_chunk, random_bytes, sha256, split, upload
from vezastream.http.app import engine_key
from vezastream.testing import send_chunks


@pytest.fixture
def settings(both_layouts):
    return both_layouts


def staged_files(settings, upload_id):
    """Chunk bodies staged in files of their own (an in-place upload's one ``data`` file aside)."""
    folder = settings.storage.chunks_dir / upload_id
    return sorted(p.name for p in folder.iterdir() if p.name != "data") if folder.exists() else []


# -- create ------------------------------------------------------------------------------------

@pytest.mark.parametrize("body, status, field", [
    ({"total_size": 10}, 422, "filename"),
    ({"filename": "", "total_size": 10}, 422, "filename"),
    ({"filename": "x" * 256, "total_size": 10}, 422, "filename"),
    ({"filename": "bad\x01name", "total_size": 10}, 422, "filename"),
    ({"filename": "a", "total_size": -1}, 422, "total_size"),
    ({"filename": "a", "total_size": "10"}, 422, "total_size"),
    ({"filename": "a", "total_size": True}, 422, "total_size"),
    ({"filename": "a"}, 422, "total_size"),
    ({"filename": "a", "total_size": 10, "sha256": "nothex"}, 422, "sha256"),
    ({"filename": "a", "total_size": 10, "metadata": {"k": 1}}, 422, "metadata"),
    ({"filename": "a", "total_size": 10, "colour": "red"}, 422, "colour"),
    ({"filename": "a", "total_size": 100, "chunk_size": 10, "total_chunks": 9}, 422, None),
    ({"filename": "a", "total_size": 10, "total_chunks": 0}, 422, None),
    ({"filename": "a", "total_size": 100_001, "chunk_size": 10}, 422, None),  # 10,001 chunks
    ({"filename": "a", "total_size": 10**9, "chunk_size": 10**9}, 422, None),  # above max_chunk_size
    ({"filename": "a", "total_size": 2 * 1024**4}, 413, None),  # above max_upload_size
])
async def test_create_rejects_bad_requests(client, body, status, field):
    resp = await client.post("/v1/uploads", json=body)
    assert resp.status == status
    assert resp.content_type == "application/problem+json"
    problem = await resp.json(content_type=None)
    assert problem["status"] == status and problem["title"] and problem["detail"]
    if field:
        assert problem.get("field") == field


async def test_create_rejects_non_json(client):
    resp = await client.post("/v1/uploads", data=b"{not json", headers={"Content-Type": "application/json"})
    assert resp.status == 400
    assert (await resp.json(content_type=None))["type"].endswith("/bad-request")


async def test_create_rejects_chunk_size_below_minimum(make_client, make_settings):
    client = await make_client(make_settings(**{"limits.min_chunk_size": 1000}))
    await create(client, total_size=5000, chunk_size=999, expect=422)
    small = await create(client, total_size=10, total_chunks=1)  # one small chunk is fine
    assert small["chunk_size"] == 10


@pytest.mark.parametrize("body, chunk_size, total_chunks", [
    ({"total_size": 100, "chunk_size": 30}, 30, 4),
    ({"total_size": 100, "total_chunks": 4}, 25, 4),
    ({"total_size": 10, "total_chunks": 4}, 3, 4),
    ({"total_size": 100, "chunk_size": 25, "total_chunks": 4}, 25, 4),
    ({"total_size": 0}, 8 * 1024**2, 0),
    ({"total_size": 20 * 1024**2}, 8 * 1024**2, 3),  # neither: the configured default
])
async def test_create_plans_chunks(client, body, chunk_size, total_chunks):
    resp = await client.post("/v1/uploads", json={"filename": "f", **body})
    state = await resp.json()
    assert resp.status == 201
    assert resp.headers["Location"] == f"/v1/uploads/{state['upload_id']}"
    assert (state["chunk_size"], state["total_chunks"]) == (chunk_size, total_chunks)
    assert state["status"] == "pending" and state["chunks_received"] == [] and state["result"] is None
    assert len(state["upload_id"]) >= 22
    assert state["created_at"].endswith("Z") and state["expires_at"] > state["created_at"]


# -- chunks ------------------------------------------------------------------------------------

async def test_chunks_in_any_order_raw_and_multipart(client, settings):
    data = random_bytes(250)
    state = await create(client, total_size=250, chunk_size=100, metadata={"album": "x"})
    uid = state["upload_id"]
    a, b, c = split(data, 100)
    _, r3 = await put_chunk(client, uid, 3, c)
    assert r3 == {"chunk": 3, "size": 50, "sha256": sha256(c), "received_count": 1, "total_chunks": 3}
    form = FormData()
    form.add_field("note", "ignored")
    form.add_field("chunk", a, filename="blob", content_type="application/octet-stream")
    resp = await client.put(f"/v1/uploads/{uid}/chunks/1", data=form)
    assert resp.status == 201 and (await resp.json())["sha256"] == sha256(a)
    form = FormData()
    form.add_field("file", b, filename="blob")
    resp = await client.put(f"/v1/uploads/{uid}/chunks/2", data=form)
    assert resp.status == 201
    resp = await client.get(f"/v1/uploads/{uid}")
    st = await resp.json()
    assert st["chunks_received"] == [1, 2, 3] and st["received_count"] == 3
    assert st["bytes_received"] == 250 and st["progress"] == 100.0 and st["metadata"] == {"album": "x"}
    done = await client.post(f"/v1/uploads/{uid}/complete")
    result = await done.json()
    assert result["sha256"] == sha256(data) and result["metadata"] == {"album": "x"}
    assert (await content(client, uid)) == (200, data)


async def test_multipart_without_file_field_is_rejected(client, settings):
    state = await create(client, total_size=10, chunk_size=10)
    form = FormData()
    form.add_field("other", b"0123456789", filename="x")
    resp = await client.put(f"/v1/uploads/{state['upload_id']}/chunks/1", data=form)
    assert resp.status == 400
    assert staged_files(settings, state["upload_id"]) == []


async def test_a_chunk_number_may_have_leading_zeros(client):
    uid = (await create(client, total_size=4, chunk_size=4))["upload_id"]
    await put_chunk(client, uid, "01", b"abcd", expect=201)
    assert (await (await client.get(f"/v1/uploads/{uid}")).json())["chunks_received"] == [1]


@pytest.mark.parametrize("n, body, status", [
    ("0", b"x" * 10, 400),
    ("abc", b"x" * 10, 400),
    ("-1", b"x" * 10, 400),
    ("4", b"x" * 10, 404),
    ("9" * 25, b"x" * 10, 404),
    ("1", b"x" * 11, 413),
    ("1", b"x" * 9, 422),
    ("3", b"x" * 10, 413),  # the last chunk holds 5 bytes
    ("3", b"x" * 4, 422),
])
async def test_bad_chunks_are_rejected_and_change_nothing(client, settings, n, body, status):
    state = await create(client, total_size=25, chunk_size=10)
    uid = state["upload_id"]
    resp = await client.put(f"/v1/uploads/{uid}/chunks/{n}", data=body)
    assert resp.status == status
    assert resp.content_type == "application/problem+json"
    st = await (await client.get(f"/v1/uploads/{uid}")).json()
    assert st["chunks_received"] == [] and st["bytes_received"] == 0
    assert staged_files(settings, uid) == []
    data = random_bytes(25)  # whatever the refused body wrote, the right bytes are what is stored
    for i, piece in enumerate(split(data, 10), 1):
        await put_chunk(client, uid, i, piece, expect=201)
    assert (await (await client.post(f"/v1/uploads/{uid}/complete")).json())["sha256"] == sha256(data)
    assert await content(client, uid) == (200, data)


async def test_oversized_body_without_content_length_is_cut_off(client, settings):
    state = await create(client, total_size=100_000, chunk_size=100_000)

    async def stream():
        for _ in range(20):  # 20 x 64 KiB, chunked transfer encoding
            yield b"y" * 65536

    resp = await client.put(f"/v1/uploads/{state['upload_id']}/chunks/1", data=stream())
    assert resp.status == 413
    assert staged_files(settings, state["upload_id"]) == []


async def test_unknown_upload_answers_404(client):
    for path in ("/v1/uploads/AAAAAAAAAAAAAAAAAAAAAA", "/v1/uploads/..%2F..%2Fetc", "/v1/uploads/short"):
        resp = await client.get(path)
        assert resp.status == 404, path
    resp = await client.put("/v1/uploads/AAAAAAAAAAAAAAAAAAAAAA/chunks/1", data=b"x")
    assert resp.status == 404


def content_digest(data: bytes) -> str:
    return "sha-256=:" + base64.b64encode(hashlib.sha256(data).digest()).decode() + ":"


@pytest.mark.parametrize("headers, status", [
    (lambda d: {"Content-Digest": content_digest(d)}, 201),
    (lambda d: {"Content-Digest": "md5=:AAAA:, " + content_digest(d)}, 201),
    (lambda d: {"Content-Digest": "sha-512=:AAAA:"}, 201),  # no sha-256 entry: nothing to check
    (lambda d: {"X-Chunk-Sha256": sha256(d).upper()}, 201),
    (lambda d: {"Content-Digest": content_digest(d), "X-Chunk-Sha256": sha256(d)}, 201),
    (lambda d: {"Content-Digest": content_digest(d + b"!")}, 422),
    (lambda d: {"X-Chunk-Sha256": sha256(b"other")}, 422),
    (lambda d: {"Content-Digest": "sha-256=notbase64"}, 400),
    (lambda d: {"Content-Digest": "sha-256=:AAAA:"}, 400),
    (lambda d: {"X-Chunk-Sha256": "xyz"}, 400),
    (lambda d: {"Content-Digest": content_digest(d), "X-Chunk-Sha256": sha256(b"x")}, 400),
])
@pytest.mark.parametrize("size", [64, 5 * 1024 * 1024 + 3], ids=["small", "large"])
async def test_chunk_digests(client, settings, headers, status, size):
    """A large body is received into buffers and its digests computed in threads beside the writes."""
    data = random_bytes(size)
    state = await create(client, total_size=size, chunk_size=size)
    uid = state["upload_id"]
    code, body = await put_chunk(client, uid, 1, data, expect=None, headers=headers(data))
    assert code == status, body
    st = await (await client.get(f"/v1/uploads/{uid}")).json()
    assert st["chunks_received"] == ([1] if status == 201 else [])
    if status != 201:
        assert staged_files(settings, uid) == []
    else:  # the whole-file SHA-256 (in place: hashed beside the chunk's own, as it arrived)
        result = await (await client.post(f"/v1/uploads/{uid}/complete")).json()
        assert result["sha256"] == sha256(data)


async def test_retry_is_safe_and_different_bytes_conflict(client, settings):
    data = random_bytes(20)
    state = await create(client, total_size=20, chunk_size=10)
    uid = state["upload_id"]
    _, first = await put_chunk(client, uid, 1, data[:10], expect=201)
    _, again = await put_chunk(client, uid, 1, data[:10], expect=200)
    assert again == first
    code, problem = await put_chunk(client, uid, 1, data[10:], expect=409)
    assert problem["stored_sha256"] == sha256(data[:10])
    # the conflicting body left no file (in place, it was only hashed: nothing written)
    assert len(staged_files(settings, uid)) == (0 if settings.storage.in_place else 1)
    resp = await client.head(f"/v1/uploads/{uid}/chunks/1")
    assert resp.status == 200 and resp.headers["X-Chunk-Sha256"] == sha256(data[:10])
    assert (await client.head(f"/v1/uploads/{uid}/chunks/2")).status == 404
    await put_chunk(client, uid, 2, data[10:])
    result = await (await client.post(f"/v1/uploads/{uid}/complete")).json()
    assert result["sha256"] == sha256(data)
    code, problem = await put_chunk(client, uid, 1, data[:10], expect=409)
    assert problem["status"] == 409


# -- complete ---------------------------------------------------------------------------------------

async def test_complete_reports_missing_chunks(client):
    state = await create(client, total_size=50, chunk_size=10)
    uid = state["upload_id"]
    await put_chunk(client, uid, 2, b"b" * 10)
    await put_chunk(client, uid, 4, b"d" * 10)
    resp = await client.post(f"/v1/uploads/{uid}/complete")
    problem = await resp.json(content_type=None)
    assert resp.status == 409 and problem["missing_chunks"] == [1, 3, 5]


async def test_complete_with_wrong_declared_sha256_keeps_upload_pending(client, settings):
    data = random_bytes(30)
    state = await create(client, total_size=30, chunk_size=10, sha256=sha256(b"something else"))
    uid = state["upload_id"]
    for n, piece in enumerate(split(data, 10), 1):
        await put_chunk(client, uid, n, piece)
    resp = await client.post(f"/v1/uploads/{uid}/complete")
    problem = await resp.json(content_type=None)
    assert resp.status == 422 and problem["sha256"] == sha256(data)
    st = await (await client.get(f"/v1/uploads/{uid}")).json()
    assert st["status"] == "pending" and st["chunks_received"] == [1, 2, 3]
    assert len(staged_files(settings, uid)) == (0 if settings.storage.in_place else 3)
    files_dir = settings.storage.data_dir / "files"
    assert not files_dir.exists() or not any(p.is_file() for p in files_dir.rglob("*"))
    assert (await client.delete(f"/v1/uploads/{uid}")).status == 204


async def test_complete_is_idempotent_and_state_shows_result(client):
    data = random_bytes(1000)
    result = await upload(client, data, chunk_size=300, sha256=sha256(data))
    uid = result["upload_id"]
    again = await (await client.post(f"/v1/uploads/{uid}/complete")).json()
    assert again == result
    st = await (await client.get(f"/v1/uploads/{uid}")).json()
    assert st["status"] == "completed"
    assert st["result"] == {k: result[k] for k in ("size", "sha256", "sink", "location")}


async def test_empty_file(client):
    result = await upload(client, b"", chunk_size=10)
    assert result["size"] == 0 and result["sha256"] == sha256(b"")
    assert await content(client, result["upload_id"]) == (200, b"")


async def test_stored_path_never_comes_from_the_filename(client, settings):
    result = await upload(client, b"payload", chunk_size=7, filename="../../../../tmp/evil\\..\\x.mp3")
    stored = (settings.storage.data_dir / "files" / result["location"]).resolve()
    assert stored.is_relative_to((settings.storage.data_dir / "files").resolve())
    assert stored.parent.name == result["upload_id"]
    assert stored.read_bytes() == b"payload"


# -- content, delete ---------------------------------------------------------------------------------

async def test_content_ranges(client):
    data = random_bytes(5000)
    result = await upload(client, data, chunk_size=1000, filename="song.flac")
    uid = result["upload_id"]
    resp = await client.get(f"/v1/uploads/{uid}/content")
    assert resp.status == 200 and await resp.read() == data
    assert "song.flac" in resp.headers["Content-Disposition"]
    for rng, expected in (("bytes=0-99", data[:100]), ("bytes=4990-", data[4990:]), ("bytes=-10", data[-10:])):
        resp = await client.get(f"/v1/uploads/{uid}/content", headers={"Range": rng})
        assert resp.status == 206 and await resp.read() == expected


@pytest.mark.parametrize("given, served", [
    ({"content_type": "text/csv; charset=utf-8"}, "text/csv; charset=utf-8"),
    ({}, "application/octet-stream"),
    ({"content_type": ""}, "application/octet-stream"),  # a browser's File.type for an unknown extension
    ({"content_type": None}, "application/octet-stream"),
])
async def test_content_type_is_kept_and_served(client, given, served):
    state = await create(client, total_size=8, chunk_size=4, **given)
    assert state["content_type"] == served  # the state echoes it, from creation on
    uid = state["upload_id"]
    await send_chunks(client, uid, b"a,b\n1,2\n", 4)
    resp = await client.post(f"/v1/uploads/{uid}/complete")
    assert resp.status == 200 and (await resp.json())["content_type"] == served
    assert (await (await client.get(f"/v1/uploads/{uid}")).json())["content_type"] == served
    resp = await client.get(f"/v1/uploads/{uid}/content")
    assert resp.status == 200 and await resp.read() == b"a,b\n1,2\n"
    assert resp.headers["Content-Type"] == served


@pytest.mark.parametrize("bad", ["text", "text/plain\r\nX-Evil: 1", "a/b/c", 7, "x/" + "y" * 300])
async def test_bad_content_type_is_422(client, bad):
    problem = await create(client, total_size=3, chunk_size=3, content_type=bad, expect=422)
    assert problem["field"] == "content_type"


async def test_content_before_completion_is_409(client):
    state = await create(client, total_size=10, chunk_size=10)
    assert (await client.get(f"/v1/uploads/{state['upload_id']}/content")).status == 409


async def test_delete_removes_everything(client, settings):
    state = await create(client, total_size=20, chunk_size=10)
    uid = state["upload_id"]
    await put_chunk(client, uid, 1, b"a" * 10)
    staging = client.server.app[engine_key].staging
    assert staging.holds(uid)
    assert (await client.delete(f"/v1/uploads/{uid}")).status == 204
    assert not staging.holds(uid)
    assert (await client.get(f"/v1/uploads/{uid}")).status == 404
    assert (await client.put(f"/v1/uploads/{uid}/chunks/2", data=b"b" * 10)).status == 404
    assert (await client.delete(f"/v1/uploads/{uid}")).status == 404


async def test_delete_of_completed_upload_removes_the_stored_file(client, settings):
    result = await upload(client, b"0123456789", chunk_size=5)
    stored = settings.storage.data_dir / "files" / result["location"]
    assert stored.exists()
    assert (await client.delete(f"/v1/uploads/{result['upload_id']}")).status == 204
    assert not stored.exists()
    assert (await client.get(f"/v1/uploads/{result['upload_id']}/content")).status == 404


# -- auth, health, errors -------------------------------------------------------------------------------

async def test_bearer_tokens(make_client, make_settings, monkeypatch):
    monkeypatch.setenv("TEST_TOKENS", "tok-alice=alice,tok-bob=bob")
    client = await make_client(make_settings(**{"auth.mode": "token", "auth.tokens_env": "TEST_TOKENS"}))
    alice = {"Authorization": "Bearer tok-alice"}
    bob = {"Authorization": "Bearer tok-bob"}
    body = {"filename": "a", "total_size": 4, "chunk_size": 4}
    for refused in ({}, {"Authorization": "Bearer nope"}):
        resp = await client.post("/v1/uploads", json=body, headers=refused)
        assert resp.status == 401 and resp.headers["WWW-Authenticate"] == 'Bearer realm="vezastream"'
        assert resp.content_type == "application/problem+json" and (await resp.json())["status"] == 401
    resp = await client.post("/v1/uploads", json=body, headers=alice)
    uid = (await resp.json())["upload_id"]
    assert resp.status == 201
    for method, path in (("GET", ""), ("PUT", "/chunks/1"), ("POST", "/complete"), ("DELETE", ""),
                         ("GET", "/content")):
        resp = await client.request(method, f"/v1/uploads/{uid}{path}", headers=bob, data=b"abcd")
        assert resp.status == 404, (method, path)
    resp = await client.put(f"/v1/uploads/{uid}/chunks/1", headers=alice, data=b"abcd")
    assert resp.status == 201
    for method, path in (("GET", f"/v1/uploads/{uid}"), ("HEAD", f"/v1/uploads/{uid}/chunks/1"),
                         ("POST", f"/v1/uploads/{uid}/complete"), ("GET", f"/v1/uploads/{uid}/content"),
                         ("DELETE", f"/v1/uploads/{uid}")):
        assert (await client.request(method, path)).status == 401, (method, path)
    # docs/configuration.md: what needs no token
    for path in ("/v1/health", "/v1/health/deep", "/v1/openapi.json", "/", "/metrics"):
        assert (await client.get(path)).status == 200, path
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "PUT"}
    assert (await client.options(f"/v1/uploads/{uid}/chunks/1", headers=preflight)).status == 204


async def test_health(client, make_client, make_settings, tmp_path):
    assert await (await client.get("/v1/health")).json() == {"status": "ok"}
    deep = await client.get("/v1/health/deep")
    assert deep.status == 200
    body = await deep.json()
    assert body["checks"]["redis"]["ok"] and body["checks"]["sink:local"]["ok"]
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    broken = await make_client(make_settings(**{"sinks.local.directory": str(blocker / "files")}))
    deep = await broken.get("/v1/health/deep")
    body = await deep.json()
    assert deep.status == 503 and body["checks"]["redis"]["ok"] and not body["checks"]["sink:local"]["ok"]


async def test_unknown_routes_and_methods_are_problem_json(client):
    resp = await client.get("/nope")
    assert resp.status == 404 and resp.content_type == "application/problem+json"
    resp = await client.patch("/v1/uploads")
    assert resp.status == 405 and resp.content_type == "application/problem+json"
    assert "POST" in resp.headers["Allow"]
    resp = await client.post("/v1/uploads", data=json.dumps({"filename": "x" * 100_000, "total_size": 1}),
                             headers={"Content-Type": "application/json"})
    assert resp.status == 413 and resp.content_type == "application/problem+json"
