"""Structured logs: one line per event, JSON by default, on stderr.

A line goes to stderr at once when stderr can take it without waiting. When it cannot (whoever
reads it is slow or has stopped: a pipe or socket whose buffer is full), the line is held in
memory and a thread writes it, so that the event loop never waits for a log reader; past
:data:`HELD_LINES` held, lines are dropped and counted, and a line says how many once stderr
takes lines again.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import select
import stat
import sys
import threading
import time
from contextvars import ContextVar

#: The id of the request the running task serves (None outside a request; set by http/request_id.py).
current_request_id: ContextVar[str | None] = ContextVar("vezastream_request_id", default=None)

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + "Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        data.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extra = " ".join(f"{k}={v}" for k, v in vars(record).items() if k not in _STANDARD)
        line = f"{record.levelname.lower():7} {record.name}: {record.getMessage()} {extra}".rstrip()
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


#: Lines held in memory while stderr cannot take them; past that, lines are dropped (and counted).
HELD_LINES = 10_000
#: Seconds :meth:`StderrLines.flush` (at exit, at the end of ``serve``) waits for held lines to be written.
FLUSH_WAIT = 2.0


class StderrLines(logging.Handler):
    """Each formatted line written to the file descriptor ``fd`` (stderr), without ever making the
    caller wait for a reader of a pipe or socket.

    Where ``fd`` is a file or a terminal, each line is written at once, as a plain stream handler
    does. Where it is a pipe or a socket (a supervisor, journald, a container's log driver), a line
    of at most ``PIPE_BUF`` bytes is written at once when ``poll`` says the descriptor can take it
    and nothing is held before it; otherwise it is held, in order, for a writer thread (started
    while lines are held), at most ``held`` lines. A line that finds them all taken is dropped;
    once the thread has written what was held, a warning line says how many were dropped. A line
    written at once is in the pipe before the call returns: a process killed right after it
    (SIGKILL) has not lost it.
    """

    def __init__(self, fd: int, held: int = HELD_LINES) -> None:
        super().__init__()
        self.fd = fd
        self.held = held
        self.backlog: collections.deque[bytes] = collections.deque()
        self.dropped = 0
        self.writing = False  # the thread has taken lines and is writing them
        self.given_up = False  # a flush waited for them in vain
        self.changed = threading.Condition(self.lock)  # type: ignore[arg-type]
        self.thread: threading.Thread | None = None
        mode = os.fstat(fd).st_mode
        self.poller: select.poll | None = None  # None: a file or terminal, whose writes wait for no reader
        if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
            self.poller = select.poll()
            self.poller.register(fd, select.POLLOUT)

    def emit(self, record: logging.LogRecord) -> None:  # called with self.lock held (Handler.handle)
        try:
            line = (self.format(record) + "\n").encode("utf-8", "backslashreplace")
            if self.poller is None or (not (self.backlog or self.writing) and len(line) <= select.PIPE_BUF
                                       and self.poller.poll(0)):  # POLLOUT, or an error the write reports
                self._write(line)
                return
        except Exception:
            self.handleError(record)
            return
        if len(self.backlog) >= self.held:
            self.dropped += 1
            return
        self.backlog.append(line)
        if self.thread is None or not self.thread.is_alive():  # none while nothing was held (or a fork's copy)
            self.thread = threading.Thread(target=self._drain, name="vezastream-log-writer", daemon=True)
            self.thread.start()
        self.changed.notify_all()

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view):]

    def _drain(self) -> None:
        """The writer thread: writes what is held, in order, until nothing is; then it ends."""
        while True:
            with self.changed:
                if not self.backlog:
                    self.writing = False
                    self.thread = None
                    self.changed.notify_all()
                    return
                lines = list(self.backlog)
                self.backlog.clear()
                if self.dropped:
                    lines.append(self._dropped_line(self.dropped))
                    self.dropped = 0
                self.writing = True
            try:
                self._write(b"".join(lines))
            except OSError:  # stderr closed: nothing can be said about it there
                pass
            self.given_up = False

    def _dropped_line(self, count: int) -> bytes:
        record = logging.makeLogRecord({
            "name": "vezastream", "levelno": logging.WARNING, "levelname": "WARNING",
            "msg": f"{count} log lines dropped: stderr took none while {self.held} were held",
            "event": "log_lines_dropped", "dropped": count})
        return (self.format(record) + "\n").encode("utf-8", "backslashreplace")

    def flush(self, timeout: float = FLUSH_WAIT) -> None:
        """Wait until the held lines are written, ``timeout`` seconds at most (a reader that stays
        stopped keeps them: they are lost when the process ends). Once a flush has waited in vain,
        the next ones do not wait again until a write has got through (the end of ``serve``, then
        the exit handlers)."""
        with self.changed:
            if not self.given_up:
                self.given_up = not self.changed.wait_for(lambda: not (self.backlog or self.writing), timeout)


def setup_logging(level: str = "INFO", fmt: str = "json", held: int = HELD_LINES) -> logging.Handler:
    """The root logger's one handler: lines to stderr (:class:`StderrLines`, at most ``held`` held)
    in ``fmt``, at ``level``."""
    try:
        handler: logging.Handler = StderrLines(sys.stderr.fileno(), held)
    except (AttributeError, OSError, ValueError):  # a stderr without a descriptor (replaced, or closed)
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(RequestIdFilter())  # every line written while a request is handled names it
    root = logging.getLogger()
    for old in root.handlers:  # what an earlier set-up still holds goes out before the new handler's lines
        old.flush()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    return handler


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` to a record written while a request is handled."""

    def filter(self, record: logging.LogRecord) -> bool:
        rid = current_request_id.get()
        if rid is not None and not hasattr(record, "request_id"):
            record.request_id = rid
        return True
