"""tus concatenation: a final upload that names no partial upload is refused as the client's error."""

from __future__ import annotations

from tus_helpers import TUS


async def test_a_final_upload_of_no_parts_is_400(client):
    resp = await client.post("/files/", headers={**TUS, "Upload-Concat": "final; "})
    body = await resp.json(content_type=None)
    assert resp.status == 400, body
    assert body["detail"] == "a final upload needs at least one partial upload"
    assert "Location" not in resp.headers
