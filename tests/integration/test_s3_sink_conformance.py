"""The S3 sink passes the author kit's sink conformance suite, against a real S3 server (moto).

Both modes: staged (chunks under 5 MiB, streamed into a multipart upload at
completion) and direct (chunks of 5 MiB or more go to S3 as parts on arrival),
and staged with ``storage.staging = "sink"`` (the chunks wait in the bucket).
``stored_objects`` counts objects and open multipart uploads, so a failure
that leaves an orphan part behind fails the suite.
"""

from __future__ import annotations

import asyncio

import pytest
from s3_servers import object_keys, open_multipart_uploads

from vezastream import hookimpl
from vezastream.testing import SinkConformance, create

MiB = 1024 * 1024


class TestS3SinkStaged(SinkConformance):
    #: ``storage.staging``: where chunks under 5 MiB wait (on the node's disk, or in the bucket).
    staging = "local"

    @pytest.fixture
    def sink_settings(self, s3_server, s3, bucket):
        self.s3, self.bucket = s3, bucket
        return {"storage.sink": "s3", "storage.staging": self.staging, "sinks.s3": {
            "bucket": bucket, "endpoint_url": s3_server.endpoint, "addressing_style": "path",
            "prefix": "kit/", "part_size": "5MiB", "content": "proxy",
            "retry_base_delay": 0.01, "retry_max_delay": 0.05}}

    async def stored_objects(self, sink) -> set[str]:
        def look() -> set[str]:
            uploads = open_multipart_uploads(self.s3, self.bucket)
            return set(object_keys(self.s3, self.bucket)) | {f"multipart:{u['Key']}" for u in uploads}
        return await asyncio.to_thread(look)


class TestS3SinkStagingInSink(TestS3SinkStaged):
    """storage.staging = "sink": the chunks wait in the bucket as staging objects, which stored_objects counts."""

    staging = "sink"
    keep_staging = False

    async def stored_objects(self, sink) -> set[str]:
        found = await super().stored_objects(sink)
        return {k for k in found if ".staging/" not in k} if self.keep_staging else found

    async def test_failed_completion_discards_then_retry_succeeds(self, make_settings, make_client, sink_settings,
                                                                  sink_plugins):
        """The refused upload stays pending with its chunks, which are staging objects in the bucket."""
        self.keep_staging = True
        await super().test_failed_completion_discards_then_retry_succeeds(make_settings, make_client, sink_settings,
                                                                          sink_plugins)


@pytest.mark.slow
class TestS3SinkDirect(TestS3SinkStaged):
    chunk_size = 5 * MiB
    payload_size = 2 * 5 * MiB + 7


class Inspector:
    @hookimpl
    def vezastream_inspect_upload(self, upload):
        return None


@pytest.mark.parametrize("inspecting, mode", [(False, "direct"), (True, "staged")])
async def test_an_inspector_keeps_uploads_staged(make_settings, make_client, s3_server, bucket,
                                                 inspecting, mode):
    settings = make_settings(**{"storage.sink": "s3", "sinks.s3": {
        "bucket": bucket, "endpoint_url": s3_server.endpoint, "addressing_style": "path"}})
    client = await make_client(settings, plugins=[("inspector", Inspector())] if inspecting else [])
    state = await create(client, total_size=6 * MiB, chunk_size=5 * MiB)
    assert state["mode"] == mode
    assert (await client.delete(f"/v1/uploads/{state['upload_id']}")).status == 204
