"""The benchmark script keeps working (a tiny workload against a spawned server)."""

import ast
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent.parent
import lean_http


def bench(*args: str, mode: tuple[str, ...] = ("--spawn",)) -> dict:
    out = subprocess.run([sys.executable, str(ROOT / "scripts/bench.py"), *mode, "--workload", "smoke",
                          "--json", "--timeout", "120", *args], capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["native", "tus"])
def test_bench_smoke_run_with_the_lean_client_verifies_stored_bytes(protocol):
    result = bench("--protocol", protocol)
    assert result["client"] == "lean" and result["protocol"] == protocol
    assert result["sha256_ok"] and result["files"] == 4
    assert result["MB_per_s"] > 0 and result["cpu_s_per_GiB"] > 0 and result["peak_rss_MiB"] > 0
    assert result["client_cpu_s_per_GiB"] > 0
    assert 0 < result["p50_ms"] <= result["p99_ms"]
    # The server's Redis, counted: commands it ran (Lua's inner calls too), scripts, the node's pipelines.
    assert result["redis_commands_per_request"] > result["redis_scripts_per_request"] >= 1
    assert result["redis_round_trips_per_request"] > 0
    assert result["redis_commands"]["evalsha"] > 0


@pytest.mark.slow
def test_bench_smoke_run_with_aiohttp_in_two_client_processes():
    result = bench("--client", "aiohttp", "--client-procs", "2")
    assert result["client"] == "aiohttp" and result["client_procs"] == 2
    assert result["sha256_ok"] and result["files"] == 4


def test_a_workload_presets_the_sizes_that_options_given_beside_it_override():
    import bench

    _, args = bench.parse_args(["--spawn", "--workload", "W2", "--files", "50", "--concurrency", "20"])
    assert (args.files, args.concurrency, args.size, args.chunk) == (50, 20, "1MiB", "256KiB")
    _, args = bench.parse_args(["--spawn", "--workload", "W2"])
    assert (args.files, args.concurrency) == (1000, 200)


@pytest.mark.slow
def test_bench_against_a_server_with_its_limits_on_runs_the_files_asked_then_says_why_it_stops():
    """A server started as a user starts it keeps its per-user limits: the bench uploads the
    ``--files`` it is given (not its preset's count), and a 429 ends the run with the server's
    answer and how to lift the limits, not a traceback."""
    import peers

    server = peers.Vezastream(env={"VEZASTREAM_LIMITS__MAX_CREATES_PER_MINUTE": "3"})
    server.start()
    try:
        # The limit counts the creates of each clock minute (engine/quotas.py): all four must share one.
        # It failed once when a minute ended between the two runs, which took some 10 s together.
        left = 60 - time.time() % 60
        if left < 30:
            time.sleep(left + 0.2)
        minute = time.time() // 60
        fits = bench("--files", "3", mode=("--url", server.url))
        over = subprocess.run([sys.executable, str(ROOT / "scripts/bench.py"), "--url", server.url, "--workload",
                               "smoke", "--files", "1", "--timeout", "60"], capture_output=True, text=True, timeout=120)
        assert time.time() // 60 == minute, "the runs took over 30 s: the creates fell in two minutes"
    finally:
        server.close()
    assert fits["sha256_ok"] and fits["files"] == 3
    assert over.returncode == 1 and "Traceback" not in over.stderr
    assert "429" in over.stderr and "MAX_CREATES_PER_MINUTE=0" in over.stderr


@pytest.mark.slow
def test_bench_nodes_spreads_requests_over_two_nodes_and_reads_back_right():
    result = bench("--nodes", "1,2", "--runs", "1", mode=())
    assert result["sha256_ok"]  # every upload read back equal, through either node
    one, two = result["nodes"]["1"], result["nodes"]["2"]
    assert one["MB_per_s"] > 0 and two["MB_per_s"] > 0
    assert two["redis_commands_per_request"] > 0 and two["redis_round_trips_per_request"] > 0


@pytest.mark.slow
def test_bench_nodes_on_a_redis_cluster_count_the_commands_of_every_master():
    result = bench("--nodes", "2", "--node-redis", "cluster", "--runs", "1", "--protocol", "tus", mode=())
    assert result["sha256_ok"]
    two = result["nodes"]["2"]
    assert two["redis_commands_per_request"] > 1  # added up over the 3 masters
    assert two["redis_round_trips_per_request"] is None  # a cluster's pipelines are not counted


