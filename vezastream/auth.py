"""Who is asking: ``anonymous`` with auth off, else a static bearer token's user."""

from __future__ import annotations

import hmac

from aiohttp import web

from . import errors
from .config import Settings
from .hooks import PLUGIN_USER

ANONYMOUS = "anonymous"


class Authenticator:
    def __init__(self, settings: Settings) -> None:
        self.enabled = settings.auth.mode == "token"
        self._tokens = list(settings.tokens().items()) if self.enabled else []

    def user(self, request: web.Request) -> str:
        # A plugin's answer (vezastream_authenticate_request), left by hooks.auth_middleware.
        answer = request.get(PLUGIN_USER)
        if isinstance(answer, errors.UploadError):
            raise answer
        if answer is not None:
            return answer
        if not self.enabled:
            return ANONYMOUS
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
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
