"""Small bodies written by Linux native AIO from the event loop (vezastream/staging/kernelio.py)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import errno
import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vezastream import errors
from vezastream.staging import ChunkStaging
from vezastream.staging import kernelio
from vezastream.staging.kernelio import BLOCK, SMALL_BODY, KernelIO, as_os_error, filesystem_of

from engine_parts import body
from helpers import random_bytes, sha256
from tests.tus_helpers import tus_create, tus_patch, upload_path
from vezastream.http.app import engine_key
from vezastream.testing import content, create, put_chunk, upload

MOUNTINFO = """\
22 1 252:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
30 22 0:26 / /tmp rw,nosuid shared:5 - tmpfs tmpfs rw
41 22 0:40 / /srv/shared rw,relatime shared:9 - nfs4 server:/export rw,vers=4.2
42 41 252:1 / /srv/shared/local\\040disk rw shared:10 - xfs /dev/vdb rw
"""


@pytest.mark.parametrize("path, kind", [
    ("/var/lib/vezastream", "ext4"), ("/tmp/x/chunks", "tmpfs"), ("/tmp", "tmpfs"),
    ("/srv/shared/data", "nfs4"), ("/srv/shared/local disk/data", "xfs"), ("/srv/sharedother", "ext4"),
])
def test_the_filesystem_a_path_lives_on(path, kind):
    assert filesystem_of(Path(path), MOUNTINFO) == kind


def test_a_failed_operation_keeps_its_error_number():
    assert as_os_error(SystemError(os.strerror(errno.ENOSPC))).errno == errno.ENOSPC
    assert as_os_error(SystemError("something else")).errno == errno.EIO


class _Counting(concurrent.futures.ThreadPoolExecutor):
    """The loop's executor, counting thread trips (or failing on any with ``refuse``)."""

    def __init__(self, refuse: bool = False) -> None:
        super().__init__(2)
        self.refuse, self.trips = refuse, 0

    def submit(self, fn, /, *args, **kwargs):
        if self.refuse:
            raise AssertionError(f"a thread trip: {fn!r}")
        self.trips += 1
        return super().submit(fn, *args, **kwargs)


@pytest.fixture(params=["libaio", "caio"])
async def kernel_staging(settings, request) -> ChunkStaging:
    """A staging area whose small bodies go through one of the two AIO libraries (kernelio.py)."""
    area = ChunkStaging(settings.storage.chunks_dir, durable=True)
    settings.storage.chunks_dir.mkdir(parents=True, exist_ok=True)
    if not sys.platform.startswith("linux"):
        pytest.skip("Linux native AIO is Linux's")
    area.kernel = KernelIO.start(area.root, "auto", backends=(request.param,))
    if area.kernel is None and request.param == "libaio" and not os.environ.get("CI"):
        pytest.skip("libaio needs the system's libaio.so.1 (Debian: apt-get install libaio1), "
                    "which scripts/test installs")
    if area.kernel is None:
        pytest.fail(f"Linux native AIO through {request.param} (the fast extra) was expected here: a local filesystem")
    yield area
    area.close()


async def test_off_means_worker_threads(settings):
    area = ChunkStaging(settings.storage.chunks_dir)
    area.start_kernel_io("off")
    assert area.kernel is None
    area.close()


async def test_auto_keeps_the_threads_on_a_network_filesystem(settings, monkeypatch):
    """The real mountinfo, with this data folder's filesystem taken as a network one (as NFS is)."""
    settings.storage.chunks_dir.mkdir(parents=True, exist_ok=True)
    monkeypatch.setattr(kernelio, "LOCAL_FILESYSTEMS", frozenset())
    area = ChunkStaging(settings.storage.chunks_dir)
    area.start_kernel_io("auto")
    assert area.kernel is None
    area.close()


async def test_without_libaio_the_small_bodies_go_through_caio(settings, monkeypatch):
    """A system without libaio.so.1 (or the package) still gets Linux AIO, through caio."""
    if not sys.platform.startswith("linux"):
        pytest.skip("Linux native AIO is Linux's")
    settings.storage.chunks_dir.mkdir(parents=True, exist_ok=True)
    monkeypatch.setitem(sys.modules, "libaio", None)  # its import fails, as on such a system
    area = ChunkStaging(settings.storage.chunks_dir)
    area.start_kernel_io("auto")
    try:
        assert area.kernel is not None and not area.kernel.aligned
    finally:
        area.close()