@pytest.mark.slow
def test_bench_curves_measure_a_point_redis_memory_gc_and_each_step():
    result = bench("--curves", "--curve-points", "4", "--curve-files", "6", "--memory-uploads", "30",
                   "--gc-points", "60", "--gc-owners", "20x1,2x10", mode=())
    [point] = result["concurrency"]
    assert point["concurrency"] == 4 and point["files"] == 6 and point["sha256_ok"]
    assert point["p99_ms"] > 0 and point["peak_rss_MiB"] > 0 and point["redis_commands_per_request"] > 0
    assert {m["protocol"] for m in result["redis_memory"]} == {"native", "tus"}
    assert all(m["redis_bytes_per_upload"] > 0 for m in result["redis_memory"])
    gc = {g["kind"]: g for g in result["gc"] if not g["owners"]}
    # With the per-user limits on, the pass's reconcile reads each user's places, and keeps them all.
    owned = [g for g in result["gc"] if g["owners"]]
    assert [(g["owners"], g["uploads"], g["kept"]) for g in owned] == [(20, 20, 20), (2, 20, 20)]
    assert all(0 < g["reconcile_s"] <= g["gc_pass_s"] and g["reconcile_round_trips"] >= 2 for g in owned)
    assert (gc["pending"]["kept"], gc["pending"]["removed"]) == (60, 0)
    assert (gc["expired"]["removed"], gc["expired"]["folders_left"]) == (60, 0)
    assert all(g["gc_pass_s"] > 0 for g in gc.values())
    # Removals run together: their step counts the wall time they took once, within the pass's.
    assert all(g["remove_s"] <= g["gc_pass_s"] and g["lookups_s"] >= 0 for g in gc.values())
    steps = result["steps"]
    for step in ("native create", "native chunk", "native complete", "tus create", "tus PATCH",
                 "tus last PATCH (completes)"):
        assert 1 <= steps[step]["sent_per_request"] <= steps[step]["ran_per_request"], step


@pytest.mark.slow
def test_compare_without_peers_prints_each_steps_redis_commands_and_the_aim():
    out = subprocess.run([sys.executable, str(ROOT / "scripts/bench.py"), "--compare", ",", "--workload", "smoke",
                          "--runs", "1", "--no-limit", "--no-disk", "--timeout", "120"], capture_output=True, text=True,
                         timeout=240)
    assert out.returncode == 0, out.stderr
    assert "the disk takes" not in out.stdout and "disk MB/s" not in out.stdout  # --no-disk: not timed
    rows = {cells[0]: cells[1:] for cells in (line.strip("| ").split(" | ") for line in out.stdout.splitlines()
                                              if line.startswith("| "))}
    for door in ("native", "tus"):  # each door's row has its Redis commands and round trips per request
        [row] = [line for line in out.stdout.splitlines() if line.startswith(f"| smoke | vezastream ({door}) |")]
        commands, trips = row.split(" | ")[7].split(" / ")
        assert float(commands) > float(trips) > 0
    sent, ran = float(rows["native chunk"][1]), float(rows["native chunk"][2])
    assert 1 <= sent < ran  # the node sends its scripts; Redis runs what is inside them too
    assert rows["native chunk: <= 3 Redis commands sent (the aim)"][1] in ("met", "not met")
    assert "tus PATCH: <= 3 Redis commands sent (the aim)" in rows


@pytest.mark.slow
def test_a_sitting_keeps_its_servers_and_stores_until_its_last_run_then_leaves_nothing():
    tmp_path = Path(tempfile.mkdtemp(prefix="vb"))  # short: the bundled Redis's socket path must fit
    try:
        sitting_in(tmp_path)
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)


