"""Drills: the data folder stops answering mid-upload (every call on it waits, as on a network
filesystem or a cloud volume that stalls), then answers again; and it fails writes (EIO), then
writes again (test_a_data_folder_that_fails_writes_answers_503_and_records_nothing).

A FUSE folder (tests/stallfs.py) is ``storage.data_dir`` of a live ``vezastream serve`` (staged
chunks and the local sink's files), with Redis elsewhere. 4 native and 4 tus uploads run; a third
in, every call on the folder is held for STALL seconds, and a completion and a deletion are asked.
Meanwhile the server keeps answering what needs no disk, at once: liveness, and an upload's state
(from Redis); readiness answers 503 naming the staging folder within its checks' time limit; what
needs the disk waits. Once the folder answers again nothing acknowledged is lost, every upload
completes byte-identical, and the deletion is done.

The server sees a FUSE folder as not local (kernelio.py: ``kernel_io`` off), as it sees NFS: its
file calls go to worker threads. The same drill runs on a local disk that stalls (ext4 on a loop
device whose image lies in such a folder, mounts.stallable_disk) with ``kernel_io = "off"``; with it
on, a local disk's calls run on the event loop (docs/reliability.md).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import pytest

from drill_clients import NATIVE, PIECE, PIECES, TUS, TUS_UPLOADS, Drill, identical
from helpers import random_bytes, split
from mounts import stallable, stallable_disk
from servers import Server, server_env
from vezastream.http.health import CHECK_TIMEOUT

pytestmark = [pytest.mark.slow, pytest.mark.drill]

STALL = 7.0
#: The slowest answer that does not wait for the disk may take, in seconds.
PROMPT = 0.5


async def timed(s: aiohttp.ClientSession, path: str) -> tuple[float, int, dict]:
    """(seconds to the answer, its status, its JSON); status 0 when none came within STALL + 10 s."""
    asked = time.monotonic()
    try:
        async with s.get(path, timeout=aiohttp.ClientTimeout(total=STALL + 10)) as r:
            return time.monotonic() - asked, r.status, await r.json(content_type=None)
    except (aiohttp.ClientError, asyncio.TimeoutError):
        return time.monotonic() - asked, 0, {}


async def sent_whole(s: aiohttp.ClientSession, data: bytes, chunks: int | None = None) -> str:
    """A native upload of ``data`` with every chunk sent (or its first ``chunks``), not completed: its id."""
    async with s.post("/v1/uploads", json={"filename": "w.bin", "total_size": len(data), "chunk_size": PIECE}) as r:
        assert r.status == 201
        upload_id = (await r.json())["upload_id"]
    for n, piece in enumerate(split(data, PIECE)[:chunks], 1):
        async with s.put(f"/v1/uploads/{upload_id}/chunks/{n}", data=piece) as r:
            assert r.status == 201
    return upload_id


# (the folder, settings, the drill's name in its report line)
STALLING = {
    # A network filesystem (NFS, FUSE): kernel_io is off by itself, and a stat waits for the server.
    "network-folder": (stallable, {}, "disk-stalls"),
    # A local disk (a cloud volume that stops answering): the kernel answers a stat from its caches,
    # and only a page written and synced tells (before: readiness answered 200 all through the stall).
    # With kernel_io on (auto, the default) the event loop itself waits: docs/reliability.md.
    "local-disk": (stallable_disk, {"STORAGE__KERNEL_IO": "off"}, "local-disk-stalls"),
}


@pytest.mark.parametrize("kind", list(STALLING))
async def test_the_data_folder_stalls_mid_upload(tmp_path: Path, redis_url: str, report, kind: str) -> None:
    stalling, settings, name = STALLING[kind]
    natives = [random_bytes(PIECES * PIECE) for _ in range(NATIVE)]
    tuses = [random_bytes(PIECES * PIECE) for _ in range(TUS_UPLOADS)]
    finished = random_bytes(8 * PIECE)
    with stalling(tmp_path / "disk") as disk:
        server = Server(server_env(tmp_path, redis_url, STORAGE__DATA_DIR=str(disk.path), **settings), tmp_path)
        try:
            await server.wait_ready()
            if kind == "network-folder":  # seen as not local, as NFS is: file calls in worker threads
                assert "kernel_io off" in (tmp_path / "server.log").read_text()
            # Each probe on a connection of its own: a request waiting for the disk holds its connection.
            async with aiohttp.ClientSession(server.url) as s, \
                    aiohttp.ClientSession(server.url, connector=aiohttp.TCPConnector(force_close=True)) as probe:
                drill = Drill(server.url)
                whole, doomed = await sent_whole(s, finished), await sent_whole(s, finished)
                tasks = await drill.a_third_sent(s, natives, tuses)
                state_path = f"/v1/uploads/{next(iter(drill.acked_chunks))[0]}"
                disk.hold()
                held_at = time.monotonic()
                chunks, offsets = set(drill.acked_chunks), dict(drill.acked_offsets)
                try:
                    # A completion (the local sink links the staged file) and a deletion wait for the disk too.
                    completing = asyncio.create_task(s.post(f"/v1/uploads/{whole}/complete"))
                    deleting = asyncio.create_task(s.delete(f"/v1/uploads/{doomed}"))
                    prompt, ready = [], []
                    while time.monotonic() - held_at < STALL:
                        prompt += [asyncio.create_task(timed(probe, "/v1/health")),
                                   asyncio.create_task(timed(probe, state_path))]
                        if time.monotonic() - held_at < STALL - CHECK_TIMEOUT - 1:  # answered before the release
                            ready.append(asyncio.create_task(timed(probe, "/v1/health/deep")))
                        await asyncio.sleep(0.25)
                    prompt_answers, ready_answers = await asyncio.gather(*prompt), await asyncio.gather(*ready)
                    ended = [what for what, t in [*((f"upload {i}", t) for i, t in enumerate(tasks)),
                                                  ("completion", completing), ("deletion", deleting)] if t.done()]
                finally:
                    disk.release()
                released_at = time.monotonic()
                lost = await drill.lost(probe, chunks, offsets)
                paths = await asyncio.wait_for(asyncio.gather(*tasks), timeout=60)
                completed, deleted = await asyncio.wait_for(asyncio.gather(completing, deleting), timeout=60)
                done_s = time.monotonic() - released_at
                assert (completed.status, deleted.status) == (200, 204), (await completed.text(), await deleted.text())
                paths.append(f"/v1/uploads/{whole}/content")
                same = await identical(s, paths, natives + tuses + [finished])
                async with s.get(f"/v1/uploads/{doomed}") as r:
                    assert r.status == 404
        finally:
            server.kill()
    slowest_prompt = max(seconds for seconds, _, _ in prompt_answers)
    report(name, uploads=len(paths), stall_s=STALL, prompt_probes=len(prompt_answers),
           slowest_prompt_s=round(slowest_prompt, 3), ready_probes=len(ready_answers),
           ready_statuses=sorted({status for _, status, _ in ready_answers}),
           slowest_ready_s=round(max(seconds for seconds, _, _ in ready_answers), 2),
           answers=dict(drill.answers), lost=lost, identical=same, all_done_after_release_s=round(done_s, 2))
    # A deletion may end from a local disk's caches (its unlinks wait for no write); nothing else may.
    assert set(ended) <= ({"deletion"} if kind == "local-disk" else set()), f"ended while the disk was held: {ended}"
    assert {status for _, status, _ in prompt_answers} == {200} and slowest_prompt < PROMPT, prompt_answers
    for seconds, status, body in ready_answers:  # each within the checks' limit, and saying what failed
        assert status == 503 and seconds < CHECK_TIMEOUT + 1, (seconds, status, body)
        assert body["checks"]["staging"] == {"ok": False, "reason": "timeout"}, body
    assert drill.not_problem_json == 0 and not [st for st in drill.answers if st >= 500], drill.answers
    assert lost == 0 and same == len(paths)
    assert done_s < 5, "an upload stayed blocked after the disk answered again"


async def readiness(s: aiohttp.ClientSession) -> tuple[int, dict]:
    """Readiness's status and its staging folder's check."""
    async with s.get("/v1/health/deep") as r:
        return r.status, (await r.json())["checks"]["staging"]


def refused_for_the_disk(status: int, headers, body: dict, folder: Path) -> bool:
    """The answer to a request that met the disk's I/O error: 503 storage-failed, Retry-After, no path."""
    return (status == 503 and body.get("type", "").endswith("/storage-failed") and headers.get("Retry-After") == "5"
            and "nothing was recorded" in body.get("detail", "") and str(folder.parent) not in str(body))


