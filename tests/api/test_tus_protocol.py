"""tus 1.0.0 under /files/: the protocol as a table (state, method, headers, body -> status, headers)."""

from __future__ import annotations

import asyncio
import base64
import time
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit

import pytest

from helpers import random_bytes, sha256
from tus_helpers import TUS, b64, drop_mid_body, tus_create, tus_patch, upload_path
from tus_table import MAX, TABLE, TEN, WEB, check_row, digest, make_state
from vezastream.http.app import create_app, sink_key
from vezastream.config import ConfigError


@pytest.fixture
async def tus_client(make_client, make_settings):
    return await make_client(make_settings(**{"tus.max_size": MAX}))


@pytest.mark.parametrize("name,state,method,path,headers,body,status,want", TABLE, ids=[r[0] for r in TABLE])
async def test_protocol_table(tus_client, name, state, method, path, headers, body, status, want):
    await check_row(tus_client, name, state, method, path, headers, body, status, want)


@pytest.mark.parametrize("max_size, max_upload_size, advertised", [
    (0, "1MiB", 1 << 20),  # 0: limits.max_upload_size
    (5 << 20, "1MiB", 1 << 20),  # the lower of the two
    (1000, "1MiB", 1000),
])
async def test_tus_max_size_is_the_lower_of_its_own_and_the_upload_limit(make_client, make_settings, max_size,
                                                                       max_upload_size, advertised):
    """docs/tus.md: `max_size` 0 means limits.max_upload_size, and the lower of the two applies: advertised
    in Tus-Max-Size, and a length one byte over it is refused 413."""
    client = await make_client(make_settings(**{"tus.max_size": max_size, "limits.max_upload_size": max_upload_size}))
    resp = await client.options("/files/")
    assert resp.status == 204 and resp.headers["Tus-Max-Size"] == str(advertised)
    over = await client.post("/files/", headers={"Tus-Resumable": "1.0.0", "Upload-Length": str(advertised + 1)})
    assert over.status == 413, await over.text()
    fits = await client.post("/files/", headers={"Tus-Resumable": "1.0.0", "Upload-Length": str(advertised)})
    assert fits.status == 201, await fits.text()


async def test_errors_are_problem_json_with_status(tus_client):
    path = await make_state(tus_client, "half")
    resp = await tus_patch(tus_client, path, 0, TEN, expect=409)
    problem = await resp.json(content_type="application/problem+json")
    assert problem["status"] == 409 and problem["offset"] == 5


async def test_a_missing_version_is_named_as_missing(tus_client):
    problem = await (await tus_client.post("/files/", headers={"Upload-Length": "10"})).json(
        content_type="application/problem+json")
    assert problem["status"] == 412 and problem["detail"] == "Tus-Resumable must be 1.0.0; none was sent"
    assert problem["supported"] == ["1.0.0"]


async def test_an_unsupported_checksum_algorithm_is_400_naming_the_supported_ones(tus_client):
    """The problem's supported member lists what OPTIONS announces in Tus-Checksum-Algorithm."""
    path = await make_state(tus_client, "half")
    resp = await tus_patch(tus_client, path, 5, TEN[5:], expect=400, headers={"Upload-Checksum": "crc32 AAAAAA=="})
    problem = await resp.json(content_type="application/problem+json")
    options = await tus_client.options("/files/", headers=TUS)
    assert problem["supported"] == options.headers["Tus-Checksum-Algorithm"].split(","), problem
    assert (await tus_client.head(path, headers=TUS)).headers["Upload-Offset"] == "5"


async def test_checksum_mismatch_keeps_nothing(tus_client, settings):
    path = await make_state(tus_client, "half")
    await tus_patch(tus_client, path, 5, TEN[5:], expect=460,
                    headers={"Upload-Checksum": digest("md5", b"nope")})
    resp = await tus_client.head(path, headers=TUS)
    assert resp.headers["Upload-Offset"] == "5"
    uid = path.rsplit("/", 1)[1]
    staged = [p.name for p in settings.storage.chunks_dir.iterdir() if p.name.startswith(uid)]
    assert staged == [f"{uid}.data"]  # the first segment only, in its data file: no file of the refused body
    await tus_patch(tus_client, path, 5, TEN[5:], headers={"Upload-Checksum": digest("md5", TEN[5:])})
    resp = await tus_client.get(path)
    assert await resp.read() == TEN


