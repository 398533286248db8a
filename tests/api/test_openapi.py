"""The OpenAPI document at /v1/openapi.json: in sync with the routes, and schemathesis finds no fault."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from servers import Server, server_env


@pytest.fixture
async def client(make_client, make_settings):
    return await make_client(make_settings())


async def test_document_and_routes_agree(client):
    resp = await client.get("/v1/openapi.json")
    assert resp.status == 200 and resp.content_type == "application/json"
    doc = await resp.json()
    assert doc["openapi"].startswith("3.1")
    documented = {(method.upper(), path) for path, ops in doc["paths"].items() for method in ops}
    served = {(route.method, route.resource.canonical) for route in client.server.app.router.routes()
              if route.resource is not None and route.resource.canonical.startswith("/v1/")
              and route.method != "OPTIONS"}
    served -= {("HEAD", path) for method, path in served if method == "GET"}  # aiohttp adds HEAD to each GET
    assert documented == served
    # Every problem status refers to the one problem+json answer, which exists.
    for path, ops in doc["paths"].items():
        for op in ops.values():
            for status, answer in op["responses"].items():
                if int(status) >= 400 and not (path == "/v1/health/deep" and status == "503"):
                    name = answer["$ref"].rsplit("/", 1)[1]
                    assert doc["components"]["responses"][name]["content"]["application/problem+json"]


async def test_each_status_a_content_coding_gets_is_documented(client):
    """A ``Content-Encoding`` the server does not decode is a 415 on every route (api.md), before the
    handler runs: so each operation's document lists 415, or schemathesis-like clients see an answer
    outside it."""
    doc = await (await client.get("/v1/openapi.json")).json()
    uid = (await (await client.post("/v1/uploads", json={"filename": "a", "total_size": 4})).json())["upload_id"]
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            url = path.replace("{upload_id}", uid).replace("{n}", "1")
            resp = await client.request(method.upper(), url, data=b"abcd", headers={"Content-Encoding": "compress"})
            assert (resp.status, "415" in op["responses"]) == (415, True), (method, path, resp.status)


async def test_document_is_valid_openapi(client):
    schemathesis = pytest.importorskip("schemathesis")
    doc = await (await client.get("/v1/openapi.json")).json()
    schema = schemathesis.openapi.from_dict(doc)
    assert len(list(schema.get_all_operations())) == sum(len(ops) for ops in doc["paths"].values())


@pytest.mark.slow
def test_schemathesis_finds_no_server_error_nor_schema_break(tmp_path, redis_url):
    """schemathesis (bounded examples, deterministic) against a real `vezastream serve`."""
    st = shutil.which("st", path=str(Path(sys.executable).parent)) or shutil.which("st")
    if st is None:
        pytest.skip("schemathesis is not installed (the test extra)")
    server = Server(server_env(tmp_path, redis_url), tmp_path)
    try:
        asyncio.run(server.wait_ready())
        done = subprocess.run(
            [st, "run", server.url + "/v1/openapi.json", "--checks",
             "not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance,"
             "response_headers_conformance", "--max-examples", "20", "--generation-deterministic",
             "--workers", "1", "--request-timeout", "10", "--no-color"],
            cwd=tmp_path, capture_output=True, text=True, timeout=120,
            env={**os.environ, "SCHEMATHESIS_HOOKS": ""})
        assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
        assert "Traceback" not in (tmp_path / "server.log").read_text(errors="replace")
    finally:
        try:
            server.kill(signal.SIGTERM)
        except subprocess.TimeoutExpired:
            server.kill(signal.SIGKILL)
