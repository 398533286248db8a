"""The real `vezastream` command: crash recovery, gc, config show, config errors."""

from __future__ import annotations

import asyncio
import contextlib
import base64
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import pytest

from helpers import immutable, random_bytes, sha256, split, upload
import servers
from servers import VEZASTREAM, Server, run
from vezastream.http.body import TAKE_OVER_AT


@pytest.fixture
def server_env(tmp_path: Path) -> dict[str, str]:
    return servers.server_env(tmp_path)


@pytest.mark.slow
async def test_sigkill_mid_upload_loses_nothing(tmp_path, server_env):
    """Bundled Redis, server SIGKILLed mid-upload, restarted: the upload resumes and completes."""
    data = random_bytes(16 * 65536)
    pieces = split(data, 65536)
    server = Server(server_env, tmp_path)
    try:
        await server.wait_ready()
        async with aiohttp.ClientSession(server.url) as s:
            async with s.post("/v1/uploads", json={"filename": "t.wav", "total_size": len(data),
                                                   "chunk_size": 65536}) as r:
                uid = (await r.json())["upload_id"]
            for n in range(1, 10):
                async with s.put(f"/v1/uploads/{uid}/chunks/{n}", data=pieces[n - 1]) as r:
                    assert r.status == 201
        # Chunk 10 is mid-body when the server dies: its claim on the chunk's range stays behind.
        port = int(server.url.rsplit(":", 1)[1])
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write((f"PUT /v1/uploads/{uid}/chunks/10 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                      "Content-Length: 65536\r\n\r\n").encode() + b"z" * 30_000)
        await writer.drain()
        await asyncio.sleep(0.3)
        server.kill(signal.SIGKILL)
        writer.close()
        server = Server(server_env, tmp_path)
        await server.wait_ready()
        async with aiohttp.ClientSession(server.url) as s:
            async with s.get(f"/v1/uploads/{uid}") as r:
                state = await r.json()
            assert state["chunks_received"] == list(range(1, 10))
            for n in range(10, len(pieces) + 1):
                async with s.put(f"/v1/uploads/{uid}/chunks/{n}", data=pieces[n - 1]) as r:
                    assert r.status == 201
            async with s.post(f"/v1/uploads/{uid}/complete") as r:
                assert r.status == 200 and (await r.json())["sha256"] == sha256(data)
            async with s.get(f"/v1/uploads/{uid}/content") as r:
                assert await r.read() == data
    finally:
        server.kill(signal.SIGTERM)
    # The bundled Redis went away with the server: nothing answers on its socket.
    sock = tmp_path / "data" / "redis" / "redis.sock"
    for _ in range(100):
        if not sock.exists():
            break
        time.sleep(0.05)
    assert not sock.exists()


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _memory(pid: int) -> dict[str, int]:
    """A process's memory figures in bytes (``/proc/<pid>/smaps_rollup``: Rss, Pss, Shared_Dirty...)."""
    lines = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]
    return {name.rstrip(":"): int(kib) * 1024 for name, kib, _unit in (line.split() for line in lines)}


def assert_gone(pids: list[int]) -> None:
    """Waits (at most 5 s) until none of ``pids`` runs any more."""
    for _ in range(100):
        if not any(Path(f"/proc/{pid}").exists() for pid in pids):
            return
        time.sleep(0.05)
    assert not any(Path(f"/proc/{pid}").exists() for pid in pids)


def log_lines(tmp_path: Path) -> list[dict]:
    """The server's log (``log.format = "json"``), one object a line."""
    return [json.loads(line) for line in (tmp_path / "server.log").read_text().splitlines() if line.strip()]


async def test_a_worker_that_dies_stops_the_others_and_names_its_signal_in_the_exit_status(tmp_path, server_env):
    """operations.md: the first worker to exit stops the others, and the parent exits with the
    worst worker's status, 128 + the signal's number for one killed by a signal. The log says which
    worker died and how (it held only the "listening" lines), and that the server stopped."""
    server = Server({**server_env, "VEZASTREAM_LOG__FORMAT": "json"}, tmp_path, "--workers", "2")
    try:
        await server.wait_ready()
        children = _children(server.proc.pid)
        workers = [pid for pid in children if b"redis-server" not in Path(f"/proc/{pid}/cmdline").read_bytes()]
        assert len(workers) == 2
        deadline = time.monotonic() + 30  # each worker's own listening line names it
        while {line.get("pid") for line in log_lines(tmp_path) if line.get("event") == "listening"} != set(workers):
            assert time.monotonic() < deadline, log_lines(tmp_path)
            await asyncio.sleep(0.05)
        os.kill(workers[0], signal.SIGKILL)
        assert server.proc.wait(40) == 128 + signal.SIGKILL
        assert_gone(children)  # the other worker and the bundled Redis too
    finally:
        server.kill()
    lines = log_lines(tmp_path)
    (died,) = [line for line in lines if line.get("event") == "worker_exited"]
    assert (died["level"], died["pid"], died["signal"], died["exit_status"]) == (
        "error", workers[0], "SIGKILL", 128 + signal.SIGKILL), died
    assert "stopping the other workers" in died["msg"]
    assert [line for line in lines if line.get("event") == "stopped"][-1]["exit_status"] == 128 + signal.SIGKILL
    assert not [line for line in lines if line.get("event") == "stopping"]  # no signal asked for the stop


async def test_sighup_is_no_stop_signal_and_ends_the_process_without_the_drain(tmp_path, server_env):
    """operations.md: SIGHUP is not handled; its default action ends the process at once, nothing logged."""
    server = Server({**server_env, "VEZASTREAM_LOG__FORMAT": "json"}, tmp_path)
    try:
        await server.wait_ready()
    finally:
        server.kill(signal.SIGHUP)
    assert server.proc.returncode == -signal.SIGHUP
    assert not [line for line in log_lines(tmp_path) if line.get("event") in ("stopping", "stopped")]


@pytest.mark.parametrize("workers, stop", [("1", signal.SIGTERM), ("2", signal.SIGTERM), ("1", signal.SIGINT)],
                         ids=["sigterm", "sigterm-2-workers", "sigint"])
async def test_a_stop_on_sigterm_is_logged_once_and_exits_0(tmp_path, server_env, workers, stop):
    """The process (with --workers, the parent) says it is stopping and on which signal (SIGTERM, or
    SIGINT: Ctrl-C), then that it stopped and its exit status; workers that stop as asked write
    nothing at error level."""
    server = Server({**server_env, "VEZASTREAM_LOG__FORMAT": "json"}, tmp_path, "--workers", workers)
    try:
        await server.wait_ready()
    finally:
        server.kill(stop)
    assert server.proc.returncode == 0
    lines = log_lines(tmp_path)
    stops = [(line["event"], line.get("signal"), line.get("exit_status"), line["pid"], line["level"])
             for line in lines if line.get("event") in ("stopping", "stopped")]
    pid = server.proc.pid
    assert stops == [("stopping", stop.name, None, pid, "info"), ("stopped", None, 0, pid, "info")], lines
    assert not [line for line in lines if line["level"] == "error"], lines


#: A serve whose start-up talks to Redis (the app's own client) until the stop comes, then a watchdog.
STOPPED_WHILE_STARTING = """
import os, signal, sys, threading
from vezastream import cli
from vezastream.config import load_settings
from vezastream.http.app import create_app
from vezastream.http.keys import redis_key

settings = load_settings(None)
for i in range(int(sys.argv[1])):
    app = create_app(settings)
    async def talking(app, i=i):
        threading.Timer(0.02 * (i + 1), os.kill, (os.getpid(), signal.SIGTERM)).start()
        for _ in range(5000):
            await app[redis_key].ping()
        yield
    app.cleanup_ctx.insert(1, talking)  # once the Redis client is open
    done = threading.Event()
    def watchdog(i=i):
        if not done.wait(10):
            print(f"stop {i} did not end the serve within 10 s", flush=True)
            os._exit(3)
    threading.Thread(target=watchdog, daemon=True).start()
    cli._serve_until_stopped(settings, False, app, False)
    done.set()
print("stopped", flush=True)
"""


def test_a_stop_while_the_start_up_talks_to_redis_ends_the_serve(tmp_path, server_env, redis_url):
    """A SIGTERM that came while a worker of `--workers 2` was starting left it running: the cancel that
    cuts a start-up short was lost (redis-py's asyncio.wait_for drops one that lands as a command is
    sent, on Python 3.11), the start-up went on to serve and waited for ever, and the parent killed it
    30 s later. Here the start-up sends Redis thousands of commands, so that each stop lands among them."""
    env = {**os.environ, **server_env, "VEZASTREAM_REDIS__URL": redis_url,
           "VEZASTREAM_REDIS__KEY_PREFIX": "t" + os.urandom(4).hex()}
    out = subprocess.run([sys.executable, "-c", STOPPED_WHILE_STARTING, "5"], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert (out.returncode, out.stdout) == (0, "stopped\n"), out.stdout + out.stderr[-3000:]
    assert "listening" not in out.stderr, out.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("thread_in_parent", [False, True], ids=["forked", "spawned"])
async def test_workers_share_the_port_and_one_redis(tmp_path, server_env, thread_in_parent):
    """The workers are forked from the parent and share the pages of what it imported. A fork
    copies only the thread that forks: with another thread running in the parent (here one that
    Python's ``sitecustomize`` starts, as a plugin might at import), they are spawned instead,
    each a fresh interpreter, and serve the same."""
    env = {**server_env, "VEZASTREAM_LOG__FORMAT": "json"}
    if thread_in_parent:
        site = tmp_path / "site"
        site.mkdir()
        (site / "sitecustomize.py").write_text(
            "import threading, time\nthreading.Thread(target=time.sleep, args=(600,), daemon=True).start()\n")
        env = {**env, "PYTHONPATH": os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH")) if p)}
    server = Server(env, tmp_path, "--workers", "2")
    data = random_bytes(32 * 4096)
    try:
        await server.wait_ready()
        cmdlines = {pid: Path(f"/proc/{pid}/cmdline").read_bytes() for pid in _children(server.proc.pid)}
        workers = [pid for pid, c in cmdlines.items() if b"redis-server" not in c and b"resource_tracker" not in c]
        # Two workers and one bundled Redis (spawned ones: and multiprocessing's resource tracker).
        assert len(workers) == 2 and len(cmdlines) == 3 + thread_in_parent, cmdlines
        for pid in workers:  # the parent's pages they share (a spawned worker's own start: none)
            shared = _memory(pid)["Shared_Dirty"]
            assert shared < 2**20 if thread_in_parent else shared >= 8 * 2**20
        async with aiohttp.ClientSession(server.url, connector=aiohttp.TCPConnector(force_close=True)) as s:
            async with s.post("/v1/uploads", json={"filename": "w", "total_size": len(data),
                                                   "chunk_size": 4096}) as r:
                uid = (await r.json())["upload_id"]

            async def put(n: int, piece: bytes) -> None:
                async with s.put(f"/v1/uploads/{uid}/chunks/{n}", data=piece) as r:
                    assert r.status == 201

            await asyncio.gather(*(put(n, p) for n, p in enumerate(split(data, 4096), 1)))
            async with s.post(f"/v1/uploads/{uid}/complete") as r:
                assert r.status == 200 and (await r.json())["sha256"] == sha256(data)
    finally:
        children = _children(server.proc.pid)
        server.kill(signal.SIGTERM)
    assert server.proc.returncode == 0
    assert_gone(children)  # every worker and the Redis stop with the parent
    # The operator is told why the workers share nothing (docs/operations.md), and which threads ran.
    spawned = [line["threads"] for line in log_lines(tmp_path) if line.get("event") == "workers_spawned"]
    assert spawned == ([["Thread-1 (sleep)"]] if thread_in_parent else []), spawned


@pytest.mark.slow
def test_workers_stopped_while_starting_exit_cleanly(tmp_path, server_env):
    """SIGTERM while the workers are still starting (no signal handler yet) is an orderly stop: exit 0."""
    server = Server(server_env, tmp_path, "--workers", "2")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # both workers started, still building their apps
        cmdlines = []
        for pid in _children(server.proc.pid):
            try:
                cmdlines.append(Path(f"/proc/{pid}/cmdline").read_bytes())
            except OSError:
                pass
        if sum(b"redis-server" not in c and b"resource_tracker" not in c for c in cmdlines) == 2:
            break
        time.sleep(0.01)
    else:
        pytest.fail("the workers did not start")
    children = _children(server.proc.pid)
    server.kill(signal.SIGTERM)
    assert server.proc.returncode == 0, (tmp_path / "server.log").read_text()[-2000:]
    assert_gone(children)

def test_config_show_masks_secrets(tmp_path, server_env):
    env = {**server_env, "VEZASTREAM_REDIS__URL": "redis://user:hunter2@127.0.0.1:6379/0",
           "VEZASTREAM_SINKS__LOCAL__KEY_TEMPLATE": "{user}/{upload_id}", "VEZASTREAM_SINKS__LOCAL__API_KEY": "hunter3"}
    out = run(["config", "show"], env, tmp_path)
    assert out.returncode == 0, out.stderr
    shown = json.loads(out.stdout)
    assert "hunter2" not in out.stdout and shown["redis"]["url"] == "redis://***@127.0.0.1:6379/0"
    # A name that says "key" is masked when it is one, not when it only names keys (operations.md).
    assert shown["sinks"]["local"]["api_key"] == "***" and "hunter3" not in out.stdout
    assert shown["sinks"]["local"]["key_template"] == "{user}/{upload_id}"
    assert shown["redis"]["key_prefix"] == "vz"
    assert shown["server"]["port"] == int(server_env["VEZASTREAM_SERVER__PORT"])
    assert shown["limits"]["max_chunks"] == 10_000


@pytest.mark.parametrize("setting, value, message", [
    ("VEZASTREAM_LIMITS__MAX_CHUNKS", "0", "limits.max_chunks: must be between 1 and 10000000 (got 0)"),
    ("VEZASTREAM_LIMITS__MAX_CHUNKS", "20000000", "limits.max_chunks: must be between 1 and 10000000 (got 20000000)"),
    ("VEZASTREAM_SERVER__PORT", '"eighty"', "server.port: expected an integer"),
    ("VEZASTREAM_LIMITS__DEFAULT_CHUNK_SIZE", '"8 parsecs"', "limits.default_chunk_size"),
    ("VEZASTREAM_STORAGE__SINK", "nowhere", "storage.sink: unknown sink 'nowhere'"),
    ("VEZASTREAM_LIMITS__COLOUR", "1", "limits.colour: unknown setting"),
    ("VEZASTREAM_SERVER__BODY_IDLE_TIMEOUT", "0", "server.body_idle_timeout: must be > 0"),
    ("VEZASTREAM_SERVER__HEADER_TIMEOUT", '"soon"', "server.header_timeout: expected a number"),
    ("VEZASTREAM_LOG__HELD_LINES", "0", "log.held_lines: must be >= 1"),
    ("VEZASTREAM_HOOKS__INSPECT_TIMEOUT", "0", "hooks.inspect_timeout: must be > 0 and at most 86400 seconds"),
    ("VEZASTREAM_GC__MAX_AGE", "0", "gc.max_age: must be >= 1 second"),
    ("VEZASTREAM_GC__INTERVAL", "0", "gc.interval: must be >= 1 second"),
])
def test_invalid_config_stops_startup_with_one_line(tmp_path, server_env, setting, value, message):
    out = run(["serve"], {**server_env, setting: value}, tmp_path)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], out.stderr


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_taken_port_stops_startup_with_one_line_and_no_listening_claim(tmp_path, server_env, workers):
    """It was a traceback, after a "listening" log line written before the socket was bound. And it took
    7 s with one process: the start-up recovery, reading Redis as the stop came, lost its cancel
    (vezastream/tasks.py) and slept until its second try before the process could end."""
    port = int(server_env["VEZASTREAM_SERVER__PORT"])
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        began = time.monotonic()
        out = run(["serve", "--workers", workers], server_env, tmp_path)
        took = time.monotonic() - began
    assert out.returncode == 1, out.stderr
    assert took < 4, took
    assert f"vezastream: cannot listen on 127.0.0.1:{port}: Address already in use" in out.stderr
    assert "Traceback" not in out.stderr and "listening" not in out.stdout + out.stderr, out.stderr


def test_a_host_that_does_not_resolve_is_named_with_the_resolvers_reason(tmp_path, server_env):
    """A name lookup's failure has a negative errno: the line said "Unknown error -2"."""
    port = server_env["VEZASTREAM_SERVER__PORT"]
    with pytest.raises(socket.gaierror) as lookup:  # what this machine's resolver says of it
        socket.getaddrinfo("no-such-host.invalid", port)
    out = run(["serve", "--host", "no-such-host.invalid"], server_env, tmp_path)
    assert out.returncode == 1 and lookup.value.strerror and "Unknown" not in lookup.value.strerror, out.stderr
    assert out.stderr.strip().splitlines() == [
        f"vezastream: cannot listen on no-such-host.invalid:{port}: {lookup.value.strerror}"], out.stderr


@pytest.mark.parametrize("command", [["serve"], ["serve", "--workers", "2"], ["gc"]])
def test_a_data_folder_too_deep_for_the_bundled_redis_socket_stops_the_start_at_once(tmp_path, server_env, command):
    """The bundled Redis's socket is <data_dir>/redis/redis.sock, and a Unix socket's path holds at most 107
    bytes: redis-server bound a path cut short, and the start waited 15 s for an answer that could not
    come, then said only "redis-server did not answer in time". Now one line names the setting at once."""
    data = tmp_path / ("d" * (120 - len(str(tmp_path))))
    began = time.monotonic()
    out = run(command, {**server_env, "VEZASTREAM_STORAGE__DATA_DIR": str(data)}, tmp_path)
    took = time.monotonic() - began
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1, out.stderr
    assert lines[0].startswith("vezastream: config error: storage.data_dir: the bundled Redis's socket ")
    assert "more than the 107" in lines[0] and "redis.url" in lines[0] and took < 5, (took, lines)


def test_a_socket_path_of_107_bytes_is_served(tmp_path, server_env):
    """The limit is not one byte short: a data_dir whose socket path is exactly 107 bytes long serves."""
    data = tmp_path / ("d" * (107 - len(str(tmp_path / "x" / "redis" / "redis.sock")) + 1))
    assert len(str(data / "redis" / "redis.sock")) == 107
    server = Server({**server_env, "VEZASTREAM_STORAGE__DATA_DIR": str(data)}, tmp_path)
    try:
        asyncio.run(server.wait_ready())
    finally:
        server.kill(signal.SIGTERM)
    assert server.proc.returncode == 0


async def test_a_leading_tilde_in_config_toml_paths_is_the_home_folder(tmp_path, server_env):
    """`data_dir = "~/vz"` in config.toml made a folder named "~" in the working directory (a later
    `rm -rf ~` typed to clean it up removes the home folder). A leading ~ is now $HOME, as a shell reads it,
    for storage.data_dir and sinks.local.directory."""
    home = tmp_path / "home"
    (tmp_path / "config.toml").write_text('[storage]\ndata_dir = "~/vz"\n[sinks.local]\ndirectory = "~/vz-files"\n')
    env = {k: v for k, v in server_env.items() if k != "VEZASTREAM_STORAGE__DATA_DIR"}
    server = Server({**env, "HOME": str(home)}, tmp_path)
    data = random_bytes(3000)
    try:
        await server.wait_ready()
        async with aiohttp.ClientSession(server.url) as s:
            location = (await upload(s, data, chunk_size=1000))["location"]
    finally:
        server.kill(signal.SIGTERM)
    assert (home / "vz-files" / location).read_bytes() == data
    assert (home / "vz" / "redis" / "redis.sock").parent.is_dir() and not (tmp_path / "~").exists()


async def test_the_listening_line_writes_an_ipv6_address_in_brackets(tmp_path, server_env):
    """It said "http://::1:8080", which no client takes for a URL. On ::1 (IPv6 loopback, where the
    machine has it) the line's URL answers."""
    from vezastream.cli import base_url

    assert (base_url("::1", 8080), base_url("127.0.0.1", 8080)) == ("http://[::1]:8080", "http://127.0.0.1:8080")
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    server = Server({**server_env, "VEZASTREAM_SERVER__HOST": "::1"}, tmp_path)
    try:
        deadline = time.monotonic() + 30
        while not (said := [line for line in (tmp_path / "server.log").read_text().splitlines() if "listening on" in line]):
            assert time.monotonic() < deadline and server.proc.poll() is None, "no listening line"
            await asyncio.sleep(0.05)
        url = said[0].split("listening on ", 1)[1].split()[0]
        assert url == f"http://[::1]:{server.port}", said
        async with aiohttp.ClientSession() as s, s.get(url + "/v1/health") as r:
            assert r.status == 200
    finally:
        server.kill(signal.SIGTERM)


def test_the_listening_line_comes_once_the_socket_answers(tmp_path, server_env):
    server = Server(server_env, tmp_path)
    try:
        asyncio.run(server.wait_ready())
        lines = (tmp_path / "server.log").read_text().splitlines()
        assert sum(f"vezastream listening on {server.url}" in line for line in lines) == 1, lines
    finally:
        server.kill(signal.SIGTERM)
    assert server.proc.returncode == 0


@pytest.mark.slow
async def test_large_bodies_through_both_doors_on_the_served_event_loop(tmp_path, server_env):
    """`serve` runs uvloop when it is installed: large bodies are read straight into the staging
    buffers there, and the connection goes on after each; the stored bytes must still be exact."""
    server = Server(server_env, tmp_path)
    chunk = 2 * 1024 * 1024 + 4096 * 3 + 5  # not a multiple of a block: O_DIRECT head and tail
    data = random_bytes(3 * chunk + 777)
    try:
        await server.wait_ready()
        opened: list[object] = []

        async def connected(session, context, params) -> None:
            opened.append(params)

        trace = aiohttp.TraceConfig()
        trace.on_connection_create_end.append(connected)
        # One connection at a time, kept alive where the server lets it: a new one means the server closed it.
        async with aiohttp.ClientSession(server.url, trace_configs=[trace],
                                         connector=aiohttp.TCPConnector(limit=1)) as s:
            async with s.post("/v1/uploads", json={"filename": "n", "total_size": len(data),
                                                   "chunk_size": chunk}) as r:
                uid = (await r.json())["upload_id"]
            for n, piece in enumerate(split(data, chunk), 1):
                async with s.put(f"/v1/uploads/{uid}/chunks/{n}", data=piece) as r:
                    assert r.status == 201 and (await r.json())["sha256"] == sha256(piece)
                    assert r.headers.get("Connection") is None
            async with s.post(f"/v1/uploads/{uid}/complete") as r:
                assert r.status == 200 and (await r.json())["sha256"] == sha256(data)
            async with s.get(f"/v1/uploads/{uid}/content") as r:
                assert await r.read() == data

            tus = {"Tus-Resumable": "1.0.0"}
            async with s.post("/files/", headers={**tus, "Upload-Length": str(len(data))}) as r:
                path = urlsplit(r.headers["Location"]).path
            offset = 0
            for piece in split(data, 2 * chunk):
                checksum = base64.b64encode(hashlib.sha256(piece).digest()).decode()
                async with s.patch(path, data=piece, headers={
                        **tus, "Upload-Offset": str(offset), "Content-Type": "application/offset+octet-stream",
                        "Upload-Checksum": f"sha256 {checksum}"}) as r:
                    assert r.status == 204, await r.text()
                    offset = int(r.headers["Upload-Offset"])
            async with s.get("/v1/uploads/" + path.rsplit("/", 1)[1]) as r:
                assert (await r.json())["result"]["sha256"] == sha256(data)
            bad = base64.b64encode(hashlib.sha256(b"other").digest()).decode()
            async with s.post("/files/", headers={**tus, "Upload-Length": str(chunk)}) as r:
                path = urlsplit(r.headers["Location"]).path
            async with s.patch(path, data=data[:chunk], headers={
                    **tus, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream",
                    "Upload-Checksum": f"sha256 {bad}"}) as r:
                assert r.status == 460
            # Every body above was read into buffers (at least TAKE_OVER_AT bytes) but the last chunk.
            assert chunk >= TAKE_OVER_AT and len(opened) == 1
            async with s.head(path, headers=tus) as r:
                assert r.headers["Upload-Offset"] == "0"
    finally:
        server.kill(signal.SIGTERM)


async def test_logs_are_one_json_object_per_line_with_the_documented_fields(tmp_path, server_env):
    """operations.md, "Logs": one JSON object per line on stderr, each with ts, level, logger and msg;
    a line per request (method, path, status, ms, upload_id when the path names one, request_id) and
    per creation, completion (size, SHA-256, sink, location, seconds) and deletion; the creation's
    request line names no upload, and shares its request_id with the "created" line; the start-up
    line's event is "listening", with its pid, node id, host, sink, workers and the open-files limit."""
    server = Server({**server_env, "VEZASTREAM_LOG__FORMAT": "json"}, tmp_path)
    data = random_bytes(3000)
    try:
        await server.wait_ready()
        async with aiohttp.ClientSession(server.url) as s:
            uid = (await upload(s, data, chunk_size=1000))["upload_id"]
            async with s.delete(f"/v1/uploads/{uid}") as r:
                assert r.status == 204
    finally:
        server.kill(signal.SIGTERM)
    text = (tmp_path / "server.log").read_text()
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]  # every line is one JSON object
    events = {line.get("event"): line for line in lines if line.get("upload_id") == uid}
    assert {"created", "completed", "deleted"} <= set(events), text[-3000:]
    done = events["completed"]
    assert (done["size"], done["sha256"], done["sink"]) == (3000, sha256(data), "local")
    assert done["location"] and isinstance(done["seconds"], (int, float))
    requests = [line for line in lines if line["msg"] == "request" and line.get("upload_id") == uid]
    assert [(r["method"], r["status"]) for r in requests] == [("PUT", 201)] * 3 + [("POST", 200), ("DELETE", 204)]
    assert all(isinstance(r["ms"], (int, float)) and r["path"].startswith("/v1/uploads/") for r in requests)
    assert all({"ts", "level", "logger", "msg"} <= set(line) for line in lines)
    (creation,) = [line for line in lines if line["msg"] == "request" and line["method"] == "POST"
                   and line["path"] == "/v1/uploads"]
    assert "upload_id" not in creation and creation["request_id"] == events["created"]["request_id"]
    assert len({r["request_id"] for r in requests + [creation]}) == 6
    (listening,) = [line for line in lines if line.get("event") == "listening"]
    assert listening["open_files"] and listening["msg"].startswith("vezastream listening on http://")
    assert (listening["pid"], listening["host"], listening["sink"], listening["workers"]) == (
        server.proc.pid, socket.gethostname(), "local", 1), listening
    assert re.fullmatch("[0-9a-f]{16}", listening["node"]), listening


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize("fault, why", [("a file as the data folder", ("Not a directory",)),
                                        ("a file as the bundled Redis's folder", ("not a folder",)),
                                        # serve's mkdir finds a link there, gc's look-up the loop
                                        ("a link that loops as the staging folder",
                                         ("not a folder", "Too many levels of symbolic links")),
                                        ("an immutable data folder", ("Operation not permitted",))],
                         ids=["data_dir-file", "redis-file", "chunks-loop", "data_dir-immutable"])
def test_a_data_folder_that_cannot_be_used_stops_the_start_with_one_line(tmp_path, server_env, fault, why,
                                                                         workers):
    """An operator's slip in storage.data_dir: ``serve`` (and ``gc``) exit 1 with one line naming the
    path and why (the system's words, but "not a folder" for something else in a folder's place), as
    a taken port does, where they printed a traceback (from each worker)."""
    data = Path(server_env["VEZASTREAM_STORAGE__DATA_DIR"])
    frozen = contextlib.nullcontext()
    if "immutable" in fault:
        data.mkdir()
        frozen = immutable(data)
    elif fault.endswith("data folder"):
        data.write_text("someone's notes")
    elif "Redis" in fault:
        data.mkdir()
        (data / "redis").write_text("someone's notes")
    else:
        data.mkdir()
        (data / "chunks").symlink_to(data / "chunks")
    with frozen:
        for command in (["serve", "--workers", workers], ["gc"]):
            done = run(command, server_env, tmp_path)
            assert done.returncode == 1, done.stderr
            [line] = done.stderr.splitlines()
            assert line.startswith(tuple(f"vezastream: cannot start: {w}: " for w in why)), line
            assert "Traceback" not in done.stderr, done.stderr
            assert line.endswith((f"{data}/chunks", f"{data}/redis", f"{data}/nodes", f"{data}/.vezastream-dir")), line


def test_a_serving_process_keeps_its_garbage_collections_rare(tmp_path, server_env):
    """docs/operations.md: the app built, what exists is frozen (gc.freeze), a young pass waits for
    20,000 new objects instead of 700, and a full pass for 100 passes of generation 1. Read from the
    served process itself, at its exit (an atexit hook its sitecustomize adds)."""
    site, seen = tmp_path / "site", tmp_path / "gc.json"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import atexit, gc, json\n"
        f"atexit.register(lambda: open({str(seen)!r}, 'w').write(json.dumps("
        "[gc.get_threshold(), gc.get_freeze_count()])))\n")
    env = {**server_env, "PYTHONPATH": os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH")) if p)}
    server = Server(env, tmp_path)
    try:
        asyncio.run(server.wait_ready())
    finally:
        server.kill(signal.SIGTERM)
    assert server.proc.returncode == 0
    (young, _, full), frozen = json.loads(seen.read_text())
    assert (young, full) == (20_000, 100) and frozen > 10_000
