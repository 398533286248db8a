"""``vezastream``: serve, gc, config show, plugins."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import os
import signal
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from . import __version__
from .client.command import add_parser as add_upload_parser
from .config import ConfigError, Settings, load_settings, public_view
from .errors import path_trouble
from .tasks import stop as stop_tasks

DEFAULT_CONFIG = "config.toml"

log = logging.getLogger("vezastream")


def _log_to_stderr(settings: Settings) -> None:
    """A command's log lines (a sink's failed call, the GC pass) on stderr as ``serve`` writes them
    (log.level, log.format), not bare messages from Python's last-resort handler. Left alone when
    the program calling :func:`main` has set up logging of its own (a test)."""
    from .logs import setup_logging

    if not logging.getLogger().handlers:
        setup_logging(settings.log.level, settings.log.format, settings.log.held_lines)


def _settings(args: argparse.Namespace, **overrides: Any) -> Settings:
    path = args.config
    if path is None and Path(DEFAULT_CONFIG).exists():
        path = DEFAULT_CONFIG
    return load_settings(path, overrides={k: v for k, v in overrides.items() if v is not None})


def _event_loop(settings: Settings) -> asyncio.AbstractEventLoop:
    """uvloop when installed (``pip install vezastream[fast]``), else asyncio's loop.

    Disk I/O and hashing run in the loop's default executor; the stock one has
    cpu+4 threads, too few when many fsyncs wait at once.
    """
    loop = None
    if settings.server.event_loop != "asyncio":
        try:
            import uvloop

            loop = uvloop.new_event_loop()
        except ImportError:
            if settings.server.event_loop == "uvloop":
                raise SystemExit("server.event_loop = \"uvloop\" but uvloop is not installed "
                                 "(pip install 'vezastream[fast]')") from None
    loop = loop or asyncio.new_event_loop()
    loop.set_default_executor(ThreadPoolExecutor(settings.server.io_threads, thread_name_prefix="vezastream-io"))
    return loop


#: Net allocations of tracked objects (containers) between young-generation collections (Python's
#: default: 700). With 200 small uploads in flight, what the requests hold grows past 700 about a
#: hundred times a second, and each collection walks every young survivor again: 0.2-0.4 s of
#: collection per GiB of 1 MiB uploads, 5-8 % of the server's CPU (docs/performance.md). At 20,000,
#: about one collection a run, of some 5 ms.
YOUNG_COLLECTION_EVERY = 20_000


def _tune_gc() -> None:
    """Keep the garbage collector's passes rare in a long-running server.

    With thousands of connections open, a full (generation 2) collection scans
    hundreds of thousands of objects and stops the event loop for 100-200 ms
    (2,000 slow clients, docs/performance.md). What exists once the app is
    built is moved out of the collector's sight (``gc.freeze``), and a full
    pass waits for 100 passes of generation 1 instead of 10. A young pass waits
    for :data:`YOUNG_COLLECTION_EVERY` new objects instead of 700. Reference cycles
    are still collected, in generations 0 and 1 as before, only later. A cycle that lives long
    enough to reach generation 2 waits longer, so a request must leave none behind,
    however it ends (an error kept on an object its frames hold, with its traceback,
    is one: ``http/body.py``); tests/drills/test_drill_dropped.py checks that.
    """
    gc.collect()
    gc.freeze()
    _, second, _ = gc.get_threshold()
    gc.set_threshold(YOUNG_COLLECTION_EVERY, second, 100)


def _runner(app: Any, settings: Settings) -> Any:
    """The app's runner, as ``serve`` runs it (``app.AppRunner``: aiohttp's own parser errors answer
    problem+json, and a stop drains for ``server.shutdown_timeout``)."""
    from .http.app import AppRunner

    # An idle connection is closed keepalive_timeout after its last response; one whose
    # request's headers are not whole header_timeout after it opened, or after that request's
    # first byte, is closed then; one that takes no byte of a response for send_timeout is cut
    # off (app.ProblemRequestHandler).
    return AppRunner(app, handle_signals=False, access_log=None, handler_cancellation=False,
                     keepalive_timeout=settings.server.keepalive_timeout,
                     header_timeout=settings.server.header_timeout, send_timeout=settings.server.send_timeout,
                     drain_timeout=settings.server.shutdown_timeout)


def base_url(host: str, port: int) -> str:
    """The server's URL on ``host`` (an IPv6 address in brackets, as URLs write it)."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def _run(runner: Any, settings: Settings, reuse_port: bool, stopping: asyncio.Event) -> None:
    """Serve ``runner``'s app until ``stopping`` is set (SIGTERM or SIGINT: :func:`_serve_one`'s handlers),
    as ``web.run_app`` does. A start-up that goes on after the stop (its cancel lost) ends before it listens."""
    from aiohttp import web

    from .http.keys import engine_key

    app = runner.app
    try:
        await runner.setup()
    except BaseException:  # a start-up refused (e.g. a ConfigError): what had started (Redis) stops
        await app.cleanup()
        raise
    host, port = settings.server.host, settings.server.port
    try:
        if stopping.is_set():
            return
        try:
            await web.TCPSite(runner, host, port, reuse_port=reuse_port, backlog=settings.server.backlog).start()
        except OSError as exc:  # the port is taken, the address is not this host's, ...
            # the system's words: uvloop's carry no strerror, asyncio's a sentence around them; a name
            # that does not resolve has a negative errno (gaierror) and the resolver's words
            reason = os.strerror(exc.errno) if exc.errno and exc.errno > 0 else exc.strerror or str(exc)
            raise RuntimeError(f"cannot listen on {host}:{port}: {reason}") from None
        # Once the socket is bound and Redis answers: a supervisor may take this line for "ready".
        # node: as its heartbeat and a data_dir refusal (engine/nodes.py) name this process.
        log.info(f"vezastream listening on {base_url(host, port)}",
                 extra={"event": "listening", "pid": os.getpid(), "node": app[engine_key].leases.node,
                        "host": socket.gethostname(), "sink": settings.storage.sink,
                        "workers": settings.server.workers, "open_files": _open_files_limit()})
        await stopping.wait()  # a signal ends it (web.GracefulExit, then main is cancelled)
    finally:
        await runner.cleanup()


