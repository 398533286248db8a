"""Fault drill: the disk fills up (issue 15, finding 5).

The server's data folder is a small tmpfs (staged chunks, tus data files and the
local sink's files all live there; Redis lives elsewhere). With the disk full, a
native chunk PUT, a tus PATCH and a completion that must copy answer 507
problem+json with Retry-After, record nothing and leave no half-written file;
once there is room again, the same requests succeed and every upload reads
back byte-identical.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import content, create, put_chunk, random_bytes, split
from tus_helpers import TUS, tus_create, tus_patch, upload_path

pytestmark = [pytest.mark.slow, pytest.mark.drill]

DISK = "16m"
SIZE = 2 * 1024 * 1024  # each upload
CHUNK = 1024 * 1024  # bodies of 1 MiB take the zero-copy path (server.zero_copy_bodies)
SMALL = 256 * 1024  # bodies this small are written by the kernel's AIO (storage.kernel_io, on a tmpfs too)


@contextlib.contextmanager
def small_disk(where: Path) -> Iterator[Path]:
    """A tmpfs of ``DISK`` at ``where``, unmounted at the end whatever happens."""
    where.mkdir(parents=True)
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK}", "tmpfs", str(where)],
                              capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"cannot mount a tmpfs to fill up ({exc}); the drill needs root or CAP_SYS_ADMIN")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to fill up: {done.stderr.strip()}; "
                    "the drill needs root or CAP_SYS_ADMIN")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=10)


def fill(disk: Path, leave: int = 0) -> Path:
    """Take every free byte of ``disk`` but ``leave`` with one file; its path (remove it to free the space)."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for block in (1024 * 1024, 4096, 1):
            data = b"\0" * block
            while True:
                try:
                    os.write(fd, data)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
        os.ftruncate(fd, max(0, os.fstat(fd).st_size - leave))
    finally:
        os.close(fd)
    return filler


def leftovers(root: Path) -> list[str]:
    """Half-written files: temporary ``.part`` files anywhere under ``root``."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.part"))


async def disk_full_answer(resp, retry_after: list[int]) -> None:
    body = await resp.json(content_type=None)
    assert resp.status == 507, body
    assert resp.headers["Content-Type"].startswith("application/problem+json")
    assert body["type"].endswith("/insufficient-storage")
    assert "/" not in body["detail"]  # no server path
    retry_after.append(int(resp.headers["Retry-After"]))
    assert retry_after[-1] == 60  # reliability.md: a full disk is not freed in a second


@pytest.mark.parametrize("in_place, chunk", [(True, CHUNK), (False, CHUNK), (True, SMALL)],
                         ids=["in-place", "chunk-files", "small-bodies"])
async def test_disk_full_answers_507_then_succeeds(tmp_path, make_settings, make_client, report, in_place, chunk):
    with small_disk(tmp_path / "disk") as disk:
        # Chunk files: the local sink copies them at completion, so it too meets the full disk
        # (an in-place upload's one file is hard-linked: that needs no room).
        settings = make_settings(**{"storage.data_dir": str(disk), "storage.in_place": in_place})
        client = await make_client(settings)
        started = time.monotonic()
        native_data, tus_data, late_data = random_bytes(SIZE), random_bytes(SIZE), random_bytes(SIZE)
        native = (await create(client, total_size=SIZE, chunk_size=chunk))["upload_id"]
        late = (await create(client, total_size=SIZE, chunk_size=chunk))["upload_id"]
        tus = upload_path(await tus_create(client, length=SIZE))
        await tus_patch(client, tus, 0, tus_data[:chunk])  # a first segment, before the disk fills
        for n, piece in enumerate(split(late_data, chunk), 1):  # staged; its completion will copy
            await put_chunk(client, late, n, piece)

        # The disk fills up while the bodies arrive: half a chunk is written, then ENOSPC.
        filler = fill(disk, leave=chunk // 2)
        retry_after: list[int] = []
        # The native door: a chunk PUT.
        resp = await client.put(f"/v1/uploads/{native}/chunks/1", data=native_data[:chunk])
        await disk_full_answer(resp, retry_after)
        state = await (await client.get(f"/v1/uploads/{native}")).json()
        assert state["chunks_received"] == []  # nothing registered
        # The tus door: a PATCH; the offset stays at what was registered before.
        fill(disk, leave=chunk // 2)
        end = SIZE if chunk == CHUNK else 2 * chunk  # a small body for the small-bodies case
        resp = await client.patch(tus, data=tus_data[chunk:end], headers={
            **TUS, "Content-Type": "application/offset+octet-stream", "Upload-Offset": str(chunk)})
        await disk_full_answer(resp, retry_after)
        head = await client.head(tus, headers=TUS)
        assert head.headers["Upload-Offset"] == str(chunk)
        if not in_place:  # the local sink assembling: a completion that must copy the chunks
            fill(disk, leave=chunk // 2)
            resp = await client.post(f"/v1/uploads/{late}/complete")
            await disk_full_answer(resp, retry_after)
            assert (await (await client.get(f"/v1/uploads/{late}")).json())["status"] == "pending"
        assert leftovers(disk) == []

        filler.unlink()  # room again
        for n, piece in enumerate(split(native_data, chunk), 1):
            await put_chunk(client, native, n, piece)
        assert (await client.post(f"/v1/uploads/{native}/complete")).status == 200
        offset = int((await client.head(tus, headers=TUS)).headers["Upload-Offset"])
        await tus_patch(client, tus, offset, tus_data[offset:])
        assert (await client.post(f"/v1/uploads/{late}/complete")).status == 200

        lost = 0
        for upload_id, data in ((native, native_data), (late, late_data)):
            status, body = await content(client, upload_id)
            lost += 0 if (status, body) == (200, data) else len(data)
        resp = await client.get(tus, headers=TUS)
        lost += 0 if await resp.read() == tus_data else len(tus_data)
        assert lost == 0
        assert leftovers(disk) == []
        report(f"disk_full[{'in-place' if in_place else 'chunk-files'}{'' if chunk == CHUNK else ', small bodies'}]", disk=DISK, answers_507=len(retry_after), retry_after_s=max(retry_after),
               bytes_lost=lost, recovered="yes", drill_s=round(time.monotonic() - started, 1))
