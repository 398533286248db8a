"""Prometheus metrics at ``GET /metrics`` (``[metrics]``; docs/metrics.md).

Every number is taken at an edge, never inside the engine: the HTTP middleware
(requests, latency, in-flight requests, bytes, created and failed uploads), a
built-in plugin on the ``vezastream_observe_*`` notifications (completed,
aborted and expired uploads), the GC pass report, the hooks' dropped
notifications, the Redis pipeline round trip and the S3 sink's retry and error
log records. One :class:`Metrics` per app, on its own registry.

With ``vezastream serve --workers N`` the CLI points ``PROMETHEUS_MULTIPROC_DIR``
at ``<data_dir>/metrics`` before the workers start: each worker writes its
values there, and a scrape of any worker sums them all (``MultiProcessCollector``).
"""

from __future__ import annotations

import hmac
import logging
import os
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .. import errors
from ..config import ConfigError, Settings
from ..hookspecs import hookimpl
from .keys import gc_key, hooks_key
from .tus import OVERRIDES as TUS_OVERRIDES

if TYPE_CHECKING:
    from ..gc import GCReport
    from ..models import Upload, UploadResult

#: The variable prometheus-client reads (at import) to keep values in files shared by processes.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: Seconds: request latency (a chunk of many MiB on a slow link takes long) and Redis round trips.
LATENCY_BUCKETS = (.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300)
RTT_BUCKETS = (.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1)
UPLOAD_BUCKETS = (.1, .5, 1, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 24 * 3600)
#: Log records the S3 sink writes on a retry and on a failed call (``event`` member): counted by kind.
SINK_EVENTS = {"s3_retry": "retries", "sink_error": "errors"}


def prepare_multiprocess(data_dir: Path) -> Path:
    """For ``--workers N``, before the workers start: an empty folder for their values, in the environment."""
    folder = data_dir / "metrics"
    shutil.rmtree(folder, ignore_errors=True)  # values of an earlier run would be summed in
    folder.mkdir(parents=True)
    os.environ[MULTIPROC_ENV] = str(folder)
    return folder


def values_in_files() -> None:
    """In a worker forked from a parent that had imported prometheus-client before
    :func:`prepare_multiprocess`: the metrics made from here on keep their values in the
    shared folder too. (The library picks the kind of value once, when it is first
    imported, from the environment; this picks it again the same way.)"""
    import sys

    if os.environ.get(MULTIPROC_ENV) and "prometheus_client" in sys.modules:
        from prometheus_client import values
        values.ValueClass = values.get_value_class()


def worker_gone(pid: int | None) -> None:
    """A worker exited: its live gauges (in-flight requests) stop counting."""
    if pid is not None and os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess
        multiprocess.mark_process_dead(pid)


