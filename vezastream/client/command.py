"""``vezastream upload FILE... --url URL``: the client on the command line.

Files are uploaded one after the other, each with ``--parallel`` chunks in
flight. A progress bar per file and one for the total (bytes, rate, ETA) go
to stderr; ``--json`` prints instead one JSON object per file on stdout (the
result, or ``{"path", "error", "status"}``). A request about to be retried is
said on stderr either way (``vezastream upload: retrying ...``), since the
retries of one request can take minutes. Exit status: 0 when every file
is stored and verified, 1 when one failed, 130 on Ctrl-C (run the same
command again to resume).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from .resume import default_state_dir
from .retry import RetryPolicy

DEFAULT_URL = "http://127.0.0.1:8080"
DEFAULT_TOKEN_ENV = "VEZASTREAM_TOKEN"


def _size(value: str) -> int:
    from ..config import ConfigError, parse_size

    try:
        size = parse_size(int(value) if value.isdigit() else value, "--chunk-size")
    except ConfigError as exc:  # argparse names the option itself
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--chunk-size: ")) from None
    if size < 1:
        raise argparse.ArgumentTypeError("must be at least 1 byte")
    return int(size)


def _url(value: str) -> str:
    from .upload import server_url

    try:
        return server_url(value)
    except ValueError as exc:  # argparse names the option itself
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return int(value)


def add_parser(sub: Any) -> None:
    """Adds ``upload`` to the ``vezastream`` command's subparsers."""
    p = sub.add_parser("upload", help="upload files to a vezastream server (parallel chunks, resumable)",
                       description="Upload files through the native chunk API: parallel chunks, retries, "
                                   "resume after an interruption (run the same command again), and the "
                                   "server's SHA-256 checked against the local file's.")
    p.add_argument("files", nargs="+", type=Path, metavar="FILE")
    p.add_argument("--url", type=_url, default=DEFAULT_URL, help=f"the server's base URL (default: {DEFAULT_URL})")
    p.add_argument("--parallel", type=_positive, default=4, metavar="N",
                   help="chunks in flight over all files, up to N files at once (default: 4)")
    p.add_argument("--chunk-size", type=_size, metavar="S",
                   help="chunk size, e.g. 8MiB (default: the server's limits.default_chunk_size)")
    p.add_argument("--attempts", type=_positive, default=RetryPolicy().attempts, metavar="N",
                   help=f"tries per request before giving up (default: {RetryPolicy().attempts})")
    p.add_argument("--token-env", default=DEFAULT_TOKEN_ENV, metavar="NAME",
                   help=f"environment variable holding the bearer token (default: {DEFAULT_TOKEN_ENV}; unset: none)")
    p.add_argument("--state-dir", type=Path, metavar="DIR",
                   help="where resume states are kept (default: $XDG_STATE_HOME/vezastream/uploads)")
    p.add_argument("--json", action="store_true", help="print one JSON object per file on stdout, no progress bar")
    p.set_defaults(func=cmd_upload)


