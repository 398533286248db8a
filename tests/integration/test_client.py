"""The native API client (``vezastream.client``) and ``vezastream upload``, against real servers.

Library tests run the real app on a loopback test server; the process tests run
``vezastream serve`` and ``vezastream upload`` as child processes, stopped by PID.
"""

from __future__ import annotations

import asyncio
import base64
import errno
import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import time
import urllib.request
from collections import Counter
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from helpers import immutable, listening, loopback_tls, nginx, random_bytes, sha256
import servers
from servers import VEZASTREAM, Server, free_port
from vezastream.client import ClientError, FileChanged, RetryEvent, RetryPolicy, UploadClient, upload_file
from vezastream.client.retry import retry_after
from vezastream.http.app import create_app, engine_key

FAST_RETRY = RetryPolicy(attempts=20, base=0.05, cap=0.5)


class Stop(Exception):
    """Raised from the progress callback: the upload is interrupted, as by Ctrl-C."""


@pytest.fixture
def settings(make_settings):
    return make_settings(**{"limits.min_chunk_size": 1})


@pytest.fixture
async def server_url(client) -> str:
    return str(client.make_url("")).rstrip("/")


async def read_back(url: str, upload_id: str) -> bytes:
    async with aiohttp.ClientSession() as s, s.get(f"{url}/v1/uploads/{upload_id}/content") as r:
        assert r.status == 200
        return await r.read()


async def server_state(url: str, upload_id: str) -> dict:
    async with aiohttp.ClientSession() as s, s.get(f"{url}/v1/uploads/{upload_id}") as r:
        return await r.json()


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def saved_upload_id(state_dir: Path) -> str | None:
    for f in state_dir.glob("*.json"):
        try:
            return json.loads(f.read_text())["upload_id"]
        except (OSError, ValueError):
            return None  # being written
    return None


