"""Malformed input gets a clear 4xx problem+json and changes nothing (issue 15, finding 4).

Each row is sent as raw bytes (so a header can carry a byte no client library would
send) to the real app on a test server, with a valid token unless the row is about
the token, against a pending native upload ({id}) and tus upload ({tus}). After each:
the status, the problem+json body (no traceback, no server path), and the same Redis
keys, upload state, tus offset and files as before.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import json
import signal
import subprocess
from pathlib import Path
from types import SimpleNamespace

import aiohttp
import pytest
from aiohttp import web_protocol
from aiohttp.http_parser import HttpRequestParserPy

from helpers import create, put_chunk, random_bytes, sha256
from tus_helpers import tus_create, tus_patch, upload_path
from vezastream.http.app import engine_key, settings_key

TOKEN = "tok-alice"
AUTH = f"Authorization: Bearer {TOKEN}\r\n".encode()
ABCD_SHA256 = hashlib.sha256(b"abcd").digest()
PUT_CHUNK = b"PUT /v1/uploads/{id}/chunks/1 HTTP/1.1\r\n"
TUS_POST = b"POST /files/ HTTP/1.1\r\nTus-Resumable: 1.0.0\r\n"
TUS_PATCH = (b"PATCH {tus} HTTP/1.1\r\nTus-Resumable: 1.0.0\r\nUpload-Offset: 0\r\n"
             b"Content-Type: application/offset+octet-stream\r\n")


async def raw_answer(port: int, data: bytes) -> bytes:
    """Send ``data`` as is; every byte of the answer, until the server closes the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 20)
    finally:
        writer.close()


def split_answer(answer: bytes) -> tuple[str, dict[str, str], bytes]:
    """An answer's status line, headers (by lower-case name) and body."""
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {name.strip().lower(): value.strip()
               for name, _, value in (line.partition(":") for line in lines[1:])}
    return lines[0], headers, body


