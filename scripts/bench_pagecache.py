"""Benchmark: what writing small bodies through the page cache costs, against O_DIRECT (storage.kernel_io).

Run with the project's venv: ``python scripts/bench_pagecache.py [GiB] [folder]``
(defaults 2 and a temp folder under ./.bench-pagecache, which is removed
after). It writes W2's shape without HTTP: 1 MiB files, 200 at once, each in
four 256 KiB bodies one after the other, the way the staging area writes an
upload's data file from the event loop (``KernelIO``): through the page cache by caio
(``write`` then ``fdatasync``), and in whole blocks with O_DIRECT by libaio
(``write_placed``). Each way runs twice: keeping every file (the page cache
fills fresh pages, as on a server that keeps taking uploads) and removing
each file soon after (its pages are reused). It prints MB/s and the process's
CPU-seconds per GiB. Needs Linux, the fast extra and libaio.so.1. A size
small beside the memory the machine freed just before (0.25 GiB after a
run) finds reused pages even when it keeps its files: measure with 2 GiB.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import time
from pathlib import Path

from vezastream.staging.kernelio import KernelIO, placed

BODY = 256 * 1024
BODIES_PER_FILE = 4
AT_ONCE = 200


async def one_way(folder: Path, backend: str, total: int, keep: bool) -> str:
    kernel = KernelIO.start(folder, "auto", backends=(backend,))
    if kernel is None:
        return f"{backend}: not available here"
    body = os.urandom(BODY)
    count = total // (BODY * BODIES_PER_FILE)
    names: list[Path] = []

    async def one_file(i: int) -> None:
        path = folder / f"{backend}-{i}"
        names.append(path)
        for n in range(BODIES_PER_FILE):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                if kernel.aligned:
                    await kernel.write_placed(fd, path, placed([body], BODY, n * BODY), n * BODY, sync=True,
                                              direct=True)
                else:
                    await kernel.write(fd, body, n * BODY, sync=True)
            finally:
                os.close(fd)

    started, cpu = time.perf_counter(), time.process_time()
    try:
        for first in range(0, count, AT_ONCE):
            await asyncio.gather(*(one_file(i) for i in range(first, min(count, first + AT_ONCE))))
            while not keep and len(names) > AT_ONCE:  # the oldest go: their pages are freed for the next
                names.pop(0).unlink()
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    finally:
        kernel.close()
        for path in names:
            path.unlink(missing_ok=True)
    page_cache = "through the page cache (caio)" if backend == "caio" else "whole blocks with O_DIRECT (libaio)"
    kept = "every file kept" if keep else "files removed behind"
    written = count * BODIES_PER_FILE * BODY
    return f"{page_cache}, {kept}: {written / seconds / 1e6:.0f} MB/s, {cpu / (written / 2**30):.2f} CPU-s/GiB"


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("gib", nargs="?", type=float, default=2.0, help="GiB written each way (default 2)")
    p.add_argument("folder", nargs="?", type=Path, default=Path(".bench-pagecache"),
                   help="where the files go (default ./.bench-pagecache; a run's own folder in it is removed after)")
    args = p.parse_args()
    total, root = int(args.gib * 2**30), args.folder
    folder = root / f"run-{os.getpid()}"
    folder.mkdir(parents=True)
    try:
        for keep in (True, False):
            for backend in ("caio", "libaio"):
                print(await one_way(folder, backend, total, keep), flush=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        if root.name == ".bench-pagecache":
            with contextlib.suppress(OSError):
                root.rmdir()  # the default folder, if no other run uses it


if __name__ == "__main__":
    asyncio.run(main())