async def test_several_files_read_back_byte_identical(server_url, tmp_path):
    files = {write(tmp_path / name, random_bytes(size)): size
             for name, size in [("a.bin", 300_000), ("b.bin", 4096), ("one", 1), ("empty", 0)]}
    async with UploadClient(server_url, parallel=4, chunk_size=32 * 1024, state_dir=tmp_path / "st") as c:
        results = [await c.upload(path) for path in files]
    for path, result in zip(files, results):
        data = path.read_bytes()
        assert result.sha256 == sha256(data) and result.size == len(data) and not result.resumed
        assert result.chunks_sent == result.chunks_total == -(-len(data) // (32 * 1024))
        assert await read_back(server_url, result.upload_id) == data
    assert not list((tmp_path / "st").glob("*.json"))  # nothing left to resume


@pytest.mark.parametrize("name,sent", [(b"caf\xe9.bin", "caf\ufffd.bin"), (b"two\nlines.bin", "two\ufffdlines.bin")],
                         ids=["latin-1", "newline"])
async def test_a_file_whose_name_the_server_would_refuse_is_uploaded_with_those_characters_replaced(
        server_url, tmp_path, name, sent):
    """A name written in another encoding (Latin-1 ``caf\\xe9.bin``, from an old archive) or holding a
    newline (Linux allows one): the server takes valid Unicode without control characters only, and
    the run was refused (422 "filename must be valid Unicode without control characters"); had it
    not been, the Latin-1 name's resume state could not be written (a traceback). Each byte that is
    not UTF-8 and each control character is sent as U+FFFD, and a run stopped mid-way resumes."""
    path = Path(os.fsdecode(os.fsencode(tmp_path) + b"/" + name))
    data = write(path, random_bytes(3000)).read_bytes()

    def stop(event):
        if event.phase == "uploading" and event.done:
            raise Stop

    with pytest.raises(Stop):
        await upload_file(server_url, path, parallel=1, chunk_size=1000, state_dir=tmp_path / "st", progress=stop)
    result = await upload_file(server_url, path, state_dir=tmp_path / "st")
    assert result.filename == sent and result.path == path
    assert result.resumed and result.chunks_sent == 2
    assert await read_back(server_url, result.upload_id) == data


async def test_interrupted_upload_resumes_with_the_missing_chunks_only(server_url, tmp_path):
    path = write(tmp_path / "big.bin", random_bytes(64 * 10_000))
    seen = []

    def stop_after_20(event):
        if event.phase == "uploading":
            seen.append(event.done)
            if len(seen) > 20:
                raise Stop

    with pytest.raises(Stop):
        await upload_file(server_url, path, parallel=3, chunk_size=10_000, state_dir=tmp_path / "st",
                          progress=stop_after_20)
    upload_id = saved_upload_id(tmp_path / "st")
    # A chunk PUT in flight when the client stopped runs to its end on the server (as under `serve`,
    # which does not cancel a handler whose client went away): read the state once it stays put.
    before, deadline = await server_state(server_url, upload_id), time.monotonic() + 5
    while time.monotonic() < deadline:
        await asyncio.sleep(0.3)
        now = await server_state(server_url, upload_id)
        if now["received_count"] == before["received_count"]:
            break
        before = now
    assert 0 < before["received_count"] < 64

    # docs/client.md: found by the URL less a trailing / and the path with links resolved; a chunk size
    # given on a resume is ignored (the server numbers the chunks by the first one).
    (tmp_path / "link.bin").symlink_to(path)
    result = await upload_file(server_url + "/", tmp_path / "link.bin", parallel=3, chunk_size=30_000,
                               state_dir=tmp_path / "st")
    assert result.resumed and result.upload_id == upload_id
    assert result.chunks_sent == 64 - before["received_count"]
    assert await read_back(server_url, upload_id) == path.read_bytes()


async def test_a_changed_file_is_uploaded_afresh(server_url, tmp_path):
    path = write(tmp_path / "f.bin", random_bytes(50_000))

    def stop(event):
        if event.phase == "uploading" and event.done:
            raise Stop

    with pytest.raises(Stop):
        await upload_file(server_url, path, parallel=1, chunk_size=10_000, state_dir=tmp_path / "st", progress=stop)
    first = saved_upload_id(tmp_path / "st")
    write(path, random_bytes(60_000))
    result = await upload_file(server_url, path, chunk_size=10_000, state_dir=tmp_path / "st")
    assert not result.resumed and result.upload_id != first and result.chunks_sent == 6
    assert await read_back(server_url, result.upload_id) == path.read_bytes()


async def test_a_file_that_grows_while_it_is_hashed_is_refused_before_anything_is_sent(server_url, aiohttp_server,
                                                                                      tmp_path):
    """A file still being written (a recording, an export) grows while its SHA-256 is computed: the
    hash then covers bytes past the size the upload would declare. Refused at once, naming the file,
    with nothing sent (before: every chunk was sent, then the completion failed with the server's
    "sha256 ... != declared")."""
    seen: list[str] = []

    async def front(request: web.Request) -> web.StreamResponse:
        seen.append(f"{request.method} {request.path}")
        return await forwarded(server_url, request)

    proxy = await front_of(aiohttp_server, front)
    path = write(tmp_path / "growing.bin", random_bytes(10 << 20))

    def written_on(event):
        if event.phase == "hashing" and len(seen) == 0 and event.done == 4 << 20:
            with path.open("ab") as f:
                f.write(random_bytes(1 << 20))

    with pytest.raises(FileChanged, match=r"growing\.bin: changed while it was read \(10485760 bytes when it was "
                                          r"opened, 11534336 now\): is it still being written\? Nothing was sent"):
        await upload_file(str(proxy.make_url("")), path, state_dir=tmp_path / "st", progress=written_on)
    assert seen == []


async def test_a_refusal_is_reported_with_the_servers_problem(make_settings, make_client, tmp_path):
    client = await make_client(make_settings(**{"limits.min_chunk_size": 1000}))
    path = write(tmp_path / "f.bin", b"x" * 5000)
    with pytest.raises(ClientError) as info:
        await upload_file(str(client.make_url("")), path, chunk_size=10, state_dir=tmp_path / "st")
    assert info.value.status == 422 and info.value.problem["field"] == "chunk_size"
    assert "HTTP 422" in str(info.value)


async def test_cli_names_the_file_of_a_refusal_once(make_settings, make_client, tmp_path):
    """The line read "f.bin: FAILED: f.bin: creating the upload: ...": the path twice."""
    client = await make_client(make_settings(**{"limits.max_upload_size": 1000}))
    path = write(tmp_path / "f.bin", b"x" * 5000)
    proc = await asyncio.create_subprocess_exec(*upload_command(str(client.make_url("")), tmp_path / "st", str(path)),
                                                stderr=asyncio.subprocess.PIPE)
    _, stderr = await asyncio.wait_for(proc.communicate(), 60)
    (line,) = [line for line in stderr.decode().splitlines() if "FAILED" in line]
    assert proc.returncode == 1 and line == (f"{path}: FAILED: creating the upload: HTTP 413: total_size 5000 "
                                             "exceeds the maximum upload size 1000"), stderr.decode()


async def test_the_bearer_token_is_sent(make_settings, make_client, monkeypatch, tmp_path):
    monkeypatch.setenv("CLIENT_TEST_TOKENS", "tok-alice=alice")
    client = await make_client(make_settings(**{"auth.mode": "token", "auth.tokens_env": "CLIENT_TEST_TOKENS"}))
    url = str(client.make_url(""))
    path = write(tmp_path / "f.bin", random_bytes(1000))
    result = await upload_file(url, path, token="tok-alice", state_dir=tmp_path / "st")
    assert result.size == 1000
    with pytest.raises(ClientError) as info:
        await upload_file(url, path, token="tok-mallory", state_dir=tmp_path / "st")
    assert info.value.status == 401


async def forwarded(server_url: str, request: web.Request) -> web.Response:
    """``request`` sent on to the real server, and its answer."""
    async with aiohttp.ClientSession() as s:
        async with s.request(request.method, server_url + request.path_qs, data=await request.read(),
                             headers={k: v for k, v in request.headers.items() if k.lower() != "host"}) as r:
            return web.Response(status=r.status, body=await r.read(), content_type=r.content_type)


async def front_of(aiohttp_server, handler) -> TestServer:
    """A loopback server that answers every request with ``handler`` (a front before the real one)."""
    app = web.Application(client_max_size=64 << 20)
    app.router.add_route("*", "/{tail:.*}", handler)
    return await aiohttp_server(app, host="127.0.0.1")


@pytest.mark.parametrize("status, retried", [(408, True), (500, True), (502, True), (504, True), (507, True),
                                             (501, False)])
async def test_which_answers_are_tried_again(server_url, aiohttp_server, tmp_path, status, retried):
    """docs/client.md: 408, 429, 507 and every 5xx but 501 are tried again; 501 (the server cannot do this
    at all) is its final word. Here the front answers the first creation with ``status``."""
    seen: list[str] = []

    async def front(request: web.Request) -> web.StreamResponse:
        seen.append(f"{request.method} {request.path}")
        if len(seen) == 1:
            return web.Response(status=status)
        return await forwarded(server_url, request)

    proxy = await front_of(aiohttp_server, front)
    path = write(tmp_path / "f.bin", random_bytes(1000))
    upload = upload_file(str(proxy.make_url("")), path, state_dir=tmp_path / "st",
                         retry=RetryPolicy(attempts=3, base=0.01, cap=0.05))
    if retried:
        result = await upload
        assert seen[:2] == ["POST /v1/uploads"] * 2
        assert await read_back(server_url, result.upload_id) == path.read_bytes()
    else:
        with pytest.raises(ClientError) as info:
            await upload
        assert info.value.status == 501 and seen == ["POST /v1/uploads"]


async def test_busy_answers_are_retried_honouring_retry_after(server_url, aiohttp_server, tmp_path):
    """A front that answers 503 (Retry-After: 1) or 429 to every first attempt, then forwards."""
    seen: dict[str, int] = {}
    waits: list[float] = []
    last: dict[str, float] = {}

    async def front(request: web.Request) -> web.StreamResponse:
        key = f"{request.method} {request.path}"
        seen[key] = seen.get(key, 0) + 1
        if seen[key] == 1:
            last[key] = time.monotonic()
            if request.method == "PUT":
                return web.Response(status=429)
            return web.Response(status=503, headers={"Retry-After": "1"})
        waits.append(time.monotonic() - last.pop(key, time.monotonic()))
        return await forwarded(server_url, request)

    proxy = await front_of(aiohttp_server, front)
    path = write(tmp_path / "f.bin", random_bytes(40_000))
    result = await upload_file(str(proxy.make_url("")), path, chunk_size=10_000, state_dir=tmp_path / "st",
                               retry=RetryPolicy(attempts=3, base=0.01, cap=2.0))
    assert await read_back(server_url, result.upload_id) == path.read_bytes()
    assert seen["POST /v1/uploads"] == 2 and seen["PUT /v1/uploads/" + result.upload_id + "/chunks/4"] == 2
    assert max(waits) >= 0.95  # the POSTs waited the second Retry-After asked for
    assert min(waits) < 0.5  # the PUTs' 429 without Retry-After: the policy's short backoff


async def test_retries_run_out_on_a_server_that_is_gone(tmp_path):
    """Each retry is told to on_retry before its wait: what, which attempt comes, how long, why."""
    path = write(tmp_path / "f.bin", b"x" * 10)
    retries: list[RetryEvent] = []
    started = time.monotonic()
    with pytest.raises(ClientError) as info:
        await upload_file(f"http://127.0.0.1:{free_port()}", path, state_dir=tmp_path / "st",
                          retry=RetryPolicy(attempts=3, base=0.05, cap=0.1), on_retry=retries.append)
    assert info.value.status is None and "after 3 attempts" in str(info.value)
    assert time.monotonic() - started < 5
    assert [(e.method, e.path, e.attempt, e.attempts) for e in retries] == [("POST", "/v1/uploads", 2, 3),
                                                                          ("POST", "/v1/uploads", 3, 3)]
    assert all(0.025 <= e.wait <= 0.1 and e.reason.startswith("ClientConnectorError: ") for e in retries)
    assert str(retries[0]).startswith(f"retrying POST /v1/uploads in {retries[0].wait:.1f} s (attempt 2 of 3): "
                                      "ClientConnectorError: ")


def test_the_library_takes_only_an_http_or_https_url_with_a_host():
    """``UploadClient("127.0.0.1:8080")`` failed only at its first request, inside aiohttp."""
    with pytest.raises(ValueError, match=r"got '127\.0\.0\.1:8080' \(did you mean http://127\.0\.0\.1:8080\?\)"):
        UploadClient("127.0.0.1:8080")
    assert UploadClient(" https://uploads.example.org/base/ ").url == "https://uploads.example.org/base"


def test_retry_after_and_backoff():
    assert retry_after("3") == 3.0
    assert retry_after("Wed, 21 Oct 2015 07:28:05 GMT", now=1445412480.0) == 5.0
    assert retry_after("soon") is None and retry_after(None) is None
    policy = RetryPolicy(attempts=5, base=1.0, cap=4.0)
    assert policy.delay(1, retry_after=100.0) == 4.0 and policy.delay(1, retry_after=0.0) == 0.0
    assert all(0.5 <= policy.delay(1) <= 1.0 and 2.0 <= policy.delay(10) <= 4.0 for _ in range(50))


def test_the_default_retries_wait_61_to_121_5_s_over_ten_attempts():
    """client.md: by default 10 attempts, so nine waits of half to all of 0.5, 1, 2, 4, 8, 16, 30, 30, 30 s."""
    policy = RetryPolicy()
    assert policy.attempts == 10
    steps = [0.5, 1, 2, 4, 8, 16, 30, 30, 30]
    for _ in range(20):
        waits = [policy.delay(attempt) for attempt in range(1, policy.attempts)]
        assert all(step / 2 <= wait <= step for wait, step in zip(waits, steps)), waits


def test_resume_states_live_under_xdg_state_home_and_one_per_url_as_written(tmp_path, monkeypatch):
    """client.md: the state folder is $XDG_STATE_HOME/vezastream/uploads, else ~/.local/state/...; a state
    is kept per server URL as given, so localhost and 127.0.0.1 are two servers to it."""
    from vezastream.client.resume import ResumeStore, default_state_dir

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert default_state_dir() == tmp_path / "xdg" / "vezastream" / "uploads"
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_state_dir() == tmp_path / "home" / ".local" / "state" / "vezastream" / "uploads"
    store = ResumeStore(tmp_path / "st")
    assert store._file("http://localhost:8080", "/f") != store._file("http://127.0.0.1:8080", "/f")


# -- the real command, against a real `vezastream serve` -----------------------------------
@pytest.fixture
def server_env(tmp_path: Path) -> dict[str, str]:
    return servers.server_env(tmp_path)


def upload_command(url: str, state_dir: Path, *args: str) -> list[str]:
    return [*VEZASTREAM, "upload", "--url", url, "--state-dir", str(state_dir), *args]


@pytest.mark.slow
@pytest.mark.drill
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["crash", "ctrl-c"])
async def test_cli_stopped_mid_upload_resumes_where_the_server_stands(tmp_path, server_env, sig, report):
    path = write(tmp_path / "big.bin", random_bytes(32 * 1024 * 1024))
    total = 512
    server = Server(server_env, tmp_path)
    try:
        await server.wait_ready()
        cmd = upload_command(server.url, tmp_path / "st", str(path), "--parallel", "2", "--chunk-size", "64KiB")
        # A Ctrl-C as a terminal delivers it: a suite started in the background (`cmd &` in a script)
        # runs with SIGINT ignored, which its children inherit, and a Python started so keeps ignoring
        # it (as a background job should), so the client would never see the signal.
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        try:
            # Stop it early: on a loaded machine the whole upload takes only a few seconds.
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and proc.poll() is None:
                upload_id = saved_upload_id(tmp_path / "st")
                if upload_id and (await server_state(server.url, upload_id))["received_count"] >= 20:
                    break
                await asyncio.sleep(0.01)
            assert proc.poll() is None, "the upload finished before the test could stop it"
            proc.send_signal(sig)
        finally:
            _, stderr = proc.communicate(timeout=10)
        if sig == signal.SIGINT:
            assert proc.returncode == 130 and "run the same command again to resume" in stderr, (
                proc.returncode, stderr[-1000:])
        await asyncio.sleep(0.3)  # the server drops the chunk that was mid-body
        before = (await server_state(server.url, upload_id))["received_count"]
        assert 20 <= before < total

        started = time.monotonic()
        rerun = subprocess.run([*cmd, "--json"], capture_output=True, text=True, timeout=60)
        rerun_s = time.monotonic() - started
        assert rerun.returncode == 0, rerun.stderr
        (line,) = rerun.stdout.splitlines()
        result = json.loads(line)
        assert result["resumed"] is True and result["upload_id"] == upload_id
        assert result["chunks_sent"] == total - before and result["chunks_total"] == total
        assert result["sha256"] == sha256(path.read_bytes())
        assert await read_back(server.url, upload_id) == path.read_bytes()
    finally:
        server.kill(signal.SIGTERM)
    report(f"client {signal.Signals(sig).name} mid-upload, re-run", uploads=1, lost=0, chunks=total,
           had=before, resent=result["chunks_sent"], rerun_s=round(rerun_s, 2))


