"""The S3 sink against a real S3 server (moto in server mode): the native API in both modes."""

from __future__ import annotations

import asyncio
import logging
import base64
import hashlib
import re
import subprocess
import sys
import time
from urllib.parse import parse_qsl, unquote, urlsplit

import aiohttp
import pytest

from helpers import content, create, put_chunk, random_bytes, scrape, sha256, split, upload, value
from s3_servers import (Faulty, bucket_contents, client_error, deleted_leaves_nothing, free_port,
                        object_keys, open_multipart_uploads, refused_direct_upload_tells_the_truth, PREFIX,
                        read_object, s3_overrides, the_sink, upload_is_rejected, without_credentials)
from tus_helpers import TUS, b64, tus_create, tus_patch, upload_path

from vezastream import hookimpl
from vezastream.http.app import engine_key, gc_key
from vezastream.config import ConfigError, parse_size
from vezastream.errors import Rejected
from vezastream_s3.settings import parse_settings

MiB = 1024 * 1024
#: Direct mode needs chunks of at least 5 MiB (S3's smallest part).
DIRECT_CHUNK = 5 * MiB
STAGED_CHUNK = 1 * MiB
MODES = {"staged": STAGED_CHUNK, "direct": DIRECT_CHUNK}


@pytest.fixture
async def s3_client(make_client, sink_settings):
    return await make_client(sink_settings())


# -- configuration ------------------------------------------------------------------------
@pytest.mark.parametrize("table, problem", [
    ({}, "sinks.s3.bucket"),
    ({"bucket": "Bad_Bucket"}, "sinks.s3.bucket"),
    ({"bucket": "ok-bucket", "secret_key": "x"}, "sinks.s3.secret_key: unknown setting"),
    ({"bucket": "ok-bucket", "part_size": "1MiB"}, "sinks.s3.part_size"),
    ({"bucket": "ok-bucket", "content": "inline"}, "sinks.s3.content"),
    ({"bucket": "ok-bucket", "parts_in_flight": 0}, "sinks.s3.parts_in_flight"),
    ({"bucket": "ok-bucket", "direct": "yes"}, "sinks.s3.direct"),
    ({"bucket": "ok-bucket", "endpoint_url": "127.0.0.1:9000"}, "sinks.s3.endpoint_url"),
])
def test_bad_settings_name_the_key(table, problem):
    with pytest.raises(ConfigError, match=problem):
        parse_settings(table)


def test_settings_defaults_and_sizes():
    s = parse_settings({"bucket": "ok-bucket", "part_size": "8MiB", "retry_base_delay": 1})
    assert (s.part_size, s.parts_in_flight, s.content, s.direct, s.retry_base_delay) == (8 * MiB, 3, "redirect",
                                                                                         True, 1.0)
    assert parse_settings({"bucket": "ok-bucket"}).part_size == 10 * MiB


def test_the_defaults_docs_s3_md_lists_are_the_settings_defaults():
    """Every default in docs/s3.md's settings table is what an empty [sinks.s3] table (but its bucket) gets."""
    import tomllib
    from pathlib import Path

    table = (Path(__file__).parents[2] / "docs" / "s3.md").read_text().split("| key | default | meaning |")[1]
    defaults = parse_settings({"bucket": "ok-bucket"})
    checked = set()
    for row in re.findall(r"^\| (`[^|]+`) \| ([^|]+) \|", table.split("\n## ")[0], re.M):
        keys, values = re.findall(r"`([^`]+)`", row[0]), re.findall(r"`([^`]+)`", row[1])
        if not values:  # (required)
            continue
        assert len(keys) == len(values), row
        for key, literal in zip(keys, values):
            want = tomllib.loads(f"v = {literal}")["v"]
            got = getattr(defaults, key)
            assert got == (parse_size(want, key) if key == "part_size" else want), (key, got, want)
            checked.add(key)
    assert len(checked) == 16, checked


