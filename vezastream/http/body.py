"""Request bodies as the engine takes them, from aiohttp requests.

A body is an async iterable of the pieces aiohttp received (no joining
copy). A large body on a plain connection can also be read *into the
caller's buffer* (:meth:`RequestBody.readinto`): the connection's transport
is switched to a :class:`asyncio.BufferedProtocol` of ours, so the kernel
copies the bytes from the socket straight into the staging area's aligned
buffers. That saves the two copies aiohttp makes of every byte on the event
loop (the event loop's read buffer into a ``bytes`` object, and the HTTP
parser's body piece into another), and the body never exists as Python
objects at all.

aiohttp's parser does not see the bytes read that way: it still waits for the
rest of the body. Since the body is read to its last byte and never past it,
the connection then stands at the next request's first byte, and aiohttp's
connection handler gets a new parser (:func:`_new_parser`) and goes on
reading: the client keeps its connection. A body the handler stopped reading
early is read to its end (and thrown away, for at most :data:`LINGER`
seconds) before the response goes out, so the client gets to read it instead
of a reset; one that does not come whole in that time, or a connection whose
handler could not get a new parser, is closed after the response
(``Connection: close``, :func:`close_taken`).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import AsyncIterator

from aiohttp import ClientPayloadError, web
from aiohttp.web_protocol import RequestPayloadError

from .. import errors

log = logging.getLogger("vezastream.http")

#: Bodies at least this large may be read into the caller's buffer.
TAKE_OVER_AT = 1024 * 1024
#: Bytes that must wait in the socket before a read (fewer, larger reads; fewer wake-ups).
LOW_WATER = 256 * 1024
#: Longest wait for the rest of a body nobody reads, before the response goes out.
LINGER = 10.0
_TAKEN = web.RequestKey("vezastream_taken_body", "Receiver")
#: ``request[_CONTINUED]``: False while a client's "100 Continue" is held back (:func:`lazy_continue`),
#: True once it was sent (:func:`send_continue`).
_CONTINUED = web.RequestKey("vezastream_continued", bool)
#: ``app[zero_copy_key] = False`` keeps every body in aiohttp's hands (``server.zero_copy_bodies``).
zero_copy_key = web.AppKey("zero_copy_bodies", bool)
#: ``app[body_idle_key]``: seconds a body may bring no byte before its connection is cut
#: (``server.body_idle_timeout``); not set: never.
body_idle_key = web.AppKey("body_idle_timeout", float)


class Silence:
    """How long a body has been awaited without a byte; with ``seconds``, its connection is closed then.

    Only time spent waiting for the client counts (``waiting`` .. ``done``), not the
    time the server spends writing what came. One timer at a time, re-armed lazily:
    noting a byte costs a clock read.
    """

    def __init__(self, seconds: float | None, transport: asyncio.BaseTransport | None) -> None:
        self.seconds = seconds
        self.transport = transport
        self.since: float | None = None  # while waiting: when a byte last came (or the wait began)
        self.cut = False  # the connection was closed for it
        self._timer: asyncio.TimerHandle | None = None

    def waiting(self) -> None:
        self.since = time.monotonic()
        if self._timer is None and self.seconds:
            self._timer = asyncio.get_running_loop().call_later(self.seconds, self._check)

    def moved(self) -> None:
        """Bytes came, and the wait goes on (a buffer being filled)."""
        if self.since is not None:
            self.since = time.monotonic()

    def done(self) -> None:
        self.since = None

    def stop(self) -> None:
        """The body is over: its timer goes now, not a whole ``seconds`` later."""
        self.since = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def quiet_for(self) -> float:
        return 0.0 if self.since is None else time.monotonic() - self.since

    @classmethod
    def of(cls, request: web.Request) -> "Silence":
        """The watch over ``request``'s body, for ``server.body_idle_timeout``."""
        return cls(request.config_dict.get(body_idle_key), request.transport)

    def idle_error(self) -> errors.UploadError | None:
        """``BodyIdle`` when the connection was cut for its silence (None: it was not)."""
        if not self.cut:
            return None
        return errors.BodyIdle(f"no byte of the body came for {self.seconds:g} s; the connection was closed")

    def _check(self) -> None:
        self._timer = None
        if self.since is None:  # not waiting now: the next wait arms the timer again
            return
        quiet = time.monotonic() - self.since
        if quiet < self.seconds:
            self._timer = asyncio.get_running_loop().call_later(self.seconds - quiet, self._check)
            return
        self.cut = True
        log.info("body stalled: connection closed", extra={"seconds": self.seconds})
        if self.transport is not None:
            self.transport.close()  # the body ends as if the client had gone: its request lets go of its leases


