"""Fault drill: a rolling restart as users see it (docs/operations.md, "Stopping a node").

Two ``vezastream serve`` nodes share one Redis and one data_dir. Real tus clients, tuspy (8 MiB
PATCHes) and tus-js-client on Node (one PATCH for the whole file, its default), each upload 64 MiB
through a load balancer in front of them: a TCP forwarder that sends each new connection to the
first node and, when that one refuses it, to the next (as nginx's ``proxy_next_upstream error``
and HAProxy's ``option redispatch`` do), and passes at most RATE bytes a second of each
connection's requests, so that the uploads are mid-transfer when the first node gets SIGTERM
(with ``server.shutdown_timeout = 1``: tuspy's PATCH then in flight ends in time, tus-js-client's
is cut off). Each upload must complete byte-identical, keep every byte acknowledged before the
signal, and meet no ``500``.
"""

from __future__ import annotations

import asyncio
import io
import signal
import time
from urllib.parse import urlsplit

import aiohttp
import pytest
from tusclient import client as tus_client

from helpers import random_bytes, sha256
from servers import Server, free_port, server_env
from tus_helpers import TUS, js_upload

MiB = 1 << 20
#: Bytes a second the balancer passes on each connection toward a node.
RATE = 16 * MiB


class Balancer:
    """A TCP forwarder on 127.0.0.1: each connection to the first node of ``ports`` that takes it."""

    def __init__(self, ports: list[int]) -> None:
        self.ports = ports
        self.connections = {port: 0 for port in ports}  # connections each node took
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        for port in self.ports:
            try:
                node_r, node_w = await asyncio.open_connection("127.0.0.1", port)
                break
            except ConnectionRefusedError:
                continue
        else:
            client_w.close()
            return
        self.connections[port] += 1
        pumps = [asyncio.create_task(self._pump(client_r, node_w, RATE)),
                 asyncio.create_task(self._pump(node_r, client_w, None))]
        await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)  # either side closed: both go
        for task in pumps:
            task.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)
        node_w.close()
        client_w.close()

    @staticmethod
    async def _pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, rate: float | None) -> None:
        try:
            while data := await src.read(256 * 1024):
                dst.write(data)
                await dst.drain()
                if rate:
                    await asyncio.sleep(len(data) / rate)
        except ConnectionError:
            pass

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()


def tuspy_upload(endpoint: str, data: bytes, progress: list[int]) -> str:
    """tuspy, 8 MiB a PATCH, retrying a failed one (HEAD, then on from the offset the server has);
    ``progress`` gets each offset the server acknowledged."""
    uploader = tus_client.TusClient(endpoint).uploader(
        file_stream=io.BytesIO(data), chunk_size=8 * MiB, metadata={"filename": "tuspy.bin"},
        retries=10, retry_delay=0.2)
    while uploader.offset < len(data):
        uploader.upload_chunk()
        progress.append(uploader.offset)
    return uploader.url


@pytest.mark.slow
@pytest.mark.drill
async def test_rolling_restart_drill_tus_clients_ride_out_a_node_stopped_mid_upload(tmp_path, redis_url, report):
    env = server_env(tmp_path, redis_url, SERVER__SHUTDOWN_TIMEOUT="1", LOG__FORMAT="json")
    leaving = Server(env, tmp_path)
    staying = Server({**env, "VEZASTREAM_SERVER__PORT": str(free_port())}, tmp_path)
    balancer = Balancer([leaving.port, staying.port])
    py_data, js_data = random_bytes(64 * MiB), random_bytes(64 * MiB)
    src = tmp_path / "js.bin"
    src.write_bytes(js_data)
    acked: list[int] = []
    try:
        await asyncio.gather(leaving.wait_ready(), staying.wait_ready())
        base = await balancer.start()
        py = asyncio.create_task(asyncio.to_thread(tuspy_upload, f"{base}/files/", py_data, acked))
        js = asyncio.create_task(js_upload(base, src, {"retryDelays": [200, 500, 1000, 1000, 1000]}, timeout=90))
        await asyncio.sleep(1.5)  # a quarter through at RATE
        assert not py.done() and not js.done()
        acked_before = acked[-1] if acked else 0
        leaving.proc.send_signal(signal.SIGTERM)
        stopped_at = time.monotonic()
        assert await asyncio.to_thread(leaving.proc.wait, 20) == 0
        stop_s = time.monotonic() - stopped_at
        py_url, js_url = await asyncio.wait_for(asyncio.gather(py, js), 90)
        done_s = time.monotonic() - stopped_at
        async with aiohttp.ClientSession(staying.url) as s:
            for url, data in ((py_url, py_data), (js_url, js_data)):
                path = urlsplit(url).path
                async with s.get(path) as r:
                    assert r.status == 200 and await r.read() == data
                async with s.get("/v1/uploads/" + path.rsplit("/", 1)[1]) as r:
                    assert (await r.json())["result"]["sha256"] == sha256(data)
    finally:
        await balancer.close()
        leaving.kill()
        staying.kill(signal.SIGTERM)
    # Every offset tuspy was told of before the signal was still there to resume from.
    assert acked_before and all(b >= a for a, b in zip(acked, acked[1:])), acked
    log = (tmp_path / "server.log").read_text()
    statuses = [int(part.split(",")[0]) for part in log.split('"status": ')[1:]]
    assert not [s for s in statuses if s >= 500] and "Traceback" not in log, log[-3000:]  # no 5xx at all
    cut = log.count('"event": "drain_cut"')
    assert balancer.connections[staying.port] >= 2  # both clients went on through the other node
    report("rolling-restart", uploads=2, mib_each=64, stop_s=round(stop_s, 1), drain_cut=cut,
           acked_mib_before=acked_before // MiB, done_after_s=round(done_s, 1),
           answers_503=statuses.count(503), answers_5xx_other=sum(s >= 500 and s != 503 for s in statuses))
