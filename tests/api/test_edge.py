"""The upload routes (tus PATCH, the native chunk PUT) at their edges: what a client sees off them
(404, 405 with Allow, as problem+json), and the headers every answer of theirs carries."""

from __future__ import annotations

import pytest

from helpers import content, create, put_chunk, random_bytes, sha256
from tus_helpers import STREAM, TUS, tus_create, tus_patch, upload_path

ORIGIN = "https://app.example"


@pytest.fixture
async def client(make_client, make_settings):
    return await make_client(make_settings(**{"limits.min_chunk_size": 1, "tus.cors_origins": [ORIGIN],
                                              "native.cors_origins": [ORIGIN]}))


@pytest.mark.parametrize("method, path, status, allow", [
    ("PATCH", "/files/", 405, "OPTIONS,POST"),  # the collection takes no PATCH
    ("PATCH", "/files/a/b", 404, None),  # not an upload's URL
    ("PUT", "/v1/uploads/x/chunks/1/more", 404, None),
    ("PUT", "/v1/uploads/x", 405, "DELETE,GET,HEAD,OPTIONS"),
    ("PUT", "/files/x", 405, "DELETE,GET,HEAD,OPTIONS,PATCH,POST"),
])
async def test_upload_methods_off_their_routes_answer_as_routed(client, method, path, status, allow):
    resp = await client.request(method, path, data=b"x", headers={**TUS, **STREAM, "X-Request-ID": "edge-1"})
    problem = await resp.json(content_type=None)
    assert resp.status == status and resp.content_type == "application/problem+json"
    assert problem["status"] == status and problem["request_id"] == "edge-1" and problem["instance"] == path
    assert resp.headers["X-Request-ID"] == "edge-1"
    if allow is not None:
        assert ",".join(sorted(m.strip() for m in resp.headers["Allow"].split(","))) == allow


async def test_upload_routes_carry_the_edge_headers(client):
    data = random_bytes(3000)
    path = upload_path(await tus_create(client, len(data)))
    resp = await tus_patch(client, path, 0, data[:1000], headers={"Origin": ORIGIN, "X-Request-ID": "p-1"})
    assert resp.headers["X-Request-ID"] == "p-1" and resp.headers["Tus-Resumable"] == "1.0.0"
    assert resp.headers["Access-Control-Allow-Origin"] == ORIGIN and "Upload-Offset" in resp.headers[
        "Access-Control-Expose-Headers"]
    refused = await tus_patch(client, path, 0, data[:10], expect=409, headers={"X-Request-ID": "p-2"})
    assert (await refused.json(content_type=None))["request_id"] == "p-2"
    assert refused.headers["Tus-Resumable"] == "1.0.0"

    state = await create(client, total_size=len(data), chunk_size=1000)
    uid = state["upload_id"]
    resp = await client.put(f"/v1/uploads/{uid}/chunks/1", data=data[:1000],
                            headers={"Origin": ORIGIN, "X-Request-ID": "c-1"})
    assert resp.status == 201 and resp.headers["X-Request-ID"] == "c-1"
    assert resp.headers["Access-Control-Allow-Origin"] == ORIGIN
    status, problem = await put_chunk(client, uid, 9, data[:1000], expect=None)
    assert status == 404 and problem["instance"] == f"/v1/uploads/{uid}/chunks/9"


async def test_every_answer_names_the_product_and_no_versions(client):
    """``Server: vezastream``: not aiohttp's "Python/3.x aiohttp/3.y", which tells a prober which
    published advisories to try (the parser's own answers: test_bad_input.py); and ``nosniff``, so
    that a browser never takes an answer for another type than it says (a security scan flags each
    answer without it)."""
    data = random_bytes(2000)
    path = upload_path(await tus_create(client, len(data)))
    state = await create(client, total_size=len(data), chunk_size=1000)
    uid = state["upload_id"]
    answers = [
        await client.get("/v1/health"), await client.get("/v1/openapi.json"),
        await client.options("/files/", headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"}),
        await tus_patch(client, path, 0, data), await client.head(path, headers=TUS),
        await client.put(f"/v1/uploads/{uid}/chunks/1", data=data[:1000]),
        await client.get(f"/v1/uploads/{uid}"),
        await client.get("/nowhere"), await client.put(f"/v1/uploads/{uid}", data=b"x"),  # 404, 405
        await client.put(f"/v1/uploads/{uid}/chunks/9", data=data[:1000]),  # a problem the engine raised
    ]
    assert [a.status for a in answers] == [200, 200, 204, 204, 200, 201, 200, 404, 405, 404]
    assert [a.headers.getall("Server") for a in answers] == [["vezastream"]] * len(answers)
    assert [a.headers.getall("X-Content-Type-Options") for a in answers] == [["nosniff"]] * len(answers)


async def test_expect_continue_goes_through_the_router_and_stores_the_bytes(client):
    """aiohttp answers ``Expect: 100-continue`` before the handler; such a request takes the routed way."""
    data = random_bytes(2000)
    path = upload_path(await tus_create(client, len(data)))
    resp = await client.patch(path, data=data[:1000], expect100=True,
                              headers={**TUS, **STREAM, "Upload-Offset": "0"})
    assert resp.status == 204 and resp.headers["Upload-Offset"] == "1000"
    await tus_patch(client, path, 1000, data[1000:])
    state = await create(client, total_size=len(data), chunk_size=1000)
    uid = state["upload_id"]
    for n in (1, 2):
        resp = await client.put(f"/v1/uploads/{uid}/chunks/{n}", data=data[(n - 1) * 1000:n * 1000],
                                expect100=True)
        assert resp.status == 201
    done = await client.post(f"/v1/uploads/{uid}/complete")
    assert (await done.json())["sha256"] == sha256(data)
    assert await content(client, uid) == (200, data)