def sitting_in(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, str(ROOT / "scripts/bench.py"), "--compare", ",", "--workload", "smoke",
                          "--workload", "smoke", "--runs", "2", "--timeout", "120"], capture_output=True, text=True,
                         timeout=300, env={**os.environ, "TMPDIR": str(tmp_path)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("smoke vezastream") == 8  # 2 workloads x 2 rounds x 2 doors
    assert out.stdout.count("smoke bare aiohttp (limit)") == 4
    rates = [float(line.split()[4]) for line in out.stdout.splitlines() if line.startswith("smoke the disk takes ")]
    assert len(rates) == 4 and all(rate > 0 for rate in rates)  # before each round of each workload
    [disk_row] = [line for line in out.stdout.splitlines() if line.startswith("| smoke | ")
                  and line.count(" | ") == 5]
    assert float(disk_row.split(" | ")[2]) > 0  # what vezastream stored natively, as a share of the disk
    assert sorted(tmp_path.iterdir()) == []  # the servers' folders and the attic, all gone


@pytest.mark.slow
def test_a_run_of_vezastream_alone_leaves_its_folder_in_the_sittings_attic():
    import bench
    import peers

    _, args = bench.parse_args(["--compare", ",", "--timeout", "120"])
    attic = peers.Attic()
    try:
        out = bench._spawned(args, "smoke", [], attic)  # what a whole --compare's other checks run
        assert out["sha256_ok"] and out["MB_per_s"] > 0
        data, folder = sorted(attic.path.iterdir())  # at stop, its data_dir; at close, its folder
        assert (data / "redis").is_dir() and (folder / "server.log").is_file()
    finally:
        attic.close()


def test_a_retired_folder_gives_its_blocks_back_at_once_and_its_inodes_when_the_sitting_ends(tmp_path):
    import peers

    store = tmp_path / "store"
    (store / "upload").mkdir(parents=True)
    (store / "upload" / "data").write_bytes(b"x" * (1 << 20))
    (store / "link").symlink_to(store / "upload" / "data")
    outside = tmp_path / "outside"
    outside.write_bytes(b"kept")
    os.link(outside, store / "upload" / "linked")  # another name outside: never cut through it
    inode = (store / "upload" / "data").stat().st_ino
    attic = peers.Attic()
    try:
        attic.retire(store)
        attic.retire(tmp_path / "never-made")  # nothing to retire
        assert not store.exists()
        [kept] = attic.path.iterdir()
        data = (kept / "upload" / "data").stat()
        assert (data.st_ino, data.st_size, data.st_blocks) == (inode, 0, 0)
        assert outside.read_bytes() == b"kept"
    finally:
        attic.close()
    assert not attic.path.exists()


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


@pytest.mark.parametrize("script", sorted(p.name for p in (ROOT / "scripts").glob("*.py")
                                           if '__name__ == "__main__"' in p.read_text()))
def test_every_runnable_script_explains_itself_with_help(script):
    """``--help`` prints the script's usage and what it measures; it never starts a run (nor a traceback)."""
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / script), "--help"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.startswith("usage:"), out.stderr
    summary = ast.get_docstring(ast.parse((ROOT / "scripts" / script).read_text())).splitlines()[0]
    assert " ".join(summary.split()[:4]) in " ".join(out.stdout.split())  # its docstring says what it measures


def test_lean_client_refuses_other_hosts():
    with pytest.raises(ValueError):
        lean_http.LeanClient("http://example.com", 1, 1)


def test_compare_reports_each_measured_target_as_met_or_not():
    import bench_targets as bench

    ours = {"W1": {"native": {"MB_per_s": 800.0, "cpu_s_per_GiB": 2.3, "peak_rss_MiB": 190.0},
                   "tus": {"MB_per_s": 700.0, "cpu_s_per_GiB": 1.6, "peak_rss_MiB": 128.0}},
            "W2": {"tus": {"MB_per_s": 150.0, "cpu_s_per_GiB": 5.1, "peak_rss_MiB": 150.0}},
            "W3": {"native": {"MB_per_s": 600.0, "cpu_s_per_GiB": 1.4, "peak_rss_MiB": 70.0}}}
    rows = {target: (measured, verdict) for target, measured, verdict
            in bench.target_rows(ours, {"W1": 500.0, "W2": None, "W3": 400.0}, {"W3": 1000.0})}
    assert rows["W1 native: >= 1.6x the best peer's MB/s"] == ("1.60", "met")
    assert rows["W1 tus: >= 1.6x the best peer's MB/s"] == ("1.40", "not met")
    assert rows["W1 native: <= 128 MiB peak RSS"] == ("190.00", "not met")
    assert rows["W1 tus: <= 128 MiB peak RSS"] == ("128.00", "met")
    assert rows["W2 tus: <= 5.0 CPU-s/GiB"] == ("5.10", "not met")
    assert rows["W2 tus: <= 150 MiB peak RSS"] == ("150.00", "met")
    assert rows["W2 tus: >= 1.3x the best peer's MB/s"] == ("-", "not met")  # no peer ran: no ratio
    assert rows["W3 native: >= 1.5x the best peer's MB/s"] == ("1.50", "met")
    assert rows["W3 native: >= 0.6x the limit's MB/s"] == ("0.60", "met")
    assert not any(t.startswith(("W2 native", "W3 tus")) for t in rows)  # not run: not reported
    assert not any("CPU-s/GiB" in t for t in rows if not t.startswith("W2"))  # only W2 has a CPU bound
    no_limit = dict((t, m) for t, m, _ in bench.target_rows(ours, {"W3": 400.0}))
    assert no_limit["W3 native: >= 0.6x the limit's MB/s"] == "-"