async def raw_exchange(port: int, data: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``data`` as is; the answer's (status, headers, body)."""
    status_line, headers, body = split_answer(await raw_answer(port, data))
    return int(status_line.split()[1]), headers, body


async def raw_request(port: int, head: bytes, body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 request of raw bytes; (status, headers, body) of the answer."""
    return await raw_exchange(port, head + b"Host: 127.0.0.1\r\nConnection: close\r\n"
                              + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)


def _json(**fields: object) -> bytes:
    return json.dumps({"filename": "a.bin", **fields}).encode()


# (id, request line + headers (before Host), body, status); {id} is a pending upload's id.
CASES = [
    ("chunk-number-superscript", b"PUT /v1/uploads/{id}/chunks/%C2%B2 HTTP/1.1\r\n" + AUTH, b"abcd", 400),
    # past any upload's last chunk (api.md)
    ("chunk-number-5000-digits", b"PUT /v1/uploads/{id}/chunks/" + b"7" * 5000 + b" HTTP/1.1\r\n" + AUTH, b"abcd", 404),
    ("head-chunk-superscript", b"HEAD /v1/uploads/{id}/chunks/%C2%B2 HTTP/1.1\r\n" + AUTH, b"", 400),
    ("json-integer-5000-digits", b"POST /v1/uploads HTTP/1.1\r\nContent-Type: application/json\r\n" + AUTH,
     b'{"filename": "a.bin", "total_size": ' + b"9" * 5000 + b"}", 400),
    ("json-nested-20000", b"POST /v1/uploads HTTP/1.1\r\nContent-Type: application/json\r\n" + AUTH,
     b"[" * 20_000, 400),
    ("json-unknown-charset", b"POST /v1/uploads HTTP/1.1\r\nContent-Type: application/json; charset=nope\r\n" + AUTH,
     _json(total_size=4), 415),
    ("json-lone-surrogate", b"POST /v1/uploads HTTP/1.1\r\nContent-Type: application/json\r\n" + AUTH,
     b'{"filename": "a\\ud800.bin", "total_size": 4}', 422),
    # JSON under another media type (or none) was parsed anyway: a page on any site can send such a
    # body with no CORS preflight (a form, fetch with text/plain, sendBeacon), and it created an upload.
    ("json-as-text-plain", b"POST /v1/uploads HTTP/1.1\r\nContent-Type: text/plain;charset=UTF-8\r\n" + AUTH,
     _json(total_size=4), 415),
    ("json-as-form", b"POST /v1/uploads HTTP/1.1\r\nContent-Type: application/x-www-form-urlencoded\r\n" + AUTH,
     _json(total_size=4), 415),
    ("json-without-content-type", b"POST /v1/uploads HTTP/1.1\r\n" + AUTH, _json(total_size=4), 415),
    # "$" matched before a final newline: this sha256 was taken, and every completion then failed (422)
    ("json-sha256-trailing-newline", b"POST /v1/uploads HTTP/1.1\r\nContent-Type: application/json\r\n" + AUTH,
     _json(total_size=4, sha256=ABCD_SHA256.hex() + "\n"), 422),
    # a codec whose failure is a UnicodeError, not a UnicodeDecodeError (was a 500)
    ("json-charset-punycode", b"POST /v1/uploads HTTP/1.1\r\nContent-Type: application/json; charset=punycode\r\n"
     + AUTH, _json(total_size=4), 400),
    # not JSON (RFC 8259), though Python's parser takes them: a repeated key (the last one won) and NaN
    ("json-repeated-key", b"POST /v1/uploads HTTP/1.1\r\nContent-Type: application/json\r\n" + AUTH,
     b'{"filename": "a.bin", "total_size": 4, "total_size": 8}', 400),
    ("json-nan", b"POST /v1/uploads HTTP/1.1\r\nContent-Type: application/json\r\n" + AUTH,
     b'{"filename": "a.bin", "total_size": 4, "chunk_size": NaN}', 400),
    ("json-infinity", b"POST /v1/uploads HTTP/1.1\r\nContent-Type: application/json\r\n" + AUTH,
     b'{"filename": "a.bin", "total_size": 4, "chunk_size": -Infinity}', 400),
    ("multipart-no-boundary", b"PUT /v1/uploads/{id}/chunks/1 HTTP/1.1\r\nContent-Type: multipart/form-data\r\n" + AUTH,
     b"--x\r\nContent-Disposition: form-data; name=\"chunk\"\r\n\r\nabcd\r\n--x--\r\n", 400),
    ("multipart-garbage", b"PUT /v1/uploads/{id}/chunks/1 HTTP/1.1\r\n"
     b"Content-Type: multipart/form-data; boundary=xyz\r\n" + AUTH, b"\x00\xffgarbage, not multipart\r\n" * 4, 400),
    # A content coding aiohttp does not decode (unknown, a list, a repeated header): the coded bytes were stored.
    ("content-coding-unknown", PUT_CHUNK + b"Content-Encoding: x\r\n" + AUTH, b"abcd", 415),
    ("content-coding-list", PUT_CHUNK + b"Content-Encoding: gzip, identity\r\n" + AUTH, b"abcd", 415),
    ("content-coding-twice", PUT_CHUNK + b"Content-Encoding: gzip\r\nContent-Encoding: identity\r\n" + AUTH,
     b"abcd", 415),
    ("tus-content-coding-list", TUS_PATCH + b"Content-Encoding: deflate, gzip\r\n" + AUTH, b"abcd", 415),
    # A multipart file part in a transfer or content coding: aiohttp's part reader passes it on as is.
    ("multipart-part-base64", PUT_CHUNK + b"Content-Type: multipart/form-data; boundary=b0\r\n" + AUTH,
     b"--b0\r\nContent-Disposition: form-data; name=\"chunk\"\r\nContent-Transfer-Encoding: base64\r\n\r\n"
     b"YWJj\r\n--b0--\r\n", 415),
    ("multipart-part-gzip", PUT_CHUNK + b"Content-Type: multipart/form-data; boundary=b0\r\n" + AUTH,
     b"--b0\r\nContent-Disposition: form-data; name=\"file\"\r\nContent-Encoding: gzip\r\n\r\n"
     b"abcd\r\n--b0--\r\n", 415),
    # A header that may come once, sent twice: aiohttp's headers.get() took the first, and a proxy
    # or a log may have taken the other (two Upload-Offsets, and the first one's bytes were stored).
    ("tus-offset-twice", TUS_PATCH + b"Upload-Offset: 4\r\n" + AUTH, b"abcd", 400),
    ("tus-length-twice", TUS_POST + b"Upload-Length: 4\r\nUpload-Length: 8\r\n" + AUTH, b"", 400),
    ("tus-resumable-twice", TUS_POST + b"Tus-Resumable: 0.2.2\r\nUpload-Length: 4\r\n" + AUTH, b"", 400),
    ("tus-concat-twice", TUS_POST + b"Upload-Concat: partial\r\nUpload-Concat: final;/files/x\r\n"
     b"Upload-Length: 4\r\n" + AUTH, b"", 400),
    ("tus-defer-length-twice", TUS_POST + b"Upload-Defer-Length: 1\r\nUpload-Defer-Length: 1\r\n" + AUTH, b"", 400),
    ("tus-checksum-twice", TUS_PATCH + b"Upload-Checksum: sha1 " + base64.b64encode(hashlib.sha1(b"abcd").digest())
     + b"\r\nUpload-Checksum: sha1 " + base64.b64encode(bytes(20)) + b"\r\n" + AUTH, b"abcd", 400),
    ("tus-method-override-twice", b"POST {tus} HTTP/1.1\r\nTus-Resumable: 1.0.0\r\nX-HTTP-Method-Override: HEAD\r\n"
     b"X-HTTP-Method-Override: DELETE\r\n" + AUTH, b"", 400),
    # Upload-Metadata is a list: two lines are one list, whose key repeated is refused as on one line.
    ("tus-metadata-key-on-two-lines", TUS_POST + b"Upload-Length: 4\r\nUpload-Metadata: filename YS5iaW4=\r\n"
     b"Upload-Metadata: filename Yi5iaW4=\r\n" + AUTH, b"", 400),
    ("chunk-sha256-twice", PUT_CHUNK + b"X-Chunk-Sha256: " + ABCD_SHA256.hex().encode() + b"\r\n"
     b"X-Chunk-Sha256: " + b"0" * 64 + b"\r\n" + AUTH, b"abcd", 400),
    # Content-Digest is a list: a second line's sha-256 is read too, and two that disagree are refused.
    ("content-digest-on-two-lines", PUT_CHUNK + b"Content-Digest: sha-256=:" + base64.b64encode(ABCD_SHA256)
     + b":\r\nContent-Digest: sha-256=:" + base64.b64encode(bytes(32)) + b":\r\n" + AUTH, b"abcd", 400),
    ("authorization-twice", b"POST /v1/uploads HTTP/1.1\r\nContent-Type: application/json\r\n" + AUTH
     + b"Authorization: Bearer someone-else\r\n", _json(total_size=4), 400),
    ("bearer-non-ascii", b"POST /v1/uploads HTTP/1.1\r\nContent-Type: application/json\r\n"
     b"Authorization: Bearer \xff\r\n", _json(total_size=4), 401),
    ("tus-bearer-non-ascii", b"POST /files/ HTTP/1.1\r\nTus-Resumable: 1.0.0\r\nUpload-Length: 4\r\n"
     b"Authorization: Bearer \xff\xfe\r\n", b"", 401),
]


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


@pytest.fixture
async def token_client(make_client, make_settings, monkeypatch):
    monkeypatch.setenv("BAD_INPUT_TOKENS", f"{TOKEN}=alice")
    return await make_client(make_settings(**{"auth.mode": "token", "auth.tokens_env": "BAD_INPUT_TOKENS"}))


@pytest.fixture
async def pending(token_client):
    """A pending native upload ({id}) and tus upload ({tus}), and ``snapshot()``: the Redis keys, both
    uploads' state and the data folder's files, to compare before and after a request."""
    client = token_client
    app = client.server.app
    headers = {"Authorization": f"Bearer {TOKEN}"}
    resp = await client.post("/v1/uploads", json={"filename": "a.bin", "total_size": 8, "chunk_size": 4},
                             headers=headers)
    upload_id = (await resp.json())["upload_id"]
    resp = await client.post("/files/", headers={**headers, "Tus-Resumable": "1.0.0", "Upload-Length": "4"})
    tus_path = resp.headers["Location"]
    store = app[engine_key].store
    data_dir = app[settings_key].storage.data_dir

    async def snapshot() -> tuple[set[str], dict, str | None, set[str]]:
        keys = set(await store.redis.keys(store.prefix + ":*"))
        state = await (await client.get(f"/v1/uploads/{upload_id}", headers=headers)).json()
        state.pop("updated_at", None)
        offset = (await client.head(tus_path, headers={**headers, "Tus-Resumable": "1.0.0"})).headers.get(
            "Upload-Offset")
        return keys, state, offset, _files(data_dir)

    def fill(raw: bytes) -> bytes:
        return raw.replace(b"{id}", upload_id.encode()).replace(b"{tus}", tus_path.encode())

    return SimpleNamespace(client=client, data_dir=data_dir, snapshot=snapshot, fill=fill)


def assert_problem(status: int, headers: dict[str, str], payload: bytes, expected: int, data_dir: Path,
                   bodiless: bool = False) -> None:
    """An answer of ``expected`` status, problem+json without a traceback or a server path."""
    assert status == expected, payload[:300]
    assert headers.get("content-type", "").startswith("application/problem+json"), headers
    if not bodiless:
        problem = json.loads(payload)
        assert problem["status"] == expected, problem
        text = payload.decode("utf-8", "replace")
        assert "Traceback" not in text and str(data_dir) not in text and "/site-packages/" not in text, text


@pytest.mark.parametrize("head, body, status", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
async def test_bad_input_answers_4xx_and_changes_nothing(pending, head, body, status, caplog):
    before = await pending.snapshot()
    got, answer_headers, payload = await raw_request(pending.client.server.port, pending.fill(head), body)
    assert_problem(got, answer_headers, payload, status, pending.data_dir, bodiless=head.startswith(b"HEAD"))
    assert await pending.snapshot() == before
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"


# (id, the whole request (its framing included), status): a transfer coding other than chunked
# (aiohttp frames "gzip, chunked" as chunked and passed the gzip bytes on as they came), and
# chunked framing in HTTP/1.0, which has none (RFC 9112, 6.1: faulty framing).
FRAMING_CASES = [
    ("transfer-coding-gzip-chunked", b"PUT /v1/uploads/{id}/chunks/1 HTTP/1.1\r\nHost: x\r\n" + AUTH
     + b"Transfer-Encoding: gzip, chunked\r\nConnection: close\r\n\r\n4\r\nabcd\r\n0\r\n\r\n", 400),
    ("tus-transfer-coding-gzip-chunked", b"PATCH {tus} HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\n"
     b"Upload-Offset: 0\r\nContent-Type: application/offset+octet-stream\r\n" + AUTH
     + b"Transfer-Encoding: gzip, chunked\r\nConnection: close\r\n\r\n4\r\nabcd\r\n0\r\n\r\n", 400),
    ("chunked-in-http-1.0", b"PUT /v1/uploads/{id}/chunks/1 HTTP/1.0\r\nHost: x\r\n" + AUTH
     + b"Transfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n0\r\n\r\n", 400),
]


@pytest.mark.parametrize("data, status", [c[1:] for c in FRAMING_CASES], ids=[c[0] for c in FRAMING_CASES])
async def test_bad_framing_answers_4xx_and_changes_nothing(pending, data, status):
    before = await pending.snapshot()
    got, answer_headers, payload = await raw_exchange(pending.client.server.port, pending.fill(data))
    assert_problem(got, answer_headers, payload, status, pending.data_dir)
    assert await pending.snapshot() == before


# A request line naming an HTTP version other than 1.0 and 1.1: aiohttp's C parser takes HTTP/2.0 and
# HTTP/0.9 (a request line without a version reads as 0.9), its pure-Python parser (AIOHTTP_NO_EXTENSIONS)
# any digit.digit. Such a request was served, its version echoed in the answer's status line (a server
# must not answer in a version it does not speak, RFC 9110, 2.5): an upload created, a chunk stored.
# (id, what ends the request line, aiohttp's parser)
VERSIONS = [("http-2.0", b" HTTP/2.0", "c"), ("http-0.9", b" HTTP/0.9", "c"), ("no-version", b"", "c"),
            ("http-1.2", b" HTTP/1.2", "c"), ("py-http-1.2", b" HTTP/1.2", "python"),
            ("py-http-3.0", b" HTTP/3.0", "python"), ("py-http-2.0", b" HTTP/2.0", "python")]
# (id, method and target, headers (before Host), body)
VERSION_REQUESTS = [
    ("health", b"GET /v1/health", b"", b""),
    ("native-create", b"POST /v1/uploads", b"Content-Type: application/json\r\n" + AUTH, _json(total_size=4)),
    ("native-chunk", b"PUT /v1/uploads/{id}/chunks/1", AUTH, b"abcd"),
    ("tus-create", b"POST /files/", b"Tus-Resumable: 1.0.0\r\nUpload-Length: 4\r\n" + AUTH, b""),
    ("tus-patch", b"PATCH {tus}", TUS_PATCH.split(b"\r\n", 1)[1] + AUTH, b"abcd"),
]


@pytest.mark.parametrize("line, head, body", [r[1:] for r in VERSION_REQUESTS], ids=[r[0] for r in VERSION_REQUESTS])
@pytest.mark.parametrize("version, parser", [v[1:] for v in VERSIONS], ids=[v[0] for v in VERSIONS])
async def test_an_http_version_other_than_1_0_and_1_1_answers_400_and_changes_nothing(
        pending, monkeypatch, caplog, line, head, body, version, parser):
    if parser == "python":  # what a connection opened from now on parses with
        monkeypatch.setattr(web_protocol, "HttpRequestParser", HttpRequestParserPy)
    before = await pending.snapshot()
    answer = await raw_answer(pending.client.server.port, pending.fill(
        line + version + b"\r\n" + head + b"Host: x\r\nConnection: close\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode() + body))
    status_line, headers, payload = split_answer(answer)
    # Never in the version sent: HTTP/1.0 where aiohttp's parser refused the line itself.
    assert status_line in ("HTTP/1.1 400 Bad Request", "HTTP/1.0 400 Bad Request"), answer[:300]
    assert_problem(400, headers, payload, 400, pending.data_dir)
    problem = json.loads(payload)
    assert problem["type"].endswith("/bad-request") and "HTTP/1.1" in problem["detail"], problem
    assert await pending.snapshot() == before
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"


@pytest.mark.parametrize("data", [b"vezastream " * 400, random_bytes(4096)], ids=["compressible", "random"])
async def test_a_gzip_coded_body_is_stored_decoded(client, data):
    """The content codings aiohttp decodes still are (the refusals above are of the others), and the
    body's size is its decoded size: Content-Length is the coded one (random bytes grow in gzip)."""
    coded = {"Content-Encoding": "gzip"}
    uid = (await create(client, total_size=len(data), chunk_size=len(data)))["upload_id"]
    resp = await client.put(f"/v1/uploads/{uid}/chunks/1", data=gzip.compress(data), headers=coded)
    assert resp.status == 201 and (await resp.json())["sha256"] == sha256(data), await resp.text()
    path = upload_path(await tus_create(client, len(data)))
    await tus_patch(client, path, 0, gzip.compress(data), headers=coded)
    assert await (await client.get(path)).read() == data


async def test_a_creation_body_of_a_json_suffix_type_is_taken(client):
    """The 415s above are of media types other than application/json and application/*+json."""
    resp = await client.post("/v1/uploads", data=_json(total_size=4),
                             headers={"Content-Type": "application/vnd.example+json; charset=utf-8"})
    assert resp.status == 201, await resp.text()


# -- errors aiohttp's own HTTP parser raises, before any middleware: a real `vezastream serve` --
MARK = b"ECHO-ME-NOT"

# (id, raw request bytes, status)
PARSER_CASES = [
    ("header-9000-bytes", b"GET /v1/health HTTP/1.1\r\nHost: x\r\nX-Big: " + MARK + b"a" * 9000 + b"\r\n\r\n", 431),
    ("request-line-too-long", b"GET /v1/" + MARK + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 431),
    ("bad-request-line", MARK + b"\x00 /v1/health HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    ("bad-http-version", b"GET /v1/health HTTP/" + MARK + b"\r\nHost: x\r\n\r\n", 400),
    # Parsed, but not served (test_an_http_version_other_than_...): refused, the connection closed after.
    ("http-2.0", b"PUT /v1/health HTTP/2.0\r\nHost: x\r\nContent-Length: 11\r\n\r\n" + MARK, 400),
    ("http-3.0", b"GET /v1/health HTTP/3.0\r\nHost: x\r\n\r\n", 400),
    ("no-version", b"GET /v1/health\r\nHost: x\r\n\r\n", 400),
    ("bad-header-name", b"GET /v1/health HTTP/1.1\r\nHost: x\r\nBad\x01" + MARK + b": 1\r\n\r\n", 400),
    ("bad-chunk-size", b"POST /v1/uploads HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n" + MARK + b"\r\n{}\r\n0\r\n\r\n", 400),
    ("content-encoding-unsupported", b"POST /v1/uploads HTTP/1.1\r\nHost: x\r\nContent-Encoding: br\r\n"
     b"Content-Length: 11\r\n\r\n" + MARK, 400),
    ("content-encoding-garbage", b"POST /v1/uploads HTTP/1.1\r\nHost: x\r\nContent-Encoding: gzip\r\n"
     b"Content-Type: application/json\r\nConnection: close\r\nContent-Length: 11\r\n\r\n" + MARK, 400),
    # A handler that never reads the body answers as usual; aiohttp then reads it to its end.
    ("content-encoding-garbage-unread", b"DELETE /files/nosuch HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\n"
     b"Content-Encoding: gzip\r\nConnection: close\r\nContent-Length: 11\r\n\r\n" + MARK, 404),
]


@pytest.fixture(scope="module")
def served(tmp_path_factory, redis_url):
    """One `vezastream serve` for the module (real Redis), stopped by its PID."""
    from servers import Server, free_port

    folder = tmp_path_factory.mktemp("served")
    env = {"VEZASTREAM_STORAGE__DATA_DIR": str(folder / "data"), "VEZASTREAM_SERVER__PORT": str(free_port()),
           "VEZASTREAM_REDIS__URL": redis_url, "VEZASTREAM_REDIS__KEY_PREFIX": "badinput",
           "VEZASTREAM_GC__ENABLED": "false", "VEZASTREAM_LOG__FORMAT": "text",
           "VEZASTREAM_LIMITS__MIN_CHUNK_SIZE": "1"}
    server = Server(env, folder)
    server.log = folder / "server.log"
    try:
        asyncio.run(server.wait_ready())
        yield server
    finally:
        try:
            server.kill(signal.SIGTERM)
        except subprocess.TimeoutExpired:  # it hung: by its PID, for good
            server.kill(signal.SIGKILL)


@pytest.mark.parametrize("data, status", [c[1:] for c in PARSER_CASES], ids=[c[0] for c in PARSER_CASES])
async def test_parser_errors_are_problem_json_without_echo(served, data, status):
    got, headers, body = await raw_exchange(served.port, data)
    assert got == status, body[:300]
    assert headers.get("content-type", "").startswith("application/problem+json"), (headers, body[:300])
    problem = json.loads(body)
    assert problem["status"] == status and problem["type"].startswith("https://vezastream.dev/problems/"), problem
    assert MARK not in body, body
    assert len(problem["request_id"]) >= 16 and headers.get("x-request-id") == problem["request_id"], headers
    assert headers.get("server") == "vezastream", headers  # no Python's or aiohttp's version (test_edge.py)
    assert headers.get("x-content-type-options") == "nosniff", headers
    assert "Traceback" not in served.log.read_text(errors="replace")
    # The server still serves.
    got, _, _ = await raw_exchange(served.port, b"GET /v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert got == 200


async def test_empty_bodies_do_not_spin(served):
    """aiohttp hands every request without a body one shared empty stream, whose chunk iterator
    never ends once it has been used: each later empty PUT or PATCH spun the event loop forever."""
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(served.url, timeout=timeout) as s:
        async with s.post("/v1/uploads", json={"filename": "a", "total_size": 8, "chunk_size": 4}) as r:
            uid = (await r.json())["upload_id"]
        async with s.post("/files/", headers={"Tus-Resumable": "1.0.0", "Upload-Length": "8"}) as r:
            location = r.headers["Location"]
        for _ in range(3):
            async with s.put(f"/v1/uploads/{uid}/chunks/1", data=b"") as r:
                assert r.status == 422, await r.text()
            async with s.patch(location, data=b"", headers={"Tus-Resumable": "1.0.0", "Upload-Offset": "0",
                                                            "Content-Type": "application/offset+octet-stream"}) as r:
                assert r.status == 204 and r.headers["Upload-Offset"] == "0", await r.text()


@pytest.mark.parametrize("range_header", ["", "bytes=9-", "bytes=abc", "lines=0-1", "bytes=0-1,2-3", "bytes=-0"])
async def test_bad_range_on_a_local_file_is_problem_json(client, range_header):
    """The local sink serves a file (aiohttp's FileResponse answered a bare 416 of its own). A suffix
    of no bytes (``bytes=-0``, unsatisfiable by RFC 9110) answered 206 with the whole file."""
    uid = (await create(client, total_size=4, chunk_size=4))["upload_id"]
    await put_chunk(client, uid, 1, b"abcd")
    assert (await client.post(f"/v1/uploads/{uid}/complete")).status == 200
    resp = await client.get(f"/v1/uploads/{uid}/content", headers={"Range": range_header})
    assert resp.status == 416 and resp.content_type == "application/problem+json", await resp.text()
    assert (await resp.json())["status"] == 416
    if range_header in ("bytes=9-", "bytes=-0"):  # outside the file: its size is told (docs/api.md)
        assert (await resp.json())["size"] == 4


@pytest.mark.parametrize("path, headers", [
    ("/v1/uploads", b"Content-Type: application/json\r\n"),
    ("/v1/uploads/{id}/chunks/1", b""),
    ("/files/", b"Tus-Resumable: 1.0.0\r\nUpload-Length: 8\r\nContent-Type: application/offset+octet-stream\r\n"),
])
async def test_bad_chunked_framing_mid_body_answers_400(served, path, headers):
    """Broken chunk framing after the handler started reading: aiohttp's parser dropped the body
    without a word to the handler, which then waited for the rest until the client gave up."""
    async with aiohttp.ClientSession(served.url) as s:
        async with s.post("/v1/uploads", json={"filename": "a", "total_size": 8, "chunk_size": 4}) as r:
            uid = (await r.json())["upload_id"]
    method = b"PUT" if "chunks" in path else b"POST"
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    try:
        writer.write(method + b" " + path.replace("{id}", uid).encode() + b" HTTP/1.1\r\nHost: x\r\n" + headers
                     + b"Transfer-Encoding: chunked\r\n\r\n2\r\nab\r\n")
        await writer.drain()
        await asyncio.sleep(0.3)  # the handler is reading the body now
        writer.write(MARK + b"\r\nzz\r\n0\r\n\r\n")
        await writer.drain()
        answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 400 ") and b"application/problem+json" in answer, answer
