"""A property-based fuzz of every native and tus route's inputs (issue 15).

hypothesis draws requests (path parameters, query strings, the headers each door
reads, JSON and binary bodies, some of them well formed, most not) and sends them
through the real app (make_client: real Redis, the local sink). Every answer must
be below 500; every error must be problem+json whose ``status`` is the response's,
naming no server path and holding no traceback. Afterwards the server must be
healthy: ``/v1/health/deep`` answers 200 and a normal upload completes.

The database is derandomized, so CI replays the same examples every run.
"""

from __future__ import annotations

import base64
import json
from collections import Counter
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import random_bytes, sha256, upload
from vezastream.http.app import settings_key

pytestmark = [pytest.mark.slow, pytest.mark.drill]

EXAMPLES = 3000
TOKEN = "tok-fuzz"

# -- pieces ------------------------------------------------------------------------------------
def _mostly(usual: st.SearchStrategy, other: st.SearchStrategy) -> st.SearchStrategy:
    """``usual`` 4 times in 5, else ``other``."""
    return st.integers(0, 4).flatmap(lambda i: other if i == 0 else usual)


# Header values: printable Latin-1 (aiohttp's client refuses CR, LF and other controls).
_header_text = st.text(st.characters(min_codepoint=32, max_codepoint=255, exclude_characters="\x7f"), max_size=40)
# Integers as headers and path parameters: mostly fine, else negative, huge, other scripts' digits, text.
_digits = _mostly(st.integers(0, 64).map(str), st.one_of(
    st.integers(-5, 2**70).map(str), st.just("9" * 5000), st.just("²"), st.just("٣"), st.just(" 12 "),
    st.just("0x10"), st.just("1e3"), _header_text))
_b64 = st.binary(max_size=24).map(lambda b: base64.b64encode(b).decode())
_metadata = st.lists(st.tuples(st.one_of(st.sampled_from(["filename", "kind", "x"]), _header_text),
                               st.one_of(_b64, _header_text, st.just(""))), max_size=4).map(
    lambda pairs: ",".join(f"{k} {v}".strip() for k, v in pairs))
_checksum = st.one_of(st.tuples(st.sampled_from(["sha1", "sha256", "md5", "crc32", "SHA256", ""]),
                                st.one_of(_b64, _header_text)).map(" ".join), _header_text)
_content_digest = st.one_of(_b64.map(lambda v: f"sha-256=:{v}:"), st.just("sha-256=:" + "A" * 43 + "=:"),
                            _header_text)
_content_type = st.sampled_from([
    None, "application/json", "application/json; charset=nope", "application/json; charset=latin-1",
    "application/json; charset=rot13", "application/offset+octet-stream", "application/octet-stream",
    "multipart/form-data", "multipart/form-data; boundary=b", "multipart/form-data; boundary=" + "x" * 80,
    "text/plain; charset=utf-8", "",
])
# Mostly the valid token (so requests reach the handlers' parsing), else anything.
_auth = _mostly(st.just(f"Bearer {TOKEN}"), st.one_of(st.none(), st.just("Bearer "), st.just("Basic abc"),
                                                       _header_text.map(lambda t: "Bearer " + t)))
_json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-2**64, 2**64), st.floats(allow_nan=True),
                       st.text(max_size=20), st.just("\ud800"), st.just(int("9" * 300)))
_json = st.recursive(_json_leaf, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                        st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                     max_leaves=8)
_create_body = st.fixed_dictionaries({
    "filename": st.one_of(st.just("a.bin"), st.just("a.bin"), _json_leaf, st.text(max_size=300)),
    "total_size": st.one_of(st.integers(0, 2**21), st.integers(-1, 2**65), _json_leaf),
}, optional={
    "chunk_size": st.one_of(st.integers(-1, 2**40), _json_leaf),
    "total_chunks": st.one_of(st.integers(-1, 2**40), _json_leaf),
    "sha256": st.one_of(st.just("0" * 64), _json_leaf),
    "metadata": st.one_of(st.dictionaries(st.text(max_size=10), st.text(max_size=10), max_size=3), _json),
    "other": _json,
})
_json_body = _mostly(_create_body.map(lambda d: json.dumps(d).encode()), st.one_of(
    _json.map(lambda d: json.dumps(d).encode()), st.binary(max_size=64), st.just(b"[" * 20_000),
    st.just(b'{"total_size": ' + b"9" * 5000 + b"}")))
