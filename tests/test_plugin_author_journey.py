"""An outside author's journey, end to end, as docs/plugins.md tells it.

A sink plugin is written in its own package (a folder in tmp), installed with
pip, listed by ``vezastream plugins``, passes the conformance kit in its own
pytest run, and serves a real upload through ``vezastream serve``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import aiohttp
import pytest

from helpers import random_bytes, sha256, split
from servers import Server, free_port

PYPROJECT = '''
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "vezastream-dirsink"
version = "0.3.0"
dependencies = ["vezastream>=0.1"]

[project.entry-points.vezastream]
dirsink = "vezastream_dirsink"

[tool.setuptools]
py-modules = ["vezastream_dirsink"]

[tool.pytest.ini_options]
asyncio_mode = "auto"
asyncio_default_fixture_loop_scope = "function"
'''

MODULE = '''
"""vezastream-dirsink: completed uploads become files <path>/<upload id>; refuses .exe names."""

import asyncio
import os
from pathlib import Path

import aiofiles

from vezastream import hookimpl
from vezastream.config import ConfigError
from vezastream.errors import Rejected
from vezastream.sinks import Content


class Assembly:
    def __init__(self, tmp, final):
        self.tmp, self.final, self.location = tmp, final, final.name

    async def commit(self):
        await asyncio.to_thread(os.replace, self.tmp, self.final)

    async def discard(self):
        await asyncio.to_thread(self.tmp.unlink, True)


class DirectorySink:
    name = "dirsink"

    def __init__(self, root):
        self.root = root

    async def assemble(self, upload, source):
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".{upload.id}.part"
        async with aiofiles.open(tmp, "wb") as out:
            async for block in source.iter_bytes():
                await out.write(block)
        return Assembly(tmp, self.root / upload.id)

    async def check(self):
        self.root.mkdir(parents=True, exist_ok=True)

    async def aclose(self):
        pass

    async def open_content(self, upload, result):
        return Content(size=result.size, path=self.root / result.location)

    async def remove(self, upload, result):
        (self.root / result.location).unlink(missing_ok=True)


@hookimpl
def vezastream_register_sinks(register):
    def make(config, settings):
        unknown = set(config) - {"path"}
        if unknown:
            raise ConfigError(f"sinks.dirsink.{sorted(unknown)[0]}: unknown setting")
        return DirectorySink(Path(config.get("path", settings.storage.data_dir / "objects")))
    register("dirsink", make)


class Policy:
    def __init__(self, refused):
        self.refused = tuple(refused)

    @hookimpl
    def vezastream_validate_upload(self, upload):
        if upload.filename.endswith(self.refused):
            return Rejected("this file type is not accepted")


@hookimpl
def vezastream_configure_plugin(config):
    refused = config.get("refused", [".exe"])
    if not isinstance(refused, list):
        raise ConfigError("plugins.dirsink.refused: expected a list of suffixes")
    return Policy(refused)
'''

TESTS = '''
import pytest
from vezastream.testing import SinkConformance


class TestDirSink(SinkConformance):
    @pytest.fixture
    def sink_settings(self, tmp_path):
        return {"storage.sink": "dirsink", "sinks.dirsink.path": str(tmp_path / "objects")}

    async def stored_objects(self, sink):
        return {p.name for p in sink.root.glob("*")} if sink.root.exists() else set()
'''


def _write_package(root: Path) -> Path:
    pkg = root / "vezastream-dirsink"
    (pkg / "tests").mkdir(parents=True)
    (pkg / "pyproject.toml").write_text(PYPROJECT)
    (pkg / "vezastream_dirsink.py").write_text(textwrap.dedent(MODULE))
    (pkg / "tests" / "test_dirsink.py").write_text(textwrap.dedent(TESTS))
    return pkg


@pytest.mark.slow
async def test_an_outside_sink_plugin_from_install_to_upload(tmp_path: Path):
    pkg = _write_package(tmp_path)
    site = tmp_path / "site"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                          "--target", str(site), str(pkg)], capture_output=True, text=True, timeout=300)
    assert pip.returncode == 0, pip.stderr
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}
    config = tmp_path / "config.toml"
    config.write_text(textwrap.dedent(f"""
        [storage]
        data_dir = "{tmp_path / 'data'}"
        sink = "dirsink"
        [sinks.dirsink]
        path = "{tmp_path / 'objects'}"
        [plugins.dirsink]
        refused = [".exe", ".bat"]
    """))

    listed = subprocess.run([sys.executable, "-m", "vezastream.cli", "--config", str(config), "plugins", "--check"],
                            env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert ("dirsink 0.3.0: vezastream_configure_plugin, vezastream_register_sinks, "
            "vezastream_validate_upload") in listed.stdout
    assert "configured sink: dirsink (capabilities: content, remove)" in listed.stdout

    kit = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
                         env=env, capture_output=True, text=True, timeout=300, cwd=pkg)
    assert kit.returncode == 0, kit.stdout[-3000:]
    assert " passed" in kit.stdout and "failed" not in kit.stdout

    server_env = {"PYTHONPATH": env["PYTHONPATH"], "VEZASTREAM_SERVER__PORT": str(free_port()),
                  "VEZASTREAM_LIMITS__MIN_CHUNK_SIZE": "1", "VEZASTREAM_LOG__FORMAT": "text"}
    server = Server(server_env, tmp_path)  # reads ./config.toml, as `vezastream serve` does
    try:
        await server.wait_ready()
        data = random_bytes(3 * 50_000 + 7)
        async with aiohttp.ClientSession(server.url) as http:
            async with http.post("/v1/uploads", json={"filename": "tool.exe", "total_size": 1}) as r:
                assert r.status == 422 and (await r.json())["plugin"] == "dirsink"
            async with http.post("/v1/uploads", json={"filename": "a.wav", "total_size": len(data),
                                                      "chunk_size": 50_000}) as r:
                upload_id = (await r.json())["upload_id"]
            for n, piece in enumerate(split(data, 50_000), 1):
                async with http.put(f"/v1/uploads/{upload_id}/chunks/{n}", data=piece) as r:
                    assert r.status == 201
            async with http.post(f"/v1/uploads/{upload_id}/complete") as r:
                result = await r.json()
                assert r.status == 200 and result["sink"] == "dirsink", result
            async with http.get(f"/v1/uploads/{upload_id}/content") as r:
                assert await r.read() == data
        assert sha256((tmp_path / "objects" / upload_id).read_bytes()) == sha256(data)
    finally:
        server.kill()
