"""A tus upload an inspector refuses: the final PATCH answers 422, and so does every HEAD until one accepts.

A HEAD of a full pending tus upload runs the completion again
(engine/layouts/append.py, ``append_state``), so the inspector reads the file
again on each HEAD; docs/plugins.md and docs/tus.md say so.
"""

from __future__ import annotations

from vezastream import Rejected, hookimpl
from vezastream.testing import content
from tus_helpers import TUS, tus_create, tus_patch, upload_path


class Refusing:
    """An inspector that refuses while ``refusing`` is set, and counts what it read."""

    def __init__(self) -> None:
        self.refusing = True
        self.reads = 0

    @hookimpl
    async def vezastream_inspect_upload(self, upload, source):
        self.reads += 1
        async for _ in source.iter_bytes():
            pass
        if self.refusing:
            raise Rejected("not today")


async def test_a_head_after_a_refusal_completes_again(make_settings, make_client):
    inspector = Refusing()
    client = await make_client(make_settings(), plugins=[("scanner", inspector)])
    path = upload_path(await tus_create(client, 5))
    resp = await tus_patch(client, path, 0, b"hello", expect=422)
    problem = await resp.json(content_type=None)
    assert resp.content_type == "application/problem+json" and problem["plugin"] == "scanner", problem
    upload_id = path.rsplit("/", 1)[1]

    for reads in (2, 3):  # each HEAD runs the completion, and the inspector, again
        resp = await client.head(path, headers=TUS)
        assert resp.status == 422 and inspector.reads == reads
        state = await (await client.get(f"/v1/uploads/{upload_id}")).json()
        assert state["status"] == "pending", state

    inspector.refusing = False
    resp = await client.head(path, headers=TUS)
    assert (resp.status, resp.headers["Upload-Offset"], inspector.reads) == (200, "5", 4)
    assert (await (await client.get(f"/v1/uploads/{upload_id}")).json())["status"] == "completed"
    assert await content(client, upload_id) == (200, b"hello")
    assert (await client.head(path, headers=TUS)).status == 200 and inspector.reads == 4  # completed: no more reads
