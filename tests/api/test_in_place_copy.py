"""An in-place upload assembled from a copy: some chunk was staged on its own (its range's claim was busy).

Completion then copies the registered bytes (the data file's ranges, the staged chunk files)
into a fresh file. It must give the same bytes where the kernel cannot copy between files
(``copy_file_range``: EXDEV, ENOSYS), and refuse, leaving no half-built copy, when the data
file holds fewer bytes than were registered.
"""

from __future__ import annotations

import errno
import logging

from helpers import content, create, put_chunk, status_of, store_of
from vezastream.engine.layouts import inplace

DATA = b"abcdefgh"


async def with_a_chunk_staged_on_its_own(client) -> str:
    """An in-place upload whose chunk 1 went into its data file, and chunk 2 into a file of its own."""
    uid = (await create(client, total_size=len(DATA), chunk_size=4))["upload_id"]
    # A request on a node that died held chunk 2's claim: the next body for it is staged on its own.
    assert (await store_of(client).claim_chunk(uid, 2, "deadbeefdeadbeef.3", 3600))[0] == "claimed"
    await put_chunk(client, uid, 1, DATA[:4])
    await put_chunk(client, uid, 2, DATA[4:])
    return uid


async def test_without_kernel_copies_the_copy_holds_the_same_bytes(client, settings, monkeypatch, caplog):
    uid = await with_a_chunk_staged_on_its_own(client)

    def cannot(*args, **kwargs):
        raise OSError(errno.EXDEV, "Invalid cross-device link")  # e.g. an older kernel, or another file system

    monkeypatch.setattr(inplace.os, "copy_file_range", cannot)
    caplog.set_level(logging.INFO, logger="vezastream.engine")
    resp = await client.post(f"/v1/uploads/{uid}/complete")
    assert resp.status == 200, await resp.text()
    assert "in-place upload assembled from a copy" in caplog.messages  # the path under test was taken
    assert await content(client, uid) == (200, DATA)


async def test_a_data_file_shorter_than_registered_is_refused_and_no_copy_is_left(client, settings):
    uid = await with_a_chunk_staged_on_its_own(client)
    data_file = settings.storage.chunks_dir / f"{uid}.data"
    with open(data_file, "r+b") as f:
        f.truncate(2)  # bytes lost behind the server's back (a restored backup, a full disk)
    resp = await client.post(f"/v1/uploads/{uid}/complete")
    body = await resp.json(content_type=None)
    assert resp.status == 409, body
    assert body["detail"] == f"{uid}.data holds fewer bytes than registered"
    assert await status_of(client, uid) == "pending"
    assert not list((settings.storage.chunks_dir / uid).glob("assembled.*"))
