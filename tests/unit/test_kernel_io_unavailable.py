"""``storage.kernel_io = "auto"`` on a machine where neither Linux AIO library loads (no
libaio.so.1, no caio: a minimal image, or a platform without them): the server says so
at warning level, and every body goes through the worker threads, landing byte for byte."""

from __future__ import annotations

import logging
import sys

import pytest

from vezastream.http.app import engine_key
from vezastream.testing import content, random_bytes, upload


async def test_without_any_aio_library_a_warning_and_the_threads_write_every_byte(make_client, make_settings,
                                                                                 monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "libaio", None)  # their imports fail, as where they are not installed
    monkeypatch.setitem(sys.modules, "caio.linux_aio_asyncio", None)
    with caplog.at_level(logging.INFO, logger="vezastream"):
        client = await make_client(make_settings(**{"storage.kernel_io": "auto", "storage.in_place": True}))
    assert client.server.app[engine_key].staging.kernel is None
    warned = [r for r in caplog.records if r.levelno == logging.WARNING and "kernel_io off" in r.getMessage()]
    assert len(warned) >= 1 and "neither libaio nor caio" in warned[0].getMessage()

    data = random_bytes(3 * 64 * 1024 + 3)  # small bodies: the kernel's AIO would have written them
    result = await upload(client, data, 64 * 1024)
    assert await content(client, result["upload_id"]) == (200, data)
