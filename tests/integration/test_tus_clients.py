"""Real tus clients against a live server: tuspy (Python) and tus-js-client (Node).

Each test uploads random bytes, then reads them back through ``GET /files/{id}``
and checks the SHA-256 the engine recorded. ``SINKS`` lists the sinks the
clients run against: the local sink, and the S3 sink on the session's moto
server (a fresh bucket per test; tus uploads use its streamed mode).
"""

from __future__ import annotations

import asyncio
import io
from urllib.parse import urljoin, urlsplit

import aiohttp
import pytest
from tusclient import client as tus_client_module

from helpers import random_bytes, sha256
from s3_servers import object_keys, open_multipart_uploads, s3_overrides
from tus_helpers import TUS, drop_mid_body, js_upload, live_server

from vezastream.config import Settings

#: "s3-staging-sink": the S3 sink with storage.staging = "sink" (every PATCH body an object in the bucket).
SINKS = ["local", "s3", "s3-staging-sink"]
MiB = 1024 * 1024


@pytest.fixture(params=SINKS)
def sink_settings(request, make_settings) -> Settings:
    """Settings for each sink the real-client tests run against (S3: a fresh bucket on moto)."""
    if request.param.startswith("s3"):
        staging = "sink" if request.param == "s3-staging-sink" else "local"
        return make_settings(**s3_overrides(request.getfixturevalue("s3_server"), request.getfixturevalue("bucket"),
                                            prefix="tus/", retry_base_delay=0.01, retry_max_delay=0.05),
                             **{"storage.staging": staging})
    return make_settings(**{"storage.sink": request.param})


async def read_back(base: str, url: str, settings: Settings) -> tuple[bytes, str]:
    """(bytes served at the upload URL, SHA-256 the engine recorded), stored staged in the configured sink."""
    upload_id = urlsplit(url).path.rsplit("/", 1)[1]
    async with aiohttp.ClientSession() as session:
        async with session.get(url) as resp:  # S3: a 307 to a presigned URL, followed
            assert resp.status == 200, await resp.text()
            body = await resp.read()
        async with session.get(f"{base}/v1/uploads/{upload_id}") as resp:
            state = await resp.json()
    assert state["status"] == "completed"
    assert state["mode"] == "staged" and state["result"]["sink"] == settings.storage.sink
    return body, state["result"]["sha256"]


def tuspy_upload(endpoint: str, data: bytes, chunk_size: int, stop_after: int | None = None,
                 url: str | None = None, checksum: bool = False) -> tuple[str, int]:
    """Upload with tuspy (blocking: run in a thread); stop after ``stop_after`` chunks if given."""
    client = tus_client_module.TusClient(endpoint)
    uploader = client.uploader(file_stream=io.BytesIO(data), chunk_size=chunk_size, url=url,
                               metadata={"filename": "tuspy.bin"}, upload_checksum=checksum)
    if stop_after is None:
        uploader.upload()
    else:
        for _ in range(stop_after):
            uploader.upload_chunk()
    return uploader.url, uploader.offset


@pytest.mark.parametrize("checksum", [False, True], ids=["plain", "checksum"])
async def test_tuspy_uploads(sink_settings, checksum):
    data = random_bytes(700_001)
    async with live_server(sink_settings) as base:
        url, offset = await asyncio.to_thread(tuspy_upload, f"{base}/files/", data, 128 * 1024, checksum=checksum)
        assert offset == len(data)
        body, digest = await read_back(base, url, sink_settings)
    assert body == data and digest == sha256(data)


async def test_tuspy_resumes_from_stored_url_with_a_new_client(sink_settings):
    data = random_bytes(1_000_000)
    chunk = 100_000
    async with live_server(sink_settings) as base:
        endpoint = f"{base}/files/"
        url, offset = await asyncio.to_thread(tuspy_upload, endpoint, data, chunk, stop_after=3)
        assert offset == 3 * chunk
        # A new client (new process, say) knows only the stored URL.
        url2, offset2 = await asyncio.to_thread(tuspy_upload, endpoint, data, chunk, url=url)
        assert url2 == url and offset2 == len(data)
        body, digest = await read_back(base, url, sink_settings)
    assert body == data and digest == sha256(data)


