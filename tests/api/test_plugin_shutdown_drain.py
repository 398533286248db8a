"""At shutdown the server waits up to 10 seconds for running notifications, then cancels them
(docs/plugins.md, "How notifications run").

The real app on real Redis is stopped the way its runner stops it (``TestClient.close()`` runs
the app's cleanup); an observer still running then is awaited when it ends in time, and
cancelled when it outlives the drain. The drain's 10 s are lowered on the app's own ``Hooks``
object for the second case, so that the test takes a second, not ten.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import threading
import time

import pytest

from vezastream import hookimpl
from vezastream.hooks import DRAIN_TIMEOUT, Hooks
from vezastream.http.app import hooks_key
from vezastream.testing import random_bytes, upload


class SlowObserver:
    """Hears of each completion and takes ``seconds`` over it (as ``async def``)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.started = threading.Event()
        self.finished = threading.Event()
        self.cancelled = False

    @hookimpl
    async def vezastream_observe_completion(self, upload):
        self.started.set()
        try:
            await asyncio.sleep(self.seconds)
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        self.finished.set()


class BlockingObserver(SlowObserver):
    """The same, as a plain ``def`` that blocks (it runs in one of the server's observer threads)."""

    @hookimpl
    def vezastream_observe_completion(self, upload):
        self.started.set()
        time.sleep(self.seconds)
        self.finished.set()


async def _started(make_settings, make_client, observer):
    client = await make_client(make_settings(), plugins=[("slow", observer)])
    await upload(client, random_bytes(100), chunk_size=100)
    deadline = time.monotonic() + 5
    while not observer.started.is_set():
        assert time.monotonic() < deadline, "the notification never started"
        await asyncio.sleep(0.01)
    return client


def test_the_drain_lasts_10_seconds_by_default():
    assert DRAIN_TIMEOUT == 10.0
    assert inspect.signature(Hooks.aclose).parameters["timeout"].default == DRAIN_TIMEOUT


@pytest.mark.parametrize("observer_class", [SlowObserver, BlockingObserver], ids=["async-def", "plain-def"])
async def test_shutdown_waits_for_a_notification_that_ends_within_the_drain(make_settings, make_client,
                                                                            observer_class):
    observer = observer_class(seconds=1.0)
    client = await _started(make_settings, make_client, observer)
    assert not observer.finished.is_set()
    started = time.monotonic()
    await asyncio.wait_for(client.close(), timeout=DRAIN_TIMEOUT + 5)  # the default drain: 10 s
    assert observer.finished.is_set() and not observer.cancelled
    assert time.monotonic() - started >= 0.5  # it did wait for the observer's second


async def test_shutdown_cancels_a_notification_that_outlives_the_drain(make_settings, make_client):
    observer = SlowObserver(seconds=20.0)
    client = await _started(make_settings, make_client, observer)
    hooks = client.server.app[hooks_key]
    hooks.aclose = functools.partial(Hooks.aclose, hooks, 0.5)  # the drain, shortened for the test
    started = time.monotonic()
    await asyncio.wait_for(client.close(), timeout=5)
    took = time.monotonic() - started
    assert observer.cancelled and not observer.finished.is_set()
    assert 0.4 <= took < 5, took  # it waited the drain, then cancelled
    assert hooks.pending == 0