#: The signals that stop a server.
STOPS = frozenset({signal.SIGTERM, signal.SIGINT})
#: Seconds beyond ``server.shutdown_timeout`` that a stopping worker of ``--workers`` is given
#: before the parent kills it: its cut requests' unwinding (``app.CUT_GRACE``, twice) and its cleanup.
STOP_MARGIN = 10.0


def _serve_one(settings: Settings, reuse_port: bool = False, app: Any = None, supervised: bool = False) -> None:
    """Serve until SIGTERM or SIGINT. Logs the stop ("stopping", its signal, then "stopped"),
    unless ``supervised``: a worker of ``--workers``, whose parent logs the server's stop. A second
    signal during the drain cuts it short, unless ``supervised`` (the parent bounds a worker's stop)."""
    from .http.app import create_app
    from .logs import setup_logging

    lines = setup_logging(settings.log.level, settings.log.format, settings.log.held_lines)
    try:
        _serve_until_stopped(settings, reuse_port, app or create_app(settings), supervised)
    finally:
        lines.flush()  # a worker ends with os._exit, without the exit handlers that would flush them


def _serve_until_stopped(settings: Settings, reuse_port: bool, app: Any, supervised: bool) -> None:
    from aiohttp import web

    _tune_gc()
    loop = _event_loop(settings)
    asyncio.set_event_loop(loop)
    stops: list[signal.Signals] = []

    runner = _runner(app, settings)
    # Set as main is cancelled: a start-up that goes on, its cancel lost (on Python 3.11 redis-py's
    # asyncio.wait_for drops one that lands as a command is sent: vezastream/tasks.py), ends before it
    # serves, instead of serving until it is killed. Not set in the signal's handler: uvloop runs what
    # that wakes before the loop's run ends, and the cancel would then cut the drain short.
    stopping = asyncio.Event()

    def stop(sig: signal.Signals) -> None:  # as aiohttp's own handlers do, naming the signal
        stops.append(sig)
        if len(stops) == 1:
            raise web.GracefulExit()
        # Another during the drain: what is in flight is cut now, and the stop goes on. Not in a
        # worker: its parent passes a stop on, and systemd sends its SIGTERM to every process as well.
        if not supervised:
            runner.hurry()

    for sig in STOPS:
        loop.add_signal_handler(sig, stop, sig)
    main = loop.create_task(_run(runner, settings, reuse_port, stopping))
    try:
        loop.run_until_complete(main)
    except (web.GracefulExit, KeyboardInterrupt):
        if not supervised:
            _log_stopping(stops[0] if stops else signal.SIGINT)
    finally:
        if not main.done():  # shut down in order: the runner's cleanup runs in main's finally
            main.cancel()
            stopping.set()
            with contextlib.suppress(asyncio.CancelledError):
                loop.run_until_complete(main)
        loop.run_until_complete(stop_tasks(*(task for task in asyncio.all_tasks(loop) if not task.done())))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
    if not supervised:
        _log_stopped(0)


