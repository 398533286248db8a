"""The staging folder (``<data_dir>/chunks``) removed under a running server, as an operator
cleaning up by hand may do: a GC pass finds nothing to judge instead of failing, and new
uploads recreate what they need and read back identical."""

from __future__ import annotations

import shutil

import pytest

from vezastream.http.app import gc_key
from vezastream.testing import content, random_bytes, upload


@pytest.mark.parametrize("in_place", [True, False], ids=["in-place", "chunk-files"])
async def test_without_its_staging_folder_gc_finds_nothing_and_uploads_still_land(make_client, make_settings,
                                                                                  in_place):
    settings = make_settings(**{"storage.in_place": in_place})
    client = await make_client(settings)
    shutil.rmtree(settings.storage.chunks_dir)

    report = await client.server.app[gc_key].run_once()
    assert (report.removed, report.kept, report.skipped) == ([], 0, False)

    data = random_bytes(3 * 1000 + 5)
    result = await upload(client, data, 1000)
    assert await content(client, result["upload_id"]) == (200, data)
