"""Three nodes behind nginx, configured with the block docs/operations.md gives operators.

The ``upstream`` and ``server`` blocks are read from the docs, and only what ties them to
a data centre is replaced: the nodes' addresses (three ``vezastream serve`` on 127.0.0.1, one
Redis, one data folder), ``listen 443 ssl`` (a free port of 127.0.0.1, plain HTTP), and the
silent-client timeouts, nginx's and the nodes', both a tenth of what they are. Needs
Debian's nginx (``./scripts/test`` installs it when it runs as root); skipped without it.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import aiohttp
import pytest

from servers import Server, free_port, server_env
from test_tus_clients import tuspy_upload

from vezastream.config import load_settings

ROOT = Path(__file__).parent.parent.parent
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
MiB = 1024 * 1024
#: ``server.body_idle_timeout``'s default (s): how long a node waits for a silent body.
BODY_IDLE = load_settings(None, environ={}).server.body_idle_timeout

pytestmark = pytest.mark.slow


def documented_blocks() -> str:
    """The nginx configuration of docs/operations.md (its ``upstream`` and ``server`` blocks)."""
    text = (ROOT / "docs/operations.md").read_text()
    return re.search(r"```nginx\n(.*?)```", text, re.S).group(1)


def for_this_machine(blocks: str, nodes: list[int], port: int) -> str:
    """The documented blocks with the nodes and the listening port of this test, and nginx's
    silent-client timeout a tenth of the documented one (as the nodes' is of its default)."""
    addresses = iter(nodes)
    blocks = re.sub(r"server 10\.0\.0\.\d+:8080;", lambda _: f"server 127.0.0.1:{next(addresses)};", blocks)
    assert next(addresses, None) is None and blocks.count("server 127.0.0.1:") == len(nodes)
    assert "listen 443 ssl;" in blocks
    blocks = re.sub(r"client_body_timeout (\d+)s;",
                    lambda m: f"client_body_timeout {int(m.group(1)) / 10:g}s;", blocks)
    return blocks.replace("listen 443 ssl;", f"listen 127.0.0.1:{port};")


def documented_client_body_timeout() -> float:
    return float(re.search(r"client_body_timeout (\d+)s;", documented_blocks()).group(1))


@pytest.fixture
def nodes(tmp_path, redis_url):
    """Three nodes (as the docs have) on one Redis (one key prefix) and one data folder; each logs its requests."""
    if not os.path.exists(NGINX):
        message = "nginx is missing: ./scripts/test installs Debian's when it runs as root"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    base = server_env(tmp_path, redis_url, SERVER__BODY_IDLE_TIMEOUT=f"{BODY_IDLE / 10:g}",
                      TUS__TRUST_FORWARDED_HEADERS="true", LOG__LEVEL="INFO")
    started = []
    try:
        for name in ("a", "b", "c"):
            folder = tmp_path / name
            folder.mkdir()
            node = Server({**base, "VEZASTREAM_SERVER__PORT": str(free_port())}, folder)
            node.log = folder / "server.log"
            started.append(node)

        async def ready() -> None:
            await asyncio.wait_for(asyncio.gather(*(node.wait_ready() for node in started)), 60)

        asyncio.run(ready())
        yield started
    finally:
        for node in started:
            node.kill(signal.SIGTERM)


@pytest.fixture
def proxy(tmp_path, nodes):
    """nginx on a free port of 127.0.0.1 in front of ``nodes``, stopped by its PID."""
    port = free_port()
    folder = tmp_path / "nginx"
    folder.mkdir()
    config = folder / "nginx.conf"
    config.write_text(
        ("user root;\n" if os.geteuid() == 0 else "")
        + f"daemon off;\nworker_processes 1;\npid {folder}/nginx.pid;\nerror_log {folder}/error.log warn;\n"
        "events { worker_connections 256; }\n"
        f"http {{\n    access_log off;\n    client_body_temp_path {folder}/body;\n"
        f"    proxy_temp_path {folder}/proxy;\n"
        + for_this_machine(documented_blocks(), [node.port for node in nodes], port) + "}\n")
    proc = subprocess.Popen([NGINX, "-p", str(folder), "-c", str(config), "-e", str(folder / "error.log")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, proc.stderr.read().decode()
            try:
                with urllib.request.urlopen(url + "/v1/health", timeout=5) as answer:
                    assert answer.status == 200
                break
            except OSError:  # (URLError included) not listening yet, or no node behind it yet
                assert time.monotonic() < deadline, "nginx did not start"
                time.sleep(0.1)
        yield url
    finally:
        proc.send_signal(signal.SIGQUIT)  # graceful: the workers finish what they serve
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def requests_served(node: Server, method: str, path_part: str) -> int:
    """How many requests ``method`` to a path holding ``path_part`` the node has logged."""
    text = node.log.read_text(errors="replace")
    return sum(1 for line in text.splitlines() if f"method={method}" in line and path_part in line)


async def read_back(url: str) -> bytes:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        assert resp.status == 200
        return await resp.read()


def test_tuspy_and_parallel_chunks_through_nginx_reach_both_nodes_and_read_back_identical(proxy, nodes):
    data = os.urandom(6 * MiB + 123)
    location, offset = tuspy_upload(proxy + "/files/", data, chunk_size=MiB)
    assert offset == len(data) and location.startswith(proxy + "/files/")  # Location as the client sees it

    async def native() -> bytes:
        async with aiohttp.ClientSession() as s:
            async with s.post(proxy + "/v1/uploads", json={"filename": "n.bin", "total_size": len(data),
                                                            "chunk_size": MiB}) as r:
                assert r.status == 201
                uid = (await r.json())["upload_id"]

            async def put(n: int) -> None:
                async with s.put(f"{proxy}/v1/uploads/{uid}/chunks/{n}", data=data[(n - 1) * MiB:n * MiB]) as r:
                    assert r.status in (200, 201), await r.text()

            await asyncio.gather(*(put(n) for n in range(1, 8)))
            async with s.post(f"{proxy}/v1/uploads/{uid}/complete") as r:
                assert r.status == 200, await r.text()
            return await read_back(f"{proxy}/v1/uploads/{uid}/content")

    assert asyncio.run(read_back(location)) == data
    assert asyncio.run(native()) == data
    for node in nodes:  # no sticky sessions: each node took part of both uploads
        assert requests_served(node, "PATCH", "/files/") > 0
        assert requests_served(node, "PUT", "/chunks/") > 0


def test_a_client_that_goes_silent_mid_body_gets_nginxs_408_and_no_node_leaves_the_rotation(proxy, nodes, tmp_path):
    """nginx's client_body_timeout is below the nodes' body_idle_timeout, so nginx ends the silent
    client's request itself (it closes the connection: a 408 nobody reads) and drops its request to
    the node: the node keeps serving (nginx never counts it as failed), and the chunk, which never
    came whole, is not stored; sent again, it is."""
    assert documented_client_body_timeout() < BODY_IDLE
    data = os.urandom(2 * MiB)

    async def stall_then_resend() -> tuple[float, bytes, dict, list[int]]:
        async with aiohttp.ClientSession() as s:
            async with s.post(proxy + "/v1/uploads", json={"filename": "s.bin", "total_size": len(data),
                                                            "chunk_size": MiB}) as r:
                uid = (await r.json())["upload_id"]
            host, port = proxy.removeprefix("http://").split(":")
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(f"PUT /v1/uploads/{uid}/chunks/1 HTTP/1.1\r\nHost: {host}:{port}\r\n"
                         f"Content-Length: {MiB}\r\nContent-Type: application/octet-stream\r\n\r\n".encode()
                         + data[:MiB // 2])
            await writer.drain()
            started = time.monotonic()
            status_line = await asyncio.wait_for(reader.readline(), 30)  # then silence from the client
            cut_after = time.monotonic() - started
            writer.close()
            async with s.get(f"{proxy}/v1/uploads/{uid}") as r:
                state = await r.json()
            answers = []
            for n in (1, 2):  # round robin: these and the reads above reach every node
                async with s.put(f"{proxy}/v1/uploads/{uid}/chunks/{n}", data=data[(n - 1) * MiB:n * MiB]) as r:
                    answers.append(r.status)
            for _ in range(3):
                async with s.get(f"{proxy}/v1/health") as r:
                    answers.append(r.status)
            return cut_after, status_line, state, answers

    cut_after, status, state, answers = asyncio.run(stall_then_resend())
    assert status in (b"", b"HTTP/1.1 408 Request Time-out\r\n") and cut_after < BODY_IDLE / 10  # nginx's, first
    assert state["chunks_received"] == [] and answers == [201, 201, 200, 200, 200]
    errors = (tmp_path / "nginx" / "error.log").read_text()
    assert "temporarily disabled" not in errors and "upstream prematurely closed" not in errors