def _log_stopping(sig: signal.Signals) -> None:
    log.info(f"vezastream stopping on {sig.name}", extra={"event": "stopping", "pid": os.getpid(), "signal": sig.name})


def _log_stopped(exit_status: int) -> None:
    log.info(f"vezastream stopped, exit status {exit_status}",
             extra={"event": "stopped", "pid": os.getpid(), "exit_status": exit_status})


def _worker(settings: Settings) -> None:
    """One of ``--workers N``'s processes, forked or spawned (:func:`_serve_workers`): a forked
    one first drops what it inherited from its parent, the supervisor's signal handlers (a
    SIGTERM before its own handler is set then stops it, as it stops a spawned one). The
    parent held SIGTERM and SIGINT while it started it, so none came before that."""
    from .http import metrics

    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOPS)  # held while it was started: one sent meanwhile lands now
    metrics.values_in_files()
    try:
        _serve_one(settings, reuse_port=True, supervised=True)
    except (ConfigError, RuntimeError) as exc:  # the port taken, another data_dir: one line, as main says it
        sys.exit(_refused(exc))


def _serve_workers(settings: Settings, workers: int) -> int:
    """N processes share the port (SO_REUSEPORT); the parent only supervises.

    The workers are forked from the parent, which has imported the server's code and
    its plugins (to check the configuration before anything starts): they share those
    pages instead of each importing its own copy (``gc.freeze()`` first, so that the
    collector does not write to them; each worker then builds its own app). If a
    thread runs in the parent (a plugin may start one at import), a fork could copy a
    lock that thread held: the workers are then spawned, each a fresh interpreter (and
    a warning names the threads); off Linux they are always spawned.

    SIGTERM or SIGINT to the parent stops every worker with one SIGTERM each
    (a second one could land after a worker's graceful shutdown has dropped
    its handler, and kill it), and waits ``server.shutdown_timeout`` + :data:`STOP_MARGIN`
    seconds for them all before it kills those still running. A worker that dies of the SIGTERM it was sent
    (it was still starting, before its handler) stopped as asked: exit status
    0. Otherwise the parent exits with the worst worker's status (128 + the
    signal for one killed by a signal), and the first worker to exit stops
    the others.

    The parent logs the server's stop: the worker that exited unasked (error level,
    "worker_exited") or the signal it was sent ("stopping"), then "stopped" with
    its exit status. Workers that stop as asked log nothing of it.
    """
    import dataclasses
    import multiprocessing
    import threading
    from multiprocessing.connection import wait

    from .http import metrics
    from .state.redis_server import BundledRedis

    procs: list[Any] = []
    signalled: set[int] = set()
    asked: list[signal.Signals] = []  # the stop signals the parent was sent
    stop_read, stop_write = os.pipe()  # a stop signal ends the wait for the workers (the log line comes at once)
    os.set_blocking(stop_write, False)

    def stop_workers() -> None:
        for proc in procs:
            if proc.pid not in signalled and proc.is_alive():
                signalled.add(proc.pid)
                os.kill(proc.pid, signal.SIGTERM)

    def stop(signum: int, frame: Any) -> None:
        asked.append(signal.Signals(signum))
        stop_workers()
        with contextlib.suppress(OSError):  # the pipe full: it is readable anyway
            os.write(stop_write, b"\0")

    def status(proc: Any) -> int:
        if proc.exitcode is None:  # did not stop in time: killed
            return 1
        if proc.exitcode == -signal.SIGTERM and proc.pid in signalled:
            return 0
        return proc.exitcode if proc.exitcode >= 0 else 128 - proc.exitcode

    # Handlers first: a stop that comes while Redis or the workers start still stops them all.
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    bundled = None
    try:
        if settings.redis.mode == "standalone" and not settings.redis.url:  # one bundled Redis for all workers
            bundled = BundledRedis(settings.storage.redis_dir, settings.redis.appendfsync, settings.redis.server_binary)
            settings = dataclasses.replace(settings, redis=dataclasses.replace(settings.redis, url=bundled.start()))
        if settings.metrics.enabled:  # one set of values for all workers (http/metrics.py)
            metrics.prepare_multiprocess(settings.storage.data_dir)
        others = [t.name for t in threading.enumerate() if t is not threading.current_thread()]
        forked = sys.platform == "linux" and not others
        if forked:
            gc.collect()
            gc.freeze()
        elif others:
            log.warning(
                f"the workers are spawned, not forked: threads run in this process ({', '.join(others)})",
                extra={"event": "workers_spawned", "threads": others})
        ctx = multiprocessing.get_context("fork" if forked else "spawn")
        for i in range(workers):
            if asked:
                break
            # Listed before it starts: a stop from here on reaches it (here or just below).
            procs.append(ctx.Process(target=_worker, args=(settings,), name=f"vezastream-worker-{i}"))
            held = signal.pthread_sigmask(signal.SIG_BLOCK, STOPS)
            try:
                procs[-1].start()
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, held)
        ended: list[Any] = []
        if procs and not asked:  # until a worker exits or a stop comes; meanwhile the bundled Redis is kept running
            while not (ended := wait([stop_read, *(p.sentinel for p in procs)],
                                     timeout=bundled.tend() if bundled else None)):
                pass
        for proc in procs:
            if proc.sentinel in ended and proc.pid not in signalled:  # no one here asked it to stop
                proc.join(5)  # its sentinel closes as it exits, a moment before its status can be read
                _log_worker_exited(proc.pid, proc.exitcode, status(proc))
        if asked:
            _log_stopping(asked[0])
        stop_workers()
        allowed = settings.server.shutdown_timeout + STOP_MARGIN
        until = time.monotonic() + allowed
        for proc in procs:
            proc.join(max(0.0, until - time.monotonic()))
            if proc.is_alive():
                log.warning(f"worker {proc.pid} did not stop within {allowed:g} s; killed",
                            extra={"event": "worker_killed", "pid": proc.pid})
                proc.kill()
                proc.join(5)
            metrics.worker_gone(proc.pid)
        exit_status = max((status(p) for p in procs), default=0)
        _log_stopped(exit_status)
        return exit_status
    finally:
        if bundled:
            bundled.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        os.close(stop_read)
        os.close(stop_write)


