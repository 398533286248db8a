"""Request bodies as the engine takes them: the pieces aiohttp received, as they are."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web


async def received_pieces(request: web.Request) -> AsyncIterator[bytes]:
    """The body in the pieces aiohttp buffered from the socket (up to a socket read each).

    Unlike ``iter_chunked(n)``, which joins buffered pieces into ``n``-byte
    blocks (a copy of every byte on the event loop), this hands each piece on
    untouched; the staging area gathers them into one ``writev``.
    """
    async for piece, _ in request.content.iter_chunks():
        if piece:
            yield piece