async def test_small_appends_land_at_their_offsets_without_a_thread(kernel_staging: ChunkStaging):
    uid = "k" * 22
    await kernel_staging.create_data_file(uid)
    asyncio.get_running_loop().set_default_executor(_Counting(refuse=True))
    data = random_bytes(3 * SMALL_BODY)
    running = hashlib.sha256()
    offset = 0
    for size in (SMALL_BODY, 1, SMALL_BODY - 1, SMALL_BODY):
        locked = await kernel_staging.lock_data_file(uid)
        assert locked is not None
        try:
            staged = await kernel_staging.receive_at(uid, offset, body(data[offset:offset + size], 10_000),
                                                     limit=len(data) - offset, hasher=running, locked=locked,
                                                     size=size)
        finally:
            os.close(locked)
        offset += size
        assert staged.size == size and staged.sha256 == sha256(data[:offset])  # the running digest
    assert kernel_staging.data_path(uid).read_bytes() == data
    assert kernel_staging.buffers.out == 0  # every body's bytes counted back


async def test_a_small_body_past_its_limit_or_the_file_writes_nothing(kernel_staging: ChunkStaging):
    uid = "l" * 22
    await kernel_staging.create_data_file(uid)
    locked = await kernel_staging.lock_data_file(uid)
    try:
        with pytest.raises(errors.TooLarge):
            await kernel_staging.receive_at(uid, 0, body(b"x" * 1000), limit=999, locked=locked, size=1000)
        with pytest.raises(errors.Conflict):  # the file does not hold the bytes before this offset
            await kernel_staging.receive_at(uid, 10, body(b"y" * 100), limit=1000, locked=locked, size=100)
    finally:
        os.close(locked)
    assert kernel_staging.data_path(uid).read_bytes() == b""
    assert kernel_staging.buffers.out == 0


async def test_a_refused_small_body_answers_after_its_bytes_are_durable(kernel_staging: ChunkStaging):
    """``check`` runs once the bytes are written (as the threads' path does); its error reaches the caller."""
    uid = "m" * 22
    await kernel_staging.create_data_file(uid)
    seen: list[tuple[int, str]] = []

    def refuse(size: int, digest: str) -> None:
        seen.append((size, digest))
        raise errors.DigestMismatch("not the declared digest")
    with pytest.raises(errors.DigestMismatch):
        await kernel_staging.receive_in_place(uid, 0, body(b"z" * 5000), limit=5000, check=refuse)
    assert seen == [(5000, sha256(b"z" * 5000))]
    assert kernel_staging.buffers.out == 0


async def test_small_chunks_in_place_out_of_order_and_held(kernel_staging: ChunkStaging):
    uid = "n" * 22
    await kernel_staging.create_data_file(uid)
    asyncio.get_running_loop().set_default_executor(_Counting(refuse=True))
    chunk = 100_000
    data = random_bytes(4 * chunk)
    held = []
    for n in (3, 1, 4, 2):
        piece = data[(n - 1) * chunk:n * chunk]
        staged = await kernel_staging.receive_in_place(uid, (n - 1) * chunk, body(piece), limit=chunk, hold=True)
        assert staged.sha256 == sha256(piece)
        assert staged.held is not None and b"".join(staged.held.views) == piece
        held.append(staged.held)
    assert kernel_staging.buffers.out == 4 * chunk  # held bodies count against the budget
    for h in held:
        h.release()
    assert kernel_staging.buffers.out == 0
    assert kernel_staging.data_path(uid).read_bytes() == data


async def test_past_the_memory_budget_small_bodies_go_to_the_threads(kernel_staging: ChunkStaging, monkeypatch):
    uid = "o" * 22
    await kernel_staging.create_data_file(uid)
    monkeypatch.setattr(kernel_staging.buffers, "reserve", lambda size: False)  # the budget is spent
    counting = _Counting()
    asyncio.get_running_loop().set_default_executor(counting)
    data = random_bytes(50_000)
    staged = await kernel_staging.receive_in_place(uid, 0, body(data), limit=len(data))
    assert staged.sha256 == sha256(data) and counting.trips >= 1
    assert kernel_staging.data_path(uid).read_bytes() == data