class Metrics:
    """The metric objects of one app, and the code that moves them."""

    def __init__(self, settings: Settings) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram  # after MULTIPROC_ENV is set

        self.sink = settings.storage.sink
        self.token = ""
        if settings.metrics.token_env:
            # (without the white space around it: a secret made from a file often ends in a newline)
            self.token = os.environ.get(settings.metrics.token_env, "").strip()
            if not self.token:
                raise ConfigError(f"metrics.token_env: the environment variable {settings.metrics.token_env} is empty")
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("vezastream_http_requests", "HTTP requests answered",
                                ["method", "route", "status"], registry=r)
        self.latency = Histogram("vezastream_http_request_duration_seconds", "Time to answer a request",
                                 ["method", "route"], buckets=LATENCY_BUCKETS, registry=r)
        self.in_flight = Gauge("vezastream_http_requests_in_flight", "Requests being answered now",
                               ["method", "route"], multiprocess_mode="livesum", registry=r)
        self.bytes = Counter("vezastream_received_bytes", "Upload body bytes of accepted chunk, PATCH and "
                             "creation requests", ["door"], registry=r)
        self.created = Counter("vezastream_uploads_created", "Uploads created", ["door", "sink"], registry=r)
        self.completed = Counter("vezastream_uploads_completed", "Uploads completed (object final in the sink)",
                                 ["door", "sink"], registry=r)
        self.failed = Counter("vezastream_uploads_failed", "Completion requests answered with an error",
                              ["door", "sink", "status"], registry=r)
        self.aborted = Counter("vezastream_uploads_aborted", "Uploads deleted", ["door", "sink", "reason"],
                               registry=r)
        self.expired = Counter("vezastream_uploads_expired", "Expired uploads whose chunks the GC removed",
                               ["sink"], registry=r)
        self.upload_seconds = Histogram("vezastream_upload_duration_seconds", "From creation to completion",
                                        ["door"], buckets=UPLOAD_BUCKETS, registry=r)
        self.gc = Counter("vezastream_gc_removed", "What GC passes removed or finished", ["what"], registry=r)
        self.sink_events = Counter("vezastream_sink_events", "Sink calls retried or failed, by kind",
                                   ["sink", "event", "kind"], registry=r)
        self.dropped = Counter("vezastream_hook_notifications_dropped", "Plugin notifications dropped: too many "
                               "running", ["hook"], registry=r)
        self.hook_timeouts = Counter("vezastream_hook_timeouts", "Request-path plugin calls that took longer "
                                     "than their [hooks] limit (answered 503)", ["hook", "plugin"], registry=r)
        self.redis_rtt = Histogram("vezastream_redis_roundtrip_seconds", "Time of one Redis pipeline round trip",
                                   buckets=RTT_BUCKETS, registry=r)
        self._routes: dict[tuple[str, str], tuple[Any, Any, Any, Any]] = {}  # labelled children, looked up once
        self._answered: dict[tuple[tuple[str, str], int], Any] = {}  # (method, route), status -> its counter
        self._tus_collection = {settings.tus.prefix, settings.tus.prefix.rstrip("/") or "/"}
        self._tus_item = settings.tus.prefix + "{upload_id}"
        self._tus_override = ("POST", self._tus_item)
        self._body_routes = {("PUT", "/v1/uploads/{upload_id}/chunks/{n}"), ("PATCH", self._tus_item),
                             *(("POST", c) for c in self._tus_collection)}
        self._created_routes = {("POST", "/v1/uploads"), *(("POST", c) for c in self._tus_collection)}
        self._complete_route = ("POST", "/v1/uploads/{upload_id}/complete")

    def door(self, route: str) -> str:
        if route.startswith("/v1/"):
            return "native"
        if route in self._tus_collection or route == self._tus_item:
            return "tus"
        return "other"

    # -- the HTTP edge (called by the app's edge middleware, http/app.py) --------------
    def begin(self, request: web.Request) -> tuple[tuple[str, str], tuple[Any, Any, Any, Any]]:
        """A request is being answered: its route's key and labelled metrics, for :meth:`end`."""
        resource = request.match_info.route.resource
        key = (request.method, resource.canonical if resource is not None else "unmatched")
        if key == self._tus_override:  # served as the method it names (tus.py): counted as that one
            named = request.headers.get("X-HTTP-Method-Override", "").upper()
            if named in TUS_OVERRIDES:
                key = (named, key[1])
        children = self._routes.get(key)
        if children is None:
            children = self._routes[key] = self._route_children(key)
        children[1].inc()
        return key, children

    def end(self, begun: tuple[tuple[str, str], tuple[Any, Any, Any, Any]], request: web.Request, status: int,
            seconds: float) -> None:
        """The request was answered with ``status`` (499: the client went away) after ``seconds``."""
        key, (latency, in_flight, received, created) = begun
        in_flight.dec()
        latency.observe(seconds)
        answered = self._answered.get((key, status))
        if answered is None:
            answered = self._answered[(key, status)] = self.requests.labels(key[0], key[1], str(status))
        answered.inc()
        if 200 <= status < 300:
            if received is not None:
                size = request.content_length
                received.inc(size if size is not None else request.content.total_bytes)
            if created is not None and status == 201:
                created.inc()
        elif key == self._complete_route and status >= 400:
            self.failed.labels("native", self.sink, str(status)).inc()

    def _route_children(self, key: tuple[str, str]) -> tuple[Any, Any, Any, Any]:
        """A route's labelled metrics, looked up once (``labels()`` takes a lock and a dict lookup per call):
        latency, in flight, received bytes (body routes, else None), created (creation routes, else None)."""
        door = self.door(key[1])
        return (self.latency.labels(*key), self.in_flight.labels(*key),
                self.bytes.labels(door) if key in self._body_routes else None,
                self.created.labels(door, self.sink) if key in self._created_routes else None)

    async def serve(self, request: web.Request) -> web.Response:
        if self.token:
            sent = request.headers.get("Authorization", "")
            scheme, _, token = sent.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.token.encode()):
                raise errors.Unauthorized("send Authorization: Bearer <metrics token>")
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess

        registry = self.registry
        if os.environ.get(MULTIPROC_ENV):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
        response = web.Response(body=generate_latest(registry))
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    # -- the other edges ----------------------------------------------------------------
    def gc_pass(self, report: "GCReport") -> None:
        if report.dry_run or report.skipped:
            return
        for what in ("removed", "aborted", "recovered", "released"):
            if found := len(getattr(report, what)):
                self.gc.labels(what).inc(found)

    def notification_dropped(self, hook: str) -> None:
        self.dropped.labels(hook).inc()

    def hook_timed_out(self, hook: str, plugin: str) -> None:
        self.hook_timeouts.labels(hook, plugin).inc()

    @hookimpl
    async def vezastream_observe_completion(self, upload: "Upload", result: "UploadResult") -> None:
        self.completed.labels(upload.spec.protocol, result.sink).inc()
        self.upload_seconds.labels(upload.spec.protocol).observe(max(0.0, result.completed_at - upload.spec.created_at))

    @hookimpl
    async def vezastream_observe_abort(self, upload: "Upload", reason: str) -> None:
        self.aborted.labels(upload.spec.protocol, self.sink, reason).inc()

    @hookimpl
    async def vezastream_observe_expiry(self) -> None:
        self.expired.labels(self.sink).inc()


