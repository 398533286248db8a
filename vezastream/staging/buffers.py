"""The staging area's memory: its buffer pool, the pool's sizes, and a body still held in its buffers.

:class:`BufferPool` hands page-aligned buffers to the bodies
:class:`~vezastream.staging.writer.ChunkStaging` receives (two of
WRITE_BUFFER for a body received alone or kept for the running digest, else
one of SINGLE_BUFFER; BUFFER_BUDGET bytes at most at once), keeps idle ones
for the next bodies and lets go of what a burst needed once the process is
quiet.
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
#: The one buffer of a body received while others are (a transparent huge page).
SINGLE_BUFFER = 2 * 1024 * 1024
#: Least bytes gathered: the buffer shrinks towards this when many bodies arrive at once.
MIN_WRITE_BUFFER = 16 * 1024
#: What all buffers of one process may hold together, roughly.
BUFFER_BUDGET = 64 * 1024 * 1024
#: Bodies received straight into buffers at once (one SINGLE_BUFFER each at least); more are iterated.
FILLING_MAX = BUFFER_BUDGET // SINGLE_BUFFER
#: Bytes of idle buffers kept for the next such bodies (fresh pages cost a fault each; more are let go).
KEPT_BYTES = BUFFER_BUDGET // 2
#: How long no body fills a buffer before those beyond KEPT_BYTES are let go (s): concurrent
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
    the socket takes them with :meth:`take` and gives them back with :meth:`give`.

    Two buffers let a body be received into one while the other is hashed and
    written: a lone stream needs that overlap. When several bodies arrive at
    once, each takes one smaller buffer, and waits for its write before it
    receives more, while the others' receipts keep the cores busy: 16 uploads
    at once hold 32 MiB instead of 128, at the same speed.
    """

    def __init__(self) -> None:
        self.receiving = 0  # bodies being received now, to size the buffers
        self.filling = 0  # bodies being received straight into buffers
        self.out = 0  # bytes of the buffers those bodies hold
        self._free: dict[int, list[mmap.mmap]] = {WRITE_BUFFER: [], SINGLE_BUFFER: []}  # idle buffers, by size
        self._last_take = 0.0  # the event loop's time when a body last began (or took buffers)
        self._trim: asyncio.TimerHandle | None = None  # letting go of idle buffers, once quiet

    def body_began(self) -> None:
        """A body is being received (whether or not it takes buffers)."""
        self.receiving += 1
        self._last_take = asyncio.get_running_loop().time()

    def idle(self) -> list[mmap.mmap]:
        """The idle buffers kept for the next bodies (a new list)."""
        return [buf for kept in self._free.values() for buf in kept]

    def buffer_size(self) -> int:
        """How many bytes a body that is iterated (not filling buffers) gathers before one write."""
        return max(MIN_WRITE_BUFFER, min(WRITE_BUFFER, BUFFER_BUDGET // max(1, self.receiving)))

    def take(self, pair: bool = False) -> list[mmap.mmap] | None:
        """Aligned buffers for a body that fills them; None when BUFFER_BUDGET bytes are out.

        Two of WRITE_BUFFER when ``pair`` (a body to be kept in its buffers) or when
        no other body is being received, if they fit the budget; else one of SINGLE_BUFFER.
        Idle ones are kept for the next bodies (a busy process reuses its buffers);
        once no body has filled any for TRIM_AFTER seconds, only KEPT_BYTES of them.
        """
        size, count = WRITE_BUFFER, 2
        if not (pair or self.receiving <= 1) or self.out + 2 * WRITE_BUFFER > BUFFER_BUDGET:
            size, count = SINGLE_BUFFER, 1
            if self.out + SINGLE_BUFFER > BUFFER_BUDGET:
                return None
        self.filling += 1
        self.out += size * count
        self._last_take = asyncio.get_running_loop().time()
        kept = self._free[size]
        return [kept.pop() if kept else page_buffer(size) for _ in range(count)]

    def reserve(self, size: int) -> bool:
        """Count ``size`` bytes of a body held whole in memory (``kernelio``) against BUFFER_BUDGET;
        False, counting nothing, when they do not fit. :meth:`unreserve` gives them back."""
        if self.out + size > BUFFER_BUDGET:
            return False
        self.out += size
        return True

    def unreserve(self, size: int) -> None:
        self.out -= size

    def give(self, buffers: list[mmap.mmap], reuse: bool = True) -> None:
        """Called once per :meth:`take`; not ``reuse``: they may still be in use (or are held), not kept."""
        self.filling -= 1
        self.out -= sum(len(buf) for buf in buffers)
        self.keep(buffers if reuse else [])

    def keep(self, buffers: list[mmap.mmap]) -> None:
        """Keep ``buffers`` for the next bodies (a released :class:`HeldBody` gives its buffers back here)."""
        for buf in buffers:
            self._free[len(buf)].append(buf)
        if not self.filling and self._idle_bytes() > KEPT_BYTES:
            self._trim_later()

    def _idle_bytes(self) -> int:
        return sum(len(buf) for buf in self.idle())

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
        for kept in self._free.values():
            kept.clear()

    def _trim_buffers(self) -> None:
        """Quiet for TRIM_AFTER seconds: let go of what a burst needed beyond KEPT_BYTES (the small buffers first)."""
        self._trim = None
        if self.filling:
            return  # busy again: the next quiet moment tries again
        quiet_until = self._last_take + TRIM_AFTER
        loop = asyncio.get_running_loop()
        if loop.time() < quiet_until:
            self._trim = loop.call_at(quiet_until, self._trim_buffers)
            return
        room = KEPT_BYTES
        for size in sorted(self._free, reverse=True):
            kept = self._free[size]
            del kept[max(0, room) // size:]
            room -= size * len(kept)
        if not self.receiving:
            # The pieces of bodies that went through aiohttp (and what their requests used) were
            # freed, but the allocator keeps such memory for the process: bodies dropped by the
            # thousand would otherwise leave the process hundreds of MiB larger for good.
            loop.run_in_executor(None, release_freed_memory)
