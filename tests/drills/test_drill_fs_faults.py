"""Fault drills: the data folder's filesystem fails in ways other than running out of bytes.

A live ``vezastream serve`` keeps its data folder (staging, and the local sink's
files in the first drill) on a tmpfs of the test's own; Redis lives elsewhere.

* Out of inodes while bytes remain (a tmpfs with a small ``nr_inodes``): every
  request that must create a file (a create with a data file, a chunk file, the
  sink's copy at completion, a tus upload's last PATCH that completes it)
  answers 507 with ``Retry-After``, as a full disk does; nothing is recorded;
  once inodes are freed every upload completes byte-identical.
* Remounted read-only under the running server (``mount -o remount,ro``), the
  data folder or the local sink's own: 503 ``storage-read-only`` with
  ``Retry-After`` (no space is missing: a 507 would send the operator to free
  some), no traceback or path in any answer, readiness 503 naming ``read-only``
  on the check that fails; after ``remount,rw`` the same process takes the same
  requests again and every upload completes byte-identical.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from mounts import mounted
from servers import Server, server_env
from tus_helpers import STREAM, TUS, b64

from vezastream.testing import random_bytes

pytestmark = [pytest.mark.slow, pytest.mark.drill]

CHUNK = 64 * 1024
SIZE = 2 * CHUNK
NATIVE = {"filename": "a.bin", "total_size": SIZE, "chunk_size": CHUNK}
TUS_NEW = {**TUS, "Upload-Length": str(SIZE), "Upload-Metadata": f"filename {b64('t.bin')}"}


def patch_headers(offset: int) -> dict[str, str]:
    return {**TUS, **STREAM, "Upload-Offset": str(offset)}


@contextlib.asynccontextmanager
async def served(tmp_path: Path, redis_url: str, **settings: str):
    """A live server (its log in ``tmp_path``) and a session on it; stopped by PID at the end."""
    server = Server(server_env(tmp_path, redis_url, **settings), tmp_path)
    try:
        await server.wait_ready()
        async with aiohttp.ClientSession(server.url) as session:
            yield server, session
    finally:
        server.kill()


async def refused(resp: aiohttp.ClientResponse, status: int, problem: str, answers: list[int],
                  stored: str = "") -> None:
    """A refusal as a client sees it: ``status``, the problem type, Retry-After, no traceback, no path;
    ``stored``: a tus PATCH whose bytes were kept, its completion refused, which the detail must say,
    with the cause (these words)."""
    text = await resp.text()
    assert resp.status == status, text
    if resp.method != "HEAD":
        assert resp.content_type == "application/problem+json", text
        body = await resp.json()
        assert body["type"].endswith("/" + problem), body
        assert "Traceback" not in text and "/tmp" not in text and "/" not in body["detail"], text
        if stored:
            detail = body["detail"]
            assert "are stored" in detail and stored in detail and "nothing was recorded" not in detail, body
    answers.append(int(resp.headers["Retry-After"]))


async def half_sent(s: aiohttp.ClientSession) -> tuple[str, bytes, str, bytes]:
    """A native upload and a tus one, each with its first half stored: (id, bytes, tus path, bytes)."""
    native_data, tus_data = random_bytes(SIZE), random_bytes(SIZE)
    native = (await (await s.post("/v1/uploads", json=NATIVE)).json())["upload_id"]
    tus = (await s.post("/files/", headers=TUS_NEW)).headers["Location"]
    assert (await s.put(f"/v1/uploads/{native}/chunks/1", data=native_data[:CHUNK])).status == 201
    assert (await s.patch(tus, data=tus_data[:CHUNK], headers=patch_headers(0))).status == 204
    return native, native_data, tus, tus_data


async def state(s: aiohttp.ClientSession, upload_id: str) -> dict:
    return await (await s.get(f"/v1/uploads/{upload_id}")).json()


async def offset(s: aiohttp.ClientSession, tus: str) -> int:
    head = await s.head(tus, headers=TUS)
    assert head.status == 200, head.status
    return int(head.headers["Upload-Offset"])


async def read_back(s: aiohttp.ClientSession, native: dict[str, bytes], tus: dict[str, bytes]) -> int:
    """Bytes of the given uploads that do not read back identical."""
    lost = 0
    for upload_id, data in native.items():
        resp = await s.get(f"/v1/uploads/{upload_id}/content")
        lost += 0 if (resp.status, await resp.read()) == (200, data) else len(data)
    for path, data in tus.items():
        resp = await s.get(path, headers=TUS)
        lost += 0 if (resp.status, await resp.read()) == (200, data) else len(data)
    return lost


def half_written(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.part"))


def take_inodes(disk: Path) -> list[Path]:
    """Create empty files on ``disk`` until it has no inode left (bytes stay free); their paths."""
    folder = disk / "inodes"
    folder.mkdir()
    taken: list[Path] = []
    for n in range(100_000):  # bounded: the tmpfs has a few hundred inodes
        try:
            os.close(os.open(folder / str(n), os.O_CREAT | os.O_WRONLY, 0o600))
        except OSError:
            break
        taken.append(folder / str(n))
    assert os.statvfs(disk).f_ffree == 0 and os.statvfs(disk).f_bavail > 1000
    return taken


@pytest.mark.parametrize("in_place", [True, False], ids=["in-place", "chunk-files"])
async def test_out_of_inodes_answers_507_then_every_upload_completes(tmp_path, redis_url, report, in_place):
    with mounted("tmpfs", tmp_path / "disk", "size=32m", "nr_inodes=200") as disk:
        async with served(tmp_path, redis_url, STORAGE__DATA_DIR=str(disk),
                          STORAGE__IN_PLACE=str(in_place).lower()) as (_, s):
            started = time.monotonic()
            native, native_data, tus, tus_data = await half_sent(s)

            taken = take_inodes(disk)
            answers: list[int] = []
            if in_place:  # a create that makes the upload's data file
                await refused(await s.post("/v1/uploads", json=NATIVE), 507, "insufficient-storage", answers)
            else:  # a chunk that makes its own file; the create itself makes none
                await refused(await s.put(f"/v1/uploads/{native}/chunks/2", data=native_data[CHUNK:]), 507,
                              "insufficient-storage", answers)
                assert (await state(s, native))["chunks_received"] == [1]
            await refused(await s.post("/files/", headers=TUS_NEW), 507, "insufficient-storage", answers)
            if in_place:  # the chunk goes into the file made with the upload: no inode needed
                assert (await s.put(f"/v1/uploads/{native}/chunks/2", data=native_data[CHUNK:])).status == 201
                # the completion's file in the sink (a hard link needs no inode, its folder does)
                await refused(await s.post(f"/v1/uploads/{native}/complete"), 507, "insufficient-storage", answers)
                assert (await state(s, native))["status"] == "pending"
            # tus: the last PATCH's bytes go into the upload's file, its completion then needs the sink's folder
            await refused(await s.patch(tus, data=tus_data[CHUNK:], headers=patch_headers(CHUNK)), 507,
                          "insufficient-storage", answers, stored="no space left")
            await refused(await s.head(tus, headers=TUS), 507, "insufficient-storage", answers)
            assert half_written(disk) == []
            assert (await s.get("/v1/health/deep")).status == 200  # bytes remain: readiness stays up

            for path in taken:
                path.unlink()
            if not in_place:
                assert (await s.put(f"/v1/uploads/{native}/chunks/2", data=native_data[CHUNK:])).status == 201
            assert (await s.post(f"/v1/uploads/{native}/complete")).status == 200
            assert await offset(s, tus) == SIZE  # the HEAD finished the completion the last PATCH began
            later = random_bytes(SIZE)
            another = (await s.post("/files/", headers=TUS_NEW)).headers["Location"]  # the create refused before
            assert (await s.patch(another, data=later, headers=patch_headers(0))).status == 204
            lost = await read_back(s, {native: native_data}, {tus: tus_data, another: later})
            assert lost == 0 and half_written(disk) == []
            assert set(answers) == {60}
            report(f"out_of_inodes[{'in-place' if in_place else 'chunk-files'}]", nr_inodes=200,
                   answers_507=len(answers), retry_after_s=max(answers), bytes_lost=lost, recovered="yes",
                   drill_s=round(time.monotonic() - started, 2))


@contextlib.contextmanager
def read_only(disk: Path) -> Iterator[None]:
    """``disk`` remounted read-only, and read-write again at the end whatever happens."""
    done = subprocess.run(["mount", "-o", "remount,ro", str(disk)], capture_output=True, text=True, timeout=10)
    assert done.returncode == 0, f"remount,ro refused (a file held open for writing?): {done.stderr}"
    try:
        yield
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(disk)], capture_output=True, timeout=10, check=True)


async def deep(s: aiohttp.ClientSession) -> tuple[int, dict]:
    resp = await s.get("/v1/health/deep")
    return resp.status, await resp.json()


@pytest.mark.parametrize("which", ["data", "sink"], ids=["data-folder", "sink-folder"])
async def test_remounted_read_only_answers_503_and_recovers_without_a_restart(tmp_path, redis_url, report, which):
    with mounted("tmpfs", tmp_path / "data", "size=32m") as data, \
            mounted("tmpfs", tmp_path / "sink", "size=32m") as sink:
        async with served(tmp_path, redis_url, STORAGE__DATA_DIR=str(data), STORAGE__IN_PLACE="true",
                          SINKS__LOCAL__DIRECTORY=str(sink / "files")) as (server, s):
            started = time.monotonic()
            native, native_data, tus, tus_data = await half_sent(s)
            answers: list[int] = []
            with read_only(data if which == "data" else sink):
                if which == "data":
                    await refused(await s.post("/v1/uploads", json=NATIVE), 503, "storage-read-only", answers)
                    await refused(await s.post("/files/", headers=TUS_NEW), 503, "storage-read-only", answers)
                    await refused(await s.put(f"/v1/uploads/{native}/chunks/2", data=native_data[CHUNK:]), 503,
                                  "storage-read-only", answers)
                    assert (await state(s, native))["chunks_received"] == [1]
                    await refused(await s.patch(tus, data=tus_data[CHUNK:], headers=patch_headers(CHUNK)), 503,
                                  "storage-read-only", answers)
                    assert await offset(s, tus) == CHUNK
                    check = "staging"
                else:
                    assert (await s.put(f"/v1/uploads/{native}/chunks/2", data=native_data[CHUNK:])).status == 201
                    await refused(await s.post(f"/v1/uploads/{native}/complete"), 503, "storage-read-only", answers)
                    assert (await state(s, native))["status"] == "pending"
                    await refused(await s.patch(tus, data=tus_data[CHUNK:], headers=patch_headers(CHUNK)), 503,
                                  "storage-read-only", answers, stored="mounted read-only")
                    check = "sink:local"
                status, body = await deep(s)
                assert status == 503 and body["checks"][check] == {"ok": False, "reason": "read-only"}, body
                assert "/tmp" not in str(body)
            status, body = await deep(s)
            assert status == 200, body
            if which == "data":
                assert (await s.put(f"/v1/uploads/{native}/chunks/2", data=native_data[CHUNK:])).status == 201
                assert (await s.patch(tus, data=tus_data[CHUNK:], headers=patch_headers(CHUNK))).status == 204
            assert (await s.post(f"/v1/uploads/{native}/complete")).status == 200
            assert await offset(s, tus) == SIZE
            lost = await read_back(s, {native: native_data}, {tus: tus_data})
            assert lost == 0 and half_written(data) == [] and half_written(sink) == []
            assert server.proc.poll() is None  # the same process throughout
            log = (tmp_path / "server.log").read_text()
            assert "Traceback" not in log and "unhandled error" not in log
            assert set(answers) == {60}
            report(f"read_only[{which}]", answers_503=len(answers), retry_after_s=max(answers), readiness="read-only",
                   bytes_lost=lost, recovered="yes, no restart", drill_s=round(time.monotonic() - started, 2))
