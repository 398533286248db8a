"""``server.event_loop`` (config.toml): "auto" serves on uvloop when it is installed, else on
asyncio's own loop; "uvloop" and "asyncio" name the loop outright, and "uvloop" without uvloop
installed stops the start-up, saying so.

Each case is a real ``vezastream serve`` on 127.0.0.1, stopped by its PID. Which loop it serves
on is what a plugin sees: a throwaway plugin, installed as pip would (a ``.dist-info`` with its
``vezastream`` entry point, on ``PYTHONPATH``), writes the class of the running loop when an upload
completes. (uvloop merely loaded is not enough: ``/proc/<pid>/maps`` would show it either way.)
An environment without uvloop is made by putting first on ``PYTHONPATH`` a ``uvloop`` package whose
import fails, as a missing one does.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from pathlib import Path

import aiohttp
import pytest

from servers import VEZASTREAM, Server, server_env


SPY = """
import asyncio, os
from vezastream import hookimpl

@hookimpl
async def vezastream_observe_completion(upload, result):
    loop = type(asyncio.get_running_loop())
    report = os.environ["LOOP_SPY_FILE"]
    with open(report + ".part", "w") as f:
        f.write(f"{loop.__module__}.{loop.__qualname__}\\n")
    os.replace(report + ".part", report)  # whole, or not there yet
"""


def with_spy(tmp_path: Path, uvloop_installed: bool) -> tuple[dict[str, str], Path]:
    """The environment of a server with the loop spy installed (and uvloop hidden, if asked)."""
    site = tmp_path / "site"
    (site / "vz_loop_spy-1.0.dist-info").mkdir(parents=True)
    (site / "vz_loop_spy.py").write_text(SPY)
    (site / "vz_loop_spy-1.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: vz_loop_spy\n"
                                                                  "Version: 1.0\n")
    (site / "vz_loop_spy-1.0.dist-info" / "entry_points.txt").write_text("[vezastream]\nloopspy = vz_loop_spy\n")
    if not uvloop_installed:
        (site / "uvloop").mkdir()
        (site / "uvloop" / "__init__.py").write_text("raise ImportError('No module named uvloop')\n")
    report = tmp_path / "loop.txt"
    path = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    return {"PYTHONPATH": path, "LOOP_SPY_FILE": str(report)}, report


UVLOOP, ASYNCIO = "uvloop.Loop", "asyncio.unix_events._UnixSelectorEventLoop"


@pytest.mark.parametrize("setting, installed, loop", [
    ("asyncio", True, ASYNCIO),
    ("uvloop", True, UVLOOP),
    ("auto", True, UVLOOP),
    ("auto", False, ASYNCIO),
])
async def test_the_server_runs_on_the_loop_the_setting_names(tmp_path, redis_url, setting, installed, loop):
    spy, report = with_spy(tmp_path, installed)
    server = Server({**server_env(tmp_path, redis_url, SERVER__EVENT_LOOP=setting), **spy}, tmp_path)
    try:
        await server.wait_ready()
        async with aiohttp.ClientSession() as s:
            async with s.post(server.url + "/v1/uploads", json={"filename": "a", "total_size": 3}) as r:
                assert r.status == 201
                uid = (await r.json())["upload_id"]
            async with s.put(f"{server.url}/v1/uploads/{uid}/chunks/1", data=b"abc") as r:
                assert r.status == 201
            async with s.post(f"{server.url}/v1/uploads/{uid}/complete") as r:
                assert r.status == 200
        deadline = time.monotonic() + 10
        while not report.exists():  # the observer runs after the answer
            assert time.monotonic() < deadline, "the plugin never saw the completion"
            await asyncio.sleep(0.02)
        assert report.read_text().split() == [loop]
    finally:
        server.kill(signal.SIGTERM)
    assert server.proc.returncode == 0


def test_uvloop_named_but_not_installed_stops_the_start_up_saying_so(tmp_path, redis_url):
    env = {**server_env(tmp_path, redis_url, SERVER__EVENT_LOOP="uvloop"), **with_spy(tmp_path, False)[0]}
    done = subprocess.run(VEZASTREAM + ["serve"], env={**os.environ, **env}, cwd=tmp_path, capture_output=True,
                          text=True, timeout=20)
    assert done.returncode != 0
    assert 'server.event_loop = "uvloop" but uvloop is not installed' in done.stderr, done.stderr