class Receiver(asyncio.BufferedProtocol):
    """The connection's protocol while a body is read into the caller's buffer.

    Reads no byte past the body (``remaining``), so nothing of a next request
    is ever taken, and reads only while a caller's buffer waits. Flow control
    and the connection's end are passed on to aiohttp's protocol, which gets
    the connection back once the body is read.
    """

    def __init__(self, transport: asyncio.Transport, handler: asyncio.Protocol, remaining: int,
                 silence: Silence | None = None) -> None:
        self.transport = transport
        self.handler = handler
        self.silence = silence
        self.remaining = remaining  # body bytes not read from the socket yet
        self.view: memoryview | None = None  # where the next bytes go
        self.got = 0
        self.waiter: asyncio.Future[None] | None = None
        # Why the connection ended before the body did: a message, never an exception object,
        # which (once raised) would keep the frames of its traceback, and their buffers, alive.
        self.ended: str | None = None
        # A read the transport began when no buffer waited (it pauses as soon as one is
        # full, so this is a safety net): its bytes are kept aside, bounded by the body.
        self._scratch: bytearray | None = None
        self.spilled: list[bytes] = []
        self.sock = transport.get_extra_info("socket")
        self.lowat = 1
        self.kept = False  # the connection goes on after the body (give_back)

    def get_buffer(self, sizehint: int) -> memoryview:
        if self.view is not None and self.got < len(self.view):
            self._scratch = None
            return self.view[self.got:]
        self._scratch = bytearray(max(1, min(self.remaining, 64 * 1024)))
        return memoryview(self._scratch)

    def buffer_updated(self, nbytes: int) -> None:
        self.remaining -= nbytes
        if self._scratch is not None:
            self.spilled.append(bytes(self._scratch[:nbytes]))
            self._scratch = None
            self.transport.pause_reading()
            return
        assert self.view is not None
        self.got += nbytes
        if self.silence is not None:
            self.silence.moved()
        if len(self.view) - self.got < self.lowat:
            self._low_water(len(self.view) - self.got)
        if self.got == len(self.view):
            self.transport.pause_reading()  # before the transport reads again
            self._wake()

    def eof_received(self) -> None:
        self._end("the client closed the connection mid-body")
        # returns None: the transport closes itself, and connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self._end(f"the client went away mid-body: {exc!r}")
        self.handler.connection_lost(exc)

    def pause_writing(self) -> None:
        self.handler.pause_writing()

    def resume_writing(self) -> None:
        self.handler.resume_writing()

    def _end(self, why: str) -> None:
        if self.ended is None:
            self.ended = why
        self._wake()

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def take_spilled(self, view: memoryview) -> int:
        done = 0
        while self.spilled and done < len(view):
            piece = self.spilled[0]
            n = min(len(piece), len(view) - done)
            view[done:done + n] = piece[:n]
            done += n
            if n < len(piece):
                self.spilled[0] = piece[n:]
            else:
                self.spilled.pop(0)
        return done

    def _low_water(self, wanted: int) -> None:
        """Wake for reading only once ``wanted`` bytes (at most LOW_WATER) wait in the socket."""
        lowat = max(1, min(wanted, LOW_WATER))
        if lowat != self.lowat and self.sock is not None:
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, lowat)
            except OSError:
                self.sock = None
                return
            self.lowat = lowat

    async def fill(self, view: memoryview) -> int:
        """Read into ``view`` (at most ``remaining`` bytes) until it is full or the connection ends."""
        if self.ended is not None or not view:
            return 0
        self.view, self.got = view, 0
        self._low_water(len(view))
        self.waiter = asyncio.get_running_loop().create_future()
        if self.silence is not None:
            self.silence.waiting()
        try:
            self.transport.resume_reading()
            await self.waiter
        finally:
            if self.silence is not None:
                self.silence.done()
            self.waiter, self.view = None, None
            if self.ended is None and self.transport.is_reading():  # cancelled while reading
                self.transport.pause_reading()
        return self.got

    def give_back(self) -> None:
        """The body is read: aiohttp's protocol gets the connection back.

        Read to its end, the body leaves the connection at the next request's first byte:
        aiohttp reads on with a new parser (:attr:`kept`). Otherwise, or when no new parser
        could be made, the connection stays paused, to be closed after the answer.
        """
        if self.silence is not None:
            self.silence.stop()
        if self.ended is None and self.transport.get_protocol() is self:
            self._low_water(1)
            self.transport.pause_reading()
            self.transport.set_protocol(self.handler)
            if self.remaining == 0 and not self.spilled and _new_parser(self.handler):
                self.kept = True
                self.transport.resume_reading()

    async def discard_rest(self, timeout: float) -> None:
        """Read what is left of the body and throw it away, for at most ``timeout`` seconds."""
        self.spilled.clear()
        scratch = memoryview(bytearray(256 * 1024))
        try:
            async with asyncio.timeout(timeout):
                while self.remaining > 0 and self.ended is None:
                    await self.fill(scratch[:min(len(scratch), self.remaining)])
        except TimeoutError:
            pass
        self.give_back()


