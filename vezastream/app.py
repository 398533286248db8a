"""The app factory: one ``create_app(settings)`` for ``vezastream serve`` and tests.

Resources are opened and closed in ``cleanup_ctx`` (which runs after in-flight
handlers finish), and live under typed ``web.AppKey``s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from http import HTTPStatus
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import pluggy
import redis.asyncio as aioredis
from redis.exceptions import RedisError
from aiohttp import web

from . import errors
from .auth import Authenticator
from .config import Settings
from .engine import UploadEngine
from .gc import GarbageCollector
from .hooks import Hooks, auth_middleware
from .plugins import build_sink, make_plugin_manager
from .protocols.body import body_idle_key, close_taken, zero_copy_key
from .protocols.native import NativeAPI
from .protocols.tus import TusAPI
from .redis_server import BundledRedis
from .sinks import Sink
from .staging import ChunkStaging
from .state import StateStore

log = logging.getLogger("vezastream.http")

settings_key = web.AppKey("settings", Settings)
plugin_manager_key = web.AppKey("plugin_manager", pluggy.PluginManager)
sink_key = web.AppKey("sink", Sink)
redis_key = web.AppKey("redis", aioredis.Redis)
engine_key = web.AppKey("engine", UploadEngine)
gc_key = web.AppKey("gc", GarbageCollector)
hooks_key = web.AppKey("hooks", Hooks)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def problem_response(exc: errors.UploadError, request: web.Request) -> web.Response:
    """problem+json; a status HTTP does not name (tus's 460) gets the error's title as its
    reason phrase, and a ``retry_after`` member is also sent as ``Retry-After``."""
    known = exc.status in HTTPStatus._value2member_map_
    response = web.json_response(exc.problem(request.path), status=exc.status, reason=None if known else exc.title,
                                 content_type="application/problem+json")
    retry_after = exc.extra.get("retry_after")
    if isinstance(retry_after, int) and not isinstance(retry_after, bool):
        response.headers["Retry-After"] = str(retry_after)
    return response


_HTTP_ERRORS = {400: errors.BadRequest, 404: errors.NotFound, 405: errors.MethodNotAllowed,
                413: errors.TooLarge, 415: errors.UnsupportedMediaType}


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure becomes problem+json; a traceback never reaches a client."""
    started = time.monotonic()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except errors.UploadError as exc:
        status = exc.status
        return problem_response(exc, request)
    except web.HTTPException as exc:
        status = exc.status
        if exc.status < 400:
            raise
        cls = _HTTP_ERRORS.get(exc.status)
        err = cls(exc.reason) if cls else errors.UploadError(exc.reason)
        resp = problem_response(err, request)
        resp.set_status(exc.status)
        for name in ("Allow",):
            if name in exc.headers:
                resp.headers[name] = exc.headers[name]
        return resp
    except RedisError as exc:
        status = 503
        log.error("state store error", extra={"path": request.path, "error": repr(exc)})
        return problem_response(errors.Unavailable("the state store is unavailable; retry later"), request)
    except (ConnectionResetError, asyncio.CancelledError):
        status = 499  # the client went away
        raise
    except Exception:
        log.exception("unhandled error", extra={"path": request.path})
        return problem_response(errors.UploadError("unexpected server error"), request)
    finally:
        extra: dict[str, Any] = {"method": request.method, "path": request.path, "status": status,
                                 "ms": round((time.monotonic() - started) * 1000, 1)}
        if "upload_id" in request.match_info:
            extra["upload_id"] = request.match_info["upload_id"]
        log.info("request", extra=extra)


async def _redis_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[settings_key]
    bundled = None
    url = settings.redis.url
    if not url:
        bundled = BundledRedis(settings.storage.redis_dir, settings.redis.appendfsync)
        url = bundled.start()
    # A blocking pool: under load, requests wait for a connection instead of failing.
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=settings.redis.max_connections, timeout=10, decode_responses=True)
    client = aioredis.Redis.from_pool(pool)
    try:
        await client.ping()
        app[redis_key] = client
        yield
    finally:
        await client.aclose()
        if bundled:
            bundled.stop()


async def _engine_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[settings_key]
    sink = app[sink_key]
    store = StateStore(app[redis_key], settings.redis.key_prefix)
    staging = ChunkStaging(settings.storage.chunks_dir, durable=settings.storage.durable,
                           direct_io=settings.storage.direct_io)
    settings.storage.chunks_dir.mkdir(parents=True, exist_ok=True)
    app[engine_key] = UploadEngine(settings, store, staging, sink, hooks=app[hooks_key])
    app[gc_key] = GarbageCollector(settings, store, staging, sink=sink, hooks=app[hooks_key])
    try:
        yield
    finally:
        await app[engine_key].catch_up.close()
        staging.close()
        await sink.aclose()
        await store.aclose()


async def _hooks_ctx(app: web.Application) -> AsyncIterator[None]:
    """At shutdown, let running plugin notifications finish (bounded), then cancel them."""
    yield
    await app[hooks_key].drain()


async def _gc_ctx(app: web.Application) -> AsyncIterator[None]:
    if not app[settings_key].gc.enabled:
        yield
        return
    task = asyncio.create_task(app[gc_key].run_forever())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def create_app(settings: Settings, *, plugins: Iterable[Any] = (),
               plugin_manager: pluggy.PluginManager | None = None) -> web.Application:
    """Build the app; raises ``ConfigError`` (before anything starts) on bad config or plugins."""
    pm = plugin_manager or make_plugin_manager(plugins, settings=settings)
    sink = build_sink(pm, settings)
    app = web.Application(middlewares=[error_middleware], client_max_size=int(settings.server.max_json_body))
    app[settings_key] = settings
    app[plugin_manager_key] = pm
    app[sink_key] = sink
    app[hooks_key] = hooks = Hooks(pm, settings)
    # Cleanup runs in reverse: the GC stops, then notifications drain, then the engine and Redis close.
    app.cleanup_ctx.extend([_redis_ctx, _engine_ctx, _hooks_ctx, _gc_ctx])
    if hooks.implementations("vezastream_authenticate_request"):
        app.middlewares.append(auth_middleware(hooks))
    # The engine exists once the app starts; handlers look it up per request.
    app.router.add_routes(NativeAPI(lambda: app[engine_key], Authenticator(settings)).routes())
    tus = TusAPI(lambda: app[engine_key], Authenticator(settings), settings.tus)
    app.router.add_routes(tus.routes())
    app.on_response_prepare.append(tus.on_response_prepare)
    app[zero_copy_key] = bool(settings.server.zero_copy_bodies)
    app[body_idle_key] = float(settings.server.body_idle_timeout)
    app.on_response_prepare.append(close_taken)  # bodies read straight into buffers
    return app
