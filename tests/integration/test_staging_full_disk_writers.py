"""A full disk meets each of the staging area's writers, and the client gets the same answer.

A chunk body is written by one of three writers (vezastream/staging): the kernel's AIO
through libaio, the kernel's AIO through caio (a system without libaio.so.1), or a worker
thread. Each meets ``ENOSPC`` its own way (an ``OSError`` from the kernel, caio's
``SystemError``, a failed ``pwrite``); each must end as a 507 ``insufficient-storage``
that names no path, register nothing and leave no half-written file, and the same
request must succeed once there is room again.

The disk is a small tmpfs mounted for the test (it needs root or CAP_SYS_ADMIN).
"""

from __future__ import annotations

import sys

import pytest

from helpers import WRITERS, held_open, writer_of
from mounts import fill_up, mounted
from vezastream.testing import content, create, put_chunk, random_bytes

DISK = "8m"


@pytest.mark.parametrize("writer, in_place, size, overrides", WRITERS)
async def test_a_full_disk_answers_507_from_every_writer_then_the_chunk_lands(
        tmp_path, make_settings, make_client, monkeypatch, writer, in_place, size, overrides):
    if writer == "caio":
        monkeypatch.setitem(sys.modules, "libaio", None)  # as on a system without libaio.so.1
    with mounted("tmpfs", tmp_path / "disk", f"size={DISK}") as disk:
        settings = make_settings(**{"storage.data_dir": str(disk), "storage.in_place": in_place, **overrides})
        client = await make_client(settings)
        assert writer_of(client) == writer
        data = random_bytes(size)
        uid = (await create(client, total_size=size, chunk_size=size))["upload_id"]
        filler = fill_up(disk)

        resp = await client.put(f"/v1/uploads/{uid}/chunks/1", data=data)
        body = await resp.json(content_type=None)
        assert resp.status == 507, body
        assert resp.content_type == "application/problem+json" and body["type"].endswith("/insufficient-storage")
        assert str(disk) not in body["detail"] and resp.headers["Retry-After"] == "60"
        assert (await (await client.get(f"/v1/uploads/{uid}")).json())["chunks_received"] == []
        assert sorted(p.name for p in disk.rglob("*.part")) == []
        assert held_open(settings.storage.chunks_dir) == []  # no descriptor of the failed body's file stays open

        filler.unlink()
        await put_chunk(client, uid, 1, data)
        assert (await client.post(f"/v1/uploads/{uid}/complete")).status == 200
        assert await content(client, uid) == (200, data)