async def test_metadata_becomes_filename_and_metadata(tus_client):
    resp = await tus_create(tus_client, 3, headers={"Upload-Metadata": f"filename {b64('ça va.txt')},kind {b64('doc')},empty"},
                            filename=None)
    upload_id = upload_path(resp).rsplit("/", 1)[1]
    state = await (await tus_client.get(f"/v1/uploads/{upload_id}")).json()
    assert state["filename"] == "ça va.txt"
    assert state["metadata"] == {"kind": "doc", "empty": ""}
    head = await tus_client.head(upload_path(resp), headers=TUS)
    assert head.headers["Upload-Metadata"] == f"filename {b64('ça va.txt')},kind {b64('doc')},empty"


async def test_a_filename_with_a_control_character_names_the_upload_with_it_replaced(tus_client):
    """A file's own name may hold a newline (Linux allows one), and a tus client sends it as it is: the
    creation was refused (400 "filename must be 1 to 255 characters without control characters"),
    and the client could not upload that file at all. The upload is named with U+FFFD in its place;
    HEAD sends back the bytes sent."""
    raw = b64("two\nlines.bin")
    resp = await tus_create(tus_client, 10, headers={"Upload-Metadata": f"filename {raw},kind {b64('doc')}"},
                            filename=None)
    path = upload_path(resp)
    await tus_patch(tus_client, path, 0, TEN)
    state = await (await tus_client.get(f"/v1/uploads/{path.rsplit('/', 1)[1]}")).json()
    assert (state["filename"], state["metadata"]) == ("two\ufffdlines.bin", {"kind": "doc"})
    head = await tus_client.head(path, headers=TUS)
    assert head.headers["Upload-Metadata"] == f"filename {raw},kind {b64('doc')}"
    assert (await tus_client.get(path)).headers["Content-Disposition"].startswith('attachment; filename="two_lines.bin"')


@pytest.mark.parametrize("key", ["filetype", "contentType"])
async def test_filetype_metadata_is_the_served_content_type(tus_client, key):
    """Served by both doors with the uploader's type, as a download a browser may not sniff nor run
    (test_ui.py shows Chromium keeping to it)."""
    path = upload_path(await tus_create(tus_client, 10, headers={
        "Upload-Metadata": f"filename {b64('a.png')},{key} {b64('image/png')}"}, filename=None))
    await tus_patch(tus_client, path, 0, TEN)
    resp = await tus_client.get(path)
    assert await resp.read() == TEN and resp.headers["Content-Type"] == "image/png"
    upload_id = path.rsplit("/", 1)[1]
    for resp in (resp, await tus_client.get(f"/v1/uploads/{upload_id}/content")):
        assert resp.headers["Content-Type"] == "image/png"
        assert resp.headers["Content-Disposition"].startswith('attachment; filename="a.png"')
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        assert resp.headers["Content-Security-Policy"] == "sandbox; default-src 'none'"


@pytest.mark.parametrize("metadata", ["filetype", "filetype,contentType", f"filetype,contentType {b64('text/csv')}"])
async def test_an_empty_filetype_is_no_filetype(tus_client, metadata):
    """tus-js-client's own example sends ``filetype: file.type``, which a browser leaves empty for a file
    type it does not know: the upload takes the default type (or contentType), not a 422."""
    path = upload_path(await tus_create(tus_client, 10, headers={"Upload-Metadata": f"filename {b64('a.xyz')},{metadata}"},
                                        filename=None))
    await tus_patch(tus_client, path, 0, TEN)
    served = "text/csv" if "contentType " in metadata else "application/octet-stream"
    assert (await tus_client.get(path)).headers["Content-Type"] == served


async def test_bad_filetype_metadata_is_422(tus_client):
    resp = await tus_create(tus_client, 10, headers={"Upload-Metadata": f"filetype {b64('not a type')}"},
                            filename=None, expect=422)
    assert (await resp.json(content_type=None))["field"] == "filetype"