async def test_a_data_folder_that_fails_writes_answers_503_and_records_nothing(tmp_path: Path, redis_url: str,
                                                                               report) -> None:
    """Every write and sync on the folder fails with EIO (a failing disk; an NFS soft mount that timed
    out) while a chunk and a tus PATCH arrive: each answers 503 ``storage-failed`` with Retry-After,
    records nothing, and logs one line without a traceback (before: 500 ``internal-error``, with a
    traceback each). A completion meanwhile, whose local sink syncs, answers 502 ``sink-failed``
    naming the sink, as any sink's failure does, and stays pending. Readiness fails (``staging``:
    ``io-error``) once requests met the error, and passes again once the folder writes (its write
    probe, which leaves no file). Once the folder writes again, the same requests succeed and every
    upload reads back whole."""
    data = random_bytes(4 * PIECE)
    with stallable(tmp_path / "disk") as disk:
        server = Server(server_env(tmp_path, redis_url, STORAGE__DATA_DIR=str(disk.path)), tmp_path)
        try:
            await server.wait_ready()
            async with aiohttp.ClientSession(server.url) as s:
                whole = await sent_whole(s, data)
                native = await sent_whole(s, data, chunks=2)
                async with s.post("/files/", headers={**TUS, "Upload-Length": str(len(data))}) as r:
                    tus = "/files/" + r.headers["Location"].rstrip("/").rsplit("/", 1)[1]
                patch = {**TUS, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"}
                disk.fail()
                refused = []
                async with s.put(f"/v1/uploads/{native}/chunks/3", data=data[2 * PIECE:3 * PIECE]) as r:
                    refused.append(("chunk", refused_for_the_disk(r.status, r.headers, await r.json(), disk.path)))
                async with s.patch(tus, data=data, headers=patch) as r:
                    refused.append(("patch", refused_for_the_disk(r.status, r.headers, await r.json(), disk.path)))
                async with s.post(f"/v1/uploads/{whole}/complete") as r:  # the sink's failure: it is named
                    body = await r.json()
                    refused.append(("complete", r.status == 502 and body["type"].endswith("/sink-failed")
                                    and body["sink"] == "local" and str(disk.path.parent) not in str(body)))
                async with s.get(f"/v1/uploads/{whole}") as r:
                    whole_status = (await r.json())["status"]
                async with s.head(tus, headers=TUS) as r:
                    tus_offset = r.headers["Upload-Offset"]
                failing = await readiness(s)  # the requests' I/O errors fail it: a balancer routes around
                disk.fail(False)
                mended = await readiness(s)  # its write probe succeeds now
                async with s.put(f"/v1/uploads/{native}/chunks/3", data=data[2 * PIECE:3 * PIECE]) as r:
                    assert r.status == 201  # stored now: it was not before
                async with s.put(f"/v1/uploads/{native}/chunks/4", data=data[3 * PIECE:]) as r:
                    assert r.status == 201
                async with s.patch(tus, data=data, headers=patch) as r:
                    assert r.status == 204
                for upload_id in (whole, native):
                    async with s.post(f"/v1/uploads/{upload_id}/complete") as r:
                        assert r.status == 200, await r.text()
                same = await identical(s, [f"/v1/uploads/{upload_id}/content"
                                           for upload_id in (whole, native, tus.rsplit("/", 1)[1])], [data] * 3)
        finally:
            server.kill()
    log = (tmp_path / "server.log").read_text()
    probes_left = sorted(p.name for p in tmp_path.joinpath("disk").rglob("*probe*"))
    report("disk-fails", refused=dict(refused), whole_status=whole_status, tus_offset=tus_offset, identical=same,
           readiness_failing=failing, readiness_after=mended, probes_left=probes_left,
           io_error_lines=log.count("I/O error"), tracebacks=log.count("Traceback"))
    assert refused == [("chunk", True), ("patch", True), ("complete", True)]
    assert failing == (503, {"ok": False, "reason": "io-error"}) and mended == (200, {"ok": True}), (failing, mended)
    assert probes_left == []
    assert (whole_status, tus_offset) == ("pending", "0") and same == 3
    # One line each, the sink's with its traceback (a sink's unexpected error is logged in full).
    assert log.count("(an I/O error)") == 2 and log.count("Traceback") == 1, log[-3000:]
