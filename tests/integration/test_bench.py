"""The benchmark script keeps working (a tiny workload against a spawned server)."""

import asyncio
import json
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import lean_http  # noqa: E402


def bench(*args: str) -> dict:
    out = subprocess.run([sys.executable, str(ROOT / "scripts/bench.py"), "--spawn", "--workload", "smoke",
                          "--json", "--timeout", "120", *args], capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["native", "tus"])
def test_bench_smoke_run_with_the_lean_client_verifies_stored_bytes(protocol):
    result = bench("--protocol", protocol)
    assert result["client"] == "lean" and result["protocol"] == protocol
    assert result["sha256_ok"] and result["files"] == 4
    assert result["MB_per_s"] > 0 and result["cpu_s_per_GiB"] > 0 and result["peak_rss_MiB"] > 0
    assert result["client_cpu_s_per_GiB"] > 0


@pytest.mark.slow
def test_bench_smoke_run_with_aiohttp_in_two_client_processes():
    result = bench("--client", "aiohttp", "--client-procs", "2")
    assert result["client"] == "aiohttp" and result["client_procs"] == 2
    assert result["sha256_ok"] and result["files"] == 4


def serve_once(answers: list[bytes]) -> tuple[int, list[bytes]]:
    """A loopback server that answers each request read from one connection with the next answer,
    then closes; returns its port and the requests it saw."""
    listener = socket.create_server(("127.0.0.1", 0))
    seen: list[bytes] = []

    def loop() -> None:
        conn, _ = listener.accept()
        conn.settimeout(10)
        with conn, listener:
            for answer in answers:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(65536)
                head, _, body = data.partition(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                while len(body) < length:
                    body += conn.recv(65536)
                seen.append(head + b"\r\n\r\n" + body)
                conn.sendall(answer)

    threading.Thread(target=loop, daemon=True).start()
    return listener.getsockname()[1], seen


def test_lean_client_reads_sized_chunked_and_close_delimited_bodies():
    port, seen = serve_once([
        b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\nLocation: /x\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\nT: 1\r\n\r\n",
        b"HTTP/1.1 204 No Content\r\nUpload-Offset: 5\r\n\r\n",
        b"HTTP/1.1 500 Oops\r\nConnection: close\r\n\r\nno length",
    ])

    async def go() -> list[lean_http.Response]:
        client = lean_http.LeanClient(f"http://127.0.0.1:{port}", 2, 10)
        try:
            return [await client.request("POST", "/files/", {"Upload-Length": "5"}),
                    await client.request("GET", "/x"),
                    await client.request("PATCH", "/x", {"Upload-Offset": "0"}, memoryview(b"hello")),
                    await client.request("GET", "/y")]
        finally:
            await client.close()

    created, chunked, patched, closed = asyncio.run(go())
    assert (created.status, created.headers["location"], created.body) == (201, "/x", b"ok")
    assert (chunked.status, chunked.body) == (200, b"abcde")
    assert (patched.status, patched.headers["upload-offset"], patched.body) == (204, "5", b"")
    assert (closed.status, closed.text()) == (500, "no length")
    assert len(seen) == 4  # all four on one kept-alive connection
    assert seen[2].endswith(b"\r\n\r\nhello") and b"Content-Length: 5\r\n" in seen[2]


def test_lean_client_refuses_other_hosts():
    with pytest.raises(ValueError):
        lean_http.LeanClient("http://example.com", 1, 1)


def test_compare_reports_each_measured_target_as_met_or_not():
    import bench

    ours = {"W1": {"native": {"MB_per_s": 800.0, "cpu_s_per_GiB": 2.3, "peak_rss_MiB": 190.0},
                   "tus": {"MB_per_s": 700.0, "cpu_s_per_GiB": 1.6, "peak_rss_MiB": 190.0}},
            "W2": {"tus": {"MB_per_s": 150.0, "cpu_s_per_GiB": 8.0, "peak_rss_MiB": 150.0}}}
    rows = {target: (measured, verdict) for target, measured, verdict
            in bench.target_rows(ours, {"W1": 500.0, "W2": None})}
    assert rows["W1 native: >= 1.6x the best peer's MB/s"] == ("1.60", "met")
    assert rows["W1 tus: >= 1.6x the best peer's MB/s"] == ("1.40", "not met")
    assert rows["W1 native: <= 2.2 CPU-s/GiB"] == ("2.30", "not met")
    assert rows["W1 tus: <= 1.6 CPU-s/GiB"] == ("1.60", "met")
    assert rows["W2 tus: <= 150 MiB peak RSS"] == ("150.00", "met")
    assert rows["W2 tus: >= 2.0x the best peer's MB/s"] == ("-", "not met")  # no peer ran: no ratio
    assert not any(t.startswith(("W2 native", "W3")) for t in rows)  # not run: not reported


def test_compare_reports_the_other_targets_from_vezastream_alone():
    import bench

    rows = {target: (measured, verdict) for target, measured, verdict in bench.extra_target_rows(
        {"W1": 700.0, "P8": 630.0, "W2x1": 200.0, "W2x2": 330.0, "complete": 0.5, "sha256sum": 3.0,
         "slow_rss": 301.0, "slow_p99": 20.0})}
    assert rows["P8 (one client, 1 GiB, 8 chunks at a time): >= 1.0x W1 native's MB/s"] == ("0.90", "not met")
    assert rows["W2 native with --workers 2: >= 1.6x one worker's MB/s"] == ("1.65", "met")
    assert rows["2,000 slow clients: <= 300 MiB peak RSS"] == ("301.00", "not met")
    assert rows["2,000 slow clients: /v1/health p99 <= 50 ms"] == ("20.00", "met")
    assert rows["completing 1 GiB (P8): <= 1.3x sha256sum's time"] == ("0.17", "met")
    missing = bench.extra_target_rows({"W1": 700.0, "P8": None, "W2x1": None, "W2x2": None, "complete": None,
                                       "sha256sum": None, "slow_rss": None, "slow_p99": None})
    assert all(verdict == "not met" and measured == "-" for _, measured, verdict in missing)


def test_compare_runs_each_peer_in_its_documented_production_setup():
    """What docs/benchmarks.md claims, read from the launchers (nothing installed here)."""
    import peers

    assert set(peers.PEERS) == {"tus-node", "tuspyserver", "aiohttp-tus"}
    tuspy = peers.PEERS["tuspyserver"]
    assert "uvicorn[standard]" in tuspy.packages  # uvloop and httptools, not plain uvicorn (h11)
    # Named outright: a missing extra stops the server instead of falling back to asyncio and h11.
    assert 'loop="uvloop", http="httptools"' in tuspy.script
    aiohttp_tus = peers.PEERS["aiohttp-tus"]
    assert any(p.startswith("aiohttp-tus==1.") for p in aiohttp_tus.packages) and "uvloop" in aiohttp_tus.packages
    assert "setup_tus(" in aiohttp_tus.script and "loop=uvloop.new_event_loop()" in aiohttp_tus.script
    assert aiohttp_tus.prefix == "/uploads"  # setup_tus's documented default URL
    assert "new FileStore(" in peers.NODE_SERVER  # @tus/file-store, as @tus/server's docs use for disk
    # Every Python server reports its own setup; each script at least compiles.
    for script in (tuspy.script, aiohttp_tus.script, peers.BARE_SERVER):
        assert "report_setup(" in script
        compile(script, "server.py", "exec")
