#!/usr/bin/env python3
"""What ``/metrics`` costs: the server's CPU-seconds per GiB with ``metrics.enabled`` on and off.

    python scripts/metrics_cost.py --pairs 8

Runs ``scripts/bench.py --spawn`` on the W1 and W2 shapes (fewer uploads than the presets, so a
pair takes seconds), alternating on/off and off/on in turn so that drift on a shared machine hits
both alike, and prints each side's median and the median of the pairs' differences. CPU time
(the server process and its children, from /proc) is steadier than wall time on a busy machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHAPES = {
    "W1": ["--size", "64MiB", "--chunk", "8MiB"],
    "W2": ["--size", "1MiB", "--chunk", "256KiB", "--concurrency", "200"],
}


def run(shape: str, files: int, on: bool, workers: int = 1) -> float:
    concurrency = [] if "--concurrency" in SHAPES[shape] else ["--concurrency", str(files)]
    serve = ["--serve-arg=--workers", f"--serve-arg={workers}"] if workers > 1 else []
    env = {**os.environ, "VEZASTREAM_METRICS__ENABLED": "true" if on else "false"}
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench.py"), "--spawn", "--json",
                          "--files", str(files), *SHAPES[shape], *concurrency, *serve],
                         env=env, capture_output=True, text=True, timeout=900, cwd=ROOT, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if not result["sha256_ok"]:
        raise SystemExit(f"{shape}: an upload did not read back byte-identical")
    return float(result["cpu_s_per_GiB"])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=8)
    p.add_argument("--w1-files", type=int, default=8, help="64 MiB uploads per W1 run")
    p.add_argument("--w2-files", type=int, default=400, help="1 MiB uploads per W2 run")
    p.add_argument("--workers", type=int, default=1, help="serve --workers (>1: prometheus-client's multiprocess mode)")
    args = p.parse_args()
    files = {"W1": args.w1_files, "W2": args.w2_files}
    runs: dict[str, dict[bool, list[float]]] = {s: {True: [], False: []} for s in SHAPES}
    for i in range(args.pairs):
        for shape in SHAPES:
            for on in ((True, False) if i % 2 == 0 else (False, True)):
                runs[shape][on].append(run(shape, files[shape], on, args.workers))
                print(f"pair {i + 1} {shape} metrics {'on ' if on else 'off'} "
                      f"{runs[shape][on][-1]:.2f} CPU-s/GiB", flush=True)
    for shape, by in runs.items():
        on, off = statistics.median(by[True]), statistics.median(by[False])
        diff = statistics.median(a - b for a, b in zip(by[True], by[False]))
        print(f"{shape}: on {on:.2f}, off {off:.2f} CPU-s/GiB (medians of {args.pairs}): "
              f"{100 * (on - off) / off:+.1f} %; median pair difference {100 * diff / off:+.1f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
