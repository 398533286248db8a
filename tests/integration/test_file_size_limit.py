"""A file size limit the server runs under (``ulimit -f``, systemd's ``LimitFSIZE``, a filesystem's
largest file) met by a chunk or a PATCH: the write fails with EFBIG (Python ignores SIGXFSZ).

Each writer of the staging area (the kernel's AIO through libaio or caio, a worker thread), through
both doors, must answer as a full disk does: 507 ``insufficient-storage`` with ``Retry-After``,
naming no path, recording nothing and leaving no half-written chunk file; once the limit is raised,
the same request lands. (A 500 ``internal-error`` before.)

The limit is set on this process, where the test server runs, for the moment of the request.
"""

from __future__ import annotations

import contextlib
import resource
import sys
from collections.abc import Iterator

import pytest

from helpers import WRITERS, writer_of
from tus_helpers import TUS, tus_create, tus_patch, upload_path
from vezastream.testing import content, create, put_chunk, random_bytes


@contextlib.contextmanager
def file_size_limit(limit: int) -> Iterator[None]:
    """This process may write no file past ``limit`` bytes (RLIMIT_FSIZE's soft limit), until the block ends."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


async def refused(resp) -> None:
    body = await resp.json(content_type=None)
    assert resp.status == 507, body
    assert resp.content_type == "application/problem+json" and body["type"].endswith("/insufficient-storage")
    assert "/" not in body["detail"] and resp.headers["Retry-After"] == "60", body


@pytest.mark.parametrize("writer, in_place, size, overrides", WRITERS)
async def test_a_chunk_past_the_file_size_limit_answers_507_then_lands_once_raised(
        make_settings, make_client, monkeypatch, writer, in_place, size, overrides):
    if writer == "caio":
        monkeypatch.setitem(sys.modules, "libaio", None)  # as on a system without libaio.so.1
    settings = make_settings(**{"storage.in_place": in_place, **overrides})
    client = await make_client(settings)
    assert writer_of(client) == writer
    data = random_bytes(size)
    uid = (await create(client, total_size=size, chunk_size=size))["upload_id"]

    with file_size_limit(size // 2):
        await refused(await client.put(f"/v1/uploads/{uid}/chunks/1", data=data))
        assert (await (await client.get(f"/v1/uploads/{uid}")).json())["chunks_received"] == []
    assert sorted(p.name for p in settings.storage.chunks_dir.rglob("*.part")) == []

    await put_chunk(client, uid, 1, data)
    assert (await client.post(f"/v1/uploads/{uid}/complete")).status == 200
    assert await content(client, uid) == (200, data)


async def test_a_patch_past_the_file_size_limit_answers_507_records_nothing_then_lands(make_settings, make_client):
    client = await make_client(make_settings())
    data = random_bytes(3 * 1024 * 1024)
    path = upload_path(await tus_create(client, len(data)))
    await tus_patch(client, path, 0, data[:1024 * 1024])

    with file_size_limit(2 * 1024 * 1024):
        await refused(await tus_patch(client, path, 1024 * 1024, data[1024 * 1024:], expect=None))
        head = await client.head(path, headers=TUS)
        assert head.headers["Upload-Offset"] == str(1024 * 1024)

    await tus_patch(client, path, 1024 * 1024, data[1024 * 1024:])
    resp = await client.get(path, headers=TUS)
    assert resp.status == 200 and await resp.read() == data


async def test_a_completion_whose_file_passes_the_limit_answers_507_and_completes_once_raised(
        make_settings, make_client):
    """The local sink joins separate chunk files into one (``storage.in_place`` off): that file passes the
    limit though each chunk is under it. The upload stays pending (a 502 ``sink-failed`` before)."""
    settings = make_settings(**{"storage.in_place": False})
    client = await make_client(settings)
    data = random_bytes(2 * 512 * 1024)
    uid = (await create(client, total_size=len(data), chunk_size=512 * 1024))["upload_id"]
    with file_size_limit(768 * 1024):
        await put_chunk(client, uid, 1, data[:512 * 1024])
        await put_chunk(client, uid, 2, data[512 * 1024:])
        await refused(await client.post(f"/v1/uploads/{uid}/complete"))
        assert (await (await client.get(f"/v1/uploads/{uid}")).json())["status"] == "pending"
    files = settings.storage.data_dir / "files"
    assert [p for p in files.rglob("*") if p.is_file()] == []  # no half-written file left in the sink

    assert (await client.post(f"/v1/uploads/{uid}/complete")).status == 200
    assert await content(client, uid) == (200, data)
    assert len([p for p in files.rglob("*") if p.is_file()]) == 1  # where the sink keeps it
