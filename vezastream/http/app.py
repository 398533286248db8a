"""The app factory: one ``create_app(settings)`` for ``vezastream serve`` and tests.

Resources are opened and closed in ``cleanup_ctx`` (which runs after in-flight
handlers finish), and live under typed ``web.AppKey``s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from http import HTTPStatus
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import pluggy
import redis.asyncio as aioredis
from redis.exceptions import RedisError
from aiohttp import hdrs, web
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong
from aiohttp.web_protocol import RequestPayloadError, _ErrInfo

from .. import errors
from . import metrics, request_id
from ..engine import nodes
from ..state import refusals, topology
from .auth import Authenticator, auth_middleware
from ..config import Settings
from ..engine.engine import UploadEngine
from ..engine.leases import NODE_SECONDS
from ..gc import GarbageCollector
from ..hooks import Hooks
from ..plugins import build_sink, make_plugin_manager
from .body import body_idle_key, check_codings, close_taken, zero_copy_key
from .versions import as_http11, check_version
from .native import NativeAPI
from .tus import TusAPI
from ..state.redis_server import BundledRedis
from ..staging import ChunkStaging
from ..state.store import StateStore
from ..tasks import stop
from .keys import (bundled_redis_key, engine_key, gc_key, hooks_key, on_bundled_redis_key, plugin_manager_key,
                   recover_at_start_key, redis_key, settings_key, sink_key)
from .ui import UploaderPage

log = logging.getLogger("vezastream.http")


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
#: The app's :class:`Edge` (its middleware and response hook).
edge_key = web.AppKey("edge", "Edge")


#: Headers of every answer. ``Server``: the product alone; aiohttp's own ("Python/3.11 aiohttp/3.14.5")
#: would tell anyone probing the server which published advisories to try. ``nosniff``: a browser
#: takes each answer as the type it says (JSON stays JSON), never as a page or script it guessed.
EVERY_ANSWER = {hdrs.SERVER: "vezastream", hdrs.X_CONTENT_TYPE_OPTIONS: "nosniff"}


def name_server(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.update(EVERY_ANSWER)


#: The problem type an answer carries (``body-idle``...), for the request's log line.
problem_key = web.ResponseKey("vezastream_problem", str)


def problem_response(exc: errors.UploadError, request: web.Request) -> web.Response:
    """problem+json; a status HTTP does not name (tus's 460) gets the error's title as its
    reason phrase, and a ``retry_after`` member is also sent as ``Retry-After``."""
    known = exc.status in HTTPStatus._value2member_map_
    body = {**exc.problem(request.path), "request_id": request.get(request_id.request_id_key)}
    response = web.json_response(body, status=exc.status, reason=None if known else exc.title,
                                 content_type="application/problem+json")
    response[problem_key] = exc.code
    if exc.status == 401:  # RFC 9110: a 401 names the scheme it wants
        response.headers["WWW-Authenticate"] = 'Bearer realm="vezastream"'
    retry_after = exc.extra.get("retry_after")
    if isinstance(retry_after, int) and not isinstance(retry_after, bool):
        response.headers["Retry-After"] = str(retry_after)
    return response


_HTTP_ERRORS = {400: errors.BadRequest, 404: errors.NotFound, 405: errors.MethodNotAllowed,
                413: errors.TooLarge, 415: errors.UnsupportedMediaType}


class ProblemRequestHandler(web.RequestHandler):
    """aiohttp's connection handler, whose own error answers are problem+json.

    aiohttp's HTTP parser rejects a malformed request line, a line or header over
    the size limit, or broken chunked framing before any middleware runs, and
    answers ``text/plain`` that echoes the offending bytes. Here the answer comes
    from the error catalog, with no echo, and the log gets one line, not a traceback.
    A body found malformed fails for its request, whose answer is the only one.

    aiohttp has no public hook for either: this reads ``_messages`` and overrides
    ``data_received``, ``handle_error`` and ``log_exception``; tests/api/test_bad_input.py pins
    the behaviour against a real ``vezastream serve``.

    Two timeouts where aiohttp has one (``keepalive_timeout``, from a connection's opening
    and from each response until a whole request has come): an idle connection is kept
    ``keepalive_timeout`` after a response, but once the next request's first byte arrives,
    or from its opening, its headers must be whole within ``header_timeout``. A proxy that
    keeps connections to the server open for less than the former never sends a request on a
    connection the server is closing, and a client trickling headers holds it no longer than
    the latter. This moves aiohttp's own close timer (``_next_keepalive_close_time``,
    ``_keepalive_handle``); tests/integration/test_header_timeout.py pins it.
    """

    #: The body of the last request the parser delivered on this connection, while it is unfinished.
    _body: Any = None

    def __init__(self, manager: web.Server, *, header_timeout: float = 0.0, send_timeout: float = 0.0,
                 **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._header_timeout = header_timeout
        self._send_timeout = send_timeout

    @property
    def busy(self) -> bool:
        """A request is being handled on this connection (aiohttp's ``_request_in_progress``)."""
        return self._request_in_progress

    def cut(self) -> asyncio.Task[None] | None:
        """Close the connection under its request: a body being read ends as if the client had gone
        (what came is kept where the protocol keeps it, the request lets go of its leases). Returns
        the task handling the connection, which aiohttp forgets once the connection is lost: cancelling
        it cancels the request's handler."""
        task = self._task_handler
        if self.transport is not None:
            self.transport.close()
        return task

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self._header_timeout:
            self._headers_due()
        if self._send_timeout:
            _cut_stalled_readers(transport, self._send_timeout)

    def _headers_due(self) -> None:
        """Bring the connection's close forward to ``header_timeout`` from now, unless it comes sooner;
        it happens only if no whole request has come by then (aiohttp's ``_process_keepalive``)."""
        loop = self._loop
        due = loop.time() + self._header_timeout
        if due < self._next_keepalive_close_time:
            self._next_keepalive_close_time = due
            if self._keepalive_handle is not None:
                self._keepalive_handle.cancel()
            self._keepalive_handle = loop.call_at(due, self._process_keepalive)

    def data_received(self, data: bytes) -> None:
        waiter = self._waiter
        if waiter is not None and self._header_timeout and not waiter.done():
            self._headers_due()  # idle until now: these bytes begin the next request
        queued = len(self._messages)
        super().data_received(data)
        if len(self._messages) == queued:  # more of a body (most calls): no copy of the queue
            if self._body is not None and self._body.is_eof():
                self._body = None
            return
        new = list(self._messages)[queued:]
        for message, payload in new:
            if not isinstance(message, _ErrInfo):
                self._body = payload
        # A body that turns out malformed (chunk framing, content coding): aiohttp's parser
        # queues its error as the next "request", which would get an answer of its own after
        # the request it belongs to, and may drop the body without telling the handler reading
        # it (which then waits for the rest until the client gives up). Instead the request's
        # body fails, its answer is the only one, and the connection closes after it.
        body, self._body = self._body, None
        if body is None or body.is_eof():
            return
        if new and isinstance(new[-1][0], _ErrInfo):
            self._messages.pop()
            if body.exception() is None:
                body.set_exception(RequestPayloadError("malformed request body"))
            self.close()
        else:
            self._body = body

    def log_exception(self, *args: Any, **kw: Any) -> None:
        """A client's malformed body (found while aiohttp reads what a handler left unread)
        is one warning line, not a traceback."""
        exc = kw.get("exc_info")
        if isinstance(exc, (RequestPayloadError, BadHttpMessage)):
            log.warning("malformed request body", extra={"error": type(exc.__cause__ or exc).__name__})
            return
        super().log_exception(*args, **kw)

    def handle_error(self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if request.writer.output_size > 0:  # as aiohttp does: a response has begun, the connection is done
            raise ConnectionError("a response was already sent")
        if _client_gone(request, exc):  # an everyday event, logged by Edge as its request's line (499)
            response = web.Response(status=400)
            response.force_close()
            return response
        err: errors.UploadError
        if isinstance(exc, LineTooLong):
            err = errors.HeadersTooLarge("the request line or a header field is longer than the server accepts")
        elif 400 <= status < 500:
            err = errors.BadRequest("the request is not valid HTTP/1.1")
        else:
            err = errors.UploadError("unexpected server error")
        rid = request_id.new_id()  # its headers may not even have parsed
        if err.status >= 500:
            log.error("unhandled error", exc_info=exc, extra={"request_id": rid})
        else:
            log.warning("malformed HTTP request", extra={"status": err.status, "remote": request.remote,
                                                         "error": type(exc).__name__, "request_id": rid})
        response = web.json_response({**err.problem(), "request_id": rid}, status=err.status,
                                     headers={request_id.HEADER: rid, **EVERY_ANSWER},
                                     content_type="application/problem+json")
        response.force_close()
        return response


def _client_gone(request: web.BaseRequest, exc: BaseException | None = None) -> bool:
    """Whether the client went away before its answer (with ``exc``: that this is what ``exc`` says,
    a reset or close met while its body was read, and not a fault of ours): its connection is
    closed or closing."""
    transport = request.transport
    gone = transport is None or transport.is_closing()
    return gone and (exc is None or isinstance(exc, ConnectionResetError))


def _cut_stalled_readers(transport: asyncio.BaseTransport, seconds: float) -> None:
    """The kernel closes the connection once bytes sent on it wait ``seconds`` for the client to
    take them: a client that stopped reading a download (its receive window shut), or that is gone.
    A client that reads, however slowly, opens its window again and is not cut. Linux only
    (``TCP_USER_TIMEOUT``, which older kernels did not apply to a shut window;
    tests/integration/test_stalled_readers.py checks it on the kernel it runs on)."""
    option = getattr(socket, "TCP_USER_TIMEOUT", None)
    sock = transport.get_extra_info("socket")
    if option is None or sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, option, int(seconds * 1000))


class _ProblemServer(web.Server):
    def __call__(self) -> web.RequestHandler:
        return ProblemRequestHandler(self, loop=self._loop, **self._kwargs)


#: Seconds between cutting the connections still busy at the drain's deadline and cancelling what
#: still runs (a completion reads no body), and then for the cancelled handlers to unwind.
CUT_GRACE = 2.0


class AppRunner(web.AppRunner):
    """``web.AppRunner`` whose connections use :class:`ProblemRequestHandler`, and whose stop is bounded.

    aiohttp offers no setting for the handler class, so the server aiohttp builds
    is rebuilt as a :class:`_ProblemServer` with the same arguments.

    Its stop (:meth:`cleanup`, then :func:`drain`): the listening sockets close (a new connection
    is refused), then the idle connections; every answer from then on says ``Connection: close``
    (:class:`Edge`); requests in flight run for up to ``drain_timeout`` seconds (less after
    :meth:`hurry`). Then their connections are cut (a body ends as if its client had gone), and
    :data:`CUT_GRACE` later what still runs is cancelled (a completion: the upload is pending
    again, its lease given back) and awaited for as long again. aiohttp's own wait
    (``shutdown_timeout``, which it spends twice, and whose cancellation a body read into our
    buffers does not notice) then finds nothing left.
    """

    def __init__(self, app: web.Application, *, drain_timeout: float = 20.0, **kwargs: Any) -> None:
        super().__init__(app, shutdown_timeout=CUT_GRACE, **kwargs)
        self._drain_timeout = drain_timeout
        self._hurry = asyncio.Event()

    def hurry(self) -> None:
        """End the drain now (``vezastream serve``: a second stop signal); the cut and what follows go on."""
        self._hurry.set()

    async def _make_server(self) -> web.Server:
        made = await super()._make_server()
        return _ProblemServer(made.request_handler, request_factory=as_http11(made.request_factory),
                              handler_cancellation=made.handler_cancellation, loop=made._loop, **made._kwargs)

    async def cleanup(self) -> None:
        edge = self.app.get(edge_key)
        if edge is not None:
            edge.draining = True
        await super().cleanup()

    async def shutdown(self) -> None:
        """After aiohttp closed the listening sockets and the idle connections: the drain."""
        await super().shutdown()
        if self.server is not None:
            await drain([c for c in self.server.connections if isinstance(c, ProblemRequestHandler)],
                        self._drain_timeout, self._hurry)


async def drain(connections: list[ProblemRequestHandler], timeout: float, hurry: asyncio.Event) -> None:
    """Wait up to ``timeout`` (or until ``hurry`` is set) for ``connections``' requests to end; cut
    those that have not, and :data:`CUT_GRACE` later cancel those that still run."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    deadline = started + timeout
    busy = [c for c in connections if c.busy]
    for conn in connections:  # idle (aiohttp's pre_shutdown only stopped their wait for a request): closed now
        if not conn.busy:
            conn.force_close()
    while busy and loop.time() < deadline and not hurry.is_set():
        await asyncio.sleep(min(0.05, deadline - loop.time()))
        busy = [c for c in busy if c.busy]
    if not busy:
        return
    waited = loop.time() - started
    log.warning(f"stopping: {len(busy)} request(s) still in flight after {waited:.1f} s; their connections are cut",
                extra={"event": "drain_cut", "requests": len(busy)})
    tasks = [task for conn in busy if (task := conn.cut()) is not None]
    if tasks:
        _, running = await asyncio.wait(tasks, timeout=CUT_GRACE)
        for task in running:
            task.cancel()
        if running:
            await asyncio.wait(running, timeout=CUT_GRACE)


def answer_error(exc: Exception, request: web.Request) -> web.StreamResponse | None:
    """The problem+json answer to what a handler raised; None for what is not answered here (a redirect,
    a client gone away), which the caller raises on. A traceback never reaches a client."""
    if isinstance(exc, errors.UploadError):
        if isinstance(exc, errors.StorageFailed):  # a tus completion's, told anew (layouts/append.py)
            _disk_failed(request)
        return problem_response(exc, request)
    if isinstance(exc, web.HTTPException):
        if exc.status < 400:
            return None
        cls = _HTTP_ERRORS.get(exc.status)
        resp = problem_response(cls(exc.reason) if cls else errors.UploadError(exc.reason), request)
        resp.set_status(exc.status)
        if "Allow" in exc.headers:
            resp.headers["Allow"] = exc.headers["Allow"]
        return resp
    if isinstance(exc, (RequestPayloadError, BadHttpMessage)):  # a body aiohttp could not parse (framing, encoding)
        return problem_response(errors.BadRequest("the request body is malformed"), request)
    if isinstance(exc, RedisError):
        answer = refusals.problem(exc)
        log.error("state store error", extra={"path": request.path, "error": f"{type(exc).__name__}: {exc}",
                                              "problem": answer.code})
        return problem_response(answer, request)
    if isinstance(exc, ConnectionResetError):  # the client went away
        return None
    full = errors.exhausted(exc) or errors.disk_failed(exc) or errors.unusable_folder(exc)
    if full is not None:  # nothing was recorded: the client retries once there is room (or a writable disk)
        log.error(full.detail, extra={"path": request.path, "error": getattr(exc, "strerror", None)})
        if isinstance(full, errors.StorageFailed):
            _disk_failed(request)
        return problem_response(full, request)
    log.exception("unhandled error", extra={"path": request.path})
    return problem_response(errors.UploadError("unexpected server error"), request)


def _disk_failed(request: web.Request) -> None:
    """The staging disk failed a request with an I/O error: readiness fails until it writes again."""
    engine = request.app.get(engine_key)
    if engine is not None:
        engine.staging.io_failed()


HeaderHook = Callable[[web.Request, web.StreamResponse], None]


class Edge:
    """What every request passes on its way in and out, as one middleware and one response hook.

    In: its id (``request_id.py``), its metrics (``metrics.py``). Out: what the handler raised
    as problem+json (:func:`answer_error`), a connection whose body aiohttp found malformed
    closed after the answer (aiohttp then does not read the body again, which would raise anew),
    the metrics and the request's log line. As the answer is prepared: the doors' headers
    (CORS, tus), ``X-Request-ID``, and the rest of a body read straight into buffers drained
    (``Connection: close`` when it cannot be, ``body.close_taken``). One coroutine layer
    instead of one per concern (issue 19).
    """

    def __init__(self, meter: metrics.Metrics | None, header_hooks: Iterable[HeaderHook]) -> None:
        self.metrics = meter
        self.header_hooks = (*header_hooks, request_id.add_header, name_server)
        #: The server is stopping (:class:`AppRunner`): each answer closes its connection.
        self.draining = False

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        token = request_id.begin(request)
        begun = self.metrics.begin(request) if self.metrics is not None else None
        started = time.perf_counter()
        status, problem = 499, None  # the client went away (or the handler was cancelled)
        try:
            try:
                check_version(request)
                check_codings(request)
                response = await handler(request)
            except Exception as exc:
                answer = answer_error(exc, request)
                if answer is None:
                    raise
                response = answer
            status, problem = response.status, response.get(problem_key)
            if status < 400 and _client_gone(request):  # e.g. a tus PATCH that kept what came before the drop
                status = 499
            if request.content.exception() is not None:
                response.force_close()
                request.content.feed_eof()
            return response
        except web.HTTPException as exc:  # a redirect or such
            status = exc.status
            raise
        finally:
            seconds = time.perf_counter() - started
            if begun is not None:
                self.metrics.end(begun, request, status, seconds)  # type: ignore[union-attr]
            if log.isEnabledFor(logging.INFO):
                extra: dict[str, Any] = {"method": request.method, "path": request.path, "status": status,
                                         "ms": round(seconds * 1000, 1)}
                if "upload_id" in request.match_info:
                    extra["upload_id"] = request.match_info["upload_id"]
                if problem is not None:
                    extra["problem"] = problem
                log.info("request", extra=extra)
            request_id.end(token)

    async def on_response_prepare(self, request: web.Request, response: web.StreamResponse) -> None:
        for add in self.header_hooks:
            add(request, response)
        if self.draining:  # aiohttp closes it after the answer: say so, and a client or proxy does not reuse it
            response.force_close()
            response.headers["Connection"] = "close"  # the headers were prepared before this hook
        await close_taken(request, response)


#: Seconds a starting worker waits for a bundled Redis that another process (re)starts.
REDIS_START_WAIT = 10


async def _redis_ctx(app: web.Application) -> AsyncIterator[None]:
    """The Redis client for ``redis.mode`` (state/topology.py); with a standalone ``redis.url`` empty, the bundled
    server too, supervised (restarted when it dies) by one process of the data_dir at a time, the others
    standing by to take it over (state/redis_server.py). Commands are not
    retried: one that meets a dead or restarting server answers 503, and the pool connects afresh for the
    next one."""
    settings = app[settings_key]
    bundled = None
    url = settings.redis.url
    if settings.redis.mode == "standalone" and not url:
        bundled = BundledRedis(settings.storage.redis_dir, settings.redis.appendfsync, settings.redis.server_binary)
        url = bundled.start()
        app[bundled_redis_key] = bundled  # ours, or another process's that this one stands by to take over
    supervisor = None
    try:
        async with topology.connect(settings.redis, url) as client:
            app[on_bundled_redis_key] = url == BundledRedis(settings.storage.redis_dir).url
            if app[on_bundled_redis_key]:
                await _until_answers(client)  # another process supervises it: it may be restarting
            await topology.check_mode(settings.redis, client)
            await topology.check_start(settings.redis, client, settings.redis.key_prefix)
            await _warn_of_too_few_replicas(settings, client)
            await _warn_of_eviction(client)
            app[redis_key] = client
            if bundled_redis_key in app:
                supervisor = asyncio.create_task(_supervise(app[bundled_redis_key]))
            try:
                yield
            finally:
                if supervisor:
                    await stop(supervisor)
    finally:
        if bundled:
            bundled.stop()


async def _warn_of_too_few_replicas(settings: Settings, client: Any) -> None:
    """A start with fewer replicas than ``redis.min_replica_acks`` goes on (one may attach later), but says
    so: until then every chunk answers 503, and readiness fails (``too-few-replicas``)."""
    try:
        await topology.check_replicas(client, settings.redis.min_replica_acks)
    except topology.TooFewReplicas as exc:
        log.warning(f"{exc}: every chunk and tus PATCH answers 503 until enough replicas attach",
                    extra={"event": "too-few-replicas", "min_replica_acks": exc.wanted, "replicas": exc.short})


async def _warn_of_eviction(client: Any) -> None:
    """A Redis that may evict keys to make room may drop an upload's state mid-way: the start goes on, but says so."""
    policies = await topology.evicting(client)
    if policies:
        log.warning("Redis may evict upload state to make room (maxmemory-policy is not noeviction); an upload "
                    "whose keys go must be sent again", extra={"event": "redis-may-evict", "policies": policies})


async def _until_answers(client: aioredis.Redis) -> None:
    deadline = time.monotonic() + REDIS_START_WAIT
    while time.monotonic() < deadline:
        with contextlib.suppress(RedisError):
            await client.ping()
            return
        await asyncio.sleep(0.1)


async def _supervise(bundled: BundledRedis) -> None:
    while True:
        await asyncio.sleep(bundled.tend())


def redis_topology(app: web.Application) -> dict[str, Any] | Awaitable[dict[str, Any]]:
    """What readiness shows about Redis: no URL, no path (cluster and sentinel: asked of them)."""
    settings = app[settings_key]
    if settings.redis.mode != "standalone":
        return topology.describe(settings.redis, app[redis_key])
    bundled = app.get(bundled_redis_key)
    if bundled is not None and bundled.proc is not None:
        return {"mode": "bundled", "supervisor": "this process", "state": bundled.state,
                "restarts": bundled.restarts}
    if app.get(on_bundled_redis_key):  # a worker, or gc
        return {"mode": "bundled", "supervisor": "another process"}
    return {"mode": "external"}


async def _engine_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[settings_key]
    sink = app[sink_key]
    store = StateStore(app[redis_key], settings.redis.key_prefix,
                       replica_acks=(settings.redis.min_replica_acks, settings.redis.replica_ack_timeout))
    staging = ChunkStaging(settings.storage.chunks_dir, durable=settings.storage.durable,
                           direct_io=settings.storage.direct_io)
    settings.storage.chunks_dir.mkdir(parents=True, exist_ok=True)
    staging.start_kernel_io(settings.storage.kernel_io)
    app[engine_key] = engine = UploadEngine(settings, store, staging, sink, hooks=app[hooks_key])
    app[gc_key] = GarbageCollector(settings, store, staging, sink=sink, hooks=app[hooks_key], engine=engine)
    for node in nodes.departed(settings.storage.nodes_dir):  # dead processes of this data folder
        await store.leave(node)
    held = nodes.hold(settings.storage.nodes_dir, engine.leases.node)
    beat = nodes.beat_value(settings)
    beating = None
    try:
        await store.beat(engine.leases.node, NODE_SECONDS, beat)  # alive before its first lease (state/store.py)
        await nodes.refuse_other_data_dirs(store, engine.leases.node, beat)  # a ConfigError stops the start-up
        beating = asyncio.create_task(engine.leases.keep_alive(beat))
        yield
    finally:
        if beating is not None:
            await stop(beating)
        with contextlib.suppress(RedisError, OSError):
            await store.leave(engine.leases.node)  # what it still holds may be taken over at once
        nodes.release(settings.storage.nodes_dir, engine.leases.node, held)
        await app[engine_key].close()
        staging.close()
        await sink.aclose()
        await store.aclose()


async def _hooks_ctx(app: web.Application) -> AsyncIterator[None]:
    """At shutdown, let running plugin notifications finish (bounded), then cancel them."""
    yield
    await app[hooks_key].aclose()


async def _gc_ctx(app: web.Application) -> AsyncIterator[None]:
    """The GC's passes (when enabled), at start-up the recovery of what a dead process left, and the
    sweep of the whole uploads watches noted (always)."""
    gc = app[gc_key]
    tasks = [asyncio.create_task(gc.recover_after_start())] if app[recover_at_start_key] else []
    tasks.append(asyncio.create_task(gc.sweep_unfinished_forever()))
    if app[settings_key].gc.enabled:
        tasks.append(asyncio.create_task(gc.run_forever()))
    try:
        yield
    finally:
        await stop(*tasks)  # (a start-up recovery that lost its cancel in a Redis command slept 6 s on)


def create_app(settings: Settings, *, plugins: Iterable[Any] = (),
               plugin_manager: pluggy.PluginManager | None = None) -> web.Application:
    """Build the app; raises ``ConfigError`` (before anything starts) on bad config or plugins."""
    pm = plugin_manager or make_plugin_manager(plugins, settings=settings)
    sink = build_sink(pm, settings)
    app = web.Application(client_max_size=int(settings.server.max_json_body))
    app[settings_key] = settings
    app[plugin_manager_key] = pm
    app[sink_key] = sink
    app[hooks_key] = hooks = Hooks(pm, settings)
    app[recover_at_start_key] = True
    # Cleanup runs in reverse: the GC stops, then notifications drain, then the engine and Redis close.
    app.cleanup_ctx.extend([_redis_ctx, _engine_ctx, _hooks_ctx, _gc_ctx])
    # The engine exists once the app starts; handlers look it up per request.
    native = NativeAPI(lambda: app[engine_key], Authenticator(settings), redis_topology=lambda: redis_topology(app),
                       cors_origins=settings.native.cors_origins)
    app.router.add_routes(native.routes())
    tus = TusAPI(lambda: app[engine_key], Authenticator(settings), settings.tus)
    app.router.add_routes(tus.routes())
    if settings.ui.enabled:
        app.router.add_routes(UploaderPage(settings).routes())
    app[zero_copy_key] = bool(settings.server.zero_copy_bodies)
    app[body_idle_key] = float(settings.server.body_idle_timeout)
    observer = metrics.install(app, settings)
    if observer is not None:
        pm.register(observer, name="vezastream.metrics")
    app[edge_key] = edge = Edge(observer, (native.add_headers, tus.add_headers))
    app.middlewares.append(edge.middleware)
    if hooks.implementations("vezastream_authenticate_request"):
        app.middlewares.append(auth_middleware(hooks))
    app.on_response_prepare.append(edge.on_response_prepare)
    return app
