"""CORS as docs/configuration.md ("CORS") promises it, beyond tests/api/test_ui.py's basics: a
preflight answer is cached by the browser for a day (both doors), a page may send ``Range``, and it
may read what the resume and download answers carry (``X-Chunk-Sha256``, ``X-Chunk-Size``,
``Content-Range``), which a browser hides from the page unless the answer names them in
``Access-Control-Expose-Headers``."""

from __future__ import annotations

import pytest

from helpers import create, put_chunk
from tus_helpers import TUS

WEB = "https://app.example.com"
DAY = 24 * 3600


def listed(value: str) -> set[str]:
    return {h.strip().lower() for h in value.split(",")}


@pytest.fixture
async def cors_client(make_client, make_settings):
    return await make_client(make_settings(**{"native.cors_origins": [WEB], "tus.cors_origins": [WEB]}))


@pytest.mark.parametrize("path, method", [("/v1/uploads", "POST"), ("/v1/uploads/x/chunks/1", "PUT"),
                                          ("/v1/uploads/x/content", "GET"), ("/files/", "POST"),
                                          ("/files/x", "PATCH")])
async def test_a_preflight_answer_is_cached_for_a_day_on_both_doors(cors_client, path, method):
    resp = await cors_client.options(path, headers={"Origin": WEB, "Access-Control-Request-Method": method})
    assert resp.status == 204 and resp.headers["Access-Control-Allow-Origin"] == WEB
    assert resp.headers["Access-Control-Max-Age"] == str(DAY)
    assert "Access-Control-Allow-Credentials" not in resp.headers  # docs/configuration.md: no credentials mode
    assert method in resp.headers["Access-Control-Allow-Methods"]


async def test_a_preflight_lets_a_page_send_the_documented_request_headers(cors_client):
    resp = await cors_client.options("/v1/uploads/x/content", headers={
        "Origin": WEB, "Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "range"})
    assert resp.status == 204
    assert {"authorization", "content-type", "content-digest", "x-chunk-sha256", "range"} <= listed(
        resp.headers["Access-Control-Allow-Headers"])
    # Only a preflight says how long it may be cached; a plain answer says what a page may read.
    resp = await cors_client.get("/v1/uploads/x", headers={"Origin": WEB})
    assert "Access-Control-Max-Age" not in resp.headers and "Access-Control-Expose-Headers" in resp.headers


async def test_a_page_may_read_a_chunks_digest_and_size_and_a_ranges_content_range(cors_client):
    uid = (await create(cors_client, total_size=8, chunk_size=4))["upload_id"]
    await put_chunk(cors_client, uid, 1, b"abcd")
    await put_chunk(cors_client, uid, 2, b"efgh")
    # Resuming: which chunks are there, and what they hold.
    resp = await cors_client.head(f"/v1/uploads/{uid}/chunks/1", headers={"Origin": WEB})
    assert resp.status == 200 and resp.headers["X-Chunk-Size"] == "4"
    exposed = listed(resp.headers["Access-Control-Expose-Headers"])
    assert {"x-chunk-size", "x-chunk-sha256"} <= exposed
    # Downloading a range.
    assert (await cors_client.post(f"/v1/uploads/{uid}/complete")).status == 200
    resp = await cors_client.get(f"/v1/uploads/{uid}/content", headers={"Origin": WEB, "Range": "bytes=2-5"})
    assert resp.status == 206 and await resp.read() == b"cdef"
    assert resp.headers["Content-Range"] == "bytes 2-5/8"
    exposed = listed(resp.headers["Access-Control-Expose-Headers"])
    assert {"content-range", "location", "retry-after", "x-chunk-sha256", "x-chunk-size"} <= exposed


async def test_the_tus_door_lets_a_page_read_the_offset_and_send_the_upload_headers(cors_client):
    resp = await cors_client.options("/files/", headers={
        "Origin": WEB, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "tus-resumable, upload-length, upload-metadata"})
    assert {"tus-resumable", "upload-length", "upload-metadata", "upload-offset", "authorization",
            "x-http-method-override"} <= listed(resp.headers["Access-Control-Allow-Headers"])
    resp = await cors_client.post("/files/", headers={**TUS, "Upload-Length": "3", "Origin": WEB})
    assert resp.status == 201
    assert {"location", "upload-offset", "upload-length", "retry-after"} <= listed(
        resp.headers["Access-Control-Expose-Headers"])


async def test_a_page_may_read_a_ranged_tus_get_as_it_may_the_native_content(cors_client):
    """tus.md: ``GET /files/{id}`` is the same as the native content, ``Range`` included, so a page on
    another origin may send ``Range`` (a suffix range needs a preflight) and read the range it got."""
    resp = await cors_client.post("/files/", headers={**TUS, "Upload-Length": "8", "Origin": WEB})
    path = resp.headers["Location"]
    resp = await cors_client.patch(path, data=b"abcdefgh", headers={
        **TUS, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"})
    assert resp.status == 204
    resp = await cors_client.options(path, headers={"Origin": WEB, "Access-Control-Request-Method": "GET",
                                                    "Access-Control-Request-Headers": "range, authorization"})
    assert resp.status == 204 and "range" in listed(resp.headers["Access-Control-Allow-Headers"])
    resp = await cors_client.get(path, headers={"Origin": WEB, "Range": "bytes=-3"})
    assert resp.status == 206 and await resp.read() == b"fgh"
    assert {"content-range", "content-disposition", "accept-ranges"} <= listed(
        resp.headers["Access-Control-Expose-Headers"])


@pytest.mark.parametrize("path", ["/v1/nothing-here", "/v1/uploads/x/chunks", "/files/x/y"])
async def test_a_preflight_to_an_unknown_path_answers_404_with_the_cors_headers(cors_client, path):
    """No route: 404, with the CORS headers, under /v1/ and under tus.prefix alike."""
    resp = await cors_client.options(path, headers={"Origin": WEB, "Access-Control-Request-Method": "PUT"})
    assert resp.status == 404 and resp.headers.get("Access-Control-Allow-Origin") == WEB, dict(resp.headers)
    assert resp.content_type == "application/problem+json"
