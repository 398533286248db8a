"""Client-side helpers for the tus tests (what a tus client sends)."""

from __future__ import annotations

import base64
from typing import Any

TUS = {"Tus-Resumable": "1.0.0"}
STREAM = {"Content-Type": "application/offset+octet-stream"}


def b64(value: str) -> str:
    return base64.b64encode(value.encode()).decode()


async def tus_create(client, length: int | None = None, expect: int = 201, headers: dict[str, str] | None = None,
                     data: bytes | None = None, filename: str | None = "file.bin") -> Any:
    h = dict(TUS)
    if length is not None:
        h["Upload-Length"] = str(length)
    if filename is not None:
        h["Upload-Metadata"] = f"filename {b64(filename)}"
    if data is not None:
        h.update(STREAM)
    h.update(headers or {})
    resp = await client.post("/files/", headers=h, data=data)
    assert resp.status == expect, (resp.status, await resp.text())
    return resp


def upload_path(resp) -> str:
    """The path of an upload's URL from a creation answer."""
    from urllib.parse import urlsplit
    return urlsplit(resp.headers["Location"]).path


async def tus_patch(client, path: str, offset: int, data: bytes, expect: int | None = 204,
                    headers: dict[str, str] | None = None) -> Any:
    h = {**TUS, **STREAM, "Upload-Offset": str(offset), **(headers or {})}
    resp = await client.patch(path, headers=h, data=data)
    if expect is not None:
        assert resp.status == expect, (resp.status, await resp.text())
    return resp