class RequestBody:
    """One request's body: iterate it for bytes pieces, or ``readinto`` the caller's buffers.

    ``until_disconnect``: a client that goes away mid-body ends the body early
    (the bytes that came stay valid) instead of raising ``ConnectionError``.
    A body that brings no byte for ``app[body_idle_key]`` seconds while it is
    read has its connection closed: it ends the same way, or raises ``BodyIdle``.
    """

    def __init__(self, request: web.Request, *, until_disconnect: bool = False) -> None:
        self.request = request
        self.until_disconnect = until_disconnect
        self._head = b""  # what aiohttp had buffered when the body was taken over
        self._receiver: Receiver | None = None
        self._silence = Silence.of(request)
        self.fills = self._can_take_over()

    def quiet_for(self) -> float:
        """Seconds this body has been awaited without a byte coming (0 while none is awaited)."""
        return self._silence.quiet_for()

    @property
    def held_back(self) -> bool:
        """The client sends the body only once it is first read (``Expect: 100-continue``, :func:`lazy_continue`)."""
        return self.request.get(_CONTINUED) is False

    def _can_take_over(self) -> bool:
        request = self.request
        length = request.content_length
        transport = request.transport
        return (length is not None and length >= TAKE_OVER_AT and transport is not None
                and request.config_dict.get(zero_copy_key, True)
                and "Transfer-Encoding" not in request.headers
                and request.headers.get("Content-Encoding", "identity").lower() == "identity"
                and transport.get_extra_info("ssl_object") is None
                and transport.get_protocol() is request.protocol and not request.content.is_eof()
                and request.content.exception() is None)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self._receiver is not None:
            raise RuntimeError("this body is being read into buffers")
        self.fills = False
        if not self.request.can_read_body:
            # No body: aiohttp's one shared empty stream, whose iter_chunks() never ends once
            # any request has iterated it (it then answers "end of an HTTP chunk" forever).
            return
        content, silence = self.request.content, self._silence
        send_continue(self.request)
        try:
            while True:
                silence.waiting()
                piece, end_of_http_chunk = await content.readchunk()
                silence.done()
                if piece:
                    yield piece
                elif not end_of_http_chunk:
                    return
        except (ConnectionError, ClientPayloadError) as exc:
            if not self._ends_quietly(repr(exc)):
                raise self._error(fresh_error(exc)) from None  # (no local holds what is raised: no cycle)
            exc.__traceback__ = None  # aiohttp keeps it on the stream (see fresh_error)
        finally:
            silence.stop()

    def _ends_quietly(self, why: str) -> bool:
        """The body ended before its length: with ``until_disconnect`` it ends there (logged)."""
        if self.until_disconnect:
            if self._silence.cut:
                why = f"no byte of the body came for {self._silence.seconds:g} s"
            log.info("body interrupted", extra={"path": self.request.path, "error": why})
        return self.until_disconnect

    def _error(self, error: Exception) -> Exception:
        """What a body that ended early raises: ``BodyIdle`` if its connection was cut for its silence."""
        return self._silence.idle_error() or error

    def _take_over(self) -> Receiver:
        request = self.request
        transport = request.transport
        assert transport is not None and request.content_length is not None
        send_continue(request)
        self._head = request.content.read_nowait()  # no await between this and the switch
        request.content.feed_eof()  # aiohttp's side of the body ends here
        transport.pause_reading()
        receiver = Receiver(transport, request.protocol, request.content_length - len(self._head), self._silence)
        transport.set_protocol(receiver)
        request[_TAKEN] = receiver  # not the body, which holds the request: no reference cycle
        return receiver

    def left(self) -> int | None:
        """Bytes of a body being read into buffers not read yet (None before :meth:`readinto`)."""
        receiver = self._receiver
        if receiver is None:
            return None
        return len(self._head) + sum(len(piece) for piece in receiver.spilled) + receiver.remaining

    async def readinto(self, view: memoryview) -> int:
        """Fill ``view`` with the body's next bytes; fewer only at its end (0: the end).

        Only when :attr:`fills`. A client that goes away mid-body raises
        ``ConnectionResetError`` (or ends the body, ``until_disconnect``).
        """
        receiver = self._receiver = self._receiver or self._take_over()
        done = 0
        if self._head:
            done = min(len(view), len(self._head))
            view[:done] = self._head[:done]
            self._head = self._head[done:]
        done += receiver.take_spilled(view[done:])
        done += await receiver.fill(view[done:done + min(len(view) - done, receiver.remaining)])
        if receiver.remaining == 0 and not receiver.spilled:
            receiver.give_back()
        elif done < len(view) and receiver.ended is not None and (done == 0 or not self.until_disconnect):
            if not self._ends_quietly(receiver.ended):
                raise self._error(ConnectionResetError(receiver.ended))
        return done


