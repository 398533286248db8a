"""The garbage collector: removes what abandoned uploads leave on disk.

A pass looks at every chunk folder; it removes the folder when the upload's
state is gone (expired or lost) and the folder is older than ``gc.max_age``,
or when the upload is already completed (a completion interrupted between
recording the result and removing its chunks). Only one node runs a pass at a
time: a Redis lease with an expiry guards it.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from dataclasses import dataclass, field

from .config import Settings
from .models import UploadStatus, is_upload_id
from .staging import ChunkStaging
from .state import StateStore

log = logging.getLogger("vezastream.gc")


@dataclass
class GCReport:
    removed: list[str] = field(default_factory=list)
    kept: int = 0
    skipped: bool = False  # another node holds the lease
    dry_run: bool = False


class GarbageCollector:
    def __init__(self, settings: Settings, store: StateStore, staging: ChunkStaging, clock=time.time) -> None:
        self.settings = settings
        self.store = store
        self.staging = staging
        self.clock = clock

    async def run_once(self, dry_run: bool = False) -> GCReport:
        report = GCReport(dry_run=dry_run)
        token = secrets.token_hex(8)
        lease = max(60.0, float(self.settings.gc.interval))
        if not await self.store.acquire_lease(self.store.gc_lease_key, token, lease):
            report.skipped = True
            return report
        try:
            now = self.clock()
            for upload_id, mtime in await asyncio.to_thread(self.staging.list_uploads):
                if not is_upload_id(upload_id):
                    report.kept += 1
                    continue
                status = await self.store.status(upload_id)
                stale = status is None and now - mtime > self.settings.gc.max_age
                if stale or status is UploadStatus.COMPLETED:
                    report.removed.append(upload_id)
                    if not dry_run:
                        await self.staging.remove_upload(upload_id)
                else:
                    report.kept += 1
        finally:
            # A dry run must not keep the real pass waiting for the lease.
            await self.store.release_lease(self.store.gc_lease_key, token)
        if report.removed:
            log.info("gc pass", extra={"event": "gc", "removed": len(report.removed), "kept": report.kept,
                                       "dry_run": dry_run})
        return report

    async def run_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.gc.interval)
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("gc pass failed")