def test_the_part_size_grows_for_a_file_that_would_need_more_than_10000_parts():
    """docs/s3.md: S3 takes at most 10,000 parts; a streamed file of 100 GiB with 5 MiB parts would need
    20,480, so its parts are made just large enough (no S3 call: sizing only)."""
    from vezastream_s3.sink import S3Sink

    sink = S3Sink(parse_settings({"bucket": "ok-bucket", "part_size": "5MiB"}))
    assert sink.part_size_for(10 * 1024 * MiB) == 5 * MiB  # 2,048 parts: as configured
    grown = sink.part_size_for(100 * 1024 * MiB)
    assert grown > 5 * MiB and -(-100 * 1024 * MiB // grown) == 10_000


def test_the_plugin_loads_without_aiobotocore():
    """The entry point is loaded on every start: a local-sink install must not need the s3 extra."""
    code = ("import sys; sys.modules['botocore'] = sys.modules['aiobotocore'] = None\n"
            "from vezastream.plugins import make_plugin_manager, registered_sinks\n"
            "assert sorted(registered_sinks(make_plugin_manager()))[:2] == ['local', 's3']\n"
            "from vezastream_s3 import make_s3_sink\n"
            "from vezastream.config import ConfigError\n"
            "try:\n    make_s3_sink({'bucket': 'ok-bucket'}, None)\nexcept ConfigError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "needs the s3 extra" in out.stdout


# -- both modes: the happy path ---------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
async def test_upload_reads_back_byte_identical(s3_client, s3, bucket, mode):
    chunk = MODES[mode]
    data = random_bytes(2 * chunk + 123_457)
    state = await create(s3_client, total_size=len(data), chunk_size=chunk)
    assert state["mode"] == mode
    for n, piece in enumerate(split(data, chunk), 1):
        await put_chunk(s3_client, state["upload_id"], n, piece)
    staged = s3_client.server.app[engine_key].staging.holds(state["upload_id"])
    assert staged == (mode == "staged")  # direct mode keeps nothing on local disk
    resp = await s3_client.post(f"/v1/uploads/{state['upload_id']}/complete")
    result = await resp.json()
    assert resp.status == 200, result
    assert result["sha256"] == sha256(data) and result["size"] == len(data) and result["sink"] == "s3"
    key = PREFIX + state["upload_id"]
    assert result["location"] == f"s3://{bucket}/{key}"
    assert await read_object(s3, bucket, key) == data
    assert open_multipart_uploads(s3, bucket) == []
    status, body = await content(s3_client, state["upload_id"])  # 307 to a presigned URL, followed
    assert status == 200 and hashlib.sha256(body).hexdigest() == sha256(data)
    resp = await s3_client.get(f"/v1/uploads/{state['upload_id']}")
    assert (await resp.json())["mode"] == mode


class PartCounter:
    """Wraps the real client and records how many UploadPart calls run at once, and their part numbers."""

    def __init__(self, real) -> None:
        self.real, self.running, self.peak, self.numbers = real, 0, 0, []

    def __getattr__(self, name: str):
        return getattr(self.real, name)

    async def upload_part(self, **kw):
        self.numbers.append(kw["PartNumber"])
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            await asyncio.sleep(0.05)  # slow enough for parts to pile up if nothing bounded them
            return await self.real.upload_part(**kw)
        finally:
            self.running -= 1


async def test_streamed_mode_sends_parts_in_order_with_bounded_parallelism(make_client, sink_settings, s3, bucket):
    client = await make_client(sink_settings(parts_in_flight=2))
    sink = the_sink(client)
    counter = PartCounter(await sink.api())
    sink.use_client(counter)
    data = random_bytes(26 * MiB + 1)
    result = await upload(client, data, chunk_size=STAGED_CHUNK)
    assert counter.numbers == [1, 2, 3, 4, 5, 6]  # 5 MiB parts, started in order
    assert counter.peak <= 2  # memory: at most parts_in_flight parts of part_size
    assert await read_object(s3, bucket, PREFIX + result["upload_id"]) == data


async def test_empty_file(s3_client, s3, bucket):
    state = await create(s3_client, total_size=0)
    assert state["mode"] == "staged"
    resp = await s3_client.post(f"/v1/uploads/{state['upload_id']}/complete")
    assert resp.status == 200
    assert (await resp.json())["sha256"] == sha256(b"")
    assert await read_object(s3, bucket, PREFIX + state["upload_id"]) == b""


async def test_small_chunks_fall_back_to_staged_and_direct_can_be_off(make_client, sink_settings):
    client = await make_client(sink_settings())
    assert (await create(client, total_size=10 * MiB, chunk_size=4 * MiB))["mode"] == "staged"
    client = await make_client(sink_settings(direct=False))
    assert (await create(client, total_size=10 * MiB, chunk_size=DIRECT_CHUNK))["mode"] == "staged"


async def test_an_upload_of_more_chunks_than_s3_takes_parts_is_staged_not_direct(make_client, make_settings,
                                                                                 s3_server, bucket, s3):
    """With limits.max_chunks raised past 10,000, chunks of 5 MiB or more were still sent as parts: S3
    takes part numbers 1 to 10,000, so chunk 10,001 was refused by S3. Such an upload is staged."""
    client = await make_client(make_settings(**{**s3_overrides(s3_server, bucket), "limits.max_chunks": 20_000,
                                                "limits.max_upload_size": "100GiB"}))
    total = 10_001 * DIRECT_CHUNK
    state = await create(client, total_size=total, chunk_size=DIRECT_CHUNK)
    assert (state["mode"], state["total_chunks"]) == ("staged", 10_001)
    assert not s3.list_multipart_uploads(Bucket=bucket).get("Uploads")
    _, chunk = await put_chunk(client, state["upload_id"], 10_001, random_bytes(DIRECT_CHUNK))
    assert chunk["size"] == DIRECT_CHUNK
    assert (await create(client, total_size=10_000 * DIRECT_CHUNK, chunk_size=DIRECT_CHUNK))["mode"] == "direct"


# -- retries, conflicts, missing chunks ---------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
async def test_retry_is_safe_and_different_bytes_conflict(s3_client, mode):
    chunk = MODES[mode]
    data = random_bytes(chunk + 10)
    state = await create(s3_client, total_size=len(data), chunk_size=chunk)
    uid = state["upload_id"]
    first = data[:chunk]
    _, body = await put_chunk(s3_client, uid, 1, first, expect=201)
    _, again = await put_chunk(s3_client, uid, 1, first, expect=200)
    assert again["sha256"] == body["sha256"] == sha256(first)
    other = bytes([first[0] ^ 1]) + first[1:]
    _, problem = await put_chunk(s3_client, uid, 1, other, expect=409)
    assert problem["stored_sha256"] == sha256(first)
    resp = await s3_client.post(f"/v1/uploads/{uid}/complete")
    assert resp.status == 409 and (await resp.json())["missing_chunks"] == [2]
    await put_chunk(s3_client, uid, 2, data[chunk:])
    resp = await s3_client.post(f"/v1/uploads/{uid}/complete")
    assert resp.status == 200 and (await resp.json())["sha256"] == sha256(data)


@pytest.mark.parametrize("mode", MODES)
async def test_bad_chunk_bodies_are_refused_and_change_nothing(s3_client, mode):
    chunk = MODES[mode]
    data = random_bytes(chunk + 10)
    uid = (await create(s3_client, total_size=len(data), chunk_size=chunk))["upload_id"]
    piece = data[:chunk]
    await put_chunk(s3_client, uid, 1, piece[:-1], expect=422)  # short
    await put_chunk(s3_client, uid, 1, piece + b"x", expect=413)  # long
    await put_chunk(s3_client, uid, 1, piece, expect=422, headers={"X-Chunk-Sha256": sha256(b"other")})
    digest = base64.b64encode(hashlib.sha256(piece).digest()).decode()
    await put_chunk(s3_client, uid, 1, piece, expect=201, headers={"Content-Digest": f"sha-256=:{digest}:"})
    state = await (await s3_client.get(f"/v1/uploads/{uid}")).json()
    assert state["chunks_received"] == [1] and state["bytes_received"] == chunk


async def test_direct_mode_one_connection_per_chunk(s3_client, s3, bucket):
    data = random_bytes(DIRECT_CHUNK + 1)
    uid = (await create(s3_client, total_size=len(data), chunk_size=DIRECT_CHUNK))["upload_id"]
    store = s3_client.server.app[engine_key].store
    lease = store.part_lease_key(uid, 1)
    assert await store.acquire_lease(lease, "another-connection", 60)  # chunk 1 is on its way elsewhere
    _, problem = await put_chunk(s3_client, uid, 1, data[:DIRECT_CHUNK], expect=409)
    assert "another connection" in problem["detail"]
    await store.release_lease(lease, "another-connection")
    await put_chunk(s3_client, uid, 1, data[:DIRECT_CHUNK], expect=201)
    assert await store.redis.exists(lease) == 0  # released once the chunk is registered


async def test_a_direct_chunk_costs_two_redis_commands_and_leaves_no_lease(s3_client, s3, bucket, monkeypatch):
    """Issue 19: the part lease and the chunk's record in one script (claim), the register script
    (which gives the lease back): 2 commands per direct chunk, a retry of a registered one too."""
    data = random_bytes(2 * DIRECT_CHUNK)
    uid = (await create(s3_client, total_size=len(data), chunk_size=DIRECT_CHUNK))["upload_id"]
    store = s3_client.server.app[engine_key].store
    await put_chunk(s3_client, uid, 1, data[:DIRECT_CHUNK], expect=201)  # Redis has loaded the scripts

    sent: list[tuple] = []
    execute = store.batcher.execute

    def counted(*args):
        if not any(isinstance(a, str) and ":node:" in a for a in args):  # heartbeats are no chunk's work
            sent.append(args)
        return execute(*args)
    monkeypatch.setattr(store.batcher, "execute", counted)
    monkeypatch.setattr(store, "_execute", counted)
    for n, expect in ((2, 201), (2, 200), (1, 200)):  # a new chunk, then retries of registered ones
        sent.clear()
        await put_chunk(s3_client, uid, n, data[(n - 1) * DIRECT_CHUNK:n * DIRECT_CHUNK], expect=expect)
        assert len(sent) == 2, [a[:1] for a in sent]
        assert await store.redis.exists(store.part_lease_key(uid, n)) == 0
    assert (await (await s3_client.post(f"/v1/uploads/{uid}/complete")).json())["sha256"] == sha256(data)
    assert await read_object(s3, bucket, PREFIX + uid) == data


async def test_direct_mode_parallel_chunks_any_order(s3_client, s3, bucket):
    data = random_bytes(4 * DIRECT_CHUNK - 7)
    result = await upload(s3_client, data, chunk_size=DIRECT_CHUNK, concurrency=4)
    assert result["sha256"] == sha256(data)
    assert await read_object(s3, bucket, PREFIX + result["upload_id"]) == data


# -- deletion and reading back --------------------------------------------------------------
async def test_delete_aborts_the_direct_multipart_upload(s3_client, s3, bucket):
    data = random_bytes(DIRECT_CHUNK + 1)
    uid = (await create(s3_client, total_size=len(data), chunk_size=DIRECT_CHUNK))["upload_id"]
    await put_chunk(s3_client, uid, 1, data[:DIRECT_CHUNK])
    assert [u["Key"] for u in open_multipart_uploads(s3, bucket)] == [PREFIX + uid]
    resp = await s3_client.delete(f"/v1/uploads/{uid}")
    assert resp.status == 204
    assert open_multipart_uploads(s3, bucket) == []
    assert (await s3_client.get(f"/v1/uploads/{uid}")).status == 404


async def test_delete_of_a_completed_upload_removes_the_object(s3_client, s3, bucket):
    result = await upload(s3_client, b"hello", chunk_size=5)
    assert object_keys(s3, bucket) == [PREFIX + result["upload_id"]]
    assert (await s3_client.delete(f"/v1/uploads/{result['upload_id']}")).status == 204
    assert object_keys(s3, bucket) == []


async def test_content_redirects_to_a_presigned_url(s3_client, moto_server, aws_env):
    """docs/s3.md: on endpoint_url's host, naming the access key id (never the secret), valid for
    presign_expiry seconds (3600 by default); the client that follows it gets the bytes."""
    result = await upload(s3_client, b"0123456789", chunk_size=4)
    resp = await s3_client.get(f"/v1/uploads/{result['upload_id']}/content", allow_redirects=False)
    assert resp.status == 307
    location = resp.headers["Location"]
    assert location.startswith(moto_server.endpoint) and "Signature=" in location
    query = dict(parse_qsl(urlsplit(location).query))
    assert query["X-Amz-Credential"].startswith(aws_env["AWS_ACCESS_KEY_ID"] + "/") and query["X-Amz-Expires"] == "3600"
    assert aws_env["AWS_SECRET_ACCESS_KEY"] not in unquote(location)
    async with aiohttp.ClientSession() as s, s.get(location) as followed:
        assert followed.status == 200 and await followed.read() == b"0123456789"


@pytest.mark.parametrize("headers, status, expected", [
    ({}, 200, slice(None)),
    ({"Range": "bytes=2-5"}, 206, slice(2, 6)),
    ({"Range": "bytes=-3"}, 206, slice(-3, None)),
    ({"Range": "bytes=7-"}, 206, slice(7, None)),
    ({"Range": "bytes=50-60"}, 416, None),
    ({"Range": "bytes=0-1,4-5"}, 416, None),  # several ranges: refused, never the whole object
])
async def test_content_proxy_with_range(make_client, sink_settings, headers, status, expected):
    client = await make_client(sink_settings(content="proxy"))
    data = b"0123456789"
    result = await upload(client, data, chunk_size=4)
    resp = await client.get(f"/v1/uploads/{result['upload_id']}/content", headers=headers)
    assert resp.status == status
    if expected is not None:
        assert await resp.read() == data[expected]
        assert resp.headers["Accept-Ranges"] == "bytes"


@pytest.mark.parametrize("mode", ["staged", "direct", "empty", "tus"])
async def test_content_type_is_stored_on_the_object_and_served(make_client, sink_settings, s3, bucket, mode):
    """s3.md: the object carries the upload's type, and its filename as Content-Disposition (an
    empty file too, which is one PutObject rather than a multipart upload)."""
    client = await make_client(sink_settings(content="proxy"))
    data = b"" if mode == "empty" else random_bytes(MODES.get(mode, STAGED_CHUNK) + 10)
    if mode == "tus":
        path = upload_path(await tus_create(client, len(data), headers={
            "Upload-Metadata": f"filename {b64('x.json')},filetype {b64('application/json')}"}, filename=None))
        await tus_patch(client, path, 0, data)
        uid = path.rsplit("/", 1)[1]
    else:
        uid = (await upload(client, data, chunk_size=MODES.get(mode, STAGED_CHUNK),
                            content_type="application/json", filename="x.json"))["upload_id"]
    head = await asyncio.to_thread(s3.head_object, Bucket=bucket, Key=PREFIX + uid)
    assert head["ContentType"] == "application/json"
    assert 'filename="x.json"' in head["ContentDisposition"], head
    resp = await client.get(f"/v1/uploads/{uid}/content")
    assert await resp.read() == data and resp.headers["Content-Type"] == "application/json"


# -- health ------------------------------------------------------------------------------------
async def test_health_deep_checks_the_bucket(s3_client, make_client, sink_settings):
    resp = await s3_client.get("/v1/health/deep")
    body = await resp.json()
    assert resp.status == 200 and body["checks"]["sink:s3"]["ok"], body
    down = await make_client(sink_settings(endpoint_url=f"http://127.0.0.1:{free_port()}", retry_attempts=1))
    resp = await down.get("/v1/health/deep")
    body = await resp.json()
    assert resp.status == 503 and not body["checks"]["sink:s3"]["ok"] and body["checks"]["redis"]["ok"]
    assert body["checks"]["sink:s3"]["reason"] in ("timeout", "unavailable"), body  # s3.md: S3 does not answer
    missing = await make_client(sink_settings(bucket="no-such-bucket-here"))
    resp = await missing.get("/v1/health/deep")
    body = await resp.json()
    assert resp.status == 503 and body["checks"]["sink:s3"] == {"ok": False, "reason": "sink-failed"}, body


async def test_an_upload_created_while_s3_is_down_is_staged_not_refused(make_client, sink_settings):
    """s3.md: with S3 out of reach at creation, a direct-sized upload is staged on the node (its chunks
    are taken), rather than refused; completion then waits for S3."""
    client = await make_client(sink_settings(endpoint_url=f"http://127.0.0.1:{free_port()}", retry_attempts=1))
    data = random_bytes(DIRECT_CHUNK + 5)
    uid = (await create(client, total_size=len(data), chunk_size=DIRECT_CHUNK))["upload_id"]
    for n, piece in enumerate(split(data, DIRECT_CHUNK), 1):
        await put_chunk(client, uid, n, piece)  # 201: staged here (a direct part would have met S3: 503)
    state = await (await client.get(f"/v1/uploads/{uid}")).json()
    assert state["status"] == "pending" and state["received_count"] == 2
    resp = await client.post(f"/v1/uploads/{uid}/complete")
    assert resp.status == 503 and resp.headers["Retry-After"], await resp.text()


async def test_health_deep_fails_without_credentials_and_the_log_says_why(make_client, sink_settings, monkeypatch,
                                                                         caplog):
    """s3.md: credentials come only from the AWS chain; without any, readiness fails for the sink
    (not for Redis) and the warning in the log names the missing credentials."""
    without_credentials(monkeypatch)
    client = await make_client(sink_settings(retry_attempts=1))
    caplog.set_level(logging.WARNING, logger="vezastream.health")
    resp = await client.get("/v1/health/deep")
    body = await resp.json()
    assert resp.status == 503 and body["checks"]["redis"]["ok"], body
    assert body["checks"]["sink:s3"] == {"ok": False, "reason": "error"}  # no call could be made
    (failed,) = [r for r in caplog.records if r.getMessage() == "health check failed"]
    assert failed.check == "sink:s3" and "NoCredentialsError" in failed.error


async def test_a_direct_upload_created_without_credentials_answers_502_naming_the_call(
        make_client, sink_settings, monkeypatch, s3, bucket, caplog):
    """s3.md: a permanent error when a direct upload is created (here no credentials) answers 502
    sink-failed at once, naming the sink, the method and only the exception's class; the log has the rest."""
    without_credentials(monkeypatch)
    client = await make_client(sink_settings(retry_attempts=1))
    with caplog.at_level(logging.ERROR):
        resp = await client.post("/v1/uploads", json={"filename": "d.bin", "total_size": 2 * DIRECT_CHUNK,
                                                      "chunk_size": DIRECT_CHUNK})
    problem = await resp.json()
    assert resp.status == 502 and problem["type"].endswith("/sink-failed") and problem["sink"] == "s3", problem
    assert problem["detail"] == ("sink 's3' failed in open_direct() (NoCredentialsError); "
                                 "the server log has the details"), problem
    assert "Unable to locate credentials" in caplog.text and "Unable to locate" not in problem["detail"]
    assert open_multipart_uploads(s3, bucket) == []


# -- failures: retried, or nothing left behind ------------------------------------------------------
async def test_transient_errors_are_retried(s3_client, s3, bucket, caplog):
    caplog.set_level(logging.WARNING, logger="vezastream.s3")
    sink = the_sink(s3_client)
    spy = Faulty(await sink.api(), upload_part=[client_error("SlowDown", 503), client_error("InternalError", 500)],
                 complete_multipart_upload=[client_error("ServiceUnavailable", 503)])
    sink.use_client(spy)
    data = random_bytes(6 * MiB)
    result = await upload(s3_client, data, chunk_size=STAGED_CHUNK)
    assert spy.calls["upload_part"] == 4 and spy.calls["complete_multipart_upload"] == 2
    assert await read_object(s3, bucket, PREFIX + result["upload_id"]) == data
    found = await scrape(s3_client)  # each retry counted by kind, and none became an error
    for kind in ("SlowDown", "InternalError", "ServiceUnavailable"):
        assert value(found, "vezastream_sink_events_total", sink="s3", event="retries", kind=kind) == 1
    assert value(found, "vezastream_sink_events_total", event="errors") == 0
    # Each retry logged once (docs/operations.md): the call, the kind, the attempt, the message.
    retries = [r for r in caplog.records if getattr(r, "event", None) == "s3_retry"]
    assert sorted((r.call, r.kind, r.attempt) for r in retries) == [
        ("CompleteMultipartUpload", "ServiceUnavailable", 1), ("UploadPart", "InternalError", 1),
        ("UploadPart", "SlowDown", 1)], [r.__dict__ for r in retries]
    assert all(r.kind in r.error and len(r.error) <= 200 for r in retries)
    assert not [r for r in caplog.records if getattr(r, "event", None) == "sink_error"]


async def _staged_upload_ready(client, data: bytes) -> str:
    uid = (await create(client, total_size=len(data), chunk_size=STAGED_CHUNK))["upload_id"]
    for n, piece in enumerate(split(data, STAGED_CHUNK), 1):
        await put_chunk(client, uid, n, piece)
    return uid


@pytest.mark.parametrize("fault, status", [
    (client_error("AccessDenied", 403), 502),  # permanent: not retried
    (client_error("SlowDown", 503), 503),  # transient, but outlasting every attempt
])
async def test_failure_mid_assembly_leaves_nothing_and_keeps_the_chunks(make_client, sink_settings, s3, bucket,
                                                                        fault, status):
    client = await make_client(sink_settings(retry_attempts=2))
    sink = the_sink(client)
    real = await sink.api()
    data = random_bytes(11 * MiB)
    uid = await _staged_upload_ready(client, data)
    sink.use_client(Faulty(real, upload_part=[None, *[fault] * 4]))  # part 1 lands, parts 2 and 3 fail
    resp = await client.post(f"/v1/uploads/{uid}/complete")
    problem = await resp.json()
    assert resp.status == status and resp.content_type == "application/problem+json", problem
    assert open_multipart_uploads(s3, bucket) == [] and object_keys(s3, bucket) == []
    state = await (await client.get(f"/v1/uploads/{uid}")).json()
    assert state["status"] == "pending" and state["received_count"] == 11
    kind = fault.response["Error"]["Code"]
    found = await scrape(client)
    assert value(found, "vezastream_sink_events_total", sink="s3", event="errors", kind=kind) >= 1
    assert value(found, "vezastream_uploads_failed_total", door="native", sink="s3", status=str(status)) == 1
    sink.use_client(real)
    resp = await client.post(f"/v1/uploads/{uid}/complete")
    assert resp.status == 200 and (await resp.json())["sha256"] == sha256(data)
    assert await read_object(s3, bucket, PREFIX + uid) == data


async def test_direct_failure_at_completion_keeps_the_parts(make_client, sink_settings, s3, bucket):
    client = await make_client(sink_settings(retry_attempts=2))
    sink = the_sink(client)
    real = await sink.api()
    data = random_bytes(DIRECT_CHUNK + 5)
    state = await create(client, total_size=len(data), chunk_size=DIRECT_CHUNK)
    uid = state["upload_id"]
    for n, piece in enumerate(split(data, DIRECT_CHUNK), 1):
        await put_chunk(client, uid, n, piece)
    down = client_error("ServiceUnavailable", 503, "CompleteMultipartUpload")
    sink.use_client(Faulty(real, complete_multipart_upload=[down, down]))
    resp = await client.post(f"/v1/uploads/{uid}/complete")
    assert resp.status == 503
    assert object_keys(s3, bucket) == []
    sink.use_client(real)
    resp = await client.post(f"/v1/uploads/{uid}/complete")
    assert resp.status == 200 and (await resp.json())["sha256"] == sha256(data)
    assert open_multipart_uploads(s3, bucket) == []


class DeadPresigned:
    """The real S3 client, but the URLs it presigns point at a port where nothing listens: the
    request's body, streamed there, meets a refused connection (S3 out of reach)."""

    def __init__(self, real) -> None:
        self.real, self.port = real, free_port()

    def __getattr__(self, name: str):
        return getattr(self.real, name)

    async def generate_presigned_url(self, *args, **kw) -> str:
        url = await self.real.generate_presigned_url(*args, **kw)
        return re.sub(r"^(https?://[^/:]+):\d+", rf"\g<1>:{self.port}", url)


async def test_a_direct_chunk_that_cannot_reach_s3_answers_503_and_is_sent_again(make_client, sink_settings, s3,
                                                                                 bucket):
    """s3.md: a body streamed to S3 as it arrives is sent once (it cannot be read twice); when S3 is
    out of reach the chunk answers 503 with Retry-After, nothing is registered, and sent again it lands."""
    client = await make_client(sink_settings(retry_attempts=3))
    sink = the_sink(client)
    real = await sink.api()
    data = random_bytes(DIRECT_CHUNK + 5)
    uid = (await create(client, total_size=len(data), chunk_size=DIRECT_CHUNK))["upload_id"]
    first = split(data, DIRECT_CHUNK)[0]
    sink.use_client(DeadPresigned(real))
    resp = await client.put(f"/v1/uploads/{uid}/chunks/1", data=first)
    problem = await resp.json()
    assert resp.status == 503 and resp.headers["Retry-After"] == "5", problem
    assert resp.content_type == "application/problem+json"
    assert (await (await client.get(f"/v1/uploads/{uid}")).json())["received_count"] == 0
    sink.use_client(real)
    for n, piece in enumerate(split(data, DIRECT_CHUNK), 1):
        await put_chunk(client, uid, n, piece)
    resp = await client.post(f"/v1/uploads/{uid}/complete")
    assert resp.status == 200 and (await resp.json())["sha256"] == sha256(data)
    assert await read_object(s3, bucket, PREFIX + uid) == data


@pytest.mark.parametrize("order", [[1, 2, 3], [3, 1, 2]], ids=["in-order", "out-of-order"])
async def test_declared_sha256_mismatch_in_direct_mode_state_tells_the_truth(s3_client, s3, bucket, order):
    await refused_direct_upload_tells_the_truth(s3_client, s3, bucket, PREFIX, DIRECT_CHUNK, order)


class FailFirst:
    """An inspector that reads the bytes; the first inspection then raises ``first``, whatever the upload."""

    def __init__(self, first: Exception | None = None) -> None:
        self.first = first or Rejected("refused by the inspector")
        self.armed = True
        self.read: list[tuple[int, str]] = []  # (size, SHA-256) of what each inspection read

    @hookimpl
    async def vezastream_inspect_upload(self, upload, source):
        hasher, size = hashlib.sha256(), 0
        async for block in source.iter_bytes():
            hasher.update(block)
            size += len(block)
        self.read.append((size, hasher.hexdigest()))
        if self.armed:
            self.armed = False
            raise self.first


async def test_an_inspector_refusing_a_direct_upload_leaves_it_rejected(make_client, sink_settings, s3, bucket):
    """Uploads go direct only while no inspector is installed: here one came later, on another node."""
    settings = sink_settings()
    receiver = await make_client(settings)
    inspector = FailFirst()
    inspecting = await make_client(settings, plugins=[("refuser", inspector)])
    data = random_bytes(DIRECT_CHUNK + 5)
    uid = (await create(receiver, total_size=len(data), chunk_size=DIRECT_CHUNK))["upload_id"]
    for n, piece in enumerate(split(data, DIRECT_CHUNK), 1):
        await put_chunk(receiver, uid, n, piece)
    resp = await inspecting.post(f"/v1/uploads/{uid}/complete")
    problem = await resp.json()
    assert resp.status == 422 and problem["plugin"] == "refuser", problem
    assert inspector.read == [(len(data), sha256(data))]  # it read the joined object: nothing was staged
    await upload_is_rejected(receiver, uid, "refused by the inspector", data[:DIRECT_CHUNK])
    assert await asyncio.to_thread(bucket_contents, s3, bucket) == ([], [])
    await deleted_leaves_nothing(receiver, uid, s3, bucket)


async def test_an_inspector_failing_on_a_direct_upload_keeps_it_for_a_later_complete(make_client, sink_settings,
                                                                                    s3, bucket):
    """Not a verdict (the scanner is down, 503): the joined object stays, and the next complete reads it back."""
    settings = sink_settings()
    receiver = await make_client(settings)
    inspecting = await make_client(settings, plugins=[("scanner", FailFirst(RuntimeError("scanner down")))])
    data = random_bytes(DIRECT_CHUNK + 5)
    uid = (await create(receiver, total_size=len(data), chunk_size=DIRECT_CHUNK))["upload_id"]
    for n, piece in enumerate(split(data, DIRECT_CHUNK), 1):
        await put_chunk(receiver, uid, n, piece)
    resp = await inspecting.post(f"/v1/uploads/{uid}/complete")
    assert resp.status == 503, await resp.text()
    state = await (await receiver.get(f"/v1/uploads/{uid}")).json()
    assert state["status"] == "pending" and state["chunks_received"] == [1, 2]
    resp = await inspecting.post(f"/v1/uploads/{uid}/complete")
    assert resp.status == 200 and (await resp.json())["sha256"] == sha256(data)
    assert await read_object(s3, bucket, PREFIX + uid) == data
    assert open_multipart_uploads(s3, bucket) == []


async def test_an_inspector_refusing_a_tus_concatenation_keeps_the_partials(make_client, sink_settings, s3, bucket):
    """tus partials are staged: a refused final upload stores nothing and a later one succeeds."""
    client = await make_client(sink_settings(content="proxy"), plugins=[("refuser", FailFirst())])
    data = random_bytes(3 * MiB + 11)
    parts = []
    for piece in (data[:2 * MiB], data[2 * MiB:]):
        path = upload_path(await tus_create(client, len(piece), headers={"Upload-Concat": "partial"}))
        await tus_patch(client, path, 0, piece)
        parts.append(path)
    final = {"Upload-Concat": "final;" + " ".join(parts)}
    resp = await tus_create(client, None, headers=final, expect=422)
    assert (await resp.json())["plugin"] == "refuser"
    assert await asyncio.to_thread(bucket_contents, s3, bucket) == ([], [])
    for path, piece in zip(parts, (data[:2 * MiB], data[2 * MiB:])):  # the partials say what they still hold
        head = await client.head(path, headers=TUS)
        assert head.status == 200 and head.headers["Upload-Offset"] == str(len(piece))
    path = upload_path(await tus_create(client, None, headers=final))
    uid = path.rsplit("/", 1)[1]
    assert await content(client, uid) == (200, data)
    await deleted_leaves_nothing(client, uid, s3, bucket)


# -- the garbage collector ------------------------------------------------------------------------
async def test_gc_aborts_stale_multipart_uploads_of_no_live_upload(s3_client, s3, bucket):
    live = (await create(s3_client, total_size=DIRECT_CHUNK + 1, chunk_size=DIRECT_CHUNK))["upload_id"]
    orphan = PREFIX + "A" * 22  # an upload id whose state is gone
    s3.create_multipart_upload(Bucket=bucket, Key=orphan)
    s3.create_multipart_upload(Bucket=bucket, Key="elsewhere/" + "B" * 22)  # outside the prefix
    gc = s3_client.server.app[gc_key]
    gc.clock = lambda: 946684800.0  # year 2000: moto dates every multipart upload 2010, so none is old yet
    report = await gc.run_once()
    assert report.aborted == []
    gc.clock = lambda: time.time() + 2 * gc.settings.gc.max_age
    report = await gc.run_once(dry_run=True)
    assert [a.split("#")[0] for a in report.aborted] == [orphan]
    assert len(open_multipart_uploads(s3, bucket)) == 3
    report = await gc.run_once()
    assert [a.split("#")[0] for a in report.aborted] == [orphan]
    assert sorted(u["Key"] for u in open_multipart_uploads(s3, bucket)) == ["elsewhere/" + "B" * 22, PREFIX + live]
    assert value(await scrape(s3_client), "vezastream_gc_removed_total", what="aborted") == 1  # not the dry run's
    engine = s3_client.server.app[engine_key]
    await engine.delete("anonymous", live)
    assert sorted(u["Key"] for u in open_multipart_uploads(s3, bucket)) == ["elsewhere/" + "B" * 22]



@pytest.mark.parametrize("template", ["{user}/{yyyy}/{mm}/{filename}", "{upload_id}/{filename}"])
async def test_gc_aborts_abandoned_multipart_uploads_under_a_key_template(make_client, sink_settings, s3, bucket,
                                                                          template):
    """A templated key does not name the upload: its abandoned direct-mode multipart upload is swept all the same."""
    client = await make_client(sink_settings(key_template=template))
    abandoned = await create(client, filename="gone.bin", total_size=DIRECT_CHUNK + 1, chunk_size=DIRECT_CHUNK)
    live = await create(client, filename="kept.bin", total_size=DIRECT_CHUNK + 1, chunk_size=DIRECT_CHUNK)
    assert abandoned["mode"] == live["mode"] == "direct"

    def key(state: dict) -> str:
        month = time.strftime("%Y/%m", time.gmtime())
        return PREFIX + template.format(user="anonymous", yyyy=month[:4], mm=month[5:], upload_id=state["upload_id"],
                                        filename=state["filename"])

    await put_chunk(client, abandoned["upload_id"], 1, random_bytes(DIRECT_CHUNK))
    store = client.server.app[engine_key].store
    await store.redis.delete(store.key(abandoned["upload_id"]), store.chunks_key(abandoned["upload_id"]))  # expired
    gc = client.server.app[gc_key]
    gc.clock = lambda: time.time() + 2 * gc.settings.gc.max_age
    report = await gc.run_once()
    assert [a.split("#")[0] for a in report.aborted] == [key(abandoned)]
    assert [u["Key"] for u in open_multipart_uploads(s3, bucket)] == [key(live)]
    # The live upload completes; the next pass leaves nothing but its object.
    data = random_bytes(DIRECT_CHUNK + 1)
    for n, piece in enumerate(split(data, DIRECT_CHUNK), 1):
        await put_chunk(client, live["upload_id"], n, piece)
    assert (await client.post(f"/v1/uploads/{live['upload_id']}/complete")).status == 200
    report = await gc.run_once()
    assert report.aborted == [] and open_multipart_uploads(s3, bucket) == []
    assert object_keys(s3, bucket) == [key(live)]
