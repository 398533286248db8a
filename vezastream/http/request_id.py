"""Request ids: ``X-Request-ID`` is honoured when sane, generated otherwise, and sent back.

The id of the request being handled lives in a context variable (``logs.current_request_id``),
so every log line written while it runs (the engine's included) carries it
(``logs.RequestIdFilter``), and every problem+json answer names it (``request_id``).
"""

from __future__ import annotations

import re
import secrets
from contextvars import Token

from aiohttp import web

from ..logs import current_request_id as current

HEADER = "X-Request-ID"
#: A client's id is kept when it is 1 to 128 printable ASCII characters (no space, no control).
_SANE = re.compile(r"[\x21-\x7e]{1,128}")

request_id_key = web.RequestKey("request_id", str)


def new_id() -> str:
    return secrets.token_hex(16)


def choose(sent: str | None) -> str:
    """The client's id when sane, else a new one."""
    return sent if sent is not None and _SANE.fullmatch(sent) else new_id()


def begin(request: web.Request) -> Token[str | None]:
    """Before anything logs: the request's id, kept on it and in the context (``end`` resets it)."""
    request[request_id_key] = rid = choose(request.headers.get(HEADER))
    return current.set(rid)


def end(token: Token[str | None]) -> None:
    current.reset(token)


def add_header(request: web.Request, response: web.StreamResponse) -> None:
    """Every answer carries the id: handlers' (prepared in or after the middleware) and problems."""
    rid = current.get() or request.get(request_id_key)
    if rid is not None:
        response.headers[HEADER] = rid