@pytest.mark.parametrize("door", ["tus", "native"])
async def test_a_whole_small_upload_makes_one_thread_trip(make_client, make_settings, door):
    """Created, sent in 2 bodies and completed into the local sink: its bodies, the sink's link, rename
    and syncs, the staged file's removal: all on the event loop with the kernel's AIO (where that is on:
    a local filesystem). Only its data file's creation (and its folder's sync) takes a thread trip
    (test_data_files_are_created_off_the_event_loop). The file reads back whole."""
    if not sys.platform.startswith("linux"):
        pytest.skip("Linux native AIO is Linux's")
    client = await make_client(make_settings(**{"storage.kernel_io": "auto"}))
    # The local sink's first completion in a process looks up, in a thread trip, where its folder lives.
    await upload(client, b"warm", chunk_size=4)
    data = random_bytes(2 * 100_000)
    loop = asyncio.get_running_loop()
    counting = _Counting()
    loop.set_default_executor(counting)
    try:
        if door == "tus":
            path = upload_path(await tus_create(client, len(data)))
            await tus_patch(client, path, 0, data[:100_000])
            await tus_patch(client, path, 100_000, data[100_000:])
            upload_id = path.rsplit("/", 1)[1]
        else:
            upload_id = (await create(client, total_size=len(data), chunk_size=100_000))["upload_id"]
            for n in (1, 2):
                await put_chunk(client, upload_id, n, data[(n - 1) * 100_000:n * 100_000])
            done = await client.post(f"/v1/uploads/{upload_id}/complete")
            assert done.status == 200, await done.text()
    finally:
        loop.set_default_executor(concurrent.futures.ThreadPoolExecutor(2))
    assert counting.trips == 1
    assert await content(client, upload_id) == (200, data)
    assert not list(client.app[engine_key].staging.root.glob(f"{upload_id}*"))  # the staged file is gone


async def test_data_files_are_created_off_the_event_loop(kernel_staging: ChunkStaging, monkeypatch):
    """A new inode can wait for the journal that other requests' syncs keep busy (here: 10 ms each).
    The event loop, which every other request needs, does not wait with it."""
    real_open = os.open

    def slow_create(path, flags, *args, **kwargs):
        if flags & os.O_EXCL:
            time.sleep(0.01)
        return real_open(path, flags, *args, **kwargs)

    loop = asyncio.get_running_loop()
    lags: list[float] = []

    async def beat() -> None:
        for _ in range(2_000):
            began = loop.time()
            await asyncio.sleep(0.001)
            lags.append(loop.time() - began)

    monkeypatch.setattr(os, "open", slow_create)
    uids = [f"c{n:021d}" for n in range(30)]
    beating = asyncio.create_task(beat())
    await asyncio.sleep(0.01)
    await asyncio.gather(*(kernel_staging.create_data_file(uid) for uid in uids))
    beating.cancel()
    assert all(kernel_staging.data_path(uid).exists() for uid in uids)
    assert lags and max(lags) < 0.15  # on the loop, the 30 creates held it for 0.3 s at once


async def test_a_large_staged_file_is_removed_in_a_worker_thread(kernel_staging: ChunkStaging):
    """Freeing a large file's blocks can take milliseconds: not on the event loop. A small one, or one
    the local sink holds another name of, is removed there (no thread trip)."""
    loop = asyncio.get_running_loop()
    big, small, linked = "b" * 22, "s" * 22, "l" * 22
    for uid in (big, small, linked):
        await kernel_staging.create_data_file(uid)
    with open(kernel_staging.data_path(big), "r+b") as fh:
        os.posix_fallocate(fh.fileno(), 0, 80 * 1024 * 1024)  # allocated blocks, not a sparse file
    with open(kernel_staging.data_path(linked), "r+b") as fh:
        os.posix_fallocate(fh.fileno(), 0, 80 * 1024 * 1024)
    os.link(kernel_staging.data_path(linked), kernel_staging.root / "sink-name")
    kernel_staging.data_path(small).write_bytes(b"x" * 100_000)
    counting = _Counting()
    loop.set_default_executor(counting)
    for uid in (small, linked):
        await kernel_staging.remove_upload(uid)
    assert counting.trips == 0
    await kernel_staging.remove_upload(big)
    assert counting.trips == 1
    assert not any(kernel_staging.data_path(uid).exists() for uid in (big, small, linked))
    assert (kernel_staging.root / "sink-name").stat().st_size == 80 * 1024 * 1024


def _cached_bytes(path: Path) -> int:
    """How many bytes of ``path`` the page cache holds (util-linux's ``fincore``)."""
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--raw", "--output", "RES", str(path)],
                         capture_output=True, text=True, check=True, timeout=10)
    return int(out.stdout.split()[0])


