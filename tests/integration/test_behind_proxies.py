"""Three nodes behind nginx, then HAProxy, each configured as docs/operations.md tells operators.

Each proxy's configuration is read from the docs, and only what ties it to a data centre is
replaced: the nodes' addresses (three ``vezastream serve`` on 127.0.0.1, one Redis, one data
folder), the listening address (a free port of 127.0.0.1, plain HTTP instead of TLS), and the
silent-client timeouts, the proxy's and the nodes', each a tenth of what it is. Needs Debian's
nginx and haproxy (``./scripts/test`` installs them when it runs as root); skipped without them.
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
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from servers import Server, free_port, server_env
from test_tus_clients import tuspy_upload

from vezastream.config import load_settings

ROOT = Path(__file__).parent.parent.parent
MiB = 1024 * 1024
#: ``server.body_idle_timeout``'s default (s): how long a node waits for a silent body.
BODY_IDLE = load_settings(None, environ={}).server.body_idle_timeout

pytestmark = pytest.mark.slow


def documented(language: str) -> str:
    """The configuration for ``language`` (``nginx``, ``haproxy``) in docs/operations.md."""
    text = (ROOT / "docs/operations.md").read_text()
    return re.search(rf"```{language}\n(.*?)```", text, re.S).group(1)


def seconds(config: str, setting: str) -> float:
    """A timeout of the documented configuration, in seconds (``client_body_timeout 20s;``)."""
    return float(re.search(rf"{setting} (\d+)s", config).group(1))


def here(config: str, setting: str, nodes: list[int], node_line: Callable[[int, int], str]) -> str:
    """``config`` with ``setting`` (a timeout) a tenth as long and its nodes on this machine."""
    config = re.sub(rf"{setting} (\d+)s", lambda m: f"{setting} {int(m.group(1)) / 10:g}s", config)
    lines = iter(node_line(n, port) for n, port in enumerate(nodes, 1))
    config = re.sub(r"server (n\d+ )?10\.0\.0\.\d+:8080", lambda _: next(lines), config)
    assert next(lines, None) is None, "the docs name as many nodes as the test starts"
    return config


def nginx_config(folder: Path, nodes: list[int], port: int) -> list[str]:
    blocks = here(documented("nginx"), "client_body_timeout", nodes, lambda n, p: f"server 127.0.0.1:{p}")
    assert "listen 443 ssl;" in blocks
    (folder / "nginx.conf").write_text(
        ("user root;\n" if os.geteuid() == 0 else "")
        + f"daemon off;\nworker_processes 1;\npid {folder}/nginx.pid;\nerror_log {folder}/error.log warn;\n"
        f"events {{ worker_connections 256; }}\nhttp {{\n    access_log off;\n"
        f"    client_body_temp_path {folder}/body;\n    proxy_temp_path {folder}/proxy;\n"
        + blocks.replace("listen 443 ssl;", f"listen 127.0.0.1:{port};") + "}\n")
    return [shutil.which("nginx") or "/usr/sbin/nginx", "-p", str(folder), "-c", str(folder / "nginx.conf"),
            "-e", str(folder / "error.log")]


def haproxy_config(folder: Path, nodes: list[int], port: int) -> list[str]:
    config = here(documented("haproxy"), "timeout client", nodes, lambda n, p: f"server n{n} 127.0.0.1:{p}")
    bind = re.search(r"bind :443 ssl crt \S+", config).group(0)
    config = config.replace(bind, f"bind 127.0.0.1:{port}").replace("X-Forwarded-Proto https", "X-Forwarded-Proto http")
    (folder / "haproxy.cfg").write_text(config)
    return [shutil.which("haproxy") or "/usr/sbin/haproxy", "-db", "-f", str(folder / "haproxy.cfg")]


PROXIES = {"nginx": ("client_body_timeout", nginx_config), "haproxy": ("timeout client", haproxy_config)}


@pytest.fixture
def nodes(tmp_path, redis_url):
    """Three nodes (as the docs have) on one Redis (one key prefix) and one data folder; each logs its requests."""
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


@pytest.fixture(params=sorted(PROXIES))
def proxy(request, tmp_path):
    """The proxy on a free port of 127.0.0.1 in front of the nodes, stopped by its PID: (name, URL)."""
    name = request.param
    if not shutil.which(name) and not os.path.exists(f"/usr/sbin/{name}"):
        message = f"{name} is missing: ./scripts/test installs Debian's when it runs as root"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    nodes = request.getfixturevalue("nodes")
    port, folder = free_port(), tmp_path / name
    folder.mkdir()
    command = PROXIES[name][1](folder, [node.port for node in nodes], port)
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=open(folder / "stderr.log", "wb"))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, (folder / "stderr.log").read_text()
            try:
                with urllib.request.urlopen(url + "/v1/health", timeout=5) as answer:
                    assert answer.status == 200
                break
            except OSError:  # (URLError included) not listening yet, or no node behind it yet
                assert time.monotonic() < deadline, f"{name} did not start"
                time.sleep(0.1)
        said = "".join(log.read_text() for log in (folder / "stderr.log", folder / "error.log") if log.exists())
        assert "WARNING" not in said and "[warn]" not in said, said  # the documented config, as its proxy takes it
        yield name, url
    finally:
        proc.send_signal(signal.SIGQUIT if name == "nginx" else signal.SIGUSR1)  # graceful stops
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


def test_tuspy_and_parallel_chunks_through_the_proxy_reach_every_node_and_read_back_identical(proxy, nodes):
    _, url = proxy
    data = os.urandom(6 * MiB + 123)
    location, offset = tuspy_upload(url + "/files/", data, chunk_size=MiB)
    assert offset == len(data) and location.startswith(url + "/files/")  # Location as the client sees it

    async def native() -> bytes:
        async with aiohttp.ClientSession() as s:
            async with s.post(url + "/v1/uploads", json={"filename": "n.bin", "total_size": len(data),
                                                          "chunk_size": MiB}) as r:
                assert r.status == 201
                uid = (await r.json())["upload_id"]

            async def put(n: int) -> None:
                async with s.put(f"{url}/v1/uploads/{uid}/chunks/{n}", data=data[(n - 1) * MiB:n * MiB]) as r:
                    assert r.status in (200, 201), await r.text()

            await asyncio.gather(*(put(n) for n in range(1, 8)))
            async with s.post(f"{url}/v1/uploads/{uid}/complete") as r:
                assert r.status == 200, await r.text()
            return await read_back(f"{url}/v1/uploads/{uid}/content")

    assert asyncio.run(read_back(location)) == data
    assert asyncio.run(native()) == data
    for node in nodes:  # no sticky sessions: every node took part in both uploads
        assert requests_served(node, "PATCH", "/files/") > 0
        assert requests_served(node, "PUT", "/chunks/") > 0


def test_a_client_silent_mid_body_is_cut_stores_nothing_and_takes_no_node_out_of_the_rotation(proxy, nodes):
    """A client sends half a chunk and goes silent. nginx's client_body_timeout is below the
    nodes' body_idle_timeout, so nginx ends the request itself (closing the connection: a 408
    nobody reads); HAProxy's client timeout is above it, so the node cuts the body and HAProxy
    answers 502 or closes. Either way the chunk is not stored, sent again it is, and every node goes on
    taking requests (a node nginx counted as failed would be left out for fail_timeout)."""
    name, url = proxy
    setting = PROXIES[name][0]
    if name == "nginx":
        assert seconds(documented(name), setting) < BODY_IDLE
    data = os.urandom(2 * MiB)

    async def stall_then_resend() -> tuple[float, bytes, dict, list[int], list[int]]:
        async with aiohttp.ClientSession() as s:
            async with s.post(url + "/v1/uploads", json={"filename": "s.bin", "total_size": len(data),
                                                          "chunk_size": MiB}) as r:
                uid = (await r.json())["upload_id"]
            host, port = url.removeprefix("http://").split(":")
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(f"PUT /v1/uploads/{uid}/chunks/1 HTTP/1.1\r\nHost: {host}:{port}\r\n"
                         f"Content-Length: {MiB}\r\nContent-Type: application/octet-stream\r\n\r\n".encode()
                         + data[:MiB // 2])
            await writer.drain()
            started = time.monotonic()
            status_line = await asyncio.wait_for(reader.readline(), 30)  # then silence from the client
            cut_after = time.monotonic() - started
            writer.close()
            async with s.get(f"{url}/v1/uploads/{uid}") as r:
                state = await r.json()
            # (path=/v1/health and a space: not HAProxy's own checks of /v1/health/deep)
            before = [requests_served(node, "GET", "path=/v1/health ") for node in nodes]
            answers = []
            for n in (1, 2):
                async with s.put(f"{url}/v1/uploads/{uid}/chunks/{n}", data=data[(n - 1) * MiB:n * MiB]) as r:
                    answers.append(r.status)
            for _ in range(6):  # round robin: two for each node still in the rotation
                async with s.get(f"{url}/v1/health") as r:
                    answers.append(r.status)
            after = [requests_served(node, "GET", "path=/v1/health ") - b for node, b in zip(nodes, before)]
            return cut_after, status_line, state, answers, after

    cut_after, status_line, state, answers, health_per_node = asyncio.run(stall_then_resend())
    if name == "nginx":  # nginx's own end of the request, before any node's cut
        assert status_line in (b"", b"HTTP/1.1 408 Request Time-out\r\n") and cut_after < BODY_IDLE / 10
    else:  # the node's cut (a tenth of body_idle_timeout), before HAProxy's client timeout: a 502, or
        # the connection closed when the node's close reaches HAProxy while it is still sending the body
        assert status_line in (b"", b"HTTP/1.1 502 Bad Gateway\r\n"), status_line
        assert cut_after < seconds(documented(name), setting) / 10
    assert state["chunks_received"] == [] and answers == [201, 201] + [200] * 6
    assert all(served > 0 for served in health_per_node), health_per_node
