"""Request ids: ``X-Request-ID`` honoured when sane, generated otherwise, on every answer and log line."""

from __future__ import annotations

import logging
import re
import signal

import aiohttp
import pytest

from helpers import create, put_chunk
from servers import Server, server_env
from vezastream.logs import RequestIdFilter

GENERATED = re.compile(r"[0-9a-f]{32}")


@pytest.fixture
async def client(make_client, make_settings):
    return await make_client(make_settings(**{"limits.min_chunk_size": 1}))


async def test_generated_when_absent_and_new_per_request(client):
    first = await client.get("/v1/health")
    second = await client.get("/v1/health")
    assert GENERATED.fullmatch(first.headers["X-Request-ID"])
    assert first.headers["X-Request-ID"] != second.headers["X-Request-ID"]


@pytest.mark.parametrize("sent", ["abc", "0f3c-4e21:retry/2", "x" * 128])
async def test_sane_id_is_honoured(client, sent):
    resp = await client.get("/v1/health", headers={"X-Request-ID": sent})
    assert resp.headers["X-Request-ID"] == sent


@pytest.mark.parametrize("sent", ["x" * 129, "bad\tid", "with space", "", "caf\u00e9"],
                         ids=["too-long", "control", "space", "empty", "non-ascii"])
async def test_insane_id_is_replaced(client, sent):
    resp = await client.get("/v1/health", headers={"X-Request-ID": sent.encode().decode("latin-1")})
    assert GENERATED.fullmatch(resp.headers["X-Request-ID"])


@pytest.mark.parametrize("method, path, body, status", [
    ("GET", "/v1/uploads/nosuch", None, 404),
    ("POST", "/v1/uploads", {"filename": "a"}, 422),
    ("GET", "/v1/nowhere", None, 404),  # aiohttp's own 404, rendered by the middleware
    ("POST", "/v1/health", None, 405),
    ("HEAD", "/files/nosuch", None, 404),  # the tus door too
])
async def test_problems_carry_the_id_in_header_and_body(client, method, path, body, status):
    resp = await client.request(method, path, json=body, headers={"X-Request-ID": "req-42",
                                                                   "Tus-Resumable": "1.0.0"})
    assert resp.status == status
    assert resp.headers["X-Request-ID"] == "req-42"
    if method != "HEAD":
        problem = await resp.json(content_type=None)
        assert problem["request_id"] == "req-42"
        assert problem["instance"] == path


async def test_streamed_content_and_cors_expose_it(make_client, make_settings):
    client = await make_client(make_settings(**{"limits.min_chunk_size": 1, "native.cors_origins": ["https://a.example"]}))
    state = await create(client, total_size=4, chunk_size=4)
    await put_chunk(client, state["upload_id"], 1, b"abcd")
    assert (await client.post(f"/v1/uploads/{state['upload_id']}/complete")).status == 200
    resp = await client.get(f"/v1/uploads/{state['upload_id']}/content",
                            headers={"X-Request-ID": "dl-1", "Origin": "https://a.example"})
    assert await resp.read() == b"abcd"
    assert resp.headers["X-Request-ID"] == "dl-1"
    assert "X-Request-ID" in resp.headers["Access-Control-Expose-Headers"]


async def test_engine_log_lines_carry_the_id(client, caplog):
    caplog.handler.addFilter(RequestIdFilter())  # as setup_logging adds it to the server's handler
    caplog.set_level(logging.INFO)
    state = await create(client, total_size=4, chunk_size=4)
    await put_chunk(client, state["upload_id"], 1, b"abcd")
    resp = await client.post(f"/v1/uploads/{state['upload_id']}/complete", headers={"X-Request-ID": "done-7"})
    assert resp.status == 200
    completed = [r for r in caplog.records if r.getMessage() == "upload completed"]
    assert completed and all(getattr(r, "request_id", None) == "done-7" for r in completed)
    access = [r for r in caplog.records if r.getMessage() == "request" and r.path.endswith("/complete")]
    assert [r.request_id for r in access] == ["done-7"]


@pytest.mark.slow
async def test_served_log_lines_carry_the_id(tmp_path, redis_url):
    """A real `vezastream serve` (its own log setup): the engine's line and the access line name the id."""
    server = Server(server_env(tmp_path, redis_url), tmp_path)
    try:
        await server.wait_ready()
        async with aiohttp.ClientSession(server.url) as s:
            async with s.post("/v1/uploads", json={"filename": "a", "total_size": 4, "chunk_size": 4}) as r:
                upload_id = (await r.json())["upload_id"]
            async with s.put(f"/v1/uploads/{upload_id}/chunks/1", data=b"abcd") as r:
                assert r.status == 201
            async with s.post(f"/v1/uploads/{upload_id}/complete", headers={"X-Request-ID": "served-9"}) as r:
                assert r.status == 200 and r.headers["X-Request-ID"] == "served-9"
    finally:
        server.kill(signal.SIGTERM)
    lines = (tmp_path / "server.log").read_text().splitlines()
    completed = [line for line in lines if "upload completed" in line]
    assert completed and all("request_id=served-9" in line for line in completed), lines
    assert any("request" in line and "/complete" in line and "request_id=served-9" in line for line in lines)
