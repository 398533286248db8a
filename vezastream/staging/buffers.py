"""The staging area's memory: how large its buffers are, how many it keeps, and a body still held in them.

The pool itself lives in :class:`~vezastream.staging.writer.ChunkStaging`
(it hands buffers to the bodies it receives); these are its sizes, and
:class:`HeldBody`, the bytes of a received body kept in their buffers for
the in-place layout's running digest.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

#: Most bytes gathered from the socket before one write (and one hash update).
WRITE_BUFFER = 4 * 1024 * 1024
#: Least bytes gathered: the buffer shrinks towards this when many bodies arrive at once.
MIN_WRITE_BUFFER = 16 * 1024
#: What all buffers of one process may hold together, roughly.
BUFFER_BUDGET = 64 * 1024 * 1024
#: Bodies received straight into buffers (two of WRITE_BUFFER each) at once; more are iterated.
FILLING_MAX = BUFFER_BUDGET // WRITE_BUFFER
#: Idle buffers kept for the next such bodies (fresh pages cost a fault each; more are let go).
KEPT_BUFFERS = FILLING_MAX // 2
#: How long no body fills a buffer before those beyond KEPT_BUFFERS are let go (s): concurrent
#: uploads often end their requests together, and would otherwise fault fresh buffers in each round.
#: Once no body at all has arrived for that long, the memory freed meanwhile goes back to the system.
TRIM_AFTER = 2.0
#: Block size when reading staged chunks back (here, and ChunkSource.iter_bytes in sinks.py).
READ_BLOCK = 1024 * 1024
#: Reads in flight at once when reading staged bytes back to hash them.
READ_AHEAD = 4


class HeldBody:
    """A received body's bytes, in order, still in the buffers they were received into.

    Asked for with ``hold=True`` (see :meth:`ChunkStaging.receive_in_place`):
    whoever gets one must :meth:`release` it, on the event loop, once done
    reading it, which gives the buffers back for the next bodies.
    """

    def __init__(self, views: list[memoryview], give_back: Callable[[], None]) -> None:
        self.views = views
        self.size = sum(len(view) for view in views)
        self._give_back: Callable[[], None] | None = give_back

    def release(self) -> None:
        if self._give_back is not None:
            self.views, give_back, self._give_back = [], self._give_back, None
            give_back()


@dataclass(frozen=True)
class StagedChunk:
    path: Path
    size: int
    sha256: str
    held: HeldBody | None = None
