"""What the tus door does with headers a client or a proxy gets wrong (docs/tus.md).

``Upload-Metadata`` holds at most ``MAX_METADATA`` keys, as the native API's ``metadata``
does; a forwarded scheme other than http or https never reaches the ``Location`` URL.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from tus_helpers import TUS, b64, tus_create

from vezastream.models import MAX_METADATA


def _metadata(keys: int) -> str:
    return ",".join(f"k{i} {b64(str(i))}" for i in range(keys))


async def test_upload_metadata_with_more_keys_than_allowed_is_a_400(make_client, make_settings):
    client = await make_client(make_settings())
    resp = await tus_create(client, 1, filename=None, expect=400,
                            headers={"Upload-Metadata": _metadata(MAX_METADATA + 1)})
    assert resp.content_type == "application/problem+json"
    assert (await resp.json())["detail"] == f"Upload-Metadata: at most {MAX_METADATA} keys"
    await tus_create(client, 1, filename=None, headers={"Upload-Metadata": _metadata(MAX_METADATA)})


async def test_a_forwarded_scheme_other_than_http_falls_back_to_the_connections(make_client, make_settings):
    """A proxy (or a client through a proxy that passes the header on) cannot make the
    ``Location`` a ``javascript:`` URL: the connection's own scheme is used instead."""
    client = await make_client(make_settings(**{"tus.trust_forwarded_headers": True}))
    resp = await tus_create(client, 1, headers={"X-Forwarded-Host": "up.example", "X-Forwarded-Proto": "javascript"})
    location = urlsplit(resp.headers["Location"])
    assert (location.scheme, location.netloc) == ("http", "up.example")
    assert (await client.head(location.path, headers=TUS)).status == 200