def _log_worker_exited(pid: int, exitcode: int | None, exit_status: int) -> None:
    if exitcode is None:  # not reaped in time
        how, extra = "exited", {}
    elif exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:  # a real-time signal has no name of its own
            name = f"signal {-exitcode}"
        how, extra = f"was killed by {name}", {"signal": name}
    else:
        how, extra = f"exited with status {exitcode}", {}
    log.error(f"worker {pid} {how}; stopping the other workers",
              extra={"event": "worker_exited", "pid": pid, "exit_status": exit_status, **extra})


def _raise_open_files_limit() -> None:
    """Raise the soft limit on open files to the hard limit, as Go programs (tusd) do at start:
    every connection, data file and Redis connection is a file, and the usual soft default (1024)
    runs out at a few hundred uploads in flight."""
    try:
        import resource
    except ImportError:  # not a POSIX system
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError):  # beyond what the kernel allows (fs.nr_open): keep the soft limit
            pass


def _open_files_limit() -> int | None:
    """The soft limit on open files in force (None: none, or not known here)."""
    try:
        import resource
    except ImportError:  # not a POSIX system
        return None
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return None if soft == resource.RLIM_INFINITY else soft


def cmd_serve(args: argparse.Namespace) -> int:
    settings = _settings(args, **{"server.host": args.host, "server.port": args.port,
                                  "server.workers": args.workers})
    from .http.app import create_app
    from .logs import setup_logging

    app = create_app(settings)  # bad config or a broken plugin stops here, before anything starts
    # The staging folder (and the data folder around it) made here, before any worker starts: one that
    # cannot be made stops the start with one line (main), not a traceback from each worker.
    settings.storage.chunks_dir.mkdir(parents=True, exist_ok=True)
    setup_logging(settings.log.level, settings.log.format, settings.log.held_lines)
    _raise_open_files_limit()  # before the workers fork and the bundled Redis starts: they inherit it
    if settings.server.workers > 1:
        return _serve_workers(settings, settings.server.workers)
    _serve_one(settings, app=app)
    return 0


