"""The garbage collector when something it depends on fails: the failure is logged, the rest goes on.

A pass that fails (the staging area's disk failing its reads) must not end the GC's loop; a sink whose sweep
fails must not keep the pass from removing what it found on disk; one upload whose recovery
fails must not keep the others' from finishing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import logging
import os
import time

from vezastream.gc import GarbageCollector
from vezastream.models import UploadStatus

from engine_parts import make_engine, staging, store, stranded  # noqa: F401  (fixtures)
from helpers import random_bytes, sha256

#: An upload id no upload has: a folder of it in the staging area is an orphan.
ORPHAN = "O" * 22


def stale_orphan(settings) -> None:
    """What an upload whose state expired long ago leaves on disk: its chunk folder, a day old."""
    folder = settings.storage.chunks_dir / ORPHAN
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "1.abc").write_bytes(b"x")
    old = time.time() - 2 * settings.gc.max_age
    os.utime(folder, (old, old))


def messages(caplog, name: str = "vezastream.gc") -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == name]


async def test_a_failed_pass_is_logged_and_the_next_pass_runs(settings, store, staging, make_engine, caplog,
                                                               monkeypatch):
    every_50_ms = dataclasses.replace(settings, gc=dataclasses.replace(settings.gc, interval=0.05))
    gc = GarbageCollector(every_50_ms, store, staging, engine=make_engine())
    reports = []
    gc.on_pass = reports.append
    chunks = settings.storage.chunks_dir
    listing, failing = staging.list_uploads, [True]

    def list_uploads():  # the staging area's disk failing its reads (EIO: tests/stallfs.py fails writes only;
        if failing[0]:   # a file or a link loop in its place is nothing staged, test_staging_folder_removed)
            raise OSError(errno.EIO, os.strerror(errno.EIO), str(chunks))
        return listing()

    monkeypatch.setattr(staging, "list_uploads", list_uploads)
    loop = asyncio.create_task(gc.run_forever())
    try:
        deadline = time.monotonic() + 5
        while messages(caplog).count("gc pass failed") < 2:
            assert time.monotonic() < deadline and not loop.done()
            await asyncio.sleep(0.02)
        failed = [r for r in caplog.records if r.getMessage() == "gc pass failed"]
        assert all(r.levelno == logging.ERROR and r.exc_info for r in failed)  # not Redis's fault: a traceback
        failing[0] = False
        stale_orphan(settings)
        while not reports:  # the loop went on: once the disk reads again, a pass removes the orphan
            assert time.monotonic() < deadline and not loop.done()
            await asyncio.sleep(0.02)
        assert reports[0].removed == [ORPHAN] and not (chunks / ORPHAN).exists()
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
    assert loop.cancelled()  # a shutdown ends the loop


class SweepFails:
    """A sink that can sweep its leftovers (``SweepsLeftovers``), whose store is unreachable right now."""

    name = "sweep-fails"

    async def sweep(self, older_than, is_live, dry_run=False):
        raise ConnectionRefusedError(111, "Connection refused")


async def test_a_failed_sink_sweep_does_not_stop_the_pass(settings, store, staging, make_engine, caplog):
    stale_orphan(settings)
    gc = GarbageCollector(settings, store, staging, sink=SweepFails(), engine=make_engine())
    report = await gc.run_once()
    assert report.removed == [ORPHAN] and report.aborted == []
    assert not (settings.storage.chunks_dir / ORPHAN).exists()
    assert "gc: sink sweep failed" in messages(caplog)
    assert await store.holder(store.gc_lease_key) is None  # the next pass need not wait for the lease


async def test_one_upload_that_cannot_be_recovered_does_not_stop_the_others(settings, store, staging, make_engine,
                                                                            caplog):
    engine = make_engine()
    data = random_bytes(100)
    good, bad = await stranded(engine, store, data), await stranded(engine, store, b"x" * 10)
    await store.redis.hset(store.key(bad), "updated_at", "not a number")  # its record is damaged
    report = await GarbageCollector(settings, store, staging, engine=engine).run_once()
    assert report.recovered == [good]
    done, _ = await store.load(good)
    assert done.status is UploadStatus.COMPLETED and done.result.sha256 == sha256(data)
    failed = [r for r in caplog.records if r.getMessage() == "gc: abandoned completion not recovered"]
    assert [r.upload_id for r in failed] == [bad] and failed[0].levelno == logging.ERROR
