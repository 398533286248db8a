"""What the upload client (``vezastream.client``, ``vezastream upload``) does when a resume finds
the server elsewhere than it left it, when the file or the upload changes under it, and
when ``vezastream upload`` is given what it cannot use (docs/client.md).

The real app serves on a loopback test server; ``vezastream upload`` runs in-process in a
thread (``cli.main``), so that the test's event loop keeps serving meanwhile.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from pathlib import Path

import aiohttp
import pytest

from helpers import random_bytes, sha256
from servers import free_port
from vezastream.cli import main
from vezastream.client import ClientError, FileChanged, UploadClient, upload_file

CHUNK = 10_000


class Stop(Exception):
    """Raised from the progress callback: the upload is interrupted, as by Ctrl-C."""


@pytest.fixture
async def server_url(client) -> str:
    return str(client.make_url("")).rstrip("/")


def saved(state_dir: Path) -> list[dict]:
    """The resume states kept in ``state_dir``."""
    return [json.loads(f.read_text()) for f in state_dir.glob("*.json")]


async def interrupted(url: str, path: Path, state_dir: Path, after: int = 2, **kwargs) -> str:
    """Upload ``path`` in 10 kB chunks one at a time, stopped once ``after`` are on the server: the upload id."""
    def stop(event) -> None:
        if event.phase == "uploading" and event.done >= after * CHUNK:
            raise Stop

    with pytest.raises(Stop):
        await upload_file(url, path, parallel=1, chunk_size=CHUNK, state_dir=state_dir, progress=stop, **kwargs)
    [state] = saved(state_dir)
    return state["upload_id"]


async def call(url: str, method: str, path: str, **kwargs) -> tuple[int, dict | None]:
    async with aiohttp.ClientSession() as s, s.request(method, url + path, **kwargs) as r:
        return r.status, await r.json(content_type=None) if r.content_length else None


async def read_back(url: str, upload_id: str) -> bytes:
    async with aiohttp.ClientSession() as s, s.get(f"{url}/v1/uploads/{upload_id}/content") as r:
        assert r.status == 200
        return await r.read()


# -- a resume that finds the server elsewhere than it left it -------------------------------------
async def test_an_upload_the_server_no_longer_has_is_started_afresh(server_url, tmp_path):
    """Deleted (or expired) meanwhile: the resume state is dropped and the file sent whole again."""
    path = tmp_path / "f.bin"
    path.write_bytes(random_bytes(5 * CHUNK))
    first = await interrupted(server_url, path, tmp_path / "st")
    assert (await call(server_url, "DELETE", f"/v1/uploads/{first}"))[0] == 204
    result = await upload_file(server_url, path, chunk_size=CHUNK, state_dir=tmp_path / "st")
    assert not result.resumed and result.upload_id != first and result.chunks_sent == 5
    assert await read_back(server_url, result.upload_id) == path.read_bytes()
    assert saved(tmp_path / "st") == []


async def test_an_upload_an_earlier_run_completed_is_answered_without_sending(server_url, tmp_path):
    """The earlier run's completion went through but it stopped before forgetting the upload:
    the next run reports the server's result, checked against the local file, sending nothing.
    (The result is built from the upload's state, not a second completion: this checks it.)"""
    path = tmp_path / "f.bin"
    data = random_bytes(3 * CHUNK)
    path.write_bytes(data)
    upload_id = await interrupted(server_url, path, tmp_path / "st", after=1)
    for n in (2, 3):
        status, _ = await call(server_url, "PUT", f"/v1/uploads/{upload_id}/chunks/{n}",
                               data=data[(n - 1) * CHUNK:n * CHUNK])
        assert status in (200, 201)
    assert (await call(server_url, "POST", f"/v1/uploads/{upload_id}/complete"))[0] == 200
    result = await upload_file(server_url, path, chunk_size=CHUNK, state_dir=tmp_path / "st")
    assert result.resumed and result.upload_id == upload_id and result.chunks_sent == 0
    assert result.sha256 == sha256(data) and result.filename == "f.bin"
    assert saved(tmp_path / "st") == []


async def test_a_resume_the_server_refuses_is_reported_and_kept(make_settings, make_client, monkeypatch, tmp_path):
    """Another token than the first run's: the 404/410 of a lost upload it is not, so the state is
    kept, and the run with the right token resumes it."""
    monkeypatch.setenv("CLIENT_GAPS_TOKENS", "tok-alice=alice,tok-bob=bob")
    client = await make_client(make_settings(**{"auth.mode": "token", "auth.tokens_env": "CLIENT_GAPS_TOKENS"}))
    url = str(client.make_url("")).rstrip("/")
    path = tmp_path / "f.bin"
    path.write_bytes(random_bytes(4 * CHUNK))
    upload_id = await interrupted(url, path, tmp_path / "st", token="tok-alice")
    with pytest.raises(ClientError) as info:
        await upload_file(url, path, token="tok-mallory", chunk_size=CHUNK, state_dir=tmp_path / "st")
    assert info.value.status == 401 and f"resuming upload {upload_id}: HTTP 401" in str(info.value)
    assert [s["upload_id"] for s in saved(tmp_path / "st")] == [upload_id]
    result = await upload_file(url, path, token="tok-alice", chunk_size=CHUNK, state_dir=tmp_path / "st")
    assert result.resumed and result.upload_id == upload_id and result.chunks_sent == 2


async def test_a_file_changed_in_place_since_the_interruption_is_hashed_again_and_sent_afresh(server_url, tmp_path):
    """An already-sent byte changed with the size and mtime kept (as with dd conv=notrunc and touch -d):
    the resume hashes the file again, finds another SHA-256 than the state's, deletes the earlier upload
    and sends the file whole. (Before, the saved hash was trusted: the server stored the old bytes and
    the client reported success.)"""
    path = tmp_path / "f.bin"
    path.write_bytes(random_bytes(5 * CHUNK))
    first = await interrupted(server_url, path, tmp_path / "st")
    assert (await call(server_url, "GET", f"/v1/uploads/{first}"))[1]["chunks_received"] == [1, 2]
    stat = path.stat()
    with path.open("r+b") as f:
        byte = f.read(1)[0]
        f.seek(0)
        f.write(bytes([byte ^ 0xFF]))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    phases: list[str] = []
    result = await upload_file(server_url, path, chunk_size=CHUNK, state_dir=tmp_path / "st",
                               progress=lambda event: phases.append(event.phase))
    assert await read_back(server_url, result.upload_id) == path.read_bytes()
    assert result.sha256 == sha256(path.read_bytes()) and phases[0] == "hashing"
    assert not result.resumed and result.upload_id != first and result.chunks_sent == 5
    assert (await call(server_url, "GET", f"/v1/uploads/{first}"))[0] == 404  # not left holding the quota
    assert saved(tmp_path / "st") == []


async def test_an_upload_an_earlier_run_completed_is_kept_when_the_file_changed_in_place(server_url, tmp_path):
    """The earlier run completed but stopped before forgetting the upload, then the file changed in
    place: the new bytes go to a new upload, and the stored file of the earlier one is not deleted."""
    path = tmp_path / "f.bin"
    old = random_bytes(2 * CHUNK)
    path.write_bytes(old)
    first = await interrupted(server_url, path, tmp_path / "st", after=1)
    assert (await call(server_url, "PUT", f"/v1/uploads/{first}/chunks/2", data=old[CHUNK:]))[0] == 201
    assert (await call(server_url, "POST", f"/v1/uploads/{first}/complete"))[0] == 200
    stat = path.stat()
    path.write_bytes(bytes([old[0] ^ 0xFF]) + old[1:])
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    result = await upload_file(server_url, path, chunk_size=CHUNK, state_dir=tmp_path / "st")
    assert not result.resumed and result.upload_id != first
    assert await read_back(server_url, result.upload_id) == path.read_bytes()
    assert await read_back(server_url, first) == old


# -- the file or the upload changes under a running upload ----------------------------------------
@pytest.mark.parametrize("change", ["appended", "truncated"])
async def test_a_file_changed_under_its_upload_is_not_completed_and_its_upload_is_deleted(server_url, tmp_path,
                                                                                         change):
    """Bytes appended to the file while its chunks go (a recording still being written), or cut from
    it: appended, its first bytes still matched the hash, so the server completed a copy of the file
    as it had been and the run reported it stored; truncated, the run stopped on a short chunk and
    left the upload pending (counted against the pending limits until upload_ttl).
    Now the file is looked at again before the completion, and a short read stops the run: refused,
    saying so, the upload deleted on the server and no resume state left."""
    path = tmp_path / "f.bin"
    path.write_bytes(random_bytes(5 * CHUNK))
    ids: list[str] = []

    def change_the_file(event) -> None:
        if event.phase == "uploading" and event.done == CHUNK:
            [state] = saved(tmp_path / "st")
            ids.append(state["upload_id"])
            if change == "appended":
                with path.open("ab") as f:
                    f.write(random_bytes(5))
            else:
                os.truncate(path, 2 * CHUNK + 5)

    now = {"appended": 5 * CHUNK + 5, "truncated": 2 * CHUNK + 5}[change]
    with pytest.raises(FileChanged, match=rf"f\.bin: changed during the upload \({5 * CHUNK} bytes when it "
                                          rf"started, {now} now\): its upload was deleted on the server"):
        await upload_file(server_url, path, parallel=1, chunk_size=CHUNK, state_dir=tmp_path / "st",
                          progress=change_the_file)
    assert (await call(server_url, "GET", f"/v1/uploads/{ids[0]}"))[0] == 404
    assert saved(tmp_path / "st") == []


async def test_a_file_deleted_under_its_upload_completes_with_the_bytes_hashed(server_url, tmp_path):
    """Deleted while its chunks go, the file is still read to its end through the descriptor the run
    holds, and those are the bytes hashed: not a change, so the upload completes (docs/client.md)."""
    path = tmp_path / "f.bin"
    data = random_bytes(5 * CHUNK)
    path.write_bytes(data)

    def delete(event) -> None:
        if event.phase == "uploading" and event.done == CHUNK:
            path.unlink()

    result = await upload_file(server_url, path, parallel=1, chunk_size=CHUNK, state_dir=tmp_path / "st",
                               progress=delete)
    assert result.size == len(data) and not path.exists()
    assert await read_back(server_url, result.upload_id) == data


async def test_an_upload_deleted_while_its_chunks_go_out_stops_with_the_servers_answer(server_url, tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(random_bytes(40 * CHUNK))
    deleting: list[asyncio.Task] = []

    def delete_once(event) -> None:
        if event.phase == "uploading" and event.done and not deleting:
            [state] = saved(tmp_path / "st")
            deleting.append(asyncio.ensure_future(call(server_url, "DELETE", f"/v1/uploads/{state['upload_id']}")))

    with pytest.raises(ClientError) as info:
        await upload_file(server_url, path, parallel=1, chunk_size=CHUNK, state_dir=tmp_path / "st",
                          progress=delete_once)
    assert (await deleting[0])[0] == 204
    assert info.value.status == 404 and "chunk " in str(info.value) and ": HTTP 404: " in str(info.value)


@pytest.mark.parametrize("then", ["kept", "deleted"])
async def test_a_file_changed_while_uploading_is_refused_and_its_upload_deleted(server_url, tmp_path, then):
    """A byte of a chunk not sent yet changes after the hash was taken, the file's size and
    modification time kept (so the client cannot see it): the server's whole-file check answers 422,
    and the upload, no good now, is deleted rather than left pending (counted against
    limits.max_pending_uploads and max_pending_bytes until upload_ttl); the resume state goes too.
    Also when the file was deleted meanwhile (before, the run ended on the file's absence, "No such
    file or directory", instead of the server's answer, and its resume state stayed)."""
    path = tmp_path / "f.bin"
    path.write_bytes(random_bytes(5 * CHUNK))
    ids: list[str] = []

    def change_the_last_chunk(event) -> None:
        if event.phase == "uploading" and event.done == CHUNK:
            [state] = saved(tmp_path / "st")
            ids.append(state["upload_id"])
            stat = path.stat()
            with path.open("r+b") as f:
                f.seek(4 * CHUNK)
                byte = f.read(1)[0]
                f.seek(4 * CHUNK)
                f.write(bytes([byte ^ 0xFF]))
            os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
            if then == "deleted":
                path.unlink()

    with pytest.raises(ClientError) as info:
        await upload_file(server_url, path, parallel=1, chunk_size=CHUNK, state_dir=tmp_path / "st",
                          progress=change_the_last_chunk)
    assert info.value.status == 422 and "sha256" in info.value.problem
    assert (await call(server_url, "GET", f"/v1/uploads/{ids[0]}"))[0] == 404
    assert saved(tmp_path / "st") == []


# -- what `vezastream upload` refuses, and how it reports -----------------------------------------
@pytest.mark.parametrize("argv,message", [
    (["--chunk-size", "0"], "argument --chunk-size: must be at least 1 byte"),
    (["--chunk-size", "8 parsecs"], "argument --chunk-size: expected a size such as"),
    (["--parallel", "0"], "argument --parallel: expected a positive integer, got '0'"),
    # A traceback from aiohttp before (NonHttpUrlClientError, InvalidUrlClientError), after hashing the file.
    (["--url", "127.0.0.1:8080"], "argument --url: expected the server's http:// or https:// URL, as "
                                  "http://127.0.0.1:8080; got '127.0.0.1:8080' (did you mean http://127.0.0.1:8080?)"),
    (["--url", "ftp://127.0.0.1:8080"], "argument --url: expected the server's http:// or https:// URL"),
    (["--url", "http://127.0.0.1:99999"], "got 'http://127.0.0.1:99999'\n"),
    (["--url", "http:///v1"], "got 'http:///v1'\n"),
])
def test_upload_refuses_bad_options_with_exit_status_2(tmp_path, capsys, argv, message):
    """The option is named once (argparse's "argument --chunk-size: --chunk-size: ..." before)."""
    (tmp_path / "f.bin").write_bytes(b"x")
    with pytest.raises(SystemExit) as info:
        main(["upload", str(tmp_path / "f.bin"), *argv])
    err = capsys.readouterr().err
    assert info.value.code == 2 and message in err and err.count("--chunk-size:") <= 1, err


def test_upload_refuses_what_is_not_a_file(tmp_path, capsys):
    assert main(["upload", str(tmp_path / "nowhere.bin"), str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"vezastream upload: not a file: {tmp_path / 'nowhere.bin'}, {tmp_path}\n"


@pytest.mark.parametrize("output", [["--json"], []], ids=["json", "bars"])
def test_upload_says_on_stderr_when_it_retries(tmp_path, capsys, output):
    """A --url where nothing listens: each retry is a line on stderr as it comes, not a silent wait;
    with --json, stdout still holds only the file's JSON line."""
    path = tmp_path / "f.bin"
    path.write_bytes(b"x")
    code = main(["upload", str(path), "--url", f"http://127.0.0.1:{free_port()}", "--attempts", "3",
                 "--state-dir", str(tmp_path / "st"), *output])
    out, err = capsys.readouterr()
    assert code == 1, err
    flat = "".join(err.split())  # the console wraps long lines: compared without spaces
    for attempt in (2, 3):
        assert re.search(rf"vezastreamupload:retryingPOST/v1/uploadsin\d\.\ds\(attempt{attempt}of3\):"
                         r"ClientConnectorError:", flat), err
    if output:
        [line] = out.splitlines()
        assert json.loads(line)["status"] is None and "after 3 attempts" in json.loads(line)["error"]
    else:
        assert out == "" and "".join(f"{path}: FAILED:".split()) in flat


def test_the_client_library_refuses_nonsense_settings():
    with pytest.raises(ValueError, match="parallel must be >= 1"):
        UploadClient("http://127.0.0.1:1", parallel=0)
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        UploadClient("http://127.0.0.1:1", chunk_size=0)


async def test_upload_with_progress_bars_reports_a_failure_and_a_resume(make_settings, make_client, tmp_path, capsys):
    """One file refused, one resumed: each gets its line on stderr, and the exit status is 1."""
    client = await make_client(make_settings(**{"limits.max_upload_size": 5 * CHUNK}))
    url = str(client.make_url("")).rstrip("/")
    resumed = tmp_path / "resumed.bin"
    resumed.write_bytes(random_bytes(4 * CHUNK))
    upload_id = await interrupted(url, resumed, tmp_path / "st")
    refused = tmp_path / "big.bin"
    refused.write_bytes(b"x" * (5 * CHUNK + 1))
    code = await asyncio.to_thread(main, ["upload", str(refused), str(resumed), "--url", url, "--chunk-size",
                                          str(CHUNK), "--state-dir", str(tmp_path / "st")])
    err = capsys.readouterr().err
    flat = "".join(err.split())  # the console wraps long lines, inside a path too: compared without spaces
    assert code == 1, err
    assert "".join(f"{refused}: FAILED: creating the upload: HTTP 413".split()) in flat, err
    assert "".join(f"{resumed}: stored as {upload_id}, sha256 {sha256(resumed.read_bytes())} "
                   "verified (resumed)".split()) in flat, err
    assert await read_back(url, upload_id) == resumed.read_bytes()
