"""The README's quick start, as a new user runs it: ``./scripts/serve``, then its curl commands, word for word.

Only the port (a free one) and the data folder (the test's, through the
environment, so the repository's ``./data`` stays untouched) differ from what
the README shows. The commands are read from the README itself, so an edit
there that breaks them fails here.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from servers import free_port

ROOT = Path(__file__).resolve().parents[2]
#: What scripts/test installs: the same extras, so scripts/serve finds its venv ready (no pip run).
EXTRAS = "s3,test,fast"


def quick_start_commands() -> str:
    """The indented block under "Upload a file in two chunks" in README.md."""
    text = (ROOT / "README.md").read_text()
    after = text.split("Upload a file in two chunks, then read it back:", 1)[1]
    block = re.match(r"\n*((?: {4}.*\n)+)", after)
    assert block, "README.md: the quick start's commands are not where this test looks"
    return "\n".join(line[4:] for line in block.group(1).splitlines())


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "scripts/serve exited"
        try:
            with urllib.request.urlopen(f"{url}/v1/health/deep", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError("scripts/serve did not answer")


def test_the_readme_quick_start_stores_the_file_and_reads_it_back(tmp_path):
    port = free_port()
    env = {**os.environ, "VEZASTREAM_EXTRAS": EXTRAS, "VEZASTREAM_STORAGE__DATA_DIR": str(tmp_path / "data"),
           "VEZASTREAM_VENV": sys.prefix}
    proc = subprocess.Popen([str(ROOT / "scripts" / "serve"), "--port", str(port)], env=env, cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "serve.log", "wb"))
    try:
        wait_ready(f"http://127.0.0.1:{port}", proc)
        commands = quick_start_commands().replace("localhost:8080", f"localhost:{port}")
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", commands], cwd=tmp_path, capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, done.stderr + (tmp_path / "serve.log").read_text()[-2000:]
        assert done.stdout.rstrip().endswith("identical"), done.stdout
        # The complete's answer, printed on the way: the file the README names, whole.
        assert '"filename": "song.wav"' in done.stdout and '"size": 3000000' in done.stdout, done.stdout
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    assert proc.returncode == 0, (tmp_path / "serve.log").read_text()[-2000:]
    assert any((tmp_path / "data" / "files").rglob("song.wav"))  # stored where the environment said
