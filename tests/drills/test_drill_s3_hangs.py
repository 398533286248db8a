"""Drills: S3 stops answering (its process SIGSTOPped by PID, its sockets left open) in the middle of
a completion and of a direct-mode chunk, then is let go (SIGCONT).

Each request the hang reaches answers 503 problem+json with ``Retry-After`` within
2 x (connect_timeout + read_timeout) (one S3 call that gets no answer, then the abort of what it
began), naming neither the endpoint nor the library's error; the upload is pending again at once
(its completion lease given back, nothing registered for the chunk); once S3 answers again the
retried request completes the upload byte-identical, and after one GC pass the bucket holds the
object and no multipart upload. Before, a hung S3 held a completion, and its upload, without bound:
botocore asks for ``Expect: 100-continue`` on a part's body, and nothing timed that wait.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

import pytest

from helpers import create, put_chunk, random_bytes, split
from s3_servers import Faulty, chunks_sent, completes, node_on, the_sink, unavailable

pytestmark = [pytest.mark.slow, pytest.mark.drill]

MiB = 1024 * 1024
#: connect_timeout and read_timeout of the drills' sink, in seconds.
TIMEOUT = 1.0
#: What the answer may take: one call that gets no answer, then the abort of what it began.
BOUND = 2 * (TIMEOUT + TIMEOUT)
MODES = {"staged": (MiB, "upload_part"), "direct": (5 * MiB, "complete_multipart_upload")}


async def hung_node(make_client, make_settings, server, sink_defaults) -> tuple[Any, Any, str]:  # noqa: F811
    """(client, boto3 client, bucket) of a node whose sink is ``server`` with 1 s timeouts."""
    return await node_on(make_client, make_settings, server, **{
        **sink_defaults, "connect_timeout": TIMEOUT, "read_timeout": TIMEOUT, "retry_attempts": 3,
        "parts_in_flight": 1})


async def answered_in_time(request) -> float:
    """The seconds a request S3's hang reaches took to answer its 503 (see ``unavailable``)."""
    started = time.monotonic()
    problem = await unavailable(await asyncio.wait_for(request, 10 * BOUND))
    seconds = time.monotonic() - started
    assert seconds < BOUND + 1 and problem["retry_after"] == 5, (seconds, problem)
    return seconds


@pytest.mark.parametrize("mode", MODES)
async def test_s3_hangs_mid_completion(make_client, make_settings, own_moto, sink_defaults, mode, report):  # noqa: F811
    client, s3, bucket = await hung_node(make_client, make_settings, own_moto, sink_defaults)
    chunk, call = MODES[mode]
    data = random_bytes(2 * chunk + 12_345)
    uid = await chunks_sent(client, data, chunk)
    sink = the_sink(client)
    real = await sink.api()

    def hang() -> None:
        os.kill(own_moto.proc.pid, signal.SIGSTOP)
    sink.use_client(Faulty(real, **{call: [hang]}))  # S3 stops just as this call goes out
    seconds = await answered_in_time(client.post(f"/v1/uploads/{uid}/complete"))
    state = await (await client.get(f"/v1/uploads/{uid}")).json()
    assert state["status"] == "pending", state  # the completion lease is given back
    os.kill(own_moto.proc.pid, signal.SIGCONT)
    sink.use_client(real)
    await completes(client, s3, bucket, uid, data, sweep=True)
    report(f"s3 hung mid-completion ({mode})", answer_s=round(seconds, 2), bound_s=BOUND)


async def test_s3_hangs_mid_direct_chunk(make_client, make_settings, own_moto, sink_defaults, report):  # noqa: F811
    client, s3, bucket = await hung_node(make_client, make_settings, own_moto, sink_defaults)
    chunk = 5 * MiB
    data = random_bytes(chunk + 12_345)
    pieces = split(data, chunk)
    uid = (await create(client, total_size=len(data), chunk_size=chunk))["upload_id"]
    await put_chunk(client, uid, 2, pieces[1])
    os.kill(own_moto.proc.pid, signal.SIGSTOP)
    seconds = await answered_in_time(client.put(f"/v1/uploads/{uid}/chunks/1", data=pieces[0]))
    assert seconds < TIMEOUT + TIMEOUT + 1, seconds  # a chunk: one call that gets no answer (s3.md)
    assert (await (await client.get(f"/v1/uploads/{uid}")).json())["chunks_received"] == [2]
    health = await asyncio.wait_for(client.get("/v1/health/deep"), 10 * BOUND)
    sink_check = (await health.json())["checks"]["sink:s3"]
    assert health.status == 503 and sink_check in ({"ok": False, "reason": r} for r in ("timeout", "unavailable")), \
        sink_check
    os.kill(own_moto.proc.pid, signal.SIGCONT)
    await put_chunk(client, uid, 1, pieces[0])  # its part lease was given back: taken at once
    await completes(client, s3, bucket, uid, data, sweep=True)
    report("s3 hung mid-chunk (direct)", answer_s=round(seconds, 2), bound_s=BOUND)
