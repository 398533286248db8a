"""An operation that Linux native AIO refuses at submission (``io_submit`` fails: a descriptor not
open for writing here; on a busy machine, resources it lacks) fails its own caller at once,
with the kernel's error number, instead of leaving it waiting for a completion that never
comes; the operations after it still run (vezastream/staging/kernelio.py, LibaioContext)."""

from __future__ import annotations

import asyncio
import errno
import os
import sys

import pytest

from vezastream.staging import kernelio
from vezastream.testing import random_bytes


@pytest.fixture
async def context():
    if not sys.platform.startswith("linux"):
        pytest.skip("Linux native AIO is Linux's")
    try:
        made = kernelio.LibaioContext(asyncio.get_running_loop())
    except (ImportError, OSError):
        if os.environ.get("CI"):
            raise
        pytest.skip("libaio needs the system's libaio.so.1 (Debian: apt-get install libaio1)")
    yield made
    made.close()


async def test_a_refused_submission_fails_its_caller_and_the_next_operations_run(context, tmp_path):
    path = tmp_path / "data"
    path.write_bytes(b"")
    read_only = os.open(path, os.O_RDONLY)
    writable = os.open(path, os.O_WRONLY)
    try:
        data = bytearray(random_bytes(4096))
        refused = context.write(memoryview(data), read_only, 0)
        with pytest.raises(OSError) as caught:
            await asyncio.wait_for(refused, 5)
        assert caught.value.errno == errno.EBADF
        assert await asyncio.wait_for(context.write(memoryview(data), writable, 0), 5) == len(data)
        assert await asyncio.wait_for(context.fdsync(writable), 5) == 0
    finally:
        os.close(read_only)
        os.close(writable)
    assert path.read_bytes() == bytes(data)