class _SinkLog(logging.Handler):
    """Counts the sink's retry and error log records (``event`` and ``kind`` members)."""

    def __init__(self, metrics: Metrics) -> None:
        super().__init__(logging.DEBUG)
        self.metrics = metrics

    def emit(self, record: logging.LogRecord) -> None:
        event = SINK_EVENTS.get(getattr(record, "event", ""))
        if event is not None:
            self.metrics.sink_events.labels(self.metrics.sink, event, str(getattr(record, "kind", "other"))).inc()


def install(app: web.Application, settings: Settings) -> Metrics | None:
    """Add ``/metrics`` and the wiring to ``app`` (before it starts); None when off. The app's edge
    middleware calls :meth:`Metrics.begin` and :meth:`Metrics.end` around every request.

    The caller registers the returned object as a plugin (it observes notifications)."""
    if not settings.metrics.enabled:
        return None
    metrics = Metrics(settings)
    app.router.add_get("/metrics", metrics.serve, allow_head=False)

    async def wire(app: web.Application) -> AsyncIterator[None]:
        gc = app[gc_key]
        gc.on_pass = metrics.gc_pass
        app[hooks_key].on_drop = metrics.notification_dropped
        app[hooks_key].on_timeout = metrics.hook_timed_out
        gc.store.batcher.on_round_trip = metrics.redis_rtt.observe
        sink_log = _SinkLog(metrics)
        logger = logging.getLogger("vezastream")
        logger.addHandler(sink_log)
        try:
            yield
        finally:
            logger.removeHandler(sink_log)

    app.cleanup_ctx.append(wire)
    return metrics