def _new_parser(protocol: asyncio.Protocol) -> bool:
    """Give aiohttp's connection handler a new request parser, in place of the one the body bypassed.

    That parser took the request's head and still waits for the rest of the body, which
    went to our buffers instead: fed the next request, it would take it for body bytes.
    A new one, made as aiohttp's ``RequestHandler`` makes its own, starts at a request's
    first byte. aiohttp has no public way to do this: its private attributes are read,
    and any difference (another aiohttp) gives False, so the connection is closed after
    the answer instead (as it is while aiohttp's own flow control has paused the connection).
    tests/unit/test_request_body.py and tests/integration/test_process.py pin that it works.
    """
    try:
        if protocol._reading_paused or getattr(protocol, "_buffer_paused", False):  # type: ignore[attr-defined]
            return False  # aiohttp's own flow control holds the connection: leave it be
        old = protocol._parser  # type: ignore[attr-defined]
        options = {"max_line_size": protocol.max_line_size,  # type: ignore[attr-defined]
                   "max_field_size": protocol.max_field_size,  # type: ignore[attr-defined]
                   "max_headers": protocol.max_headers,  # type: ignore[attr-defined]
                   "payload_exception": RequestPayloadError,
                   "auto_decompress": protocol._manager._kwargs.get("auto_decompress", True)}  # type: ignore[attr-defined]
        queue = getattr(protocol, "_max_msg_queue_size", None)
        if queue is not None:
            options["max_msg_queue_size"] = queue
        new = type(old)(protocol, protocol._loop, protocol._read_bufsize, **options)  # type: ignore[attr-defined]
    except (AttributeError, TypeError):
        return False
    protocol._parser = new  # type: ignore[attr-defined]
    return True


