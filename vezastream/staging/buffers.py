"""The staging area's memory: its buffer pool, the pool's sizes, and a body still held in its buffers.

:class:`BufferPool` hands page-aligned buffers to the bodies
:class:`~vezastream.staging.writer.ChunkStaging` receives (two each, while
FILLING_MAX bodies at most fill them), keeps idle ones for the next bodies
and lets go of what a burst needed once the process is quiet.
:class:`HeldBody` is the bytes of a received body kept in their buffers for
the in-place layout's running digest.
"""

from __future__ import annotations

import asyncio
import mmap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .directio import page_buffer, release_freed_memory

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


class BufferPool:
    """The buffers bodies are received into, and how many bodies are being received.

    Used on the event loop only. A body calls :meth:`body_began` and
    :meth:`body_ended` around its receipt; one that fills buffers straight from
    the socket takes two with :meth:`take` and gives them back with :meth:`give`.
    """

    def __init__(self) -> None:
        self.receiving = 0  # bodies being received now, to size the buffers
        self.filling = 0  # bodies being received straight into buffers
        self._free_buffers: list[mmap.mmap] = []  # their idle buffers
        self._last_take = 0.0  # the event loop's time when a body last began (or took buffers)
        self._trim: asyncio.TimerHandle | None = None  # letting go of idle buffers, once quiet

    def body_began(self) -> None:
        """A body is being received (whether or not it takes buffers)."""
        self.receiving += 1
        self._last_take = asyncio.get_running_loop().time()

    def idle(self) -> list[mmap.mmap]:
        """The idle buffers kept for the next bodies (a copy of the list)."""
        return list(self._free_buffers)

    def buffer_size(self) -> int:
        """How many bytes a body that is iterated (not filling buffers) gathers before one write."""
        return max(MIN_WRITE_BUFFER, min(WRITE_BUFFER, BUFFER_BUDGET // max(1, self.receiving)))

    def take(self) -> list[mmap.mmap] | None:
        """Two aligned WRITE_BUFFER buffers for a body that fills them; None when FILLING_MAX bodies do.

        Idle ones are kept for the next bodies (a busy process reuses its buffers);
        once no body has filled any for TRIM_AFTER seconds, only KEPT_BUFFERS of
        them (half the budget).
        """
        if self.filling >= FILLING_MAX:
            return None
        self.filling += 1
        self._last_take = asyncio.get_running_loop().time()
        return [self._free_buffers.pop() if self._free_buffers else page_buffer(WRITE_BUFFER) for _ in range(2)]

    def give(self, buffers: list[mmap.mmap] | None) -> None:
        """Called once per :meth:`take`; None: they may still be in use (or are held), not kept."""
        self.filling -= 1
        self.keep(buffers or [])

    def keep(self, buffers: list[mmap.mmap]) -> None:
        """Keep ``buffers`` for the next bodies (a released :class:`HeldBody` gives its buffers back here)."""
        self._free_buffers.extend(buffers)
        if not self.filling and len(self._free_buffers) > KEPT_BUFFERS:
            self._trim_later()

    def _trim_later(self) -> None:
        if self._trim is None:
            self._trim = asyncio.get_running_loop().call_later(TRIM_AFTER, self._trim_buffers)

    def body_ended(self) -> None:
        """Called once per :meth:`body_began`."""
        self.receiving -= 1
        if not self.receiving:  # quiet from now on, maybe: what the bodies' pieces used may go back
            self._trim_later()

    def close(self) -> None:
        """At shutdown: no trim left pending, no idle buffer kept."""
        if self._trim is not None:
            self._trim.cancel()
            self._trim = None
        self._free_buffers.clear()

    def _trim_buffers(self) -> None:
        """Quiet for TRIM_AFTER seconds: let go of what a burst needed beyond KEPT_BUFFERS."""
        self._trim = None
        if self.filling:
            return  # busy again: the next quiet moment tries again
        quiet_until = self._last_take + TRIM_AFTER
        loop = asyncio.get_running_loop()
        if loop.time() < quiet_until:
            self._trim = loop.call_at(quiet_until, self._trim_buffers)
            return
        del self._free_buffers[KEPT_BUFFERS:]
        if not self.receiving:
            # The pieces of bodies that went through aiohttp (and what their requests used) were
            # freed, but the allocator keeps such memory for the process: bodies dropped by the
            # thousand would otherwise leave the process hundreds of MiB larger for good.
            loop.run_in_executor(None, release_freed_memory)
