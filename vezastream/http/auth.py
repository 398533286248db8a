"""Who is asking: a plugin's answer (asked once per request by :func:`auth_middleware`),
else ``anonymous`` with auth off, else a static bearer token's user.
"""

from __future__ import annotations

import hmac
from typing import Any

from aiohttp import web

from .. import errors
from ..config import Settings
from ..hooks import Hooks
from .headers import single

ANONYMOUS = "anonymous"
#: Where the auth middleware leaves a plugin's answer for ``Authenticator.user``.
PLUGIN_USER: Any = (web.RequestKey("vezastream_plugin_user", object) if hasattr(web, "RequestKey")
                    else "vezastream_plugin_user")  # aiohttp < 3.11


class Authenticator:
    def __init__(self, settings: Settings) -> None:
        self.enabled = settings.auth.mode == "token"
        self._tokens = list(settings.tokens().items()) if self.enabled else []

    def user(self, request: web.Request) -> str:
        # A plugin's answer (vezastream_authenticate_request), left by auth_middleware.
        answer = request.get(PLUGIN_USER)
        if isinstance(answer, errors.UploadError):
            raise answer
        if answer is not None:
            return answer
        if not self.enabled:
            return ANONYMOUS
        scheme, _, token = (single(request, "Authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise errors.Unauthorized("send Authorization: Bearer <token>")
        try:  # the header's bytes as sent (aiohttp keeps undecodable bytes as surrogates)
            sent = token.strip().encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            raise errors.Unauthorized("unknown bearer token") from None
        found = None
        for known, user in self._tokens:  # compare against all: no timing hint
            if hmac.compare_digest(known.encode(), sent):
                found = user
        if found is None:
            raise errors.Unauthorized("unknown bearer token")
        return found


def auth_middleware(hooks: Hooks):
    """Resolve the user through plugins once per request, for ``Authenticator.user``. Authorization
    sent twice is refused (400) before any plugin sees it, as the built-in token auth refuses it:
    ``headers.get`` would hand a plugin the first line only."""

    @web.middleware
    async def middleware(request: web.Request, handler):
        try:
            single(request, "Authorization")
            request[PLUGIN_USER] = await hooks.authenticate(request)
        except errors.UploadError as exc:
            request[PLUGIN_USER] = exc  # raised when the handler asks who the user is
        return await handler(request)

    return middleware
