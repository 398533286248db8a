"""Client-side helpers the tests share (what a real client would do)."""

from __future__ import annotations

import asyncio
import hashlib
import os
from typing import Any


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def random_bytes(n: int) -> bytes:
    return os.urandom(n)


def split(data: bytes, chunk_size: int) -> list[bytes]:
    return [data[i:i + chunk_size] for i in range(0, len(data), chunk_size)] or []


async def create(client, filename: str = "file.bin", expect: int = 201, **body: Any) -> dict[str, Any]:
    resp = await client.post("/v1/uploads", json={"filename": filename, **body})
    payload = await resp.json(content_type=None)
    assert resp.status == expect, payload
    return payload


async def put_chunk(client, upload_id: str, n: int, data: bytes, expect: int | None = 201,
                    headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    resp = await client.put(f"/v1/uploads/{upload_id}/chunks/{n}", data=data, headers=headers or {})
    payload = await resp.json(content_type=None)
    if expect is not None:
        assert resp.status == expect, payload
    return resp.status, payload


async def upload(client, data: bytes, chunk_size: int, concurrency: int = 4, **body: Any) -> dict[str, Any]:
    """Create, send every chunk (``concurrency`` at once, any order), complete."""
    state = await create(client, total_size=len(data), chunk_size=chunk_size, **body)
    sem = asyncio.Semaphore(concurrency)

    async def send(n: int, piece: bytes) -> None:
        async with sem:
            await put_chunk(client, state["upload_id"], n, piece)

    await asyncio.gather(*(send(n, p) for n, p in enumerate(split(data, chunk_size), 1)))
    resp = await client.post(f"/v1/uploads/{state['upload_id']}/complete")
    result = await resp.json(content_type=None)
    assert resp.status == 200, result
    return result


async def content(client, upload_id: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    resp = await client.get(f"/v1/uploads/{upload_id}/content", headers=headers or {}, allow_redirects=True)
    return resp.status, await resp.read()
