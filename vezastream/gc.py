"""The garbage collector: removes what abandoned uploads leave on disk.

A pass looks at every chunk folder; it removes the folder when the upload's
state is gone (expired or lost) and the folder is older than ``gc.max_age``,
or when the upload is already completed (a completion interrupted between
recording the result and removing its chunks). Only one node runs a pass at a
time: a Redis lease with an expiry guards it, renewed while the pass runs. It
goes PASS_BATCH folders at a time: their status look-ups share Redis round
trips, their removals run REMOVE_AT_ONCE at a time, and each folder is still
judged on its own.

A pass (and the server, once, at start-up) also finishes what a dead process
left in Redis: a ``completing`` upload whose completion lease holder is gone
is completed (or set back to pending when it cannot be), and the append and
part leases of dead processes are released (state/store.py: the heartbeat).
A pass also gives back the per-user places (engine/quotas.py) that killed
processes left held for uploads no longer pending.

Every serving process also sweeps, once a minute, the whole tus uploads that watches noted
(engine/layouts/append.py), GC passes on or off (:meth:`GarbageCollector.sweep_unfinished_forever`).

When the sink can sweep its own leftovers (``sinks.SweepsLeftovers``, e.g. the
S3 sink's open multipart uploads), the pass also hands it everything older
than ``gc.max_age`` that no live upload owns.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

from .config import Settings
from .engine.engine import UploadEngine
from .engine.leases import NODE_BEAT_SECONDS, NODE_SECONDS
from .hooks import Hooks
from .models import UploadStatus, is_upload_id
from .sinks import STAGED_IN_SINK, Sink, SweepsLeftovers
from .staging import ChunkStaging
from .state.batching import failure_reason
from .state.store import StateStore

log = logging.getLogger("vezastream.gc")
T = TypeVar("T")

#: Upload records whose status one recovery step reads at once.
RECOVER_BATCH = 200
#: Staged uploads one step of a GC pass judges at once: their status look-ups share pipelines
#: (state/batching.py); a step holds little memory, and stalls the requests served meanwhile little
#: (512 at once: their look-ups' replies and removals kept other requests waiting up to 5-9 ms).
PASS_BATCH = 128
#: Removals of staged uploads in flight at once (a chunk folder's removal is a worker-thread walk of
#: its own: a few at a time leave the server's other file calls, and the GIL, room).
REMOVE_AT_ONCE = 8
#: Seconds between the sweeps of the whole tus uploads that watches noted (engine/layouts/append.py)
#: which every serving process makes, GC passes on or off: a noted upload whose completing process
#: and watching process both died is completed within about this long, not at the next GC pass.
#: One SMEMBERS a sweep when nothing is noted.
UNFINISHED_SWEEP_SECONDS = 60.0
#: The GC lease's life: at least this many seconds, else ``gc.interval``; the pass holding it
#: renews it every third of that while it runs, so a pass longer than its lease (a sink's sweep of
#: a large bucket) is still the only one.
LEASE_SECONDS_MIN = 60.0


@dataclass
class GCReport:
    removed: list[str] = field(default_factory=list)
    kept: int = 0
    skipped: bool = False  # another node holds the lease
    dry_run: bool = False
    #: Sink-side leftovers aborted (``SweepsLeftovers``), e.g. ``<key>#<multipart upload id>``.
    aborted: list[str] = field(default_factory=list)
    #: Uploads whose completion a dead process left: finished, or set back to pending.
    recovered: list[str] = field(default_factory=list)
    #: Leases of dead processes given back (their Redis keys).
    released: list[str] = field(default_factory=list)
    #: Per-user places held for uploads no longer pending (``<owner>/<id>``): given back.
    quota_released: list[str] = field(default_factory=list)


class GarbageCollector:
    def __init__(self, settings: Settings, store: StateStore, staging: ChunkStaging, clock=time.time,
                 sink: Sink | None = None, hooks: Hooks | None = None, engine: UploadEngine | None = None) -> None:
        self.settings = settings
        #: Finishes what dead processes left (without one, a pass only removes folders).
        self.engine = engine
        self.hooks = hooks or Hooks(None, settings)
        self.store = store
        self.staging = staging
        self.clock = clock
        self.sink = sink
        #: Told each pass's report (the metrics count what passes did).
        self.on_pass: Callable[[GCReport], None] | None = None

    async def run_once(self, dry_run: bool = False) -> GCReport:
        report = GCReport(dry_run=dry_run)
        lease = max(LEASE_SECONDS_MIN, float(self.settings.gc.interval))
        if self.engine is not None:  # a pass a dead process left half done does not hold the next one up
            token = self.engine.new_token()
            leased = await self.engine.take_lease(self.store.gc_lease_key, token, lease)
        else:
            token = secrets.token_hex(8)
            leased = await self.store.acquire_lease(self.store.gc_lease_key, token, lease)
        if not leased:
            report.skipped = True
            return report
        keeper = (asyncio.ensure_future(self.engine.keep_lease(self.store.gc_lease_key, token, lease))
                  if self.engine is not None else None)
        try:
            await self.recover(report, dry_run)
            now = self.clock()
            if self.engine is not None:
                report.quota_released = await self.engine.quotas.reconcile(now, dry_run)
            staged = await asyncio.to_thread(self.staging.list_uploads)
            for i in range(0, len(staged), PASS_BATCH):
                await self._collect(staged[i:i + PASS_BATCH], now, report, dry_run)
            if isinstance(self.sink, SweepsLeftovers):
                report.aborted = await self._sweep_sink(self.sink, now, dry_run)
        finally:
            if keeper is not None:
                keeper.cancel()
            # A dry run must not keep the real pass waiting for the lease.
            await self.store.release_lease(self.store.gc_lease_key, token)
        if report.removed or report.aborted or report.recovered or report.released or report.quota_released:
            log.info("gc pass", extra={"event": "gc", "removed": len(report.removed), "kept": report.kept,
                                       "aborted": len(report.aborted), "recovered": len(report.recovered),
                                       "released": len(report.released), "quota_released": len(report.quota_released),
                                       "dry_run": dry_run})
        if self.on_pass is not None:
            self.on_pass(report)
        return report

    async def _collect(self, staged: list[tuple[str, float]], now: float, report: GCReport, dry_run: bool) -> None:
        """One batch of a pass: each staged upload judged by its own status and age (the look-ups
        share round trips); the stale and the completed removed, at most REMOVE_AT_ONCE at a time."""
        ids = [(upload_id, mtime) for upload_id, mtime in staged if is_upload_id(upload_id)]
        report.kept += len(staged) - len(ids)
        statuses = await self.store.statuses([upload_id for upload_id, _ in ids])
        doomed: list[tuple[str, bool]] = []
        for (upload_id, mtime), status in zip(ids, statuses):
            stale = status is None and now - mtime > self.settings.gc.max_age
            if stale or status is UploadStatus.COMPLETED:
                report.removed.append(upload_id)
                doomed.append((upload_id, stale))
            else:
                report.kept += 1
        if not dry_run and doomed:
            left = iter(doomed)  # shared: each remover takes the next one (flat data files that
            # several remove at once share thread trips: staging/together.py)
            await _settled([self._remove(left, report) for _ in range(min(REMOVE_AT_ONCE, len(doomed)))])

    async def _remove(self, left: Iterator[tuple[str, bool]], report: GCReport) -> None:
        for upload_id, stale in left:
            if not await self.staging.remove_or_leave(upload_id):  # its folder refused: kept for a later pass
                report.removed.remove(upload_id)
                report.kept += 1
                continue
            if stale:
                self.hooks.expired(upload_id)

    async def recover(self, report: GCReport, dry_run: bool = False) -> None:
        """Finish the completions and give back the leases that dead processes left (into ``report``)."""
        engine = self.engine
        if engine is None:
            return
        records: list[str] = []
        async for upload_id, what in self.store.scan():
            if not is_upload_id(upload_id):
                continue
            if not what:
                records.append(upload_id)
            elif what == ":append" or what.startswith(":part:"):
                key = self.store.key(upload_id) + what
                dead = await engine.leases.dead_holder(key)
                if dead and (dry_run or await self.store.release_lease(key, dead)):
                    report.released.append(key)
                    # A tus upload whose last PATCH was recorded, then its process died before completing it.
                    if what == ":append" and await self._recovered(
                            upload_id, engine.appends.finish_whole(upload_id, dry_run)):
                        report.recovered.append(upload_id)
        # Whole tus uploads a HEAD was told of, whose completion had not come when its watch ended.
        report.recovered += [u for u in await engine.appends.sweep_unfinished(dry_run) if u not in report.recovered]
        for i in range(0, len(records), RECOVER_BATCH):  # a batch's look-ups share round trips
            batch = records[i:i + RECOVER_BATCH]
            statuses = await self.store.statuses(batch)
            for upload_id, status in zip(batch, statuses):
                if status is UploadStatus.COMPLETING and await self._recovered(
                        upload_id, engine.recover(upload_id, dry_run)):
                    report.recovered.append(upload_id)

    @staticmethod
    async def _recovered(upload_id: str, finishing: Awaitable[bool]) -> bool:
        """``finishing`` (a recovery of ``upload_id``), False if it failed: one upload must not stop the pass."""
        try:
            return await finishing
        except Exception:
            log.exception("gc: abandoned completion not recovered", extra={"upload_id": upload_id})
            return False

    async def recover_after_start(self) -> GCReport:
        """At start-up: recover what dead processes left, at once (those of this data folder are
        known dead: engine/nodes.py), then again once any other dead node's heartbeat has lapsed."""
        report = GCReport()
        for pause in (0.0, NODE_SECONDS + NODE_BEAT_SECONDS):
            await asyncio.sleep(pause)
            try:
                await self.recover(report)
            except Exception as exc:
                _failed("start-up recovery failed", exc)
        if report.recovered or report.released:
            log.info("start-up recovery", extra={"event": "recovered", "recovered": len(report.recovered),
                                                 "released": len(report.released)})
        return report

    async def _sweep_sink(self, sink: SweepsLeftovers, now: float, dry_run: bool) -> list[str]:
        try:
            return await sink.sweep(now - self.settings.gc.max_age, self._owns, dry_run)
        except Exception:  # the sink being down must not stop the rest of the pass
            log.exception("gc: sink sweep failed")
            return []

    async def _owns(self, upload_id: str, handle: str) -> bool:
        """Does a live upload own the sink-side ``handle``? (its direct handle, or a completion running now)"""
        if not is_upload_id(upload_id):
            return False
        upload, _ = await self.store.load(upload_id)
        if upload is None or upload.status is UploadStatus.COMPLETED:
            return False
        return upload.spec.direct == handle or handle == STAGED_IN_SINK or upload.status is UploadStatus.COMPLETING

    async def sweep_unfinished_forever(self) -> None:
        """Every UNFINISHED_SWEEP_SECONDS, complete the whole uploads watches noted and left
        (:meth:`recover` does it too, each pass)."""
        if self.engine is None:
            return
        while True:
            await asyncio.sleep(UNFINISHED_SWEEP_SECONDS)
            try:
                done = await self.engine.appends.sweep_unfinished()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                _failed("unfinished sweep failed", exc)
                continue
            if done:
                log.info("whole uploads completed", extra={"event": "recovered", "recovered": len(done)})

    async def run_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.gc.interval)
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                _failed("gc pass failed", exc)


def _failed(what: str, exc: Exception) -> None:
    """Log a background step's failure: Redis refused or is out of reach, a warning naming why (one
    line a step, until it is mended); anything else, a bug, with its traceback."""
    why = failure_reason(exc)
    if why is None:
        log.exception(what)
    else:
        log.warning(what, extra={"reason": why, "error": f"{type(exc).__name__}: {exc}"})


async def _settled(calls: list[Awaitable[T]]) -> list[T]:
    """The results of ``calls``, run together; once every one has finished, the first error, if any, raised."""
    results = await asyncio.gather(*calls, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results  # type: ignore[return-value]
