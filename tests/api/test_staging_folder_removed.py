"""The staging folder (``<data_dir>/chunks``) or the sink's folder removed, replaced by a file or made
unwritable under a running server, as an operator cleaning up by hand may do. What is missing is made
again; what the server may not replace (someone's file, an immutable folder) answers 503 problem+json
with ``Retry-After`` and readiness names it, nothing is recorded, a GC pass does not fail on it, and
once the folder is put right the same uploads complete without a restart."""

from __future__ import annotations

import json

import logging
import shutil
from pathlib import Path

import pytest
from helpers import immutable
from tus_helpers import TUS, tus_create, tus_patch, upload_path

from vezastream.http.app import gc_key
from vezastream.testing import content, create, put_chunk, random_bytes, upload


@pytest.mark.parametrize("in_place", [True, False], ids=["in-place", "chunk-files"])
async def test_without_its_staging_folder_gc_finds_nothing_and_uploads_still_land(make_client, make_settings,
                                                                                  in_place):
    settings = make_settings(**{"storage.in_place": in_place})
    client = await make_client(settings)
    shutil.rmtree(settings.storage.chunks_dir)

    report = await client.server.app[gc_key].run_once()
    assert (report.removed, report.kept, report.skipped) == ([], 0, False)

    data = random_bytes(3 * 1000 + 5)
    result = await upload(client, data, 1000)
    assert await content(client, result["upload_id"]) == (200, data)


async def refused(resp, data_dir: Path) -> None:
    """503 problem+json ``unavailable`` with Retry-After, naming no path and carrying no traceback."""
    text = await resp.text()
    assert resp.status == 503 and resp.content_type == "application/problem+json", text
    assert json.loads(text)["type"].endswith("/unavailable"), text
    assert int(resp.headers["Retry-After"]) == 60
    assert str(data_dir) not in text and "Traceback" not in text


async def staging_check(client) -> tuple[int, dict]:
    resp = await client.get("/v1/health/deep")
    return resp.status, (await resp.json())["checks"]["staging"]


@pytest.mark.parametrize("in_place", [True, False], ids=["in-place", "chunk-files"])
@pytest.mark.parametrize("loop", [False, True], ids=["file", "link-loop"])
async def test_a_file_in_place_of_the_staging_folder_answers_503_until_it_goes(make_client, make_settings, in_place,
                                                                               loop):
    """A file, or a symbolic link to itself (a loop the kernel refuses with ELOOP: a 500 before), where
    the staging folder should be."""
    settings = make_settings(**{"storage.in_place": in_place})
    client = await make_client(settings)
    data = random_bytes(2000)
    uid = (await create(client, total_size=len(data), chunk_size=1000))["upload_id"]
    await put_chunk(client, uid, 1, data[:1000])
    chunks = settings.storage.chunks_dir
    shutil.rmtree(chunks)
    if loop:
        chunks.symlink_to(chunks)
    else:
        chunks.write_text("someone's notes")

    if in_place:  # a create makes the upload's data file
        await refused(await client.post("/v1/uploads", json={"filename": "b", "total_size": 10}), settings.storage.data_dir)
    else:  # the chunk makes its file in the upload's folder
        await refused(await client.put(f"/v1/uploads/{uid}/chunks/2", data=data[1000:]), settings.storage.data_dir)
        assert (await (await client.get(f"/v1/uploads/{uid}")).json())["chunks_received"] == [1]
    await refused(await client.post("/files/", headers={**TUS, "Upload-Length": "10"}), settings.storage.data_dir)
    assert await staging_check(client) == (503, {"ok": False, "reason": "not-a-folder"})
    report = await client.server.app[gc_key].run_once()  # nothing to judge, and no failure
    assert report.removed == []
    assert chunks.is_symlink() if loop else chunks.read_text() == "someone's notes"  # never replaced by the server

    chunks.unlink()
    assert await staging_check(client) == (200, {"ok": True})  # made again
    result = await upload(client, data, 1000)
    assert await content(client, result["upload_id"]) == (200, data)


