"""A direct-mode part stored twice, against SeaweedFS: a chunk's bytes reached S3 as a part but
the chunk was not registered (a 502, Redis failing right after the part, a node dying then), and
the client sent the chunk again. S3 replaces the earlier copy; SeaweedFS keeps both and lists
both. Completion must join the copy the chunk's record names, and the object must read back as
the bytes the client sent.
"""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
import yarl

from helpers import create, put_chunk, random_bytes, sha256, split
from s3_servers import PREFIX, open_multipart_uploads, read_object

MiB = 1024 * 1024
CHUNK = 5 * MiB  # direct mode: S3's smallest part


@pytest.fixture
def s3_server(weed_server):
    return weed_server


@pytest.fixture
def sink_defaults():
    return {"prefix": PREFIX, "retry_base_delay": 0.01, "retry_max_delay": 0.05}


@pytest.mark.parametrize("stale_part", [1, 2])
async def test_a_part_stored_twice_completes_with_the_registered_copy(make_client, sink_settings, s3, bucket,
                                                                       stale_part):
    client = await make_client(sink_settings())
    data = random_bytes(2 * CHUNK)
    uid = (await create(client, total_size=len(data), chunk_size=CHUNK))["upload_id"]
    (handle,) = await asyncio.to_thread(open_multipart_uploads, s3, bucket)
    # The unregistered copy, of the same size: stored first, as a part whose chunk then failed.
    url = s3.generate_presigned_url("upload_part", HttpMethod="PUT", Params={
        "Bucket": bucket, "Key": handle["Key"], "UploadId": handle["UploadId"], "PartNumber": stale_part})
    async with aiohttp.ClientSession() as http, http.put(yarl.URL(url, encoded=True), data=random_bytes(CHUNK),
                                                         skip_auto_headers={"Content-Type"}) as sent:
        assert sent.status == 200, await sent.text()
    for n, piece in enumerate(split(data, CHUNK), 1):
        await put_chunk(client, uid, n, piece)
    listed = await asyncio.to_thread(s3.list_parts, Bucket=bucket, Key=handle["Key"], UploadId=handle["UploadId"])
    if len(listed["Parts"]) == 2:
        pytest.skip("this SeaweedFS replaces a part sent again, as S3 does")
    resp = await client.post(f"/v1/uploads/{uid}/complete")
    assert resp.status == 200 and (await resp.json())["sha256"] == sha256(data), await resp.text()
    assert await read_object(s3, bucket, PREFIX + uid) == data