async def _gc(settings: Settings, dry_run: bool) -> int:
    from .http.app import create_app, gc_key, recover_at_start_key

    app = create_app(settings)
    app[recover_at_start_key] = False  # the pass does it (and a dry run must change nothing)
    # Run the app's own resource contexts (Redis, engine) without serving HTTP.
    async with _started(app):
        report = await app[gc_key].run_once(dry_run=dry_run)
    if report.skipped:
        print("another node is running a gc pass; nothing done")
        return 0
    verb = "would remove" if dry_run else "removed"
    for upload_id in report.removed:  # its data file or folder in the staging area
        print(f"{verb} {upload_id}")
    # Kept: the staged data of live uploads, of expired ones younger than gc.max_age, and what no
    # upload id names (docs/operations.md).
    print(f"{verb} the staged data of {len(report.removed)} upload(s), "
          f"{'would keep' if dry_run else 'kept'} {report.kept}")
    if report.aborted:  # what the sink's own sweep dropped (SweepsLeftovers), as it names it
        drop = "would drop" if dry_run else "dropped"
        for name in report.aborted:
            print(f"{drop} in the sink: {name}")
        print(f"{drop} {len(report.aborted)} leftover(s) in the sink")
    if report.recovered or report.released:  # what dead processes left: finished, or given back
        print(f"{'would recover' if dry_run else 'recovered'} {len(report.recovered)} completion(s) of dead "
              f"processes, {'would release' if dry_run else 'released'} {len(report.released)} of their lease(s)")
    if report.quota_released:  # places killed processes left held for uploads no longer pending
        print(f"{'would give back' if dry_run else 'gave back'} {len(report.quota_released)} per-user "
              "place(s) of uploads no longer pending")
    return 0


class _started:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __aenter__(self) -> Any:
        # As aiohttp's runner does: the app is frozen once started, as its cleanup contexts
        # store what they open in it while starting (aiohttp deprecates changing a started app).
        self.app.on_startup.freeze()
        try:
            await self.app.startup()
        except BaseException:  # what had started before the refusal stops
            await self.app.cleanup()
            raise
        self.app.freeze()
        return self.app

    async def __aexit__(self, *exc: Any) -> None:
        await self.app.cleanup()


def cmd_gc(args: argparse.Namespace) -> int:
    settings = _settings(args, **{"gc.enabled": False})
    _log_to_stderr(settings)
    return asyncio.run(_gc(settings, args.dry_run))


