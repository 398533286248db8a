"""An error the server has no answer for: a 500 problem+json that says only
"unexpected server error", never the error's text or a server path; the whole error goes to
the log with the request's path; nothing is recorded, so the client can send it again.

Such an error is a bug: every fault of the machine found so far has its answer in the catalog
(a file or a link that loops where a folder should be is a 503, test_staging_folder_removed.py;
this test used that loop until it got one). So the bug is made here: the staging area's receive
raises an error of no kind the server knows, naming a server path.
"""

from __future__ import annotations

import logging

from vezastream.http.app import engine_key
from vezastream.testing import create, put_chunk


async def test_an_unexpected_error_is_a_bare_500_and_a_logged_traceback(make_settings, make_client, caplog,
                                                                        monkeypatch):
    settings = make_settings(**{"storage.in_place": False})
    client = await make_client(settings)
    state = await create(client, total_size=6, chunk_size=3)
    uid = state["upload_id"]
    await put_chunk(client, uid, 1, b"abc")
    staging = client.server.app[engine_key].staging

    async def broken(*args, **kwargs):
        raise LookupError(f"no buffer for {settings.storage.chunks_dir / uid}")

    monkeypatch.setattr(staging, "receive", broken)
    with caplog.at_level(logging.ERROR):
        status, problem = await put_chunk(client, uid, 2, b"def", expect=500)
    assert problem["detail"] == "unexpected server error" and problem["status"] == 500
    assert str(settings.storage.data_dir) not in str(problem) and "Error" not in problem["detail"]
    [logged] = [r for r in caplog.records if r.getMessage() == "unhandled error"]
    assert logged.path == f"/v1/uploads/{uid}/chunks/2" and logged.exc_info[0] is LookupError
    # Nothing was recorded for the chunk: the completion still lacks it, and the chunk sent again lands.
    resp = await client.post(f"/v1/uploads/{uid}/complete")
    assert resp.status == 409 and (await resp.json())["missing_chunks"] == [2]
    monkeypatch.undo()
    await put_chunk(client, uid, 2, b"def")
    assert (await client.post(f"/v1/uploads/{uid}/complete")).status == 200
