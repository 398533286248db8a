"""The host side of the plugin hooks: how the engine and the HTTP layer call them.

pluggy calls functions and does not await; :class:`Hooks` calls each
implementation itself, in pluggy's call order, awaits what is awaitable, and
knows which plugin answered or failed (so errors and logs can name it).

* request-path hooks (authenticate, validate, inspect) run one after the
  other and may answer or reject, each within its ``[hooks]`` timeout (past
  it: 503 naming the plugin). A validator or inspector written as a plain
  function runs in one of a few threads of its hook's own (``HOOK_THREADS``), so
  that a blocking one (a quota database, a scanner read through
  ``source.files``) holds neither the event loop nor, past its timeout, the
  request; a plain ``authenticate`` runs on the event loop (every request
  calls it: no thread trip);
* ``vezastream_observe_*`` notifications become background tasks with a
  timeout, tracked so that shutdown can drain them; their failures are logged,
  never raised into an upload. An observer written as a plain function runs
  in one of a few threads of its own (``NOTIFY_THREADS``), so that one that
  blocks (``time.sleep``, a blocking HTTP call) holds neither a request nor
  the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import pluggy

from . import errors
from .config import Settings
from .models import ChunkRecord, Upload, UploadResult, UploadSpec
from .naming import safe_key
from .sinks import ChunkSource

log = logging.getLogger("vezastream.plugins")

#: Seconds one notification may run before it is cancelled.
NOTIFY_TIMEOUT = 30.0
#: Notifications running at once, at most; past this, new ones are dropped (and counted),
#: so a plugin slower than the upload rate cannot make the server run out of memory.
MAX_PENDING = 10_000
#: Seconds shutdown waits for pending notifications before cancelling them.
DRAIN_TIMEOUT = 10.0
#: Threads that run the observers written as plain functions (one app's; made at the first such call).
NOTIFY_THREADS = 4
#: Threads that run the validators written as plain functions, and as many the inspectors (the same;
#: a pool each, so that long scans never hold up an upload's creation).
HOOK_THREADS = 4
#: Seconds a plain ``authenticate`` may hold the event loop before a warning names it (it cannot be
#: stopped, and nothing else is served meanwhile).
LOOP_HELD_WARNING = 0.1
#: Suffix of the name under which the object a plugin's configure hook returns is registered.
CONFIGURED_SUFFIX = ".configured"


class Hooks:
    """Calls plugin hooks for one app; ``Hooks(None, settings)`` calls nothing."""

    def __init__(self, pm: pluggy.PluginManager | None, settings: Settings,
                 notify_timeout: float = NOTIFY_TIMEOUT, max_pending: int = MAX_PENDING) -> None:
        self.pm = pm
        self.settings = settings
        self.notify_timeout = notify_timeout
        self.max_pending = max_pending
        #: Notifications dropped because ``max_pending`` were already running.
        self.dropped = 0
        #: Told the hook's name of each dropped notification (the metrics count them).
        self.on_drop: Callable[[str], None] | None = None
        #: Told the hook's and the plugin's name of each request-path call past its ``[hooks]`` limit.
        self.on_timeout: Callable[[str, str], None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._threads: _Threads | None = None  # the observers'
        self._hook_threads: dict[str, _Threads] = {}  # the plain validators', and the inspectors'

    def implementations(self, hook_name: str) -> list[pluggy.HookImpl]:
        """The implementations of ``hook_name`` in the order pluggy would call them."""
        if self.pm is None:
            return []
        caller = getattr(self.pm.hook, hook_name, None)
        if caller is None:
            return []
        # pluggy calls the list from its end (tryfirst last in the list, trylast first).
        return list(reversed(caller.get_hookimpls()))

    @staticmethod
    def plugin_name(impl: pluggy.HookImpl) -> str:
        """The plugin's own name, also for the object its configure hook returned."""
        return impl.plugin_name.removesuffix(CONFIGURED_SUFFIX)

    @staticmethod
    def _call(impl: pluggy.HookImpl, kwargs: dict[str, Any]) -> Any:
        """Call one implementation with only the arguments it names (as pluggy does)."""
        optional = {name: kwargs[name] for name in impl.kwargnames if name in kwargs}
        return impl.function(*[kwargs[name] for name in impl.argnames], **optional)

    # -- request path -------------------------------------------------------------
    async def _answer(self, impl: pluggy.HookImpl, hook_name: str, kwargs: dict[str, Any], timeout: float,
                      threaded: bool) -> Any:
        """One implementation's answer within ``timeout`` seconds: a plain function called here, or in
        one of the hook threads when ``threaded``; whatever is awaitable, awaited. Past ``timeout``:
        ``Unavailable`` naming the plugin, the coroutine cancelled (a thread's call is left to end)."""
        if threaded and not inspect.iscoroutinefunction(impl.function):
            threads = self._hook_threads.get(hook_name)
            if threads is None:
                kind = hook_name.removeprefix("vezastream_").split("_")[0]  # "validate", "inspect"
                threads = self._hook_threads[hook_name] = _Threads(HOOK_THREADS, f"vezastream-{kind}")
            answer = threads.submit(self._call, impl, kwargs)
        else:
            started = time.monotonic()
            answer = self._call(impl, kwargs)
            held = time.monotonic() - started
            if held >= LOOP_HELD_WARNING:
                log.warning("plugin held the event loop", extra={
                    "event": "plugin_held_loop", "plugin": self.plugin_name(impl), "hook": hook_name,
                    "seconds": round(held, 3)})
        if not inspect.isawaitable(answer):
            return answer
        bound = asyncio.timeout(timeout)
        try:
            async with bound:
                answer = await answer
                if inspect.isawaitable(answer):  # a plain function that returned a coroutine
                    answer = await answer
        except TimeoutError:
            if not bound.expired():  # the plugin's own (its HTTP client's, say): a failure like any other
                raise
            name = self.plugin_name(impl)
            log.error("plugin timed out", extra={"event": "plugin_timeout", "plugin": name, "hook": hook_name,
                                                 "seconds": timeout})
            if self.on_timeout is not None:
                self.on_timeout(hook_name, name)
            raise errors.Unavailable(f"plugin {name!r} did not answer within {timeout:g} s; try again later",
                                     plugin=name) from None
        return answer

    async def authenticate(self, request: Any) -> str | None:
        """The first user id a plugin gives for ``request``, or None."""
        name = "?"
        hook_name = "vezastream_authenticate_request"
        kwargs = {"request": request, "settings": self.settings}
        try:
            for impl in self.implementations(hook_name):
                name = self.plugin_name(impl)
                answer = await self._answer(impl, hook_name, kwargs, self.settings.hooks.auth_timeout, False)
                if answer is None:
                    continue
                if not isinstance(answer, str) or not answer:
                    raise TypeError(f"returned {answer!r}, expected a user id (a non-empty str) or None")
                return answer
        except errors.UploadError as exc:
            exc.extra.setdefault("plugin", name)
            raise
        except Exception as exc:
            log.exception("auth plugin failed", extra={"plugin": name})
            raise errors.Unavailable(f"authentication plugin {name!r} failed", plugin=name) from exc
        return None

    async def _verdicts(self, hook_name: str, timeout: float, **kwargs: Any) -> None:
        name = "?"
        kwargs["settings"] = self.settings
        try:
            for impl in self.implementations(hook_name):
                name = self.plugin_name(impl)
                answer = await self._answer(impl, hook_name, kwargs, timeout, True)
                if isinstance(answer, errors.UploadError):
                    raise answer
                if answer is not None:
                    raise TypeError(f"returned {answer!r}, expected None or an UploadError")
        except errors.UploadError as exc:
            exc.extra.setdefault("plugin", name)
            raise
        except Exception as exc:
            log.exception("plugin failed", extra={"plugin": name, "hook": hook_name})
            raise errors.Unavailable(f"plugin {name!r} failed; try again later", plugin=name) from exc

    async def validate_upload(self, upload: UploadSpec) -> None:
        """Raise the first rejection of a new upload (``vezastream_validate_upload``)."""
        await self._verdicts("vezastream_validate_upload", self.settings.hooks.validate_timeout, upload=upload)

    def object_key(self, upload: UploadSpec) -> str | None:
        """The safe key the first ``vezastream_object_key`` plugin chooses for ``upload``, or None."""
        name = "?"
        try:
            for impl in self.implementations("vezastream_object_key"):
                name = self.plugin_name(impl)
                answer = self._call(impl, {"upload": upload, "settings": self.settings})
                if answer is None:
                    continue
                if not isinstance(answer, str):
                    raise TypeError(f"returned {answer!r}, expected a key (str) or None")
                return safe_key(answer)
        except errors.UploadError as exc:
            exc.extra.setdefault("plugin", name)
            raise
        except Exception as exc:
            log.exception("plugin failed", extra={"plugin": name, "hook": "vezastream_object_key"})
            raise errors.Unavailable(f"plugin {name!r} failed; try again later", plugin=name) from exc
        return None

    async def inspect_upload(self, upload: Upload, source: ChunkSource) -> None:
        """Raise the first rejection of assembled bytes (``vezastream_inspect_upload``)."""
        await self._verdicts("vezastream_inspect_upload", self.settings.hooks.inspect_timeout, upload=upload,
                             source=source)

    # -- notifications ------------------------------------------------------------
    def notify(self, hook_name: str, **kwargs: Any) -> None:
        """Start ``hook_name`` in the background; never raises, never waits."""
        for impl in self.implementations(hook_name):
            if len(self._tasks) >= self.max_pending:
                self.dropped += 1
                if self.on_drop is not None:
                    self.on_drop(hook_name)
                if self.dropped % 1000 == 1:  # the first, then one line per thousand
                    log.warning("notifications dropped: too many running", extra={
                        "plugin": self.plugin_name(impl), "hook": hook_name, "dropped": self.dropped,
                        "max_pending": self.max_pending})
                continue
            if inspect.iscoroutinefunction(impl.function):
                try:
                    answer = self._call(impl, kwargs)
                except Exception:
                    log.exception("notification failed", extra={"plugin": self.plugin_name(impl), "hook": hook_name})
                    continue
            else:  # a plain function may block: in a thread, bounded as a coroutine is
                if self._threads is None:
                    self._threads = _Threads(NOTIFY_THREADS, "vezastream-notify")
                answer = self._threads.submit(self._call, impl, kwargs)
            task = asyncio.ensure_future(self._bounded(self.plugin_name(impl), hook_name, answer))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _bounded(self, plugin: str, hook_name: str, answer: Any) -> None:
        """Await ``answer`` (and what it gives back, if that is awaitable too) within ``notify_timeout``."""
        try:
            async with asyncio.timeout(self.notify_timeout):  # (not wait_for: on 3.11 a task of its own)
                result = await answer
                if inspect.isawaitable(result):  # a plain function that returned a coroutine
                    await result
        except asyncio.TimeoutError:
            log.error("notification timed out", extra={"plugin": plugin, "hook": hook_name,
                                                       "seconds": self.notify_timeout})
        except asyncio.CancelledError:
            log.warning("notification cancelled", extra={"plugin": plugin, "hook": hook_name})
            raise
        except Exception:
            log.exception("notification failed", extra={"plugin": plugin, "hook": hook_name})

    def chunk_stored(self, upload: UploadSpec, chunk: ChunkRecord, received_count: int) -> None:
        self.notify("vezastream_observe_chunk", upload=upload, chunk=chunk, received_count=received_count)

    def completed(self, upload: Upload, result: UploadResult) -> None:
        self.notify("vezastream_observe_completion", upload=upload, result=result)

    def aborted(self, upload: Upload, reason: str) -> None:
        self.notify("vezastream_observe_abort", upload=upload, reason=reason)

    def expired(self, upload_id: str) -> None:
        self.notify("vezastream_observe_expiry", upload_id=upload_id)

    @property
    def pending(self) -> int:
        """Notifications still running."""
        return len(self._tasks)

    async def drain(self, timeout: float = DRAIN_TIMEOUT) -> None:
        """Wait up to ``timeout`` for running notifications, then cancel the rest."""
        if not self._tasks:
            return
        _, late = await asyncio.wait(set(self._tasks), timeout=timeout)
        for task in late:
            task.cancel()
        if late:
            await asyncio.wait(late, timeout=1.0)

    async def aclose(self, timeout: float = DRAIN_TIMEOUT) -> None:
        """At shutdown: :meth:`drain`, then let the hook threads go (one still blocked is not waited for)."""
        await self.drain(timeout)
        for threads in (self._threads, *self._hook_threads.values()):
            if threads is not None:
                threads.close()
        self._threads = None
        self._hook_threads.clear()


class _Threads:
    """A few daemon threads that run hooks written as plain functions (observers, validators, inspectors).

    Not ``concurrent.futures`` (nor the loop's default executor, the server's file I/O): its
    threads are joined when the interpreter exits, so one hook blocked for good (a call without
    a timeout) would keep a stopped server from exiting. These are left behind instead. A call
    whose wait timed out before it began is skipped."""

    def __init__(self, size: int, name: str) -> None:
        self._jobs: queue.SimpleQueue[tuple[Any, ...] | None] = queue.SimpleQueue()
        self._size = size
        for i in range(size):
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True).start()

    def submit(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._jobs.put((loop, future, fn, args))
        return future

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            loop, future, fn, args = job
            if future.cancelled():
                continue
            try:
                result, error = fn(*args), None
            except Exception as exc:
                result, error = None, exc
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: no one waits
                loop.call_soon_threadsafe(_settle, future, result, error)
            del job, future, result, error

    def close(self) -> None:
        """Each thread ends after the calls queued before this."""
        for _ in range(self._size):
            self._jobs.put(None)


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():  # cancelled: its wait timed out
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
