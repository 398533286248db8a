"""An outside author's journey, end to end, from docs/plugins.md's own worked example.

The guide's code blocks marked ``file=<path>`` are the vezastream-sharded
package, verbatim: this test writes them to a folder in tmp, installs the
package with pip, lists it with ``vezastream plugins --check``, runs its own
tests (the conformance kit), uploads through it on ``vezastream serve``, and
lets ``vezastream gc`` sweep a leftover. The guide cannot drift from the code.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import aiohttp
import pytest

from helpers import random_bytes, sha256, split
from servers import Server, free_port

GUIDE = Path(__file__).resolve().parent.parent.parent / "docs" / "plugins.md"
FENCE = re.compile(r"^```(\w+) file=(\S+)\n(.*?)^```$", re.M | re.S)


def guide_files() -> dict[str, str]:
    """``file=`` path -> its text: the guide's blocks for one file, joined in order."""
    files: dict[str, list[str]] = {}
    for _, name, text in FENCE.findall(GUIDE.read_text()):
        files.setdefault(name, []).append(text)
    return {name: "\n\n".join(parts) for name, parts in files.items()}


def test_the_guide_holds_a_whole_package():
    files = guide_files()
    assert set(files) == {"pyproject.toml", "vezastream_sharded.py", "tests/test_sharded.py"}
    compile(files["vezastream_sharded.py"], "vezastream_sharded.py", "exec")
    assert "from vezastream import" in files["vezastream_sharded.py"]
    assert not re.search(r"^\s*(from|import) vezastream\.", files["vezastream_sharded.py"], re.M), \
        "the worked example imports only the public surface"


def _write_package(root: Path) -> Path:
    pkg = root / "vezastream-sharded"
    for name, text in guide_files().items():
        (pkg / name).parent.mkdir(parents=True, exist_ok=True)
        (pkg / name).write_text(text)
    return pkg


@pytest.mark.slow
async def test_the_guides_sink_plugin_from_install_to_upload(tmp_path: Path):
    pkg = _write_package(tmp_path)
    site = tmp_path / "site"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                          "--target", str(site), str(pkg)], capture_output=True, text=True, timeout=300)
    assert pip.returncode == 0, pip.stderr
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}
    root = tmp_path / "sharded"
    config = tmp_path / "config.toml"
    config.write_text(textwrap.dedent(f"""
        [storage]
        data_dir = "{tmp_path / 'data'}"
        sink = "sharded"
        [sinks.sharded]
        root = "{root}"
        [plugins.sharded]
        refused = [".exe", ".bat"]
    """))

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "vezastream.cli", "--config", str(config), *args],
                              env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path)

    listed = cli("plugins", "--check")
    assert listed.returncode == 0, listed.stderr
    assert ("sharded 0.1.0: vezastream_configure_plugin, vezastream_register_sinks, "
            "vezastream_validate_upload") in listed.stdout
    assert "configured sink: sharded (capabilities: content, remove, abort, sweep)" in listed.stdout

    # The package's own tests; "-p no:vezastream" keeps out the kit's old auto-loaded entry point,
    # which an older vezastream in this venv may still declare (the package loads it with -p).
    kit = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:vezastream",
                          "tests"], env=env, capture_output=True, text=True, timeout=300, cwd=pkg)
    assert kit.returncode == 0, kit.stdout[-3000:]
    assert " passed" in kit.stdout and "failed" not in kit.stdout

    server_env = {"PYTHONPATH": env["PYTHONPATH"], "VEZASTREAM_SERVER__PORT": str(free_port()),
                  "VEZASTREAM_LIMITS__MIN_CHUNK_SIZE": "1", "VEZASTREAM_LOG__FORMAT": "text"}
    server = Server(server_env, tmp_path)  # reads ./config.toml, as `vezastream serve` does
    try:
        await server.wait_ready()
        data = random_bytes(3 * 50_000 + 7)
        async with aiohttp.ClientSession(server.url) as http:
            async with http.post("/v1/uploads", json={"filename": "tool.bat", "total_size": 1}) as r:
                assert r.status == 422 and (await r.json())["plugin"] == "sharded"
            async with http.post("/v1/uploads", json={"filename": "a song.wav", "total_size": len(data),
                                                      "chunk_size": 50_000}) as r:
                upload_id = (await r.json())["upload_id"]
            for n, piece in enumerate(split(data, 50_000), 1):
                async with http.put(f"/v1/uploads/{upload_id}/chunks/{n}", data=piece) as r:
                    assert r.status == 201
            async with http.post(f"/v1/uploads/{upload_id}/complete") as r:
                result = await r.json()
                assert r.status == 200 and result["sink"] == "sharded", result
            digest = sha256(data)
            assert result["location"] == f"{digest[:2]}/{digest}/a_song.wav"
            assert hashlib.sha256((root / result["location"]).read_bytes()).hexdigest() == digest
            async with http.get(f"/v1/uploads/{upload_id}/content", headers={"Range": "bytes=10-19"}) as r:
                assert r.status == 206 and await r.read() == data[10:20]
            async with http.delete(f"/v1/uploads/{upload_id}") as r:
                assert r.status == 204
            assert not (root / digest[:2]).exists()
    finally:
        server.kill()

    leftover = root / ".tmp" / "AAAAAAAAAAAAAAAAAAAAAA.0123abcd.part"  # what a crash mid-assemble leaves
    leftover.write_bytes(b"x")
    two_days_ago = time.time() - 2 * 86400
    os.utime(leftover, (two_days_ago, two_days_ago))
    would = cli("gc", "--dry-run")
    assert would.returncode == 0 and leftover.exists(), would.stderr
    assert "would drop in the sink: .tmp/AAAAAAAAAAAAAAAAAAAAAA.0123abcd.part" in would.stdout.splitlines()
    swept = cli("gc")
    assert swept.returncode == 0, swept.stderr
    assert not leftover.exists()
    assert "dropped 1 leftover(s) in the sink" in swept.stdout.splitlines()  # the sink's sweep named it
