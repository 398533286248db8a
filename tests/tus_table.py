"""The tus acceptance table: (id, state, method, path, headers, body) -> (status, headers).

Run in-process by tests/api/test_tus_protocol.py and on a Redis Cluster by
tests/integration/test_redis_topologies.py.
"""

from __future__ import annotations

import base64
import hashlib

from tus_helpers import STREAM, TUS, b64, tus_create, tus_patch, upload_path

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
    ("patch-checksum-no-digest", "fresh", "PATCH", "{}", {**TUS, **STREAM, "Upload-Offset": "0",
                                                          "Upload-Checksum": "sha256"}, TEN, 400, {}),
    ("patch-checksum-short", "fresh", "PATCH", "{}", {**TUS, **STREAM, "Upload-Offset": "0",
                                                      "Upload-Checksum": "sha1 AAAA"}, TEN, 400, {}),
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


async def check_row(tus_client, name, state, method, path, headers, body, status, want) -> None:
    """Bring an upload to ``state``, send the row's request, and check the answer's status and headers."""
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
