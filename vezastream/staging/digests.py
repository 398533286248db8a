"""Running SHA-256 digests: each upload's bytes hashed once, as they arrive in order.

When every byte of an upload reaches this process in order (tus segments;
native chunks 1, 2, 3... one after the other), completion can take the
whole-file SHA-256 from the running digest instead of reading the bytes
again. A request continues a *copy* of its upload's digest, and only a
request whose bytes were registered advances it, so a failed or rejected
body never counts. Anything out of order simply ends the chain: completion
then hashes the staged bytes as usual.

A native chunk after the first feeds two digests, its own and the running
one (a :class:`Tee`). Where this package's C module was built and the CPU
has SHA instructions (``sha256x2.c``), both come from :func:`new_sha256`
and advance in one pass, in one thread, for about one digest's time instead
of two (each block's message schedule is worked out once for both);
elsewhere they are hashlib's, fed one after the other.

Small bodies are hashed on the event loop: one digest each (a tus ``PATCH``,
a native chunk 1), or a :class:`Tee` of two (a native chunk after the first).
:class:`LoopPairs` holds those updates until the loop's next turn, when the
bodies that arrived in the same turn (the replies of one Redis pipeline wake
many requests at once) are hashed two by two in one pass each: two single
digests, or two tees' four digests (the CPU's SHA unit runs four chains of
rounds nearly twice as fast as two).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import OrderedDict
from collections.abc import AsyncIterable, AsyncIterator, Callable
from typing import Any

try:
    from ._sha256x2 import sha256 as _Sha256x2, update_pair as _update_pair, update_two as _update_two
    from ._sha256x2 import update_two_pairs as _update_two_pairs
except ImportError:  # not built (no C compiler at install), or a CPU without SHA instructions
    _Sha256x2 = None

#: Digests kept per process (about 200 bytes each); the oldest are dropped first.
CACHE_SIZE = 10_000


def new_sha256() -> Any:
    """An empty SHA-256 hasher, used as hashlib's is; two of them feed a :class:`Tee` in one pass
    where the C module is usable (see above)."""
    return _Sha256x2() if _Sha256x2 is not None else hashlib.sha256()


class RunningDigests:
    def __init__(self, size: int = CACHE_SIZE) -> None:
        self.size = size
        self._chains: OrderedDict[str, tuple[int, Any]] = OrderedDict()

    def __len__(self) -> int:
        """How many uploads' running digests are kept."""
        return len(self._chains)

    def resume(self, upload_id: str, offset: int) -> Any | None:
        """A hasher to continue with bytes from ``offset`` on, or None when the chain does not reach it."""
        if offset == 0:
            return new_sha256()
        chain = self._chains.get(upload_id)
        return chain[1].copy() if chain and chain[0] == offset else None

    def advance(self, upload_id: str, end: int, running: Any | None) -> None:
        """The bytes up to ``end`` are registered and ``running`` is their digest (None: not known here).

        Registered bytes never change, so a chain that is not advanced stays true.
        """
        if running is not None:
            self._chains[upload_id] = (end, running)
            self._chains.move_to_end(upload_id)
            while len(self._chains) > self.size:
                self._chains.popitem(last=False)

    def position(self, upload_id: str) -> int | None:
        """How many bytes of the upload the running digest covers (None: no chain here)."""
        chain = self._chains.get(upload_id)
        return chain[0] if chain else None

    def peek(self, upload_id: str, size: int) -> str | None:
        """Like :meth:`take`, but the chain stays (a completion that may be tried again)."""
        chain = self._chains.get(upload_id)
        return chain[1].hexdigest() if chain and chain[0] == size else None

    def take(self, upload_id: str, size: int) -> str | None:
        """The SHA-256 of all ``size`` bytes when they were hashed on arrival here, in order."""
        chain = self._chains.pop(upload_id, None)
        return chain[1].hexdigest() if chain and chain[0] == size else None