async def test_binary_metadata_comes_back_byte_exact(tus_client):
    """Values that are not UTF-8 are echoed as sent (issue 15, finding 11), final uploads' too."""
    name, blob, kind = (base64.b64encode(v).decode() for v in (b"r\xe9sum\xe9.txt", b"\xff\xfe\x00", b"doc"))
    sent = f"filename {name},blob {blob},kind {kind}"
    resp = await tus_create(tus_client, 3, headers={"Upload-Metadata": sent}, filename=None)
    head = await tus_client.head(upload_path(resp), headers=TUS)
    assert head.headers["Upload-Metadata"] == sent
    # The native view decodes values as UTF-8, bytes that are not UTF-8 as \xNN (docs/tus.md).
    state = await (await tus_client.get("/v1/uploads/" + upload_path(resp).rsplit("/", 1)[1])).json()
    assert state["filename"] == "r\\xe9sum\\xe9.txt"
    assert state["metadata"] == {"blob": "\\xff\\xfe\x00", "kind": "doc"}  # NUL is UTF-8
    part = upload_path(await tus_create(tus_client, 3, headers={"Upload-Concat": "partial"}))
    await tus_patch(tus_client, part, 0, b"abc")
    final = await tus_client.post("/files/", headers={**TUS, "Upload-Concat": f"final;{part}",
                                                      "Upload-Metadata": f"blob {blob}"})
    assert final.status == 201, await final.text()
    head = await tus_client.head(upload_path(final), headers=TUS)
    assert head.headers["Upload-Metadata"] == f"blob {blob}"


async def test_upload_expires_is_an_http_date(tus_client, settings):
    resp = await tus_create(tus_client, 10)
    when = parsedate_to_datetime(resp.headers["Upload-Expires"]).timestamp()
    assert abs(when - (time.time() + settings.limits.upload_ttl)) < 5


async def test_empty_upload_completes_on_creation(tus_client):
    path = upload_path(await tus_create(tus_client, 0))
    resp = await tus_client.get(path)
    assert resp.status == 200 and await resp.read() == b""


async def test_deferred_length_is_declared_once(tus_client):
    path = await make_state(tus_client, "deferred")
    await tus_patch(tus_client, path, 0, TEN[:4])
    await tus_patch(tus_client, path, 4, TEN[4:], headers={"Upload-Length": "10"})
    head = await tus_client.head(path, headers=TUS)
    assert head.headers["Upload-Length"] == "10" and "Upload-Defer-Length" not in head.headers
    assert await (await tus_client.get(path)).read() == TEN


async def test_native_state_of_a_deferred_tus_upload(tus_client):
    path = await make_state(tus_client, "deferred")
    await tus_patch(tus_client, path, 0, TEN[:4])
    state = await (await tus_client.get(f"/v1/uploads/{path.rsplit('/', 1)[1]}")).json()
    assert state["progress"] == 0.0 and state["bytes_received"] == 4 and state["total_size"] == -1
    await tus_patch(tus_client, path, 4, TEN[4:6], headers={"Upload-Length": "20"})
    state = await (await tus_client.get(f"/v1/uploads/{path.rsplit('/', 1)[1]}")).json()
    assert state["progress"] == 30.0


async def test_declared_length_below_offset_is_refused(tus_client):
    path = await make_state(tus_client, "deferred")
    await tus_patch(tus_client, path, 0, TEN)
    await tus_patch(tus_client, path, 10, b"", expect=400, headers={"Upload-Length": "4"})
    await tus_patch(tus_client, path, 10, b"", headers={"Upload-Length": "10"})
    assert await (await tus_client.get(path)).read() == TEN


async def test_concatenation_joins_partials_in_order(tus_client):
    data = random_bytes(250_000)
    parts = [data[:100_000], data[100_000:180_000], data[180_000:]]
    paths = []
    for piece in parts:
        path = upload_path(await tus_create(tus_client, len(piece), headers={"Upload-Concat": "partial"}))
        half = len(piece) // 2
        await tus_patch(tus_client, path, 0, piece[:half])
        await tus_patch(tus_client, path, half, piece[half:])
        paths.append(path)
    absolute = [str(tus_client.make_url(p)) for p in paths]
    resp = await tus_create(tus_client, None, headers={"Upload-Concat": "final;" + " ".join(absolute),
                                                       "Upload-Metadata": f"filename {b64('joined.bin')}"},
                            filename=None)
    final = upload_path(resp)
    head = await tus_client.head(final, headers=TUS)
    assert head.headers["Upload-Offset"] == head.headers["Upload-Length"] == str(len(data))
    assert head.headers["Upload-Concat"] == "final;" + " ".join(paths)
    assert await (await tus_client.get(final)).read() == data
    state = await (await tus_client.get(f"/v1/uploads/{final.rsplit('/', 1)[1]}")).json()
    assert state["result"]["sha256"] == sha256(data) and state["filename"] == "joined.bin"
    for path in paths:  # the parts' bytes live in the sink now
        assert (await tus_client.head(path, headers=TUS)).status == 404