async def test_small_bodies_whole_blocks_skip_the_page_cache(kernel_staging: ChunkStaging):
    """Through libaio, a small body's whole 4 KiB blocks go to the disk with O_DIRECT: the page cache
    gets only the blocks it shares with the bytes before or after it (filling fresh page-cache pages
    costs the event loop several times the copy into a buffer). Through caio, every byte is cached."""
    if shutil.which("fincore") is None:
        pytest.skip("needs util-linux's fincore")
    uid = "p" * 22
    await kernel_staging.create_data_file(uid)
    path = kernel_staging.data_path(uid)
    sizes = (65_536, 65_536, 100_000, 5_000)  # two aligned bodies; one with a tail; one inside two blocks
    data = random_bytes(sum(sizes))
    offset = 0
    for size in sizes:
        locked = await kernel_staging.lock_data_file(uid)
        try:
            await kernel_staging.receive_at(uid, offset, body(data[offset:offset + size], 30_000),
                                            limit=size, locked=locked, size=size)
        finally:
            os.close(locked)
        offset += size
    cached = _cached_bytes(path)
    if kernel_staging.kernel.aligned:
        assert cached == 2 * BLOCK  # the third body's last block (shared with the fourth) and the fourth's second
    else:
        assert cached == -(-len(data) // BLOCK) * BLOCK
    assert path.read_bytes() == data


async def test_a_direct_write_the_device_refuses_goes_through_the_page_cache(kernel_staging: ChunkStaging):
    """Memory that is not where O_DIRECT wants it (the device answers EINVAL): the bytes still land."""
    kernel = kernel_staging.kernel
    if not kernel.aligned:
        pytest.skip("caio writes through the page cache only")
    path = kernel_staging.root / "refused"
    path.write_bytes(b"")
    data = random_bytes(3 * BLOCK)
    room = bytearray(len(data) + BLOCK + 1)
    view = memoryview(room)
    base = ctypes.addressof(ctypes.c_char.from_buffer(room))
    start = (1 - base) % BLOCK  # one byte past a page: no device takes that for O_DIRECT
    view = view[start:start + len(data)]
    view[:] = data
    fd = os.open(path, os.O_WRONLY)
    try:
        await kernel.write_placed(fd, path, view, 0, sync=True, direct=True)
    finally:
        os.close(fd)
    assert path.read_bytes() == data


async def test_operations_past_the_in_flight_bound_wait_their_turn(settings, monkeypatch):
    """libaio: more operations than MAX_IN_FLIGHT are sent as earlier ones end, and all land; at close,
    those never sent fail (ECANCELED) instead of leaving their callers waiting."""
    if not sys.platform.startswith("linux"):
        pytest.skip("Linux native AIO is Linux's")
    monkeypatch.setattr(kernelio, "MAX_IN_FLIGHT", 2)
    try:
        context = kernelio.LibaioContext(asyncio.get_running_loop())
    except (ImportError, OSError):
        if os.environ.get("CI"):
            raise
        pytest.skip("libaio needs the system's libaio.so.1 (Debian: apt-get install libaio1)")
    path = settings.storage.chunks_dir / "many"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    fd = os.open(path, os.O_WRONLY)
    try:
        pieces = [bytearray(os.urandom(1000)) for _ in range(10)]
        written = await asyncio.gather(*(context.write(memoryview(p), fd, i * 1000) for i, p in enumerate(pieces)))
        assert written == [1000] * 10
        assert path.read_bytes() == b"".join(pieces)
        syncs = [context.fdsync(fd) for _ in range(5)]  # 2 sent, 3 waiting
        context.close()
        outcomes = await asyncio.wait_for(asyncio.gather(*syncs, return_exceptions=True), 10)
    finally:
        os.close(fd)
    assert outcomes[:2] == [0, 0]  # the two in the kernel were waited for and ended
    assert all(isinstance(o, OSError) and o.errno == errno.ECANCELED for o in outcomes[2:])


def test_a_libaio_context_of_a_closed_loop_still_lets_go_of_its_descriptors(tmp_path):
    """The local sink closes the context of a loop that has ended (a new loop took over): nothing
    is left to wake there, but the AIO context and its eventfd must still go."""
    if not sys.platform.startswith("linux"):
        pytest.skip("Linux native AIO is Linux's")
    loop = asyncio.new_event_loop()
    before = set(os.listdir("/proc/self/fd"))
    try:
        context = kernelio.LibaioContext(loop)
    except (ImportError, OSError):
        loop.close()
        if os.environ.get("CI"):
            raise
        pytest.skip("libaio needs the system's libaio.so.1 (Debian: apt-get install libaio1)")
    path = tmp_path / "f"
    path.write_bytes(b"x")
    fd = os.open(path, os.O_WRONLY)
    try:
        syncing = context.fdsync(fd)
        syncing.add_done_callback(lambda _: None)  # someone waited on it (a task would)
        loop.close()
        context.close()
    finally:
        os.close(fd)
    assert set(os.listdir("/proc/self/fd")) <= before  # its eventfd (and the loop's own) closed
