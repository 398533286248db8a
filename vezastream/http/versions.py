"""The HTTP versions served (1.0 and 1.1), and the refusal of a request line naming another.

aiohttp's parsers take more: its C parser HTTP/2.0 and HTTP/0.9 (a request line without a
version reads as 0.9), its pure-Python one (``AIOHTTP_NO_EXTENSIONS``) any digit.digit; and
aiohttp then serves the request, its answer's status line in the request's version. Such a
request is refused with a 400 before any handler runs (it changes nothing): its framing, its
body's included, is HTTP/1's only by chance. Not a 505, which is a 5xx: the fault is the
client's input, not the server's. The answer speaks HTTP/1.1, since a server must not answer
in a version it does not speak (RFC 9110, 2.5), and closes the connection.
"""

from __future__ import annotations

from typing import Any

from aiohttp import HttpVersion, HttpVersion10, HttpVersion11, web

from .. import errors

SERVED_VERSIONS = frozenset({HttpVersion10, HttpVersion11})
#: ``request[_SENT_VERSION]``: the version its request line named, where that is not served.
_SENT_VERSION = web.RequestKey("vezastream_sent_version", HttpVersion)


def as_http11(factory: Any) -> Any:
    """``web.Server``'s ``request_factory`` around aiohttp's: a request naming a version not served
    is made as a closing HTTP/1.1 one (aiohttp writes the answer's status line in the request's
    version, and reads an unread body out before it closes), its own kept for :func:`check_version`."""

    def make(message: Any, *rest: Any) -> web.BaseRequest:
        if message.version in SERVED_VERSIONS:
            return factory(message, *rest)
        request = factory(message._replace(version=HttpVersion11, should_close=True), *rest)
        request[_SENT_VERSION] = message.version
        return request

    return make


def check_version(request: web.BaseRequest) -> None:
    """Refuse (400) a request whose request line named an HTTP version other than 1.0 and 1.1;
    without :func:`as_http11` (an app run by ``web.run_app``), it answers in that version."""
    sent = request.get(_SENT_VERSION, request.version)
    if sent not in SERVED_VERSIONS:
        raise errors.BadRequest(f"HTTP/{sent.major}.{sent.minor} is not served: send HTTP/1.1 (or HTTP/1.0)")