async def test_an_immutable_staging_folder_answers_503_and_completions_leave_their_files_to_gc(make_client,
                                                                                                make_settings,
                                                                                                caplog):
    caplog.set_level(logging.WARNING, logger="vezastream.staging")
    settings = make_settings(**{"storage.in_place": True})
    client = await make_client(settings)
    data = random_bytes(2000)
    uid = (await create(client, total_size=len(data), chunk_size=1000))["upload_id"]
    await put_chunk(client, uid, 1, data[:1000])
    await put_chunk(client, uid, 2, data[1000:])
    tus = upload_path(await tus_create(client, len(data)))

    with immutable(settings.storage.chunks_dir):
        await refused(await client.post("/v1/uploads", json={"filename": "b", "total_size": 10}),
                      settings.storage.data_dir)
        await refused(await client.post("/files/", headers={**TUS, "Upload-Length": "10"}), settings.storage.data_dir)
        assert await staging_check(client) == (503, {"ok": False, "reason": "permission-denied"})
        # Completing needs no new entry in staging: it succeeds; the staged file, which cannot be
        # removed now, is left to the GC, whose pass does not fail on it.
        done = await client.post(f"/v1/uploads/{uid}/complete")
        assert done.status == 200, await done.text()
        await tus_patch(client, tus, 0, data)
        report = await client.server.app[gc_key].run_once()
        assert report.removed == []
        assert sorted(p.name for p in settings.storage.chunks_dir.iterdir()) == sorted(
            [f"{uid}.data", f"{tus.rsplit('/', 1)[1]}.data"])
        # Each refused removal is a warning naming its upload and the system's words (docs/operations.md).
        left = [(r.upload_id, r.error) for r in caplog.records if r.getMessage() == "staged files not removed"]
        assert {u for u, _ in left} == {uid, tus.rsplit("/", 1)[1]}
        assert {e for _, e in left} == {"Operation not permitted"}

    assert await staging_check(client) == (200, {"ok": True})
    report = await client.server.app[gc_key].run_once()
    assert len(report.removed) == 2 and list(settings.storage.chunks_dir.iterdir()) == []
    assert await content(client, uid) == (200, data)
    assert await (await client.get(tus, headers=TUS)).read() == data


@pytest.mark.parametrize("loop", [False, True], ids=["file", "link-loop"])
async def test_a_file_in_place_of_the_sink_folder_fails_completion_and_readiness_names_it(make_client,
                                                                                          make_settings, tmp_path,
                                                                                          loop, caplog):
    caplog.set_level(logging.ERROR, logger="vezastream.engine")
    folder = tmp_path / "files"
    client = await make_client(make_settings(**{"sinks.local.directory": str(folder)}))
    data = random_bytes(2000)
    uid = (await create(client, total_size=len(data), chunk_size=1000))["upload_id"]
    await put_chunk(client, uid, 1, data[:1000])
    await put_chunk(client, uid, 2, data[1000:])
    shutil.rmtree(folder, ignore_errors=True)
    if loop:
        folder.symlink_to(folder)
    else:
        folder.write_text("someone's notes")

    done = await client.post(f"/v1/uploads/{uid}/complete")
    problem = await done.json()
    assert done.status == 502 and problem["type"].endswith("/sink-failed") and problem["sink"] == "local", problem
    assert str(folder) not in str(problem)
    assert [r.upload_id for r in caplog.records if getattr(r, "event", None) == "sink_failed"] == [uid]
    deep = await client.get("/v1/health/deep")
    assert deep.status == 503 and (await deep.json())["checks"]["sink:local"] == {"ok": False, "reason": "not-a-folder"}
    assert (await (await client.get(f"/v1/uploads/{uid}")).json())["status"] == "pending"

    folder.unlink()  # removed: the sink makes it again
    assert (await client.get("/v1/health/deep")).status == 200
    assert (await client.post(f"/v1/uploads/{uid}/complete")).status == 200
    assert await content(client, uid) == (200, data)


async def test_a_folder_in_place_of_an_uploads_data_file_answers_503_until_it_goes(make_client, make_settings):
    """A folder where a tus upload's data file should be (made by hand): its PATCH answers 503 with
    Retry-After, naming no path (a 500 with a traceback before), records nothing; once the folder
    is gone the upload goes on."""
    settings = make_settings()
    client = await make_client(settings)
    data = random_bytes(2000)
    tus = upload_path(await tus_create(client, len(data)))
    data_file = settings.storage.chunks_dir / f"{tus.rsplit('/', 1)[1]}.data"
    data_file.unlink(missing_ok=True)
    data_file.mkdir(parents=True)
    await refused(await tus_patch(client, tus, 0, data[:1000], expect=None), settings.storage.data_dir)
    assert (await client.head(tus, headers=TUS)).headers["Upload-Offset"] == "0"
    data_file.rmdir()
    await tus_patch(client, tus, 0, data)
    assert await (await client.get(tus, headers=TUS)).read() == data