@pytest.mark.parametrize("same_bytes", [False, True], ids=["different-bytes", "same-bytes"])
async def test_same_offset_on_two_nodes_only_one_wins(make_client, make_settings, same_bytes):
    settings = make_settings()
    node_a, node_b = await make_client(settings), await make_client(settings)
    for _ in range(5):
        path = upload_path(await tus_create(node_a, 200_000))
        a = random_bytes(100_000)
        b = a if same_bytes else random_bytes(100_000)
        ra, rb = await asyncio.gather(tus_patch(node_a, path, 0, a, expect=None),
                                      tus_patch(node_b, path, 0, b, expect=None))
        assert sorted([ra.status, rb.status]) == [204, 409]
        head = await node_b.head(path, headers=TUS)
        assert head.headers["Upload-Offset"] == "100000"
        winner = a if ra.status == 204 else b
        await tus_patch(node_a, path, 100_000, winner)
        assert await (await node_a.get(path)).read() == winner + winner


async def test_interrupted_body_keeps_what_arrived(tus_client):
    """Under a test server (handler cancellation on); test_tus_clients covers the production setting."""
    data = random_bytes(300_000)
    path = upload_path(await tus_create(tus_client, len(data)))
    assert await drop_mid_body(str(tus_client.make_url("")).rstrip("/"), path, data, 120_000) == 120_000
    await tus_patch(tus_client, path, 120_000, data[120_000:])
    assert await (await tus_client.get(path)).read() == data


@pytest.mark.parametrize("trust,headers,expected", [
    # Not trusted: a path (the tus spec allows a relative Location), whatever Host or X-Forwarded-* say.
    (False, {"X-Forwarded-Host": "evil.example", "X-Forwarded-Proto": "https"}, ""),
    (False, {"Host": "evil.example"}, ""),
    (True, {"X-Forwarded-Host": "up.example, proxy2", "X-Forwarded-Proto": "https"}, "https://up.example"),
    (True, {"Forwarded": 'for=1.2.3.4;host="up.example:8443";proto=https'}, "https://up.example:8443"),
    (True, {}, None),
])
async def test_location_behind_a_proxy(make_client, make_settings, trust, headers, expected):
    client = await make_client(make_settings(**{"tus.trust_forwarded_headers": trust}))
    resp = await tus_create(client, 1, headers=headers)
    location = urlsplit(resp.headers["Location"])
    base = f"{location.scheme}://{location.netloc}" if location.netloc else ""
    assert base == (f"http://{client.server.host}:{client.server.port}" if expected is None else expected)
    assert location.path.startswith("/files/")
    assert (await client.head(location.path, headers=TUS)).status == 200


async def test_prefix_and_cors_origins_come_from_config(make_client, make_settings):
    client = await make_client(make_settings(**{"tus.prefix": "/tus/v1/", "tus.cors_origins": [WEB]}))
    resp = await client.post("/tus/v1/", headers={**TUS, "Upload-Length": "1", "Origin": "http://other.example"})
    assert resp.status == 201 and "Access-Control-Allow-Origin" not in resp.headers
    assert urlsplit(resp.headers["Location"]).path.startswith("/tus/v1/")
    resp = await client.options("/tus/v1/", headers={"Origin": WEB, "Access-Control-Request-Method": "POST"})
    assert resp.headers["Access-Control-Allow-Origin"] == WEB
    assert (await client.post("/files/", headers={**TUS, "Upload-Length": "1"})).status in (404, 405)