async def test_tuspy_resumes_after_the_connection_drops_mid_request(sink_settings):
    """The production server (no handler cancellation) keeps the bytes that arrived (staged locally)."""
    data = random_bytes(600_000)
    async with live_server(sink_settings) as base:
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{base}/files/", headers={**TUS, "Upload-Length": str(len(data))}) as resp:
                url = urljoin(f"{base}/files/", resp.headers["Location"])  # as a tus client resolves it
        # Staging in the sink keeps nothing of a dropped body (its length was declared): tuspy resumes from 0.
        kept = 0 if sink_settings.storage.staging == "sink" else 250_000
        assert await drop_mid_body(base, urlsplit(url).path, data, 250_000) == kept
        _, final = await asyncio.to_thread(tuspy_upload, f"{base}/files/", data, 200_000, url=url)
        assert final == len(data)
        body, digest = await read_back(base, url, sink_settings)
    assert body == data and digest == sha256(data)


JS_CASES = {
    "single-request": {},
    "chunked": {"chunkSize": 100_000},
    "with-upload-and-override": {"chunkSize": 65_536, "uploadDataDuringCreation": True, "overridePatchMethod": True},
    "parallel-2": {"parallelUploads": 2},
    "parallel-4-chunked": {"parallelUploads": 4, "chunkSize": 50_000},
    "deferred-length": {"uploadLengthDeferred": True, "chunkSize": 100_000},
}


async def upload_concat(url: str) -> str:
    async with aiohttp.ClientSession() as session:
        async with session.head(url, headers=TUS) as resp:
            return resp.headers.get("Upload-Concat", "")


@pytest.mark.slow
@pytest.mark.parametrize("options", list(JS_CASES.values()), ids=list(JS_CASES))
async def test_tus_js_client_uploads(sink_settings, tmp_path, options):
    data = random_bytes(777_777)
    src = tmp_path / "js-upload.bin"
    src.write_bytes(data)
    async with live_server(sink_settings) as base:
        url = await js_upload(base, src, options)
        body, digest = await read_back(base, url, sink_settings)
        concat = await upload_concat(url)
    parts = options.get("parallelUploads", 1)
    assert concat.startswith("final;") == (parts > 1)
    assert len(concat.removeprefix("final;").split()) == (parts if parts > 1 else 0)
    assert body == data and digest == sha256(data)


@pytest.mark.slow
async def test_parallel_upload_joined_into_several_s3_parts(make_settings, s3_server, s3, bucket, tmp_path):
    """tus-js-client's partials (staged) are streamed into one multipart object whose parts span them."""
    settings = make_settings(**s3_overrides(s3_server, bucket, prefix="tus/", part_size="5MiB"))
    data = random_bytes(11 * MiB + 4_321)  # 3 partials of ~3.7 MiB -> S3 parts of 5 + 5 + 1 MiB
    src = tmp_path / "big.bin"
    src.write_bytes(data)
    async with live_server(settings) as base:
        url = await js_upload(base, src, {"parallelUploads": 3, "chunkSize": 1_000_000})
        body, digest = await read_back(base, url, settings)
        assert (await upload_concat(url)).startswith("final;")
    final_id = urlsplit(url).path.rsplit("/", 1)[1]
    assert body == data and digest == sha256(data)
    # Only the final object is stored: the partials never reach S3 and nothing is left open.
    assert object_keys(s3, bucket) == [f"tus/{final_id}"]
    assert open_multipart_uploads(s3, bucket) == []
    parts = s3.head_object(Bucket=bucket, Key=f"tus/{final_id}", PartNumber=1)["PartsCount"]
    assert parts == 3