def test_the_machine_line_names_the_cpus_family_and_model():
    """Two sittings on machines that both call their CPU "AMD EPYC" (of different generations) are told apart."""
    import bench

    block = "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 1\nmodel name\t: AMD EPYC\n"
    second = block.replace(": 0", ": 1").replace("model\t\t: 1", "model\t\t: 17")
    assert bench.cpu_name(block + "\n" + second) == "AMD EPYC (family 25, model 1)"
    assert bench.cpu_name("processor\t: 0\nmodel name\t: Some CPU\n") == "Some CPU"  # no numbers given
    assert bench.cpu_name("") == "unknown CPU"
    assert bench.machine().startswith(bench.cpu_name(Path("/proc/cpuinfo").read_text()) + ", ")


def test_the_disk_probe_times_durable_writes_and_gives_the_blocks_back(tmp_path):
    import bench

    asked = 8 * 1024 * 1024 + 1  # not a whole number of 4 MiB writes: O_DIRECT takes whole ones
    rate = bench.disk_write_rate(tmp_path, asked)
    probe = tmp_path / "disk-probe"
    if rate is None:  # a filesystem that refuses O_DIRECT: None, and nothing written
        assert not probe.exists() or probe.stat().st_size == 0
        return
    assert 0 < rate < 100_000  # MB/s: past this, the writes did not reach the disk
    assert probe.stat().st_size == 0 and probe.stat().st_blocks == 0


def test_compare_says_which_ratio_targets_ask_more_than_the_disk_takes():
    import bench_targets as bench

    ours = {"W1": {"native": {"MB_per_s": 800.0}, "tus": {"MB_per_s": 1000.0}},
            "W3": {"tus": {"MB_per_s": 900.0}}, "W2": {"native": {"MB_per_s": 250.0}}}
    rows = {row[0]: row[1:] for row in bench.disk_rows(
        ours, {"W1": 700.0, "W3": 600.0, "W2": None}, {"W1": (1100.0, 1000.0, 1200.0), "W3": (1000.0, 990.0, 1050.0)})}
    assert rows["W1"] == ("1100 (1000-1200)", "0.73", "0.91", "1120", "yes")  # 1.6 x 700 is past 1,100
    assert rows["W3"] == ("1000 (990-1050)", "-", "0.90", "900", "no")  # 1.5 x 600; native not run
    assert rows["W2"] == ("-", "-", "-", "-", "-")  # neither the disk nor a peer measured


def test_compare_reports_the_redis_aim_per_chunk_and_patch():
    import bench_targets as bench

    rows = {target: (measured, verdict) for target, measured, verdict in bench.redis_aim_rows(
        {"native chunk": {"sent_per_request": 2.0}, "tus PATCH": {"sent_per_request": 4.0}})}
    assert rows == {"native chunk: <= 3 Redis commands sent (the aim)": ("2.00", "met"),
                    "tus PATCH: <= 3 Redis commands sent (the aim)": ("4.00", "not met")}


def test_the_bench_names_the_targets_as_the_projects_and_performance_md_lists_them():
    import bench_targets as bench

    for script in ("bench.py", "bench_targets.py"):
        text = (ROOT / "scripts" / script).read_text()
        assert "performance issue" not in text and "the issue's" not in text
    doc = (ROOT / "docs/performance.md").read_text()
    targets = doc.split("## Targets", 1)[1].split("\n## ", 1)[0]
    rows = {line.split(":")[0].strip("| "): line for line in targets.splitlines() if line.startswith("| W")}
    for wl, door, what, bound in bench.TARGETS:  # each bound in its workload's row of the table
        assert f" {bound}" in rows[wl], (wl, door, what, bound)


def test_compare_reports_the_other_targets_from_vezastream_alone():
    import bench_targets as bench

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
