"""A staged file cut short after its bytes were registered must not become a short S3 object
answered as whole (storage.durable off and a machine that lost its page cache, or a hand at
work), against a real S3 (moto). In place, the upload's digest was taken as the bytes arrived,
so only the sink's copy can tell; the local sink's twin is in tests/api/test_local_sink_faults.py.
"""

from __future__ import annotations

import asyncio

import pytest

from helpers import completed_after_cut_short
from s3_servers import bucket_contents, s3_overrides


@pytest.mark.parametrize("in_place", [True, False], ids=["in-place", "chunk-files"])
async def test_a_staged_file_cut_short_is_refused_and_nothing_is_stored(make_client, make_settings, s3_server, s3,
                                                                      bucket, sink_defaults, in_place):
    settings = make_settings(**s3_overrides(s3_server, bucket, **sink_defaults), **{"storage.in_place": in_place})
    client = await make_client(settings)
    uid = (await completed_after_cut_short(client, settings))["upload_id"]
    assert (await (await client.get(f"/v1/uploads/{uid}")).json())["status"] != "completed"
    objects, uploads = await asyncio.to_thread(bucket_contents, s3, bucket)
    assert objects == [] and uploads == [], (objects, uploads)
