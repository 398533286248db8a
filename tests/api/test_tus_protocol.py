"""tus 1.0.0 under /files/: the protocol as a table (state, method, headers, body -> status, headers)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import time
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit

import pytest

from helpers import random_bytes, sha256
from tus_helpers import STREAM, TUS, b64, drop_mid_body, tus_create, tus_patch, upload_path
from vezastream.http.app import create_app, sink_key
from vezastream.config import ConfigError

ANY = object()
TEN = b"0123456789"
MAX = 1_000_000


def digest(algorithm: str, data: bytes) -> str:
    return f"{algorithm} {base64.b64encode(hashlib.new(algorithm, data).digest()).decode()}"


async def make_state(client, state: str) -> str:
    """An upload path in the named state ("unknown": a well-formed id nobody created)."""
    if state == "unknown":
        return "/files/AAAAAAAAAAAAAAAAAAAAAA"
    if state == "deferred":
        return upload_path(await tus_create(client, headers={"Upload-Defer-Length": "1"}))
    if state == "partial":
        return upload_path(await tus_create(client, 10, headers={"Upload-Concat": "partial"}))
    if state == "final":
        part = upload_path(await tus_create(client, 10, headers={"Upload-Concat": "partial"}))
        await tus_patch(client, part, 0, TEN)
        return upload_path(await tus_create(client, None, headers={"Upload-Concat": f"final;{part}"}))
    path = upload_path(await tus_create(client, 10))
    if state == "half":
        await tus_patch(client, path, 0, TEN[:5])
    elif state == "completed":
        await tus_patch(client, path, 0, TEN)
    elif state == "deleted":
        resp = await client.delete(path, headers=TUS)
        assert resp.status == 204
    else:
        assert state == "fresh", state
    return path


OPTS = {"Tus-Version": "1.0.0", "Tus-Resumable": "1.0.0",
        "Tus-Extension": "creation,creation-with-upload,creation-defer-length,termination,expiration,"
                         "checksum,concatenation",
        "Tus-Max-Size": str(MAX), "Tus-Checksum-Algorithm": "sha1,md5,sha256"}
V412 = {"Tus-Version": "1.0.0"}
O = {"Upload-Offset": "0"}
WEB = "http://app.example"

# (id, state, method, path ("" = the collection), headers, body) -> (status, headers that must be there)
TABLE = [
    ("options", None, "OPTIONS", "", {}, b"", 204, OPTS),
    ("options-upload", "fresh", "OPTIONS", "{}", {}, b"", 204, OPTS),
    ("create", None, "POST", "", {**TUS, "Upload-Length": "10"}, b"", 201,
     {"Location": ANY, "Upload-Expires": ANY, "Upload-Offset": "0", "Tus-Resumable": "1.0.0"}),
    ("create-no-slash", None, "POST", "/files", {**TUS, "Upload-Length": "10"}, b"", 201, {"Location": ANY}),
    ("create-no-version", None, "POST", "", {"Upload-Length": "10"}, b"", 412, V412),
    ("create-old-version", None, "POST", "", {"Tus-Resumable": "0.2.2", "Upload-Length": "10"}, b"", 412, V412),
    ("create-no-length", None, "POST", "", TUS, b"", 400, {}),
    ("create-bad-length", None, "POST", "", {**TUS, "Upload-Length": "-1"}, b"", 400, {}),
    ("create-length-and-defer", None, "POST", "", {**TUS, "Upload-Length": "1", "Upload-Defer-Length": "1"},
     b"", 400, {}),
    ("create-defer", None, "POST", "", {**TUS, "Upload-Defer-Length": "1"}, b"", 201, {"Location": ANY}),
    ("create-defer-2", None, "POST", "", {**TUS, "Upload-Defer-Length": "2"}, b"", 400, {}),
    ("create-too-large", None, "POST", "", {**TUS, "Upload-Length": str(MAX + 1)}, b"", 413, {}),
    ("create-max", None, "POST", "", {**TUS, "Upload-Length": str(MAX)}, b"", 201, {}),
    ("create-bad-metadata", None, "POST", "", {**TUS, "Upload-Length": "1", "Upload-Metadata": "filename !!"},
     b"", 400, {}),
    ("create-repeated-metadata", None, "POST", "",
     {**TUS, "Upload-Length": "1", "Upload-Metadata": f"a {b64('x')},a {b64('y')}"}, b"", 400, {}),
    ("create-with-upload", None, "POST", "", {**TUS, **STREAM, "Upload-Length": "10"}, TEN, 201,
     {"Location": ANY, "Upload-Offset": "10"}),
    ("create-with-upload-part", None, "POST", "", {**TUS, **STREAM, "Upload-Length": "20"}, TEN, 201,
     {"Upload-Offset": "10", "Upload-Expires": ANY}),
    ("create-with-upload-415", None, "POST", "", {**TUS, "Upload-Length": "10", "Content-Type": "text/plain"},
     TEN, 415, {}),
    ("create-with-upload-too-long", None, "POST", "", {**TUS, **STREAM, "Upload-Length": "5"}, TEN, 413, {}),
    ("create-with-upload-checksum", None, "POST", "",
     {**TUS, **STREAM, "Upload-Length": "10", "Upload-Checksum": digest("sha1", TEN)}, TEN, 201,
     {"Upload-Offset": "10"}),
    ("create-with-upload-460", None, "POST", "",
     {**TUS, **STREAM, "Upload-Length": "10", "Upload-Checksum": digest("sha1", b"other")}, TEN, 460, {}),
    ("create-concat-bogus", None, "POST", "", {**TUS, "Upload-Length": "1", "Upload-Concat": "whole"}, b"", 400, {}),
    ("create-final-of-unfinished", "partial", "POST", "", {**TUS, "Upload-Concat": "final;{}"}, b"", 400, {}),
    ("create-final-of-plain", "fresh", "POST", "", {**TUS, "Upload-Concat": "final;{}"}, b"", 400, {}),
    ("create-final-of-unknown", "unknown", "POST", "", {**TUS, "Upload-Concat": "final;{}"}, b"", 404, {}),
    ("create-final-with-length", "partial", "POST", "",
     {**TUS, "Upload-Length": "10", "Upload-Concat": "final;{}"}, b"", 400, {}),
    ("create-final-foreign-url", None, "POST", "", {**TUS, "Upload-Concat": "final;/elsewhere/x"}, b"", 400, {}),

    ("head", "fresh", "HEAD", "{}", TUS, b"", 200,
     {"Upload-Offset": "0", "Upload-Length": "10", "Cache-Control": "no-store", "Upload-Expires": ANY,
      "Upload-Metadata": f"filename {b64('file.bin')}", "Tus-Resumable": "1.0.0"}),
    ("head-half", "half", "HEAD", "{}", TUS, b"", 200, {"Upload-Offset": "5"}),
    ("head-completed", "completed", "HEAD", "{}", TUS, b"", 200, {"Upload-Offset": "10", "Upload-Length": "10"}),
    ("head-deferred", "deferred", "HEAD", "{}", TUS, b"", 200, {"Upload-Defer-Length": "1", **O}),
    ("head-partial", "partial", "HEAD", "{}", TUS, b"", 200, {"Upload-Concat": "partial", **O}),
    ("head-final", "final", "HEAD", "{}", TUS, b"", 200, {"Upload-Concat": ANY, "Upload-Offset": "10",
                                                          "Upload-Length": "10"}),
    ("head-no-version", "fresh", "HEAD", "{}", {}, b"", 412, V412),
    ("head-unknown", "unknown", "HEAD", "{}", TUS, b"", 404, {"Tus-Resumable": "1.0.0"}),
    ("head-terminated", "deleted", "HEAD", "{}", TUS, b"", 404, {}),
    ("head-bad-id", None, "HEAD", "/files/..%2f..%2fetc", TUS, b"", 404, {}),

    ("patch", "fresh", "PATCH", "{}", {**TUS, **STREAM, "Upload-Offset": "0"}, TEN[:5], 204,
     {"Upload-Offset": "5", "Upload-Expires": ANY}),
    ("patch-completes", "half", "PATCH", "{}", {**TUS, **STREAM, "Upload-Offset": "5"}, TEN[5:], 204,
     {"Upload-Offset": "10"}),
    ("patch-empty", "half", "PATCH", "{}", {**TUS, **STREAM, "Upload-Offset": "5"}, b"", 204, {"Upload-Offset": "5"}),
    ("patch-415", "fresh", "PATCH", "{}", {**TUS, "Content-Type": "application/octet-stream", "Upload-Offset": "0"},
     TEN, 415, {}),
    ("patch-no-type", "fresh", "PATCH", "{}", {**TUS, "Upload-Offset": "0"}, TEN, 415, {}),
    ("patch-409", "half", "PATCH", "{}", {**TUS, **STREAM, "Upload-Offset": "0"}, TEN, 409, {}),
    ("patch-409-ahead", "fresh", "PATCH", "{}", {**TUS, **STREAM, "Upload-Offset": "3"}, TEN[:3], 409, {}),
    ("patch-no-offset", "fresh", "PATCH", "{}", {**TUS, **STREAM}, TEN, 400, {}),
    ("patch-bad-offset", "fresh", "PATCH", "{}", {**TUS, **STREAM, "Upload-Offset": "x"}, TEN, 400, {}),
    ("patch-unknown", "unknown", "PATCH", "{}", {**TUS, **STREAM, "Upload-Offset": "0"}, TEN, 404, {}),
    ("patch-terminated", "deleted", "PATCH", "{}", {**TUS, **STREAM, "Upload-Offset": "0"}, TEN, 404, {}),
    ("patch-no-version", "fresh", "PATCH", "{}", {**STREAM, "Upload-Offset": "0"}, TEN, 412, V412),
    ("patch-too-long", "fresh", "PATCH", "{}", {**TUS, **STREAM, "Upload-Offset": "0"}, TEN + b"x", 413, {}),
    ("patch-completed", "completed", "PATCH", "{}", {**TUS, **STREAM, "Upload-Offset": "10"}, b"x", 413, {}),
    ("patch-final", "final", "PATCH", "{}", {**TUS, **STREAM, "Upload-Offset": "10"}, b"x", 403, {}),
    ("patch-sha1", "fresh", "PATCH", "{}", {**TUS, **STREAM, "Upload-Offset": "0",
                                            "Upload-Checksum": digest("sha1", TEN)}, TEN, 204, {}),
    ("patch-md5", "fresh", "PATCH", "{}", {**TUS, **STREAM, "Upload-Offset": "0",
                                           "Upload-Checksum": digest("md5", TEN)}, TEN, 204, {}),
    ("patch-sha256", "fresh", "PATCH", "{}", {**TUS, **STREAM, "Upload-Offset": "0",
                                              "Upload-Checksum": digest("sha256", TEN)}, TEN, 204, {}),
    ("patch-460", "fresh", "PATCH", "{}", {**TUS, **STREAM, "Upload-Offset": "0",
                                           "Upload-Checksum": digest("sha256", b"else")}, TEN, 460, {}),
    ("patch-checksum-algo", "fresh", "PATCH", "{}", {**TUS, **STREAM, "Upload-Offset": "0",
                                                     "Upload-Checksum": "crc32 AAAA"}, TEN, 400, {}),
    ("patch-checksum-b64", "fresh", "PATCH", "{}", {**TUS, **STREAM, "Upload-Offset": "0",
                                                    "Upload-Checksum": "sha1 !!"}, TEN, 400, {}),
    ("patch-declares-length", "deferred", "PATCH", "{}", {**TUS, **STREAM, "Upload-Offset": "0",
                                                          "Upload-Length": "10"}, TEN, 204, {"Upload-Offset": "10"}),
    ("patch-deferred", "deferred", "PATCH", "{}", {**TUS, **STREAM, "Upload-Offset": "0"}, TEN, 204,
     {"Upload-Offset": "10"}),
    ("patch-changes-length", "fresh", "PATCH", "{}", {**TUS, **STREAM, "Upload-Offset": "0",
                                                      "Upload-Length": "11"}, TEN, 400, {}),

    ("delete", "half", "DELETE", "{}", TUS, b"", 204, {"Tus-Resumable": "1.0.0"}),
    ("delete-completed", "completed", "DELETE", "{}", TUS, b"", 204, {}),
    ("delete-unknown", "unknown", "DELETE", "{}", TUS, b"", 404, {}),
    ("delete-twice", "deleted", "DELETE", "{}", TUS, b"", 404, {}),
    ("delete-no-version", "fresh", "DELETE", "{}", {}, b"", 412, V412),

    ("override-patch", "fresh", "POST", "{}", {**TUS, **STREAM, "Upload-Offset": "0",
                                               "X-HTTP-Method-Override": "PATCH"}, TEN, 204, {"Upload-Offset": "10"}),
    ("override-delete", "fresh", "POST", "{}", {**TUS, "X-HTTP-Method-Override": "DELETE"}, b"", 204, {}),
    ("override-head", "half", "POST", "{}", {**TUS, "X-HTTP-Method-Override": "HEAD"}, b"", 200,
     {"Upload-Offset": "5"}),
    ("override-none", "fresh", "POST", "{}", TUS, b"", 405, {}),

    ("get-completed", "completed", "GET", "{}", {}, b"", 200, {"Content-Length": "10"}),
    ("get-pending", "half", "GET", "{}", {}, b"", 409, {}),
    ("get-unknown", "unknown", "GET", "{}", {}, b"", 404, {}),

    ("cors-preflight", "fresh", "OPTIONS", "{}", {"Origin": WEB, "Access-Control-Request-Method": "PATCH"}, b"",
     204, {"Access-Control-Allow-Origin": WEB, "Access-Control-Allow-Methods": ANY,
           "Access-Control-Allow-Headers": ANY}),
    ("cors-request", "fresh", "HEAD", "{}", {**TUS, "Origin": WEB}, b"", 200,
     {"Access-Control-Allow-Origin": WEB, "Access-Control-Expose-Headers": ANY}),
    ("cors-on-errors", "unknown", "HEAD", "{}", {**TUS, "Origin": WEB}, b"", 404,
     {"Access-Control-Allow-Origin": WEB}),
]


@pytest.fixture
async def tus_client(make_client, make_settings):
    return await make_client(make_settings(**{"tus.max_size": MAX}))


@pytest.mark.parametrize("name,state,method,path,headers,body,status,want", TABLE, ids=[r[0] for r in TABLE])
async def test_protocol_table(tus_client, name, state, method, path, headers, body, status, want):
    target = await make_state(tus_client, state) if state else None
    url = path.replace("{}", target or "") if path.startswith("{") or path.startswith("/") else "/files/"
    headers = {k: v.replace("{}", target or "") for k, v in headers.items()}
    resp = await tus_client.request(method, url, headers=headers, data=body or None)
    text = await resp.text()
    assert resp.status == status, text
    for key, value in want.items():
        assert key in resp.headers, (key, dict(resp.headers))
        if value is not ANY:
            assert resp.headers[key] == value, (key, dict(resp.headers))
    if status >= 400 and method not in ("HEAD",):
        assert resp.content_type == "application/problem+json", text


async def test_errors_are_problem_json_with_status(tus_client):
    path = await make_state(tus_client, "half")
    resp = await tus_patch(tus_client, path, 0, TEN, expect=409)
    problem = await resp.json(content_type="application/problem+json")
    assert problem["status"] == 409 and problem["offset"] == 5


async def test_checksum_mismatch_keeps_nothing(tus_client, settings):
    path = await make_state(tus_client, "half")
    await tus_patch(tus_client, path, 5, TEN[5:], expect=460,
                    headers={"Upload-Checksum": digest("md5", b"nope")})
    resp = await tus_client.head(path, headers=TUS)
    assert resp.headers["Upload-Offset"] == "5"
    folder = settings.storage.chunks_dir / path.rsplit("/", 1)[1]
    assert len(list(folder.iterdir())) == 1  # the first segment only: no file of the refused body
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


@pytest.mark.parametrize("key", ["filetype", "contentType"])
async def test_filetype_metadata_is_the_served_content_type(tus_client, key):
    path = upload_path(await tus_create(tus_client, 10, headers={
        "Upload-Metadata": f"filename {b64('a.png')},{key} {b64('image/png')}"}, filename=None))
    await tus_patch(tus_client, path, 0, TEN)
    resp = await tus_client.get(path)
    assert await resp.read() == TEN and resp.headers["Content-Type"] == "image/png"
    upload_id = path.rsplit("/", 1)[1]
    assert (await tus_client.get(f"/v1/uploads/{upload_id}/content")).headers["Content-Type"] == "image/png"


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
    await tus_create(client, 10, expect=401)
    path = upload_path(await tus_create(client, 10, headers=alice))
    assert (await client.head(path, headers={**TUS, **bob})).status == 404
    await tus_patch(client, path, 0, TEN, expect=404, headers=bob)
    await tus_patch(client, path, 0, TEN, headers=alice)
    assert (await client.get(path, headers=bob)).status == 404
    assert (await client.options("/files/")).status == 204  # discovery and preflight need no token
