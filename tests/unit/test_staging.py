"""The staging area (vezastream/staging/) on its own: bodies received, read back, hashed, discarded, locked."""

from __future__ import annotations

import asyncio
import hashlib
import os
import tracemalloc
from pathlib import Path

import pytest

from vezastream import errors
from vezastream.staging import ChunkStaging, sha256_of_files

from engine_parts import body, staging  # noqa: F401  (fixture)
from helpers import random_bytes, sha256

MiB = 1024 * 1024


def left_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@pytest.mark.parametrize("size", [0, 1, 100_000, 5 * MiB + 3], ids=["empty", "one byte", "small", "several buffers"])
async def test_a_chunk_is_received_named_by_its_digest_and_read_back(staging: ChunkStaging, size):
    data = random_bytes(size)
    uid = "u" * 22
    staged = await staging.receive(uid, 1, body(data), limit=size,
                                   final_for=lambda digest: staging.chunk_path(uid, 1, digest))
    assert (staged.size, staged.sha256) == (size, sha256(data))
    assert staged.path == staging.chunk_path(uid, 1, sha256(data))
    assert staged.path.read_bytes() == data
    assert sha256_of_files([staged.path], [size]) == (size, sha256(data))
    assert sorted(p.name for p in staging.upload_dir(uid).iterdir()) == [staged.path.name]  # no temporary left


async def test_a_body_past_its_limit_leaves_nothing(staging: ChunkStaging):
    uid = "v" * 22
    with pytest.raises(errors.TooLarge):
        await staging.receive(uid, 1, body(random_bytes(3 * MiB)), limit=2 * MiB,
                              final_for=lambda digest: staging.chunk_path(uid, 1, digest))
    assert left_in(staging.upload_dir(uid)) == []


async def test_a_refused_body_leaves_nothing(staging: ChunkStaging):
    uid = "w" * 22

    def refuse(size: int, digest: str) -> None:
        raise errors.DigestMismatch("not the declared digest")
    with pytest.raises(errors.DigestMismatch):
        await staging.receive(uid, 1, body(b"x" * 1000), limit=1000, check=refuse,
                              final_for=lambda digest: staging.chunk_path(uid, 1, digest))
    assert left_in(staging.upload_dir(uid)) == []


async def test_chunks_written_in_place_out_of_order(staging: ChunkStaging):
    uid = "x" * 22
    chunk = MiB
    data = random_bytes(3 * chunk + 17)
    await staging.create_data_file(uid)
    for n in (3, 1, 4, 2):
        piece = data[(n - 1) * chunk:n * chunk]
        staged = await staging.receive_in_place(uid, (n - 1) * chunk, body(piece), limit=len(piece))
        assert staged.sha256 == sha256(piece)
    assert staging.data_path(uid).read_bytes() == data
    assert sha256_of_files([staging.data_path(uid)], [len(data)]) == (len(data), sha256(data))


async def test_appends_at_the_offset_and_truncate(staging: ChunkStaging):
    uid = "y" * 22
    await staging.create_data_file(uid)
    running = hashlib.sha256()
    first = await staging.receive_at(uid, 0, body(b"hello "), limit=100, hasher=running)
    second = await staging.receive_at(uid, 6, body(b"world and garbage"), limit=100)
    assert (first.size, second.size) == (6, 17)
    assert running.hexdigest() == sha256(b"hello ")
    await staging.truncate(uid, 11)
    assert staging.data_path(uid).read_bytes() == b"hello world"
    with pytest.raises(errors.Conflict):  # more bytes than the file holds: they are not staged here
        await staging.truncate(uid, 100)
    with pytest.raises(errors.Conflict):  # an offset past the file's end
        await staging.receive_at(uid, 50, body(b"late"), limit=100)


async def test_the_writer_lock_admits_one_writer(staging: ChunkStaging):
    uid = "z" * 22
    assert await staging.lock_data_file(uid) is None  # no data file, nothing to lock
    await staging.create_data_file(uid)
    held = await staging.lock_data_file(uid)
    assert held is not None
    with pytest.raises(errors.AppendBusy):
        await staging.lock_data_file(uid)
    os.close(held)  # the request ends: the next one may write
    again = await staging.lock_data_file(uid)
    assert again is not None
    os.close(again)


async def test_an_uploads_data_file_lies_flat_in_the_staging_folder(staging: ChunkStaging):
    uid = "f" * 22
    await staging.create_data_file(uid)
    # No folder per upload: one new inode (and one directory sync) per upload, not two.
    assert [(p.name, p.is_file()) for p in staging.root.iterdir()] == [(f"{uid}.data", True)]
    staged = await staging.receive_at(uid, 0, body(b"hello"), limit=5)
    assert staged.path == staging.data_path(uid) and staging.data_path(uid).read_bytes() == b"hello"
    assert staging.list_uploads() == [(uid, os.stat(staging.data_path(uid)).st_mtime)]
    await staging.remove_upload(uid)
    assert list(staging.root.iterdir()) == [] and not staging.holds(uid)