def fresh_error(exc: Exception) -> Exception:
    """A new error of ``exc``'s type and message, for ``exc`` that aiohttp raised from a request's stream.

    aiohttp keeps the error on the stream (the request's ``content``) and raises that
    one object each time: it then holds the frames it went through, which hold the
    request and so the stream, a reference cycle that keeps every buffer in those
    frames alive until a full garbage collection. Its traceback is dropped here, and
    the caller raises the new one (``from None``).
    """
    exc.__traceback__ = None
    return type(exc)(*exc.args)


#: The content codings aiohttp's parser decodes (br and zstd only with their libraries; without
#: them, its parser refuses the request itself), and identity.
DECODED_CODINGS = frozenset({"identity", "gzip", "deflate", "br", "zstd"})


def body_length(request: web.BaseRequest) -> int | None:
    """The body's length as the handler reads it: ``Content-Length``, unless the body is content-coded
    (then that is the coded length, and the decoded one is known only at its end: None)."""
    length = request.content_length
    if length is not None and "Content-Encoding" in request.headers and (
            request.headers["Content-Encoding"].strip().lower() != "identity"):
        return None
    return length


def check_codings(request: web.BaseRequest) -> None:
    """Refuse a body whose bytes would reach the handler still coded: a ``Content-Encoding`` aiohttp
    does not decode (unknown, a list, the header repeated) is a 415; a ``Transfer-Encoding`` other
    than ``chunked``, or any in HTTP/1.0 (RFC 9112, 6.1: faulty framing), a 400.
    Costs two header lookups for a request with neither."""
    headers = request.headers
    if "Content-Encoding" in headers:
        codings = headers.getall("Content-Encoding")
        if len(codings) > 1 or codings[0].strip().lower() not in DECODED_CODINGS:
            raise errors.UnsupportedMediaType(
                "Content-Encoding: send one of " + ", ".join(sorted(DECODED_CODINGS)) + ", once")
    if "Transfer-Encoding" in headers:
        if request.version < (1, 1):
            raise errors.BadRequest("Transfer-Encoding is not HTTP/1.0: send a Content-Length")
        codings = headers.getall("Transfer-Encoding")
        if len(codings) > 1 or codings[0].strip().lower() != "chunked":
            raise errors.BadRequest("Transfer-Encoding: only chunked is supported")


def _expects_continue(request: web.BaseRequest) -> bool:
    return request.version >= (1, 1) and request.headers.get("Expect", "").lower() == "100-continue"


async def lazy_continue(request: web.Request) -> None:
    """The ``expect_handler`` of the routes whose bodies are uploads: nothing is sent yet.

    aiohttp's own sends "100 Continue" before the handler runs; a client that asked for it
    (``Expect: 100-continue``: curl does for bodies over 1 MiB) then sends its whole body even
    when the answer is a refusal (401, 404, a tus offset that does not match). Here it goes out
    when the handler first reads the body (:func:`send_continue`), and a request answered
    without reading it is answered at once, its connection closed after the answer
    (:func:`close_taken`): the client never sends the body.
    """
    if _expects_continue(request):
        request[_CONTINUED] = False


def send_continue(request: web.Request) -> None:
    """Tell a client waiting with ``Expect: 100-continue`` to send its body (once; nothing for others)."""
    if request.get(_CONTINUED) is not False:  # sent, or not asked for (or not held back: aiohttp sent it)
        return
    request[_CONTINUED] = True
    transport = request.transport
    if transport is not None and not transport.is_closing():
        transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")


async def close_taken(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: a body taken over and not read to its end is read (and thrown away,
    for at most :data:`LINGER` seconds) before this response; if the connection cannot go on after
    it (:attr:`Receiver.kept`), the response closes it. A body its client still holds back, waiting
    for "100 Continue" (:func:`lazy_continue`), will not come: the connection closes after the answer."""
    if request.get(_CONTINUED) is False and request.body_exists and not request.content.is_eof():
        request.content.feed_eof()  # nothing more comes: aiohttp does not wait for the rest of it
        response.force_close()
        response.headers["Connection"] = "close"
    receiver = request.get(_TAKEN)
    if receiver is not None:
        if not receiver.kept:
            await receiver.discard_rest(LINGER)
        if not receiver.kept:
            response.force_close()
            response.headers["Connection"] = "close"  # the headers were prepared before this hook

