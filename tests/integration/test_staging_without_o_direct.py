"""Staging on a filesystem that refuses ``O_DIRECT`` (as ramfs does, and tmpfs before Linux 6.6).

``storage.direct_io`` writes a body's whole blocks, and reads staged files back for
their digest, with ``O_DIRECT``; where opening with it fails (``EINVAL``), the page cache
must carry the same bytes (vezastream/staging/directio.py, reader.py, kernelio.py). The
filesystem is a real ramfs mounted for the test (it needs root or CAP_SYS_ADMIN).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from mounts import mounted
from vezastream.staging.kernelio import BLOCK, KernelIO, placed
from vezastream.testing import content, random_bytes, sha256, upload

MiB = 1024 * 1024


@pytest.fixture
def ramfs(tmp_path: Path) -> Iterator[Path]:
    """A ramfs at ``tmp_path / "ram"`` that refuses O_DIRECT, unmounted at the end whatever happens."""
    with mounted("ramfs", tmp_path / "ram") as where:
        with contextlib.suppress(OSError):
            os.close(os.open(where / "probe", os.O_WRONLY | os.O_CREAT | os.O_DIRECT))
            pytest.skip("this ramfs takes O_DIRECT")
        yield where


@pytest.mark.parametrize("in_place", [True, False], ids=["in-place", "chunk-files"])
async def test_uploads_staged_where_o_direct_is_refused_read_back_identical(make_client, make_settings, ramfs,
                                                                           in_place):
    # Chunks of 2 MiB fill the staging area's aligned buffers (the O_DIRECT writes); chunk files
    # are read back in whole blocks for the upload's digest at completion.
    client = await make_client(make_settings(**{"storage.data_dir": str(ramfs), "storage.in_place": in_place,
                                                "storage.direct_io": True}))
    data = random_bytes(5 * MiB + 12_345)
    result = await upload(client, data, 2 * MiB, concurrency=2)
    assert result["size"] == len(data) and result["sha256"] == sha256(data)
    assert await content(client, result["upload_id"]) == (200, data)


async def test_the_kernels_aio_writes_through_the_page_cache_where_o_direct_is_refused(tmp_path, ramfs):
    """A small body's whole blocks go with O_DIRECT (libaio); a file that refuses it still gets every byte."""
    kernel = KernelIO.start(tmp_path, "auto", backends=("libaio",))
    if kernel is None or not kernel.aligned:
        pytest.skip("needs libaio (the system's libaio.so.1)")
    try:
        path = ramfs / "data"
        before = random_bytes(100)
        path.write_bytes(before)
        data = random_bytes(3 * BLOCK + 17)
        fd = os.open(path, os.O_WRONLY)
        try:
            await asyncio.wait_for(kernel.write_placed(fd, path, placed([data], len(data), len(before)),
                                                       len(before), sync=True, direct=True), 10)
        finally:
            os.close(fd)
        assert path.read_bytes() == before + data
    finally:
        kernel.close()