@pytest.mark.slow
@pytest.mark.drill
async def test_server_restart_mid_upload_is_ridden_out_by_retries(tmp_path, server_env, report):
    path = write(tmp_path / "big.bin", random_bytes(16 * 1024 * 1024))
    server = Server(server_env, tmp_path)
    try:
        await server.wait_ready()
        task = asyncio.create_task(upload_file(server.url, path, parallel=4, chunk_size=64 * 1024,
                                               state_dir=tmp_path / "st", retry=FAST_RETRY))
        while not task.done():
            upload_id = saved_upload_id(tmp_path / "st")
            if upload_id and (await server_state(server.url, upload_id))["received_count"] >= 40:
                break
            await asyncio.sleep(0.02)
        assert not task.done()
        server.kill(signal.SIGKILL)
        await asyncio.sleep(1.0)  # the client meets refused connections meanwhile
        server = Server(server_env, tmp_path)
        await server.wait_ready()
        ready = time.monotonic()
        result = await asyncio.wait_for(task, 60)
        recovery = time.monotonic() - ready
        assert result.upload_id == upload_id and not result.resumed
        assert await read_back(server.url, upload_id) == path.read_bytes()
    finally:
        server.kill(signal.SIGTERM)
    report("client vs server restart", uploads=1, kills=1, lost=0, chunks=result.chunks_total,
           recovery_s=round(recovery, 2))