def cmd_upload(args: argparse.Namespace) -> int:
    missing = [str(f) for f in args.files if not f.is_file()]
    if missing:
        print(f"vezastream upload: not a file: {', '.join(missing)}", file=sys.stderr)
        return 2
    from ..errors import path_trouble

    folder = args.state_dir or default_state_dir()
    try:  # before any byte goes: an upload that cannot keep its state could not be resumed
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"vezastream upload: cannot keep resume states in {folder} (--state-dir): {path_trouble(exc)}",
              file=sys.stderr)
        return 2
    from .upload import bearer

    try:
        bearer(os.environ.get(args.token_env))
    except ValueError as exc:
        print(f"vezastream upload: {args.token_env}: {exc}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_upload_all(args))
    except KeyboardInterrupt:
        print("vezastream upload: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except OSError as exc:  # a path that failed midway (the state folder refusing its file...): one line
        if exc.filename is None:
            raise
        print(f"vezastream upload: {_local_trouble(exc)}", file=sys.stderr)
        return 1


def _local_trouble(exc: OSError) -> str:
    """What failed on this machine, and where (both paths of a rename)."""
    from ..errors import path_trouble

    where = f"{exc.filename} -> {exc.filename2}" if exc.filename2 is not None else exc.filename
    return f"{path_trouble(exc)}: {where}"


async def _upload_all(args: argparse.Namespace) -> int:
    from . import ClientError, UploadClient

    token = os.environ.get(args.token_env) or None
    bars = None if args.json else _Bars(sum(f.stat().st_size for f in args.files))
    failed = 0

    def notice(event: Any) -> None:
        message = f"vezastream upload: {event}"
        if bars:
            bars.note(message)
        else:
            print(message, file=sys.stderr, flush=True)

    async with UploadClient(args.url, token=token, parallel=args.parallel, chunk_size=args.chunk_size,
                            state_dir=args.state_dir, progress=bars.update if bars else None,
                            retry=RetryPolicy(attempts=args.attempts), on_retry=notice) as client:
        async def one(path: Path) -> None:
            nonlocal failed
            try:
                result = await client.upload(path)
            except (ClientError, OSError) as exc:
                # A local failure (the file unreadable, its resume state unwritable) is this file's alone.
                if isinstance(exc, OSError) and exc.filename is None:
                    raise
                failed += 1
                why = str(exc) if isinstance(exc, ClientError) else _local_trouble(exc)
                if bars:
                    bars.failed(path, why)
                else:
                    _print_json({"path": str(path), "error": why, "status": getattr(exc, "status", None)})
                return
            if bars:
                bars.done(path, result)
            else:
                _print_json(result.to_json())

        # Up to --parallel files at once, in the order given, their chunks sharing the --parallel slots:
        # many small files (one chunk each) go --parallel at a time instead of one after the other.
        left = iter(args.files)

        async def files() -> None:
            for path in left:
                await one(path)

        with bars or contextlib.nullcontext():
            try:
                async with asyncio.TaskGroup() as tg:
                    for _ in range(min(args.parallel, len(args.files))):
                        tg.create_task(files())
            except BaseExceptionGroup as group:  # what is no file's failure: as one process error
                raise group.exceptions[0] from None
    return 1 if failed else 0


def _print_json(obj: dict[str, Any]) -> None:
    print(json.dumps(obj), flush=True)


class _Bars:
    """rich progress bars on stderr: one per file (hashing, then uploading) and the total."""

    def __init__(self, total_bytes: int) -> None:
        from rich.console import Console
        from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                                   TransferSpeedColumn)

        self.progress = Progress(TextColumn("{task.description}", markup=False), BarColumn(), DownloadColumn(),
                                 TransferSpeedColumn(), TimeRemainingColumn(), console=Console(stderr=True))
        self.total = self.progress.add_task("total", total=total_bytes)
        self.tasks: dict[Path, Any] = {}
        self.phase: dict[Path, str] = {}
        self.uploaded: dict[Path, int] = {}  # bytes of each file counted in the total so far

    def __enter__(self) -> _Bars:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def update(self, event: Any) -> None:
        path = event.path
        if path not in self.tasks:
            self.tasks[path] = self.progress.add_task(path.name, total=event.total)
        task = self.tasks[path]
        if self.phase.get(path) != event.phase:  # a new phase: restart the rate, start at what is done
            self.phase[path] = event.phase
            label = f"{path.name} (hashing)" if event.phase == "hashing" else path.name
            self.progress.reset(task, total=event.total, completed=event.done, description=label)
            if event.phase == "uploading" and event.done:  # resumed: already on the server
                self.uploaded[path] = event.done
                done = self.progress.tasks[self.total].completed + event.done
                self.progress.reset(self.total, completed=done)
            return
        self.progress.update(task, completed=event.done)
        if event.phase == "uploading":
            self.progress.advance(self.total, event.done - self.uploaded.get(path, 0))
            self.uploaded[path] = event.done

    def note(self, message: str) -> None:
        """A line above the bars, whole (a terminal wraps it; a log keeps it one line)."""
        self.progress.console.print(message, markup=False, highlight=False, soft_wrap=True)

    def done(self, path: Path, result: Any) -> None:
        resumed = " (resumed)" if result.resumed else ""
        self.note(f"{path}: stored as {result.upload_id}, sha256 {result.sha256} verified{resumed}")
        self._settle(path, result.size)

    def failed(self, path: Path, message: str) -> None:
        self.note(f"{path}: FAILED: {message.removeprefix(f'{path}: ')}")  # a server's refusal names it too
        self._settle(path, None)

    def _settle(self, path: Path, size: int | None) -> None:
        if path in self.tasks:
            self.progress.remove_task(self.tasks.pop(path))
        if size is not None:
            self.progress.advance(self.total, size - self.uploaded.pop(path, 0))
