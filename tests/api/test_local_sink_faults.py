"""The local sink where its directory is not what the happy path assumes.

* On another filesystem than the staging area (``/dev/shm``, a tmpfs, while the tests'
  data lives on the disk): a hard link fails with ``EXDEV`` and so does the kernel's
  ``copy_file_range``, for real. The sink must then copy the bytes itself, and what
  reads back must be what was sent.
* Not writable (an immutable folder: even root may not write into it): readiness says
  so without a path, a completion fails with a problem that names no path, the upload
  stays pending, and completes once the folder is writable again.
* A ``[sinks.local]`` table it cannot use stops ``vezastream serve`` with one line.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import chattr, completed_after_cut_short, immutable
from servers import run, server_env
from tus_helpers import tus_create, tus_patch, upload_path

from vezastream.testing import content, create, put_chunk, random_bytes, sha256, upload

SHM = Path("/dev/shm")


@pytest.fixture
def shm_dir() -> Iterator[Path]:
    """A fresh folder on the tmpfs, removed afterwards."""
    if not SHM.is_dir() or os.stat(SHM).st_dev == os.stat(Path.cwd()).st_dev:
        pytest.skip("needs /dev/shm on a filesystem of its own")
    folder = SHM / f"vz-test-{secrets.token_hex(6)}"
    folder.mkdir()
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def sink_files(root: Path) -> dict[str, bytes]:
    """Every file under the sink's directory (hidden temporary ones included), by relative path."""
    return {str(Path(folder, name).relative_to(root)): Path(folder, name).read_bytes()
            for folder, _, names in os.walk(root) for name in names}


@pytest.mark.parametrize("kernel_io", ["auto", "off"])
@pytest.mark.parametrize("in_place, size, chunk", [
    (False, 3 * 100_000 + 7, 100_000),  # chunk files: copied one after the other
    (False, 70_000, 100_000),           # one chunk file: a link is tried first
    (True, 3 * 100_000 + 7, 100_000),   # one data file: a link is tried first
])
async def test_a_sink_on_another_filesystem_gets_a_byte_for_byte_copy(make_client, make_settings, shm_dir,
                                                                      kernel_io, in_place, size, chunk):
    client = await make_client(make_settings(**{
        "sinks.local.directory": str(shm_dir), "storage.in_place": in_place, "storage.kernel_io": kernel_io}))
    data = random_bytes(size)
    result = await upload(client, data, chunk)
    assert result["size"] == size and result["sha256"] == sha256(data)
    assert await content(client, result["upload_id"]) == (200, data)
    # The one file in the sink is the upload's bytes: no temporary file left beside it.
    assert sink_files(shm_dir) == {result["location"]: data}


@pytest.fixture
def unwritable_sink(tmp_path: Path) -> Iterator[Path]:
    """A sink directory made immutable (no new entries, whoever asks); made mutable again after."""
    folder = tmp_path / "files"
    folder.mkdir()
    with immutable(folder):
        yield folder


async def test_an_unwritable_sink_fails_readiness_and_completion_and_keeps_the_upload(make_client, make_settings,
                                                                                      unwritable_sink):
    client = await make_client(make_settings(**{"sinks.local.directory": str(unwritable_sink),
                                                "storage.in_place": False}))
    data = random_bytes(2500)
    uid = (await create(client, total_size=len(data), chunk_size=1000))["upload_id"]
    for n in range(3):
        await put_chunk(client, uid, n + 1, data[n * 1000:(n + 1) * 1000])

    deep = await client.get("/v1/health/deep")
    body = await deep.text()
    assert deep.status == 503, body
    assert (await deep.json())["checks"]["sink:local"] == {"ok": False, "reason": "permission-denied"}
    assert str(unwritable_sink) not in body

    done = await client.post(f"/v1/uploads/{uid}/complete")
    problem = await done.text()
    assert done.status == 502 and done.content_type == "application/problem+json", problem
    assert (await done.json())["type"].endswith("/sink-failed") and (await done.json())["sink"] == "local"
    assert str(unwritable_sink) not in problem and "Traceback" not in problem
    assert (await (await client.get(f"/v1/uploads/{uid}")).json())["status"] == "pending"
    assert sink_files(unwritable_sink) == {}
    tus = upload_path(await tus_create(client, len(data)))  # tus: its last PATCH completes, and answers the same
    last = await tus_patch(client, tus, 0, data, expect=502)
    assert (await last.json())["sink"] == "local" and sink_files(unwritable_sink) == {}

    chattr("-i", unwritable_sink)
    assert (await client.get("/v1/health/deep")).status == 200
    done = await client.post(f"/v1/uploads/{uid}/complete")
    assert done.status == 200, await done.text()
    assert await content(client, uid) == (200, data)


@pytest.mark.parametrize("setting, value, message", [
    ("SINKS__LOCAL__COLOUR", '"blue"', "sinks.local.colour: unknown setting"),
    ("SINKS__LOCAL__DIRECTORY", "5", "sinks.local.directory: expected a path"),
    ("SINKS__LOCAL__FSYNC", '"yes"', "sinks.local.fsync: expected true or false"),
])
def test_a_local_sink_table_it_cannot_use_stops_startup_with_one_line(tmp_path, setting, value, message):
    out = run(["serve"], server_env(tmp_path, **{setting: value}), tmp_path)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], out.stderr


@pytest.mark.parametrize("in_place", [True, False], ids=["in-place", "chunk-files"])
async def test_a_staged_file_cut_short_is_refused_not_committed_short(make_client, make_settings, tmp_path, in_place):
    """Registered bytes that are no longer on disk (a staged file cut short: storage.durable off and
    a machine that lost its page cache, or a hand at work) must not become a short object answered
    as whole. In place, the upload's digest was taken on arrival, so only the copy can tell."""
    settings = make_settings(**{"storage.in_place": in_place, "sinks.local.directory": str(tmp_path / "files")})
    client = await make_client(settings)
    uid = (await completed_after_cut_short(client, settings))["upload_id"]
    assert sink_files(tmp_path / "files") == {}
    assert (await content(client, uid))[0] != 200
