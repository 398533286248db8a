"""The benchmark script keeps working (a tiny workload against a spawned server)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


@pytest.mark.slow
def test_bench_smoke_run_verifies_stored_bytes():
    out = subprocess.run([sys.executable, str(ROOT / "scripts/bench.py"), "--spawn", "--workload", "smoke",
                          "--json", "--timeout", "120"], capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["sha256_ok"] and result["files"] == 4
    assert result["MB_per_s"] > 0 and result["cpu_s_per_GiB"] > 0 and result["peak_rss_MiB"] > 0
