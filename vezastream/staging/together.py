"""Small blocking file calls of many requests, made together in one worker-thread trip.

Creating an upload's data file, cutting it at completion and removing it are a
few system calls each; as a thread trip of their own, each costs more in
hand-offs (and the event loop's waits for the GIL) than in the calls. So they
queue here: when no trip runs, the first call starts one at once (no added
wait when the server is quiet); calls that come while it runs go together in
the next. A call may ask for a folder to be synced once it returned
(``sync``): each folder is synced once per trip, for every call that asked,
before any of them is answered (a group commit of new directory entries).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .files import fsync_dir

#: One queued call: what to run, the folder to sync after it (or None), its answer.
Call = tuple[Callable[[], Any], "Path | None", "asyncio.Future[Any]"]


def _run(calls: list[Call]) -> list[tuple[bool, Any]]:
    """Run ``calls`` in turn, then sync the folders they asked for; (succeeded, result or error) of each."""
    outcomes: list[tuple[bool, Any]] = []
    for fn, _, _ in calls:
        try:
            outcomes.append((True, fn()))
        except Exception as exc:  # one call's failure is its own
            outcomes.append((False, exc))
    synced: dict[Path, Exception | None] = {}
    for i, (_, folder, _) in enumerate(calls):
        if folder is None or not outcomes[i][0]:
            continue
        if folder not in synced:
            try:
                fsync_dir(folder)
                synced[folder] = None
            except Exception as exc:
                synced[folder] = exc
        if synced[folder] is not None:
            outcomes[i] = (False, synced[folder])
    return outcomes


class Together:
    """Queues blocking file calls and runs each batch of them in one worker-thread trip."""

    def __init__(self) -> None:
        self._queue: list[Call] = []
        self._running: asyncio.Task[None] | None = None

    async def call(self, fn: Callable[[], Any], sync: Path | None = None) -> Any:
        """``fn()`` in a worker thread (with the calls queued beside it); then ``sync`` synced, if given."""
        answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        answer.add_done_callback(retrieved)  # a cancelled caller's error is not "never retrieved"
        self._queue.append((fn, sync, answer))
        if self._running is None:
            self._running = asyncio.create_task(self._drain())
        # Shielded: a cancelled caller's call still runs (or has run) in its trip; it just is not awaited.
        return await asyncio.shield(answer)

    async def _drain(self) -> None:
        try:
            while self._queue:
                calls, self._queue = self._queue, []
                try:
                    outcomes = await asyncio.to_thread(_run, calls)
                except BaseException as exc:  # the trip itself failed (or the loop is closing)
                    for _, _, answer in calls:
                        if not answer.done():
                            answer.set_exception(exc if isinstance(exc, Exception) else RuntimeError(repr(exc)))
                    if not isinstance(exc, Exception):
                        raise
                    continue
                for (_, _, answer), (ok, value) in zip(calls, outcomes):
                    if answer.done():
                        continue
                    if ok:
                        answer.set_result(value)
                    else:
                        answer.set_exception(value)
                del outcomes, calls  # no reference to an error's traceback outlives the trip
        finally:
            self._running = None
            left, self._queue = self._queue, []  # only when the trip was cancelled (the loop is closing)
            for _, _, answer in left:
                answer.set_exception(RuntimeError("the server is stopping"))


def retrieved(answer: "asyncio.Future[Any]") -> None:
    """A done callback: marks the future's error as seen (no "exception was never retrieved" log)."""
    if not answer.cancelled():
        answer.exception()