@pytest.mark.slow
def test_cli_json_output_and_exit_status(tmp_path, server_env):
    """Several files, one missing on the server side (refused): one JSON object per file, exit status 1."""
    good = write(tmp_path / "good.bin", random_bytes(100_000))
    env = {**server_env, "VEZASTREAM_LIMITS__MAX_UPLOAD_SIZE": "200000"}
    too_big = write(tmp_path / "big.bin", random_bytes(300_000))
    server = Server(env, tmp_path)
    try:
        asyncio.run(server.wait_ready())
        run = subprocess.run(upload_command(server.url, tmp_path / "st", str(good), str(too_big), "--json"),
                             capture_output=True, text=True, timeout=60)
        assert run.returncode == 1, run.stderr
        ok, refused = sorted((json.loads(line) for line in run.stdout.splitlines()), key=lambda r: "error" in r)
        assert ok["path"] == str(good) and ok["sha256"] == sha256(good.read_bytes()) and ok["resumed"] is False
        assert refused["path"] == str(too_big) and refused["status"] == 413 and "HTTP 413" in refused["error"]
        bars = subprocess.run(upload_command(server.url, tmp_path / "st", str(good)), capture_output=True,
                              text=True, timeout=60)
        assert bars.returncode == 0 and bars.stdout == "" and "verified" in bars.stderr
    finally:
        server.kill(signal.SIGTERM)