async def test_a_data_file_an_older_version_kept_in_a_folder_is_still_read_and_removed(staging: ChunkStaging):
    uid, fresh = "o" * 22, "n" * 22
    (staging.root / uid).mkdir()
    (staging.root / uid / "data").write_bytes(b"hello ")  # an in-place or append upload before the flat layout
    upgraded = ChunkStaging(staging.root, durable=staging.durable, direct_io=staging.direct_io)
    try:
        assert upgraded.data_path(uid) == staging.root / uid / "data"
        await upgraded.receive_at(uid, 6, body(b"world"), limit=5)
        assert (staging.root / uid / "data").read_bytes() == b"hello world"
        await upgraded.create_data_file(fresh)  # a new upload beside it: flat
        assert upgraded.data_path(fresh) == staging.root / f"{fresh}.data"
        assert {name for name, _ in upgraded.list_uploads()} == {uid, fresh}
        await upgraded.remove_upload(uid)
        assert not (staging.root / uid).exists() and not upgraded.holds(uid)
        assert upgraded.data_path(uid) == staging.root / f"{uid}.data"
    finally:
        upgraded.close()


def test_listing_many_uploads_holds_little_more_than_its_answer(staging: ChunkStaging):
    """A GC pass lists every staged upload: with a million of them, the listing must not hold
    every folder entry (its path, its stat) at once (1 KB each: 1 GB)."""
    count = 20_000
    for i in range(count):
        (staging.root / f"{i:022d}.data").touch()
    (staging.root / "not-an-upload-id.tmp").touch()
    tracemalloc.start()
    try:
        found = staging.list_uploads()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(found) == count and {name for name, _ in found} == {f"{i:022d}" for i in range(count)}
    assert peak / count < 400, f"{peak / count:.0f} bytes per upload at the listing's peak"


async def test_discard_and_remove(staging: ChunkStaging):
    uid, other = "d" * 22, "e" * 22
    staged = await staging.receive(uid, 1, body(b"abc"), limit=3,
                                   final_for=lambda digest: staging.chunk_path(uid, 1, digest))
    await staging.create_data_file(other)
    assert {name for name, _ in staging.list_uploads()} == {uid, other}
    await staging.discard(staged.path)
    await staging.discard(staged.path)  # already gone: no error
    assert not staged.path.exists()
    await staging.remove_upload(uid)
    assert {name for name, _ in staging.list_uploads()} == {other}


async def test_data_files_created_at_once_share_thread_trips_and_directory_syncs(staging: ChunkStaging, monkeypatch):
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    uids = [f"{n:022d}" for n in range(50)]
    await asyncio.gather(*(staging.create_data_file(uid) for uid in uids))
    assert all(staging.data_path(uid).exists() for uid in uids)
    # Durable still (each file's entry synced before its creation returns), but 50 uploads at once
    # cost a few trips and directory syncs, not one (or two) each.
    assert 1 <= len(synced) < 10 if staging.durable else synced == []
    await asyncio.gather(*(staging.remove_upload(uid) for uid in uids))
    assert list(staging.root.iterdir()) == []


async def test_one_failing_call_among_calls_made_together_fails_alone(staging: ChunkStaging):
    uid, other = "g" * 22, "h" * 22
    await staging.create_data_file(uid)
    results = await asyncio.gather(staging.create_data_file(uid), staging.create_data_file(other),
                                   staging.truncate("i" * 22, 5), return_exceptions=True)
    assert isinstance(results[0], FileExistsError) and results[1] is None
    assert isinstance(results[2], errors.Conflict)
    assert staging.data_path(other).exists()


async def test_a_call_whose_caller_is_cancelled_still_runs(staging: ChunkStaging):
    uid = "j" * 22
    task = asyncio.create_task(staging.create_data_file(uid))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(100):
        if staging.data_path(uid).exists():
            break
        await asyncio.sleep(0.01)
    assert staging.data_path(uid).exists()  # made (the GC removes it, should no upload record follow)


async def test_readiness_writes_to_the_folder_only_once_a_request_met_an_io_error(staging: ChunkStaging):
    """The check writes and syncs a probe page after an I/O error (and passes once that succeeds),
    never before: a folder where the probe cannot be written (a folder in its place) passes until then."""
    blocked = staging.root / ".vezastream-write-probe"
    blocked.mkdir(parents=True)
    await staging.check()  # not written to: the blocked probe is never met
    staging.io_failed()
    with pytest.raises(IsADirectoryError):
        await staging.check()
    with pytest.raises(IsADirectoryError):  # still failing: the probe has not succeeded since
        await staging.check()
    blocked.rmdir()
    await staging.check()
    assert left_in(staging.root) == []
    blocked.mkdir()
    await staging.check()  # passed: written to no more


async def test_readiness_checks_at_once_after_an_io_error_leave_the_next_error_seen(staging: ChunkStaging):
    """A balancer and an orchestrator probe at the same time: both probes clear the same error, and
    an error met after them still fails the next check (before, the two cleared it twice, and the
    next error only brought the count back to none)."""
    staging.io_failed()
    await asyncio.gather(staging.check(), staging.check())
    blocked = staging.root / ".vezastream-write-probe"
    blocked.mkdir()
    staging.io_failed()
    with pytest.raises(IsADirectoryError):
        await staging.check()
