"""Request bodies as the engine sees them.

A body is an async iterable of ``bytes`` pieces; that is all a sink's
``put_direct`` or a digest-only pass needs. A body may also *fill* the
caller's buffer (``fills`` is true and ``await body.readinto(view)``
returns how many bytes it wrote into ``view``, fewer only at the body's end):
the staging area then receives it straight into its aligned write buffers,
with no copy in Python (see :mod:`vezastream.http.body`).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterable, AsyncIterator, Callable
from typing import Any


def fills(body: AsyncIterable[bytes]) -> bool:
    """Whether ``body`` can be read into the caller's buffers (``readinto``)."""
    return bool(getattr(body, "fills", False))


def held_back(body: Any) -> bool:
    """Whether ``body``'s client sends nothing until the body is first read (HTTP's ``Expect:
    100-continue``): reading it early gains nothing then, and a refusal found before reading it
    keeps the client from sending it at all."""
    return bool(getattr(body, "held_back", False))


def known_left(body: Any) -> int | None:
    """Bytes of a body that fills still to be read, when it knows (its ``Content-Length``); else None."""
    left = getattr(body, "left", None)
    return left() if left is not None else None


class Watched:
    """``body`` with ``watch(piece)`` called on every piece before it is passed on.

    ``watch`` may raise to stop the body (the append door's lost lease). Filling
    stays possible when ``body`` fills; hashing belongs in the staging area's
    worker threads (its ``hasher``), not here on the event loop.

    It also tells whether the body still flows (:meth:`quiet_for`), for the
    leases that live only while bytes arrive.
    """

    def __init__(self, body: AsyncIterable[bytes], watch: Callable[[Any], object] | None = None) -> None:
        self.body = body
        self.watch = watch
        self.fills = fills(body)
        self.held_back = held_back(body)
        self.ended = False  # read to its end (or to where it broke off)
        self._moved_at = time.monotonic()  # when a piece last came through (or the body was wrapped)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for piece in self.body:
            self._moved(piece)
            yield piece
        self.ended = True

    async def readinto(self, view: memoryview) -> int:
        n: int = await self.body.readinto(view)  # type: ignore[attr-defined]
        if n:
            self._moved(view[:n])
        if n < len(view):
            self.ended = True
        return n

    def left(self) -> int | None:
        n = known_left(self.body)
        if n == 0:
            self.ended = True
        return n

    def _moved(self, piece: Any) -> None:
        self._moved_at = time.monotonic()
        if self.watch is not None:
            self.watch(piece)

    def quiet_for(self) -> float:
        """Seconds the body has brought no byte while it was awaited (0 once it ended).

        From the body itself when it can tell (a request body, which sees each read
        from the socket); else the time since the last piece came through here.
        """
        if self.ended:
            return 0.0
        own = getattr(self.body, "quiet_for", None)
        return own() if own is not None else time.monotonic() - self._moved_at
