"""The browser uploader served at ``/`` (``[ui]`` in the config; docs/ui.md).

Three static files beside this module, with no build step and no third-party code:
``index.html``, ``uploader.css`` and ``uploader.js`` (drag and drop, several files, parallel
numbered chunks through the native API, pause, resume after a reload, cancel). The page talks
only to the server that served it, so it needs no CORS; it holds no secret of the server (a
bearer token is typed in by the user and kept in the tab's ``sessionStorage``).
"""

from __future__ import annotations

import html
import json
from pathlib import Path

from aiohttp import web

from ...config import Settings

HERE = Path(__file__).parent
ASSETS = {"uploader.js": "text/javascript", "uploader.css": "text/css"}
#: The page runs only its own script and style, and talks only to this server.
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                               "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
#: Where index.html takes the page's settings (an HTML-escaped JSON object).
CONFIG_MARK = "{{config}}"


class UploaderPage:
    """``GET /`` and ``GET /ui/<asset>``: the files, read once when the app is built."""

    def __init__(self, settings: Settings) -> None:
        config = {"parallel_chunks": settings.ui.parallel_chunks, "sha256_max_size": int(settings.ui.sha256_max_size),
                  "token": settings.auth.mode == "token"}
        page = (HERE / "index.html").read_text("utf-8").replace(CONFIG_MARK, html.escape(json.dumps(config)))
        self._files = {"index.html": (page.encode(), "text/html"),
                       **{name: ((HERE / name).read_bytes(), kind) for name, kind in ASSETS.items()}}

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/", self.index), *(web.get(f"/ui/{name}", self.asset) for name in ASSETS)]

    def _serve(self, name: str) -> web.Response:
        body, kind = self._files[name]
        return web.Response(body=body, content_type=kind, charset="utf-8", headers=HEADERS)

    async def index(self, request: web.Request) -> web.Response:
        return self._serve("index.html")

    async def asset(self, request: web.Request) -> web.Response:
        return self._serve(request.path.rsplit("/", 1)[1])