_multipart = st.binary(max_size=40).map(
    lambda b: b"--b\r\nContent-Disposition: form-data; name=\"chunk\"\r\n\r\n" + b + b"\r\n--b--\r\n")
_body = st.one_of(st.just(b""), st.binary(max_size=64), _multipart)
_query = st.one_of(st.just(""), st.dictionaries(_header_text, _header_text, max_size=2).map(
    lambda d: "?" + "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in d.items())))


def _opt(name: str, values: st.SearchStrategy) -> st.SearchStrategy:
    return st.one_of(st.none(), values).map(lambda v: {} if v is None else {name: v})


_native_headers = st.tuples(_opt("Content-Digest", _content_digest), _opt("X-Chunk-Sha256", _header_text),
                            _opt("Range", st.one_of(_header_text, st.just("bytes=0-1"), st.just("bytes=-5"))))
_tus_headers = st.tuples(
    _mostly(st.just({"Tus-Resumable": "1.0.0"}), _opt("Tus-Resumable", st.sampled_from(["0.2.2", "", "1.0"]))),
    _opt("Upload-Offset", _digits),
    _opt("Upload-Length", _digits), _opt("Upload-Defer-Length", st.sampled_from(["1", "0", "yes"])),
    _opt("Upload-Metadata", _metadata), _opt("Upload-Checksum", _checksum),
    _opt("Upload-Concat", st.one_of(st.just("partial"), st.just("final;/files/x /files/y"), _header_text)),
    _opt("X-HTTP-Method-Override", st.sampled_from(["PATCH", "DELETE", "HEAD", "GET", "PUT", ""])),
    _opt("X-Forwarded-Host", _header_text), _opt("Forwarded", _header_text))


def _merge(parts: tuple[dict[str, str], ...]) -> dict[str, str]:
    merged: dict[str, str] = {}
    for part in parts:
        merged.update(part)
    return merged


@st.composite
def requests(draw: st.DrawFn, ids: dict[str, str]) -> dict[str, Any]:
    """One request to any route of either door."""
    upload_id = draw(_mostly(st.sampled_from(sorted(ids.values())), st.text(max_size=30)))
    uid = quote(upload_id, safe="") or "x"
    n = quote(draw(st.one_of(st.integers(-3, 2**64).map(str), _digits)), safe="") or "1"
    method, path, tus = draw(st.sampled_from([
        ("POST", "/v1/uploads", False), ("GET", f"/v1/uploads/{uid}", False),
        ("DELETE", f"/v1/uploads/{uid}", False), ("POST", f"/v1/uploads/{uid}/complete", False),
        ("PUT", f"/v1/uploads/{uid}/chunks/{n}", False), ("HEAD", f"/v1/uploads/{uid}/chunks/{n}", False),
        ("GET", f"/v1/uploads/{uid}/content", False), ("GET", "/v1/health", False),
        ("PATCH", "/v1/uploads", False),
        ("OPTIONS", "/files/", True), ("POST", "/files/", True), ("POST", "/files", True),
        ("HEAD", f"/files/{uid}", True), ("PATCH", f"/files/{uid}", True), ("DELETE", f"/files/{uid}", True),
        ("POST", f"/files/{uid}", True), ("GET", f"/files/{uid}", True), ("PUT", f"/files/{uid}", True),
    ]))
    headers = _merge(draw(_tus_headers if tus else _native_headers))
    auth = draw(_auth)
    if auth is not None:
        headers["Authorization"] = auth
    if method not in ("GET", "HEAD", "OPTIONS"):
        # (not on HEAD: a coding aiohttp cannot decode loses the request, and its 400's body then
        # follows an answer the client reads as bodiless)
        headers.update(draw(_opt("Content-Encoding", st.sampled_from(["gzip", "deflate", "br", "identity", "x"]))))
    content_type = draw(_content_type)
    if content_type is not None:
        headers["Content-Type"] = content_type
    body = b"" if method in ("GET", "HEAD", "OPTIONS") else draw(_json_body if path == "/v1/uploads" else _body)
    return {"method": method, "path": path + draw(_query), "headers": headers, "body": body,
            "target": next((kind for kind, known in ids.items() if known == upload_id), None)}


# -- the test ---------------------------------------------------------------------------------
class Tally:
    """What the fuzz sent and got."""

    def __init__(self) -> None:
        self.requests = 0
        self.statuses: Counter[int] = Counter()


@pytest.fixture
async def fuzzed(make_client, make_settings, report, monkeypatch):
    """The app under fuzz (bearer tokens on) with an upload of each kind to aim at; healthy afterwards."""
    monkeypatch.setenv("FUZZ_TOKENS", f"{TOKEN}=fuzzer")
    client = await make_client(make_settings(**{"limits.max_upload_size": 1 << 20, "auth.mode": "token",
                                                "auth.tokens_env": "FUZZ_TOKENS"}))
    auth = {"Authorization": f"Bearer {TOKEN}"}

    async def make(kind: str) -> str:
        """A fresh upload of one kind: native or tus, pending or completed; tus deferred-length or partial."""
        if kind.startswith("native"):
            resp = await client.post("/v1/uploads", json={"filename": "n.bin", "total_size": 8, "chunk_size": 4},
                                     headers=auth)
            upload_id = (await resp.json())["upload_id"]
            if kind == "native-done":
                for n in (1, 2):
                    await client.put(f"/v1/uploads/{upload_id}/chunks/{n}", data=b"abcd", headers=auth)
                await client.post(f"/v1/uploads/{upload_id}/complete", headers=auth)
            return upload_id
        if kind == "tus-done":
            resp = await client.post("/files/", data=b"abcdefgh", headers={
                "Tus-Resumable": "1.0.0", "Upload-Length": "8", "Content-Type": "application/offset+octet-stream",
                **auth})
            return resp.headers["Location"].rsplit("/", 1)[1]
        extra = {"tus": {"Upload-Length": "8"}, "tus-defer": {"Upload-Defer-Length": "1"},
                 "tus-partial": {"Upload-Length": "8", "Upload-Concat": "partial"}}[kind]
        resp = await client.post("/files/", headers={"Tus-Resumable": "1.0.0", **extra, **auth})
        return resp.headers["Location"].rsplit("/", 1)[1]

    kinds = ("native", "native-done", "tus", "tus-defer", "tus-partial", "tus-done")
    ids = {kind: await make(kind) for kind in kinds}
    tally = Tally()
    yield client, ids, tally, make
    deep = await client.get("/v1/health/deep")
    assert deep.status == 200, await deep.text()
    client.session.headers.update(auth)  # a normal client's next upload
    data = random_bytes(100_000)
    result = await upload(client, data, 32_768)
    assert result["sha256"] == sha256(data)
    report("fuzz", requests=tally.requests, errors_5xx=0,
           statuses=" ".join(f"{code}x{n}" for code, n in sorted(tally.statuses.items())))


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(data=st.data())
async def test_fuzz_every_route(fuzzed, data):
    client, ids, tally, make = fuzzed
    req = data.draw(requests(ids))
    tally.requests += 1
    resp = await client.request(req["method"], req["path"], headers=req["headers"], data=req["body"],
                                allow_redirects=False, skip_auto_headers=["Content-Type"])
    tally.statuses[resp.status] += 1
    text = (await resp.read()).decode("utf-8", "replace")
    where = str(client.server.app[settings_key].storage.data_dir)
    assert resp.status < 500, (req, resp.status, text[:500])
    assert "Traceback" not in text and where not in text, (req, text[:500])
    if resp.status >= 400:
        assert resp.content_type == "application/problem+json", (req, resp.status, resp.content_type, text[:300])
        if req["method"] != "HEAD":
            assert json.loads(text)["status"] == resp.status, (req, text[:300])
    if req["target"] and req["method"] in ("DELETE", "POST") and resp.status == 204:  # gone: aim at a new one
        ids[req["target"]] = await make(req["target"])
