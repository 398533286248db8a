"""tus.md, rolling upgrades: uploads an older version staged, in its own layout, still complete.

An older version kept an append upload's data file in a folder of its own (``<chunks>/<id>/data``),
and before that made no data file at creation (the first PATCH made it). Each is built the way that
version left it: the upload made through the current code (Redis record, staged bytes), the app
stopped, then its files moved into the older layout before a new app starts on the same Redis and
data folder (the staging area looks for older folders at start-up).
"""

from __future__ import annotations

import pytest

from helpers import random_bytes, sha256
from tus_helpers import TUS, tus_create, tus_patch, upload_path
from vezastream.testing import running_app

MiB = 1024 * 1024


async def staged_by_an_older_version(settings, data: bytes, sent: int) -> str:
    """Create a tus upload and PATCH its first ``sent`` bytes through an app that then stops; its path."""
    async with running_app(settings) as old:
        path = upload_path(await tus_create(old, len(data)))
        if sent:
            await tus_patch(old, path, 0, data[:sent])
    return path


async def finish_and_read_back(client, path: str, data: bytes, offset: int) -> None:
    """HEAD says ``offset``; PATCH the rest in two (the last completes); the bytes read back equal."""
    head = await client.head(path, headers=TUS)
    assert head.status == 200 and head.headers["Upload-Offset"] == str(offset)
    middle = (offset + len(data)) // 2
    for start, end in ((offset, middle), (middle, len(data))):
        resp = await tus_patch(client, path, start, data[start:end])
        assert resp.headers["Upload-Offset"] == str(end)
    uid = path.rsplit("/", 1)[1]
    state = await (await client.get(f"/v1/uploads/{uid}")).json()
    assert state["status"] == "completed" and state["result"]["sha256"] == sha256(data), state
    got = await client.get(path)
    assert got.status == 200 and await got.read() == data


@pytest.mark.parametrize("size", [3000, 3 * MiB], ids=["small", "large-bodies"])
async def test_an_upload_in_an_older_versions_folder_is_patched_completed_and_its_folder_removed(
        make_client, make_settings, size):
    """tus.md: an older version's ``<id>/data`` is still read and removed."""
    settings = make_settings()
    data = random_bytes(size)
    path = await staged_by_an_older_version(settings, data, size // 3)
    root, uid = settings.storage.chunks_dir, path.rsplit("/", 1)[1]
    flat, folder = root / f"{uid}.data", root / uid
    folder.mkdir()
    flat.rename(folder / "data")
    client = await make_client(settings)
    await finish_and_read_back(client, path, data, size // 3)
    assert not folder.exists() and not flat.exists()
    assert sorted(p.name for p in root.iterdir()) == []


@pytest.mark.parametrize("size", [3000, 3 * MiB], ids=["small", "large-bodies"])
async def test_an_upload_an_older_version_made_without_a_data_file_gets_it_from_its_first_patch(
        make_client, make_settings, size):
    """tus.md: an upload created by an older version, which has no data file yet, gets it from its
    first PATCH (without the lock), and completes."""
    settings = make_settings()
    data = random_bytes(size)
    path = await staged_by_an_older_version(settings, data, 0)
    root, uid = settings.storage.chunks_dir, path.rsplit("/", 1)[1]
    (root / f"{uid}.data").unlink()  # made at creation now; the older version made none
    client = await make_client(settings)
    await finish_and_read_back(client, path, data, 0)
    assert sorted(p.name for p in root.iterdir()) == []
