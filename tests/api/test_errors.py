"""How errors look on the wire: reason phrases, Retry-After."""

from __future__ import annotations

import json

from vezastream import errors, hookimpl
from vezastream.http.app import settings_key, sink_key
from vezastream_local import make_local_sink

from helpers import create, put_chunk
from tus_helpers import STREAM, TUS


class UnavailableSinkPlugin:
    """The real local sink, whose store is 'down' (it says when to come back)."""

    @hookimpl
    def vezastream_register_sinks(self, register):
        def factory(config, settings):
            sink = make_local_sink(config, settings)

            async def assemble(upload, source):
                raise errors.Unavailable("storage is down for maintenance", retry_after=7)

            sink.assemble = assemble
            return sink

        register("down", factory)


async def test_unavailable_sink_answers_503_with_retry_after(make_client, make_settings):
    client = await make_client(make_settings(**{"storage.sink": "down"}), plugins=[UnavailableSinkPlugin()])
    uid = (await create(client, total_size=4, chunk_size=4))["upload_id"]
    await put_chunk(client, uid, 1, b"abcd")
    resp = await client.post(f"/v1/uploads/{uid}/complete")
    assert resp.status == 503 and resp.headers["Retry-After"] == "7"
    assert (await resp.json(content_type=None))["retry_after"] == 7
    state = await (await client.get(f"/v1/uploads/{uid}")).json()
    assert state["status"] == "pending" and state["chunks_received"] == [1]


async def test_tus_checksum_mismatch_has_a_reason_phrase(client):
    headers = {**TUS, **STREAM, "Upload-Length": "4", "Upload-Checksum": "sha256 " + "A" * 43 + "="}
    resp = await client.post("/files/", headers=headers, data=b"abcd")
    assert resp.status == 460 and resp.reason == "Checksum mismatch"


async def test_sink_failure_detail_names_no_server_path(client, caplog):
    """A sink's OSError carries a path: the client gets a 502 without it, the log keeps it (finding 7)."""
    sink = client.server.app[sink_key]
    where = str(client.server.app[settings_key].storage.data_dir / "uploads" / "x.part")

    async def broken(upload, source):
        raise PermissionError(13, "Permission denied", where)

    uid = (await create(client, total_size=4, chunk_size=4))["upload_id"]
    await put_chunk(client, uid, 1, b"abcd")
    sink.assemble = broken  # instance attribute: shadows the method for this test only
    try:
        resp = await client.post(f"/v1/uploads/{uid}/complete")
    finally:
        del sink.assemble
    text = await resp.text()
    assert resp.status == 502 and resp.content_type == "application/problem+json", text
    problem = json.loads(text)
    assert problem["type"].endswith("/sink-failed") and "PermissionError" in problem["detail"]
    assert where not in text and "/" not in problem["detail"], problem
    assert any(where in (r.exc_text or "") for r in caplog.records), "the log keeps the full error"