@pytest.mark.parametrize("key,value", [
    ("tus.prefix", "files"), ("tus.prefix", "/files"), ("tus.prefix", "/a b/"),
    ("tus.max_size", -1), ("tus.cors_origins", "*"), ("tus.cors_origins", ["ftp://x"]),
    ("tus.trust_forwarded_headers", "yes"), ("tus.unknown", 1),
])
def test_bad_tus_config_is_refused(make_settings, key, value):
    with pytest.raises(ConfigError, match=key.split(".")[0]):
        make_settings(**{key: value})


async def test_native_and_tus_doors_keep_to_their_own_uploads(tus_client):
    resp = await tus_client.post("/v1/uploads", json={"filename": "n.bin", "total_size": 10})
    native_id = (await resp.json())["upload_id"]
    assert (await tus_client.head(f"/files/{native_id}", headers=TUS)).status == 404
    path = await make_state(tus_client, "fresh")
    resp = await tus_client.put(f"/v1/uploads/{path.rsplit('/', 1)[1]}/chunks/1", data=TEN)
    assert resp.status == 404


def test_create_app_mounts_tus(make_settings):
    app = create_app(make_settings())
    assert any(r.resource and r.resource.canonical == "/files/{upload_id}" for r in app.router.routes())


async def test_sink_failure_is_retried_by_the_next_head(tus_client):
    sink = tus_client.server.app[sink_key]

    async def broken(upload, source):
        raise OSError("disk on fire")

    path = upload_path(await tus_create(tus_client, 10))
    sink.assemble = broken  # instance attribute: shadows the method for this test only
    try:
        await tus_patch(tus_client, path, 0, TEN, expect=502)
    finally:
        del sink.assemble
    head = await tus_client.head(path, headers=TUS)
    assert head.status == 200 and head.headers["Upload-Offset"] == "10"
    assert await (await tus_client.get(path)).read() == TEN


async def test_bearer_tokens_guard_tus_uploads(make_client, make_settings, monkeypatch):
    monkeypatch.setenv("TUS_TEST_TOKENS", "tok-alice=alice,tok-bob=bob")
    client = await make_client(make_settings(**{"auth.mode": "token", "auth.tokens_env": "TUS_TEST_TOKENS"}))
    alice, bob = {"Authorization": "Bearer tok-alice"}, {"Authorization": "Bearer tok-bob"}
    refused = await tus_create(client, 10, expect=401)
    assert refused.headers["WWW-Authenticate"] == 'Bearer realm="vezastream"'
    path = upload_path(await tus_create(client, 10, headers=alice))
    assert (await client.head(path, headers={**TUS, **bob})).status == 404
    await tus_patch(client, path, 0, TEN, expect=404, headers=bob)
    await tus_patch(client, path, 0, TEN, headers=alice)
    assert (await client.get(path, headers=bob)).status == 404
    assert (await client.options("/files/")).status == 204  # discovery and preflight need no token


async def test_a_final_upload_joins_only_its_own_users_partials(make_client, make_settings, monkeypatch):
    """tus.md: concatenation joins finished partials of the same user. Bob cannot take (or consume)
    Alice's partial by naming it: 404 as for any upload of another user, and hers is untouched."""
    monkeypatch.setenv("TUS_TEST_TOKENS", "tok-alice=alice,tok-bob=bob")
    client = await make_client(make_settings(**{"auth.mode": "token", "auth.tokens_env": "TUS_TEST_TOKENS"}))
    alice, bob = {"Authorization": "Bearer tok-alice"}, {"Authorization": "Bearer tok-bob"}
    hers = upload_path(await tus_create(client, 10, headers={**alice, "Upload-Concat": "partial"}))
    await tus_patch(client, hers, 0, TEN, headers=alice)
    his = upload_path(await tus_create(client, 3, headers={**bob, "Upload-Concat": "partial"}))
    await tus_patch(client, his, 0, b"bob", headers=bob)
    for parts in (hers, f"{his} {hers}"):
        final = await client.post("/files/", headers={**TUS, **bob, "Upload-Concat": f"final;{parts}"})
        assert final.status == 404 and final.content_type == "application/problem+json", await final.text()
    head = await client.head(hers, headers={**TUS, **alice})
    assert head.status == 200 and head.headers["Upload-Offset"] == "10"
    final = await client.post("/files/", headers={**TUS, **alice, "Upload-Concat": f"final;{hers}"})
    assert final.status == 201, await final.text()
    assert await (await client.get(upload_path(final), headers=alice)).read() == TEN