def cmd_config_show(args: argparse.Namespace) -> int:
    print(json.dumps(public_view(_settings(args)), indent=2))
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    from .plugins import build_sink, describe, make_plugin_manager, registered_sinks
    from .sinks import capabilities

    settings = _settings(args)
    _log_to_stderr(settings)  # before plugins load: what they log at import is formatted too
    pm = make_plugin_manager(settings=settings)
    for info in describe(pm):
        hooks = ", ".join(info.hooks) or "(no hooks)"
        print(f"{info.name} {info.version}: {hooks if info.enabled else '(disabled)'}")
    sinks = registered_sinks(pm)
    print(f"sinks: {', '.join(sorted(sinks))}")
    if not args.check:  # a sink's factory may touch disk or network: only when asked
        print(f"configured sink: {settings.storage.sink} "
              "(--check builds it, lists its capabilities and checks it)")
        return 0
    sink = build_sink(pm, settings)
    print(f"configured sink: {sink.name} (capabilities: {', '.join(capabilities(sink)) or 'none'})")
    return asyncio.run(_check_sink(sink))


async def _check_sink(sink: Any) -> int:
    try:
        await sink.check()
    except Exception as exc:
        print(f"sink check failed: {exc.__class__.__name__}: {exc}")
        return 1
    finally:
        await sink.aclose()
    print("sink check: ok")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vezastream", description="Resumable, chunked HTTP uploads: a native chunk API and tus 1.0.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _add_config_option(parser)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the HTTP server")
    _add_config_option(serve, default=argparse.SUPPRESS)  # after the command too; the one given wins
    serve.add_argument("--host", help="address to listen on (default: server.host in the config file, "
                                      "127.0.0.1 when unset)")
    serve.add_argument("--port", type=int, help="port to listen on (default: server.port in the config file, "
                                                "8080 when unset)")
    serve.add_argument("--workers", type=int, help="processes sharing the port (default: server.workers in the "
                                                   "config file, 1 when unset)")
    serve.set_defaults(func=cmd_serve)
    gc = sub.add_parser("gc", help="run one garbage-collection pass")
    _add_config_option(gc, default=argparse.SUPPRESS)
    gc.add_argument("--dry-run", action="store_true", help="print what would be removed; remove nothing")
    gc.set_defaults(func=cmd_gc)
    config = sub.add_parser("config", help="inspect the configuration")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    show = config_sub.add_parser("show", help="print the effective config, secrets masked")
    _add_config_option(show, default=argparse.SUPPRESS)
    show.set_defaults(func=cmd_config_show)
    plugins = sub.add_parser("plugins", help="list loaded plugins and sinks")
    _add_config_option(plugins, default=argparse.SUPPRESS)
    plugins.add_argument("--check", action="store_true",
                         help="also build the configured sink, list its capabilities and run its check")
    plugins.set_defaults(func=cmd_plugins)
    add_upload_parser(sub)
    return parser


def _add_config_option(parser: argparse.ArgumentParser, **kwargs: Any) -> None:
    parser.add_argument("--config", help=f"config file (default: ./{DEFAULT_CONFIG} if present); "
                        "VEZASTREAM_<SECTION>__<KEY> variables override it", **kwargs)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, RuntimeError) as exc:  # e.g. the bundled redis-server could not start
        return _refused(exc)
    except OSError as exc:  # a path the command needs: a file where a folder should be, a loop, no permission
        if exc.filename is None:  # not a path's: a fault of ours, shown with its traceback
            raise
        return _refused(RuntimeError(f"cannot start: {path_trouble(exc)}: {exc.filename}"))


def _refused(exc: ConfigError | RuntimeError) -> int:
    """A start or command refused: one line on stderr, and the exit status (2: the configuration)."""
    if isinstance(exc, ConfigError):
        print(f"vezastream: config error: {exc}", file=sys.stderr)
        return 2
    print(f"vezastream: {exc}", file=sys.stderr)
    return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
