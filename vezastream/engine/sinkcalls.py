"""Calling a sink: the host's side of the plugin boundary.

These sink methods are awaited through :func:`call_sink`: ``open_direct``, ``put_direct``, ``put_staged``,
``remove_staged``, ``clear_staged``, ``open_content``, ``remove`` and ``abort``.
An ``UploadError`` one raises keeps its status (with a ``sink`` member), anything
else is logged in full and becomes 502 ``sink-failed`` (:func:`sink_failed`),
naming the sink and the method, never the error's text. :func:`checked_content`
does the same for what ``open_content`` returns and the reader it may hold.

Called bare: ``assemble``, ``assemble_direct``, ``read_staged`` (read while the
sink assembles) and the assembly's ``commit`` and ``discard``, whose failures the
completion sorts itself (``UploadEngine._assemble``: a staged chunk missing is
409, a full disk 507, the rest the same 502; a 502 or 503 the sink raised names
it: :func:`naming_sink`); ``check`` (health, ``vezastream plugins --check``),
``sweep`` (the GC logs its failure) and ``aclose``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import logging
import os
import stat
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from .. import errors
from ..sinks import Content

log = logging.getLogger("vezastream.sinks")


def sink_failed(sink_name: str, method: str, exc: BaseException) -> errors.UploadError:
    """The 502 for an unexpected exception in a sink method: names the sink and the method, and
    only the exception's class (its text may hold server paths; the log has it in full)."""
    return errors.SinkFailed(f"sink {sink_name!r} failed in {method}() ({exc.__class__.__name__}); "
                             "the server log has the details", sink=sink_name)


@contextlib.contextmanager
def naming_sink(sink_name: str) -> Iterator[None]:
    """Around a completion's bare sink call (``assemble``, ``assemble_direct``, ``commit``): a 5xx
    ``UploadError`` raised within gets a ``sink`` member, as :func:`call_sink`'s errors do. Only a
    5xx: a 4xx may be the engine's own, raised by the chunk source the sink reads (``IntegrityError``)."""
    try:
        yield
    except errors.UploadError as exc:
        if exc.status >= 500:
            exc.extra.setdefault("sink", sink_name)
        raise


async def call_sink(sink: object, method: str, *args: Any) -> Any:
    """Await ``sink.<method>(*args)`` at the host's boundary: what it raises becomes problem+json.

    An ``UploadError`` passes through (with a ``sink`` member); anything else is
    logged with its traceback and becomes :func:`sink_failed` (502).
    """
    name = str(getattr(sink, "name", "?"))
    try:
        answer = getattr(sink, method)(*args)
        if not inspect.isawaitable(answer):
            raise TypeError(f"{method}() returned {type(answer).__name__}: sink methods must be async def")
        return await answer
    except errors.UploadError as exc:
        exc.extra.setdefault("sink", name)
        raise
    except ConnectionResetError:  # the client went away mid-body (put_direct): not the sink's failure
        raise
    except Exception as exc:
        log.exception("sink failed", extra={"sink": name, "method": method})
        raise sink_failed(name, method, exc) from exc


def _guarded_reader(sink_name: str, reader: Callable[[int, int], AsyncIterator[bytes]]
                    ) -> Callable[[int, int], AsyncIterator[bytes]]:
    """``reader``, with what it raises mapped as :func:`call_sink` maps a method's errors."""

    async def read(start: int, end: int) -> AsyncIterator[bytes]:
        try:
            async for block in reader(start, end):
                yield block
        except errors.UploadError as exc:
            exc.extra.setdefault("sink", sink_name)
            raise
        except Exception as exc:
            log.exception("sink failed", extra={"sink": sink_name, "method": "Content.reader"})
            raise sink_failed(sink_name, "Content.reader", exc) from exc

    return read


async def checked_content(sink_name: str, answer: object) -> Content:
    """``open_content``'s answer, checked: a :class:`Content` whose file (if any) exists, whose
    reader (if any) raises only ``UploadError``s."""
    if not isinstance(answer, Content):
        log.error("open_content returned %s, not vezastream.Content", type(answer).__name__,
                  extra={"sink": sink_name})
        raise errors.SinkFailed(f"sink {sink_name!r}: open_content() returned {type(answer).__name__}, "
                                "not vezastream.Content", sink=sink_name)
    if answer.path is not None:
        try:
            mode = (await asyncio.to_thread(os.stat, answer.path)).st_mode
        except (FileNotFoundError, NotADirectoryError):
            mode = 0
        if not stat.S_ISREG(mode):
            log.error("stored object missing", extra={"sink": sink_name, "path": str(answer.path)})
            raise errors.ObjectNotFound("the stored object is missing from the sink", sink=sink_name)
    if answer.reader is not None:
        return dataclasses.replace(answer, reader=_guarded_reader(sink_name, answer.reader))
    return answer