async def test_cli_sends_several_files_at_once_within_parallel_chunks_in_flight(server_url, aiohttp_server, tmp_path):
    """Many small files (one chunk each) went one after the other, four round trips each. Now up to
    --parallel files are under way at once, their chunks sharing the --parallel slots: through a
    front that holds each request 50 ms, 12 files with --parallel 4 overlap, never more than 4 chunks
    are in flight, and every file reads back identical."""
    in_flight = Counter()
    most = Counter()

    async def front(request: web.Request) -> web.StreamResponse:
        kind = "chunk" if request.method == "PUT" else "any"
        for k in {kind, "any"}:
            in_flight[k] += 1
            most[k] = max(most[k], in_flight[k])
        try:
            await asyncio.sleep(0.05)
            return await forwarded(server_url, request)
        finally:
            for k in {kind, "any"}:
                in_flight[k] -= 1

    proxy = await front_of(aiohttp_server, front)
    files = [write(tmp_path / f"f{i}.bin", random_bytes(2000 + i)) for i in range(12)]
    proc = await asyncio.create_subprocess_exec(
        *upload_command(str(proxy.make_url("")).rstrip("/"), tmp_path / "st", *map(str, files), "--json",
                        "--parallel", "4"), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, stderr.decode()
    results = {r["path"]: r for r in map(json.loads, stdout.decode().splitlines())}
    assert sorted(results) == sorted(map(str, files))
    for f in files:
        assert await read_back(server_url, results[str(f)]["upload_id"]) == f.read_bytes()
    assert most["chunk"] <= 4 and most["any"] >= 3, most  # (one after the other, at most 1 of anything)


@pytest.mark.parametrize("fault", ["file", "loop"])
def test_cli_refuses_a_state_dir_it_cannot_use_before_sending_anything(tmp_path, fault):
    """A --state-dir that cannot be a folder (a file, a link that loops): one line, exit 2, nothing
    sent (the URL is a port nobody listens on: the refusal comes first). It failed only once the server
    had created the upload, with a traceback."""
    state = tmp_path / "st"
    if fault == "file":
        state.write_text("someone's notes")
    else:
        state.symlink_to(state)
    path = write(tmp_path / "f.bin", random_bytes(10))
    done = subprocess.run(upload_command(f"http://127.0.0.1:{servers.free_port()}", state / "uploads", str(path)),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    [line] = done.stderr.splitlines()
    assert line.startswith(f"vezastream upload: cannot keep resume states in {state / 'uploads'} (--state-dir): ")


@pytest.mark.slow
def test_cli_sends_the_token_from_vezastream_token_or_the_variable_named(tmp_path, server_env):
    """docs/client.md: --token-env names the variable holding the token, VEZASTREAM_TOKEN by default;
    white space around it is not sent, a control character in it is refused before anything is read."""
    env = {**server_env, "VEZASTREAM_AUTH__MODE": "token", "VEZASTREAM_AUTH__TOKENS_ENV": "CLI_TEST_TOKENS",
           "CLI_TEST_TOKENS": "tok-alice=alice"}
    path = write(tmp_path / "f.bin", random_bytes(1000))
    server = Server(env, tmp_path)
    try:
        asyncio.run(server.wait_ready())

        def upload(*args: str, **variables: str) -> tuple[int, dict]:
            clean = {k: v for k, v in os.environ.items() if k != "VEZASTREAM_TOKEN"}
            done = subprocess.run(upload_command(server.url, tmp_path / "st", str(path), "--json", *args),
                                  capture_output=True, text=True, timeout=60, env={**clean, **variables})
            return done.returncode, json.loads(done.stdout)

        code, result = upload()  # no token
        assert code == 1 and result["status"] == 401
        code, result = upload(VEZASTREAM_TOKEN="tok-alice")
        assert code == 0 and result["sha256"] == sha256(path.read_bytes())
        code, result = upload("--token-env", "MY_TOKEN", MY_TOKEN="tok-alice", VEZASTREAM_TOKEN="tok-mallory")
        assert code == 0 and result["resumed"] is False  # the variable named, not the default
        # A secret read from a file (a Kubernetes secret) ends in a newline: a traceback before (aiohttp
        # refuses a header with one); now the white space around the token is not sent.
        code, result = upload(VEZASTREAM_TOKEN="tok-alice\n")
        assert code == 0 and result["sha256"] == sha256(path.read_bytes())
        clean = {k: v for k, v in os.environ.items() if k != "VEZASTREAM_TOKEN"}
        done = subprocess.run(upload_command(server.url, tmp_path / "st", str(path)), capture_output=True, text=True,
                              timeout=60, env={**clean, "VEZASTREAM_TOKEN": "tok-\x01alice"})
        assert (done.returncode, done.stderr) == (2, "vezastream upload: VEZASTREAM_TOKEN: the token holds a control "
                                                     "character, which no HTTP header can carry\n")
    finally:
        server.kill(signal.SIGTERM)


async def test_cli_goes_on_to_the_next_file_when_one_fails_on_this_machine(server_url, tmp_path):
    """client.md: each file prints its result or its failure, and the others are still tried. A local
    failure (here the first file's resume state cannot be written: a folder stands at its name) ended
    the whole command with one line, the other files neither tried nor reported."""
    from vezastream.client.resume import FileStamp, ResumeStore

    state = tmp_path / "st"
    first, second = write(tmp_path / "a.bin", random_bytes(1000)), write(tmp_path / "b.bin", random_bytes(3000))
    blocked = ResumeStore(state)._file(server_url, FileStamp.of(first).path)
    blocked.mkdir(parents=True)
    proc = await asyncio.create_subprocess_exec(*upload_command(server_url, state, str(first), str(second), "--json"),
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 1 and "Traceback" not in stderr.decode(), stderr.decode()
    failed, done = sorted((json.loads(line) for line in stdout.decode().splitlines()), key=lambda r: "error" not in r)
    assert (failed["path"], failed["status"]) == (str(first), None) and failed["error"].startswith(
        "Is a directory: ") and failed["error"].endswith(f" -> {blocked}"), failed
    assert done["sha256"] == sha256(second.read_bytes()), done
    assert not list(state.glob("*.tmp"))  # the state it could not put in place is not left behind


async def test_cli_whose_state_folder_refuses_the_state_file_says_so_in_one_line(server_url, tmp_path):
    """An immutable --state-dir: it exists, but the state file cannot be written in it once the server
    has created the upload. One line naming the file and why (the file's failure), exit 1, where it
    printed a traceback."""
    state = tmp_path / "st"
    state.mkdir()
    path = write(tmp_path / "f.bin", random_bytes(1000))
    with immutable(state):
        proc = await asyncio.create_subprocess_exec(*upload_command(server_url, state, str(path)),
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        _, stderr = await asyncio.wait_for(proc.communicate(), 60)
    lines = [line for line in stderr.decode().splitlines() if "FAILED" in line]
    assert proc.returncode == 1 and "Traceback" not in stderr.decode(), stderr.decode()
    assert len(lines) == 1 and lines[0].startswith(f"{path}: FAILED: Operation not permitted: {state}/"), lines


#: A regular file of 4,096 bytes whose every read fails with EIO (no runtime power management to show):
#: a real read error without a disk fault.
EIO_FILE = Path("/sys/devices/system/cpu/power/autosuspend_delay_ms")


def _fails_to_read(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            f.read(1)
    except OSError as exc:
        return exc.errno == errno.EIO
    return False


@pytest.mark.skipif(not _fails_to_read(EIO_FILE), reason=f"{EIO_FILE} reads without EIO on this kernel")
async def test_cli_reports_a_file_that_fails_to_read_as_that_files_failure(server_url, tmp_path):
    """A read error carries no file name (EIO from the disk): the command printed a traceback and
    tried no other file. Now it is that file's failure, named, and the next file is uploaded."""
    second = write(tmp_path / "b.bin", random_bytes(3000))
    proc = await asyncio.create_subprocess_exec(*upload_command(server_url, tmp_path / "st", str(EIO_FILE),
                                                                str(second), "--json"),
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 1 and "Traceback" not in stderr.decode(), stderr.decode()
    failed, done = sorted((json.loads(line) for line in stdout.decode().splitlines()), key=lambda r: "error" not in r)
    assert failed == {"path": str(EIO_FILE), "error": f"Input/output error: {EIO_FILE}", "status": None}, failed
    assert done["sha256"] == sha256(second.read_bytes()), done


@pytest.mark.slow
async def test_a_run_whose_upload_another_run_completes_meanwhile_reports_the_file_stored(tmp_path, server_env):
    """Two runs for one file at once (a cron job that overlaps itself): the second finds the first's
    resume state and sends chunks of the same upload, and when the first completes it, the second's
    next chunk is answered `409 upload-not-pending`. The second run reported the file FAILED, though
    it was stored. Now it asks for the completion, which answers with the first's result. The other
    run is played here from the progress callback, through the API, after this run's first chunk."""
    chunk = 64 * 1024
    data = random_bytes(4 * chunk)
    path, state = write(tmp_path / "f.bin", data), tmp_path / "st"
    server = Server(server_env, tmp_path)
    played = []

    def other_run(event) -> None:  # blocking calls: the server is another process
        if event.phase != "uploading" or not event.done or played:
            return
        upload_id = saved_upload_id(state)
        base = f"{server.url}/v1/uploads/{upload_id}"
        for n in range(2, 5):
            put = urllib.request.Request(f"{base}/chunks/{n}", data=data[(n - 1) * chunk:n * chunk], method="PUT",
                                         headers={"Content-Type": "application/octet-stream"})
            urllib.request.urlopen(put, timeout=30).close()
        urllib.request.urlopen(urllib.request.Request(f"{base}/complete", method="POST"), timeout=30).close()
        played.append(upload_id)

    try:
        await server.wait_ready()
        async with UploadClient(server.url, parallel=1, chunk_size=chunk, state_dir=state, progress=other_run,
                                retry=FAST_RETRY) as client:
            result = await client.upload(path)
        assert played == [result.upload_id] and result.chunks_sent == 1, (played, result)
        assert result.sha256 == sha256(data) and await read_back(server.url, result.upload_id) == data
        assert not list(state.glob("*.json"))  # nothing left to resume
    finally:
        server.kill(signal.SIGTERM)


@pytest.mark.slow
async def test_a_chunk_another_connection_still_holds_is_sent_again_once_it_lets_go(make_client, sink_settings,
                                                                                    tmp_path):
    """S3 direct mode: a chunk whose earlier sending still holds it on the server (its connection went
    silent mid-body, as on a network that dropped) is answered `409 conflict`, "being received on
    another connection; retry later". The client stopped the file there; now it tries again, as
    after a `503`, and the upload completes once the silent connection is cut."""
    client = await make_client(sink_settings())
    url, chunk = str(client.make_url("")).rstrip("/"), 5 * 1024 * 1024
    data = random_bytes(3 * chunk)
    path, state = write(tmp_path / "f.bin", data), tmp_path / "st"

    def stop_after_the_first_chunk(event) -> None:
        if event.phase == "uploading" and event.done:
            raise Stop

    with pytest.raises(Stop):
        async with UploadClient(url, parallel=1, chunk_size=chunk, state_dir=state,
                                progress=stop_after_the_first_chunk) as first_run:
            await first_run.upload(path)
    upload_id = saved_upload_id(state)
    assert (await server_state(url, upload_id))["mode"] == "direct"
    _, silent = await asyncio.open_connection(client.host, client.port)
    silent.write(f"PUT /v1/uploads/{upload_id}/chunks/2 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 f"Content-Type: application/octet-stream\r\nContent-Length: {chunk}\r\n\r\n".encode()
                 + data[chunk:chunk + 65536])
    await silent.drain()
    store = client.server.app[engine_key].store
    for _ in range(500):  # the server takes chunk 2's lease as its body starts (a 10 s bound)
        if await store.redis.exists(store.part_lease_key(upload_id, 2)):
            break
        await asyncio.sleep(0.02)
    else:
        pytest.fail("chunk 2's lease was never taken")

    async def cut_later() -> None:
        await asyncio.sleep(1.5)
        silent.close()

    retries: list[RetryEvent] = []
    cutter = asyncio.create_task(cut_later())
    try:
        async with UploadClient(url, parallel=1, chunk_size=chunk, state_dir=state, retry=FAST_RETRY,
                                on_retry=retries.append) as second_run:
            result = await second_run.upload(path)
    finally:
        await cutter
    assert retries and {(r.method, r.path, r.reason) for r in retries} == {
        ("PUT", f"/v1/uploads/{upload_id}/chunks/2", "HTTP 409")}, retries
    assert result.resumed and result.sha256 == sha256(data) and await read_back(url, upload_id) == data


def without_proxies() -> dict[str, str]:
    """This process's environment without the variables that name a proxy (either case)."""
    return {name: value for name, value in os.environ.items()
            if name.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")}


@pytest.fixture
def tinyproxy(tmp_path):
    """Debian's tinyproxy (a forward HTTP proxy) on a free loopback port, stopped by its PID: its URL, and
    the requests it has forwarded so far (a function: their request lines, from its log)."""
    binary = shutil.which("tinyproxy", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/bin", "/usr/sbin"]))
    if binary is None:
        message = "no tinyproxy (scripts/test installs Debian's tinyproxy-bin)"
        pytest.fail(message) if os.environ.get("CI") else pytest.skip(message)
    port, log = free_port(), tmp_path / "tinyproxy.log"
    config = tmp_path / "tinyproxy.conf"
    config.write_text(f'Port {port}\nListen 127.0.0.1\nAllow 127.0.0.1\nTimeout 60\nLogFile "{log}"\nLogLevel Info\n')
    proc = subprocess.Popen([binary, "-d", "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        listening(proc, port, "tinyproxy")
        yield f"http://127.0.0.1:{port}", lambda: re.findall(r"Request \(file descriptor \d+\): (.+)", log.read_text())
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def nginx_in_front(server_url, tmp_path):
    """Debian's nginx with its default body limit (1 MB) in front of the test's server: its URL."""
    with nginx(tmp_path / "nginx", server_url) as url:
        yield url


async def test_cli_says_what_a_proxy_that_takes_smaller_bodies_than_a_chunk_needs(nginx_in_front, tmp_path):
    """nginx's default body limit (1 MB) in front, 2 MiB chunks: nginx answers 413 with a page of its own,
    and the file failed with "HTTP 413: no details". The line now says who refused and what to change;
    smaller chunks, as it says, then go through."""
    path = write(tmp_path / "f.bin", random_bytes(3 << 20))

    async def upload(*args: str) -> tuple[int, dict, str]:  # (the test's server answers in this loop)
        proc = await asyncio.create_subprocess_exec(*upload_command(nginx_in_front, *args, "--json"),
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        stdout, stderr = await asyncio.wait_for(proc.communicate(), 60)
        return proc.returncode, json.loads(stdout), stderr.decode()

    code, failed, stderr = await upload(tmp_path / "st", str(path), "--chunk-size", "2MiB")
    assert code == 1 and failed["status"] == 413, (failed, stderr)
    assert failed["error"].endswith(": HTTP 413: refused by something in front of the server (no problem+json: a "
                                    "proxy, a balancer), which takes smaller bodies than a chunk: raise its limit "
                                    "(nginx: client_max_body_size) or send smaller chunks (--chunk-size)"), failed
    code, done, stderr = await upload(tmp_path / "st2", str(path), "--chunk-size", "512KiB")
    assert code == 0 and done["sha256"] == sha256(path.read_bytes()), stderr


async def test_cli_goes_through_the_proxy_the_environment_names(server_url, tmp_path, tinyproxy):
    """``HTTP_PROXY`` / ``HTTPS_PROXY`` and ``NO_PROXY``, as curl and requests read them (client.md): every
    request of an upload goes through the proxy named, and a host NO_PROXY lists is reached directly.
    Before, the client ignored them: on a network whose only way out is a proxy, nothing was sent."""
    proxy, forwarded = tinyproxy
    environment = without_proxies()

    async def upload(data: bytes, name: str, **proxies: str) -> dict:
        path = write(tmp_path / name, data)
        proc = await asyncio.create_subprocess_exec(
            *upload_command(server_url, tmp_path / "st", str(path), "--json", "--chunk-size", "100000"),
            env={**environment, **proxies}, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        stdout, stderr = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, stderr.decode()
        return json.loads(stdout)

    data = random_bytes(250_000)
    done = await upload(data, "a.bin", HTTP_PROXY=proxy)
    assert await read_back(server_url, done["upload_id"]) == data
    methods = [line.split()[0] for line in forwarded() if line.split()[1].startswith(server_url + "/v1/uploads")]
    assert sorted(methods) == ["POST", "POST", "PUT", "PUT", "PUT"], forwarded()  # create, 3 chunks, complete
    before = len(forwarded())
    other = await upload(random_bytes(1000), "b.bin", http_proxy=proxy, no_proxy="127.0.0.1")
    assert other["size"] == 1000 and len(forwarded()) == before


async def test_cli_reaches_an_https_server_through_the_proxy_and_trusts_ssl_cert_file(settings, tmp_path, tinyproxy):
    """An ``https://`` server through the proxy ``HTTPS_PROXY`` names (a CONNECT tunnel: the proxy sees
    only the host and port), its certificate checked against the bundle ``SSL_CERT_FILE`` names."""
    proxy, forwarded = tinyproxy
    context, ca = loopback_tls(tmp_path)
    runner = web.AppRunner(create_app(settings), handler_cancellation=False, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context).start()
    url = f"https://127.0.0.1:{runner.addresses[0][1]}"
    environment = without_proxies()
    data = random_bytes(250_000)
    path = write(tmp_path / "a.bin", data)
    try:
        async def upload(**extra: str) -> tuple[int, str, str]:
            proc = await asyncio.create_subprocess_exec(
                *upload_command(url, tmp_path / "st", str(path), "--json", "--chunk-size", "100000", "--attempts", "1"),
                env={**environment, "HTTPS_PROXY": proxy, **extra}, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE)
            stdout, stderr = await asyncio.wait_for(proc.communicate(), 60)
            return proc.returncode, stdout.decode(), stderr.decode()

        status, stdout, _ = await upload()  # the system's bundle does not know the test's CA
        assert status == 1 and "CERTIFICATE_VERIFY_FAILED" in stdout, stdout
        status, stdout, stderr = await upload(SSL_CERT_FILE=str(ca))
        assert status == 0, stdout + stderr
        assert await read_back_tls(url, json.loads(stdout)["upload_id"], ca) == data
        tunnels = [line for line in forwarded() if line.startswith("CONNECT ")]
        assert tunnels and {line.split()[1] for line in tunnels} == {url.removeprefix("https://")}, forwarded()
    finally:
        await runner.cleanup()


async def read_back_tls(url: str, upload_id: str, ca: Path) -> bytes:
    connector = aiohttp.TCPConnector(ssl=ssl.create_default_context(cafile=str(ca)))
    async with aiohttp.ClientSession(connector=connector) as s, s.get(f"{url}/v1/uploads/{upload_id}/content") as r:
        assert r.status == 200
        return await r.read()

def test_the_proxy_is_chosen_by_the_urls_scheme_and_its_credentials_go_in_a_header(monkeypatch):
    from vezastream.client.upload import env_proxy

    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    assert env_proxy("http://127.0.0.1:8080") == (None, None)
    monkeypatch.setenv("HTTPS_PROXY", "http://al%40ice:s%3Acret@proxy.example:3128")
    monkeypatch.setenv("NO_PROXY", "direct.example")
    assert env_proxy("http://uploads.example") == (None, None)  # only HTTPS_PROXY is set
    assert env_proxy("https://direct.example") == (None, None)
    proxy, headers = env_proxy("https://uploads.example")
    assert proxy == "http://proxy.example:3128"  # no credentials in the URL sent on
    assert headers == {"Proxy-Authorization": "Basic " + base64.b64encode(b"al@ice:s:cret").decode()}
