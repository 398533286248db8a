"""Request headers a door reads: one that may come once, or a list that may come on several lines.

aiohttp's ``headers.get`` answers a header's first line and ignores the others. For a header
that carries one value (``Upload-Offset``), which of two lines a proxy or a log acted on is a
guess: two lines are refused. A list header (``Upload-Metadata``, ``Content-Digest``) may be
split over lines (RFC 9110, 5.3): its lines are one list.
"""

from __future__ import annotations

from aiohttp import web

from .. import errors


def single(request: web.BaseRequest, name: str) -> str | None:
    """The value of a header that may come once; None without it; sent twice, a 400."""
    values = request.headers.getall(name, ())
    if len(values) > 1:
        raise errors.BadRequest(f"{name} was sent {len(values)} times; send it once")
    return values[0] if values else None


def joined(request: web.BaseRequest, name: str) -> str | None:
    """A list header's lines as one comma-separated value; None without it."""
    values = request.headers.getall(name, ())
    return ",".join(values) if values else None
