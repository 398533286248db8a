"""``server.max_json_body``: the largest JSON request body (config.toml), refused past it as 413 problem+json."""

from __future__ import annotations

import json

import pytest


def create_body(size: int) -> bytes:
    """A create request of about ``size`` bytes (the filler in one metadata value)."""
    body = {"filename": "j.bin", "total_size": 10, "metadata": {"note": ""}}
    body["metadata"]["note"] = "x" * (size - len(json.dumps(body)))
    return json.dumps(body).encode()


# Under a larger limit the same body is read, then refused for what it says (a metadata value that long).
@pytest.mark.parametrize("limit, status", [("64KiB", 413), ("128KiB", 422)])
async def test_a_json_body_past_max_json_body_is_refused_with_413(make_settings, make_client, limit,
                                                                 status):
    client = await make_client(make_settings(**{"server.max_json_body": limit}))
    resp = await client.post("/v1/uploads", data=create_body(80 * 1024), headers={"Content-Type": "application/json"})
    assert resp.status == status, await resp.text()
    if status == 413:
        assert resp.content_type == "application/problem+json"
        assert (await resp.json())["type"].endswith("/too-large")
    resp = await client.post("/v1/uploads", data=create_body(1024), headers={"Content-Type": "application/json"})
    assert resp.status == 201  # a body within the limit is taken either way
