from conftest import random_bytes, sha256
from helpers import content, upload


async def test_upload_reads_back_byte_identical(client):
    data = random_bytes(1_000_003)
    result = await upload(client, data, chunk_size=100_000)
    assert result["sha256"] == sha256(data)
    status, body = await content(client, result["upload_id"])
    assert status == 200 and body == data
