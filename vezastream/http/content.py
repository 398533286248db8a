"""Serving a stored object over HTTP, for every door: a local file, a redirect, or a proxied stream."""

from __future__ import annotations

import re

from aiohttp import web

from .. import errors
from ..models import DEFAULT_CONTENT_TYPE
from ..naming import content_disposition
from ..sinks import Content


#: Sent with every stored object: its bytes and its ``content_type`` are the uploader's, so a browser
#: must not run them as a page of this origin, were the ``attachment`` disposition lost on the way
#: (a proxy that drops it). (``nosniff`` comes with every answer: app.EVERY_ANSWER.)
UNTRUSTED = {"Content-Security-Policy": "sandbox; default-src 'none'"}

#: A suffix range of no bytes: ``bytes=-0`` (any number of zeros, spaces around).
_EMPTY_SUFFIX = re.compile(r"\s*bytes\s*=\s*-\s*0+\s*")


def _byte_range(request: web.Request, size: int) -> tuple[int, int] | None:
    """(start, end_exclusive) from the Range header, None for the whole body."""
    if "Range" not in request.headers:
        return None
    try:
        rng = request.http_range
    except ValueError:
        raise errors.RangeNotSatisfiable("malformed Range header") from None
    start, stop = rng.start, rng.stop
    if start == 0 and stop is None and _EMPTY_SUFFIX.fullmatch(request.headers["Range"]):
        # "bytes=-0": the last 0 bytes, which aiohttp reads as "from 0 on" (RFC 9110: unsatisfiable)
        raise errors.RangeNotSatisfiable("a range of no bytes", size=size)
    if start is None and stop is None:
        return None
    if start is not None and start < 0:  # suffix: the last -start bytes
        start, stop = max(0, size + start), size
    start = start or 0
    stop = size if stop is None else min(stop, size)
    if start >= size or start >= stop:
        raise errors.RangeNotSatisfiable(f"range outside 0..{size}", size=size)
    return start, stop


async def serve_content(request: web.Request, content: Content, filename: str,
                        content_type: str = DEFAULT_CONTENT_TYPE) -> web.StreamResponse:
    """Answer with a stored object (of the upload's ``content_type``): a local file, a redirect, or a proxied stream."""
    headers = {"Content-Disposition": content_disposition(filename), "Content-Type": content_type, **UNTRUSTED}
    if content.url is not None:
        raise web.HTTPTemporaryRedirect(content.url, headers=headers)
    rng = _byte_range(request, content.size)  # a bad Range is a problem+json 416, for a file too
    if content.path is not None:
        return web.FileResponse(content.path, headers=headers)
    assert content.reader is not None
    start, stop = rng or (0, content.size)
    resp = web.StreamResponse(status=206 if rng else 200, headers={
        **headers, "Accept-Ranges": "bytes"})
    resp.content_length = stop - start
    if rng:
        resp.headers["Content-Range"] = f"bytes {start}-{stop - 1}/{content.size}"
    blocks = aiter(content.reader(start, stop))
    first = await anext(blocks, b"")  # a sink failing to open the object still gets a problem+json answer
    await resp.prepare(request)
    if first:
        await resp.write(first)
    async for data in blocks:
        await resp.write(data)
    await resp.write_eof()
    return resp
