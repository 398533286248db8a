"""Limits docs/storage.md states for what names a stored object and how it is served: each value in
a key is sanitised with no leading dot and at most 120 characters, and a Content-Type is taken up
to 255 characters (one more is 422)."""

from __future__ import annotations

import pytest

from helpers import create, upload


@pytest.mark.parametrize("filename, stored", [
    ("..." + "x" * 200 + ".txt", "x" * 120),           # leading dots dropped, then cut at 120
    (".profile", "profile"),                            # a hidden name is not kept hidden
    ("...", "file"),                                    # nothing left: a stand-in
    ("é" * 200, "_"),                                   # a run of unsafe characters is one "_"
])
async def test_a_filename_becomes_a_visible_name_of_at_most_120_characters(make_client, make_settings,
                                                                           filename, stored):
    settings = make_settings()
    client = await make_client(settings)
    result = await upload(client, b"bytes", chunk_size=5, filename=filename)
    folder = settings.storage.data_dir / "files" / result["upload_id"]
    assert [p.name for p in folder.iterdir()] == [stored]
    assert (folder / stored).read_bytes() == b"bytes"


async def test_a_content_type_of_255_characters_is_kept_and_one_of_256_refused(client):
    longest = "application/" + "x" * (255 - len("application/"))
    state = await create(client, total_size=1, chunk_size=1, content_type=longest)
    assert state["content_type"] == longest
    problem = await create(client, total_size=1, chunk_size=1, content_type=longest + "x", expect=422)
    assert problem["field"] == "content_type"