class Tee:
    """Feeds every update to two hashers; reads (digest) come from the first.

    ``paired``: both came from :func:`new_sha256` where the C module is usable, and
    each update advances them in one pass (so one thread, not two, should feed them).
    """

    def __init__(self, first: Any, second: Any) -> None:
        self.first, self.second = first, second
        self.paired = _Sha256x2 is not None and type(first) is _Sha256x2 and type(second) is _Sha256x2

    def update(self, data: Any) -> None:
        if self.paired:
            _update_pair(self.first, self.second, data)
        else:
            self.first.update(data)
            self.second.update(data)

    def digest(self) -> bytes:
        return self.first.digest()

    def hexdigest(self) -> str:
        return self.first.hexdigest()


class QueuedUpdate:
    """One update queued in :class:`LoopPairs`; :meth:`done` raises what it failed with."""

    __slots__ = ("hasher", "data", "error")

    def __init__(self, hasher: Any, data: Any) -> None:
        self.hasher, self.data = hasher, data
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.hasher.update(self.data)
        except Exception as exc:  # the request that queued it raises it (done)
            self.error = exc
        self.data = None

    def done(self) -> None:
        """Call once :meth:`LoopPairs.settle` has run: the digest is fed, or this raises why not."""
        if self.error is not None:
            error, self.error = self.error, None
            raise error


class LoopPairs:
    """Digest updates of the event loop, run two by two at the loop's next turn (see above).

    :meth:`update` queues, and :meth:`settle` runs what is queued at once: call it, then the
    update's ``done()``, before reading a queued digest. Only the C module's digests pair (single
    ones with each other, tees of two with each other); any other is updated at once.
    """

    def __init__(self) -> None:
        self._queued: list[QueuedUpdate] = []
        #: How many updates ran paired and alone (tests read them).
        self.paired = self.alone = 0

    def update(self, hasher: Any, data: Any) -> QueuedUpdate:
        job = QueuedUpdate(hasher, data)
        if type(hasher) is not _Sha256x2 and not (type(hasher) is Tee and hasher.paired):
            hasher.update(data)  # raises here, in the request, as any update would
            job.data = None
            return job
        if not self._queued:
            asyncio.get_running_loop().call_soon(self.settle)
        self._queued.append(job)
        return job

    def settle(self) -> None:
        queued, self._queued = self._queued, []
        digests = [id(h) for job in queued for h in ((job.hasher.first, job.hasher.second)
                                                       if type(job.hasher) is Tee else (job.hasher,))]
        if len(set(digests)) < len(digests):  # a digest queued twice: all in order
            for job in queued:
                job.run()
            self.alone += len(queued)
            return
        self._in_pairs([job for job in queued if type(job.hasher) is not Tee], _update_two)
        self._in_pairs([job for job in queued if type(job.hasher) is Tee], _update_tees)

    def _in_pairs(self, queued: list[QueuedUpdate], together: Callable[[Any, Any, Any, Any], None]) -> None:
        for i in range(1, len(queued), 2):
            first, second = queued[i - 1], queued[i]
            try:
                together(first.hasher, second.hasher, first.data, second.data)
            except Exception:  # neither advanced: each alone, so each request gets its own outcome
                first.run()
                second.run()
                self.alone += 2
                continue
            first.data = second.data = None
            self.paired += 2
        if len(queued) % 2:
            queued[-1].run()
            self.alone += 1


def _update_tees(first: Tee, second: Tee, first_data: Any, second_data: Any) -> None:
    """Two paired tees, each fed its own bytes, in one pass of four digests."""
    _update_two_pairs(first.first, first.second, first_data, second.first, second.second, second_data)


class HashedBody:
    """A body passed on unchanged while ``hasher`` is fed its pieces (in a worker thread); counts them."""

    def __init__(self, body: AsyncIterable[bytes], hasher: Any) -> None:
        self.body, self.hasher, self.size = body, hasher, 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for piece in self.body:
            await asyncio.to_thread(self.hasher.update, piece)
            self.size += len(piece)
            yield piece
