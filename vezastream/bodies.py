"""Request bodies as the engine sees them.

A body is an async iterable of ``bytes`` pieces; that is all a sink's
``put_direct`` or a digest-only pass needs. A body may also *fill* the
caller's buffer (``fills`` is true and ``await body.readinto(view)``
returns how many bytes it wrote into ``view``, fewer only at the body's end):
the staging area then receives it straight into its aligned write buffers,
with no copy in Python (see :mod:`vezastream.protocols.body`).
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Callable
from typing import Any


def fills(body: AsyncIterable[bytes]) -> bool:
    """Whether ``body`` can be read into the caller's buffers (``readinto``)."""
    return bool(getattr(body, "fills", False))


class Watched:
    """``body`` with ``watch(piece)`` called on every piece before it is passed on.

    ``watch`` may raise to stop the body (the append door's lost lease). Filling
    stays possible when ``body`` fills; hashing belongs in the staging area's
    worker threads (its ``hasher``), not here on the event loop.
    """

    def __init__(self, body: AsyncIterable[bytes], watch: Callable[[Any], object]) -> None:
        self.body = body
        self.watch = watch
        self.fills = fills(body)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for piece in self.body:
            self.watch(piece)
            yield piece

    async def readinto(self, view: memoryview) -> int:
        n: int = await self.body.readinto(view)  # type: ignore[attr-defined]
        if n:
            self.watch(view[:n])
        return n
