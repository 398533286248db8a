"""CORS for the HTTP doors: which browser origins may call an endpoint from another page.

One rule for every door (tus under ``tus.prefix``, the native API under ``/v1/``), each with
its own origins (``tus.cors_origins``, ``native.cors_origins``) and its own header lists:
for an allowed ``Origin`` every answer, errors included, carries
``Access-Control-Allow-Origin`` (the origin itself) and ``Vary: Origin``; a preflight
(``OPTIONS`` with ``Access-Control-Request-Method``) gets the allowed methods and request
headers, other answers the headers a page may read. An origin not allowed gets no CORS
header at all (the browser then refuses the answer to the page).
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web
from multidict import CIMultiDict

#: Seconds a browser may cache a preflight answer.
PREFLIGHT_MAX_AGE = 86400


@dataclass(frozen=True)
class CorsPolicy:
    """Origins allowed (``"*"``: any) and the headers one door lets a page send and read."""

    origins: frozenset[str]
    #: Comma-separated lists, as sent.
    allow_methods: str
    allow_headers: str
    expose_headers: str

    def allows(self, origin: str | None) -> bool:
        return bool(origin) and ("*" in self.origins or origin in self.origins)

    def add_headers(self, request: web.Request, headers: CIMultiDict[str]) -> None:
        """The CORS headers of the answer to ``request`` (nothing for an origin not allowed)."""
        origin = request.headers.get("Origin")
        if not self.allows(origin):
            return
        assert origin is not None
        headers["Access-Control-Allow-Origin"] = origin
        headers.add("Vary", "Origin")
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            headers["Access-Control-Allow-Methods"] = self.allow_methods
            headers["Access-Control-Allow-Headers"] = self.allow_headers
            headers["Access-Control-Max-Age"] = str(PREFLIGHT_MAX_AGE)
        else:
            headers["Access-Control-Expose-Headers"] = self.expose_headers


async def preflight(request: web.Request) -> web.Response:
    """A door's ``OPTIONS`` answer: ``204``; the CORS headers are added as the answer is prepared."""
    return web.Response(status=204)
