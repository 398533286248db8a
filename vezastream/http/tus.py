"""The tus 1.0.0 front door under ``tus.prefix`` (default ``/files/``; docs/tus.md).

Core protocol (OPTIONS, HEAD, PATCH) and the extensions creation,
creation-with-upload, creation-defer-length, termination, expiration,
checksum and concatenation. Handlers parse and answer HTTP; offsets, lengths,
races and completion belong to the engine (``engine/layouts/append.py``). Errors are raised
from the one catalog and rendered by the app's middleware as problem+json;
tus clients act on the status codes.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import re
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from email.utils import formatdate
from urllib.parse import urlsplit

from aiohttp import web

from .. import errors
from ..engine.layouts.append import CHECKSUM_ALGORITHMS, AppendReceipt, Checksum, NewAppendUpload, is_final, is_partial, offset_of
from .auth import Authenticator
from ..config import TusSettings
from ..engine.engine import UploadEngine
from ..models import MAX_METADATA, Upload, UploadStatus, controls_replaced, media_type, metadata_content_type
from .body import RequestBody, body_length, lazy_continue
from .cors import CorsPolicy
from .headers import joined, single
from .content import serve_content

T = TypeVar("T")

TUS_VERSION = "1.0.0"
EXTENSIONS = ("creation", "creation-with-upload", "creation-defer-length", "termination", "expiration",
              "checksum", "concatenation")
OFFSET_STREAM = "application/offset+octet-stream"
DEFAULT_FILENAME = "upload"
_INT = re.compile(r"[0-9]{1,19}")  # ASCII digits: int() would also take other scripts' digits
_METADATA_KEY = re.compile(r"^[!-+\--~]+$")  # printable ASCII without space or comma
#: The methods ``POST <prefix><id>`` may name in ``X-HTTP-Method-Override`` (the metrics count it as that one).
OVERRIDES = frozenset({"PATCH", "DELETE", "HEAD"})
#: Headers a browser may send and read (CORS).
ALLOW_HEADERS = ("Authorization, Content-Type, Origin, X-Requested-With, X-Request-ID, X-HTTP-Method-Override, "
                 "Tus-Resumable, Upload-Length, Upload-Offset, Upload-Metadata, Upload-Defer-Length, "
                 "Upload-Concat, Upload-Checksum, Range")
#: (``Content-Range``, ``Content-Disposition``, ``Accept-Ranges``: a ranged ``GET`` of a completed upload.)
EXPOSE_HEADERS = ("Location, Tus-Resumable, Tus-Version, Tus-Extension, Tus-Max-Size, Tus-Checksum-Algorithm, "
                  "Upload-Offset, Upload-Length, Upload-Metadata, Upload-Defer-Length, Upload-Concat, "
                  "Upload-Expires, Retry-After, X-Request-ID, Content-Range, Content-Disposition, Accept-Ranges")
ALLOW_METHODS = "POST, HEAD, PATCH, DELETE, GET, OPTIONS"


def http_date(ts: float) -> str:
    """RFC 9110 IMF-fixdate, e.g. ``Wed, 25 Jun 2014 16:00:00 GMT``."""
    return formatdate(ts, usegmt=True)


def parse_int(request: web.Request, name: str) -> int | None:
    raw = single(request, name)
    if raw is None:
        return None
    if not _INT.fullmatch(raw.strip()):
        raise errors.BadRequest(f"{name} must be a non-negative integer")
    return int(raw)


#: ``protocol_data`` key: the base64 of metadata values that are not UTF-8, echoed byte-exact.
METADATA_BYTES = "metadata_bytes"


def parse_metadata(raw: str | None) -> tuple[str | None, dict[str, str], dict[str, str]]:
    """``Upload-Metadata`` -> (filename or None, the other pairs as text, the base64 of values that are not UTF-8).

    Plugins and the native API see every value as text (bytes that are not UTF-8 as ``\\xNN``);
    HEAD sends back the bytes the client sent.
    """
    pairs: dict[str, str] = {}
    binary: dict[str, str] = {}
    for item in (raw or "").split(","):
        item = item.strip()
        if not item:
            continue
        key, _, value = item.partition(" ")
        if not _METADATA_KEY.match(key) or key in pairs or " " in value.strip():
            raise errors.BadRequest(f"Upload-Metadata: bad or repeated key {key[:40]!r}")
        try:
            decoded = base64.b64decode(value.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise errors.BadRequest(f"Upload-Metadata: the value of {key[:40]!r} is not base64") from None
        try:
            pairs[key] = decoded.decode("utf-8")
        except UnicodeDecodeError:
            pairs[key] = decoded.decode("utf-8", "backslashreplace")
            binary[key] = base64.b64encode(decoded).decode()
    if len(pairs) > MAX_METADATA:
        raise errors.BadRequest(f"Upload-Metadata: at most {MAX_METADATA} keys")
    filename = pairs.pop("filename", None)
    if filename is not None and not 1 <= len(filename) <= 255:
        raise errors.BadRequest("Upload-Metadata: filename must be 1 to 255 characters")
    named = controls_replaced(filename) if filename is not None else None
    if named != filename:
        # A file's own name may hold a control character (Linux allows a newline), and a tus client
        # sends it as it is: the upload is named with U+FFFD in its place, HEAD sends back the bytes sent.
        binary.setdefault("filename", base64.b64encode(filename.encode()).decode())
        filename = named
    return filename, pairs, binary


def encode_metadata(upload: Upload) -> str:
    items = dict(upload.spec.metadata)
    if upload.spec.protocol_data.get("filename_given"):
        items = {"filename": upload.spec.filename, **items}
    exact = upload.spec.protocol_data.get(METADATA_BYTES) or {}
    return ",".join(f"{k} {exact.get(k) or base64.b64encode(v.encode()).decode()}" if v else k
                    for k, v in items.items())


def parse_checksum(raw: str | None) -> Checksum | None:
    if raw is None:
        return None
    algorithm, _, value = raw.strip().partition(" ")
    if algorithm.lower() not in CHECKSUM_ALGORITHMS:
        raise errors.BadRequest(f"Upload-Checksum: unsupported algorithm {algorithm[:20]!r}",
                                supported=list(CHECKSUM_ALGORITHMS))
    try:
        digest = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise errors.BadRequest("Upload-Checksum: the digest is not base64") from None
    size = hashlib.new(algorithm.lower()).digest_size
    if len(digest) != size:  # missing or cut short: a malformed header, not a body that differs (460)
        raise errors.BadRequest(f"Upload-Checksum: a {algorithm.lower()} digest is {size} bytes, got {len(digest)}")
    return Checksum(algorithm.lower(), digest)


class TusAPI:
    """tus handlers, built with the engine; :meth:`routes` lists them."""

    def __init__(self, engine: Callable[[], UploadEngine], auth: Authenticator, settings: TusSettings) -> None:
        self._engine = engine
        self.auth = auth
        self.settings = settings
        self.prefix = settings.prefix
        self.cors = CorsPolicy(frozenset(settings.cors_origins), ALLOW_METHODS, ALLOW_HEADERS, EXPOSE_HEADERS)
        self._appends: set[asyncio.Task] = set()

    async def _outlive_client(self, work: Awaitable[T]) -> T:
        """Run ``work`` to its end even if the handler is cancelled (a server with
        ``handler_cancellation``): the body then just ends, and what arrived is kept."""
        # No local holds the task: an error it raises would otherwise keep this frame in its
        # traceback, and the frame the task (which holds the error), a reference cycle.
        return await asyncio.shield(self._started(work))

    def _started(self, work: Awaitable[T]) -> "asyncio.Future[T]":
        task = asyncio.ensure_future(work)
        self._appends.add(task)
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task) -> None:
        self._appends.discard(task)
        if not task.cancelled():
            task.exception()  # mark it retrieved: a cancelled handler no longer awaits it

    @property
    def engine(self) -> UploadEngine:
        return self._engine()

    def routes(self) -> list[web.RouteDef]:
        p = self.prefix
        item = p + "{upload_id}"
        collection = [p] + ([p.rstrip("/")] if p != "/" else [])
        return [
            *(web.options(c, self.options) for c in collection),
            *(web.post(c, self.create, expect_handler=lazy_continue) for c in collection),  # creation-with-upload
            web.options(item, self.options),
            web.head(item, self.head),
            web.patch(item, self.patch, expect_handler=lazy_continue),
            web.delete(item, self.delete),
            web.post(item, self.override, expect_handler=lazy_continue),
            web.get(item, self.content, allow_head=False),
        ]

    # -- headers on every response ---------------------------------------------
    def _ours(self, request: web.Request) -> bool:
        return request.path.startswith(self.prefix) or request.path == self.prefix.rstrip("/")

    def add_headers(self, request: web.Request, response: web.StreamResponse) -> None:
        """Tus and CORS headers on every answer under the prefix, errors included (as it is prepared)."""
        if not self._ours(request):
            return
        h = response.headers
        h["Tus-Resumable"] = TUS_VERSION
        if response.status == 412:
            h["Tus-Version"] = TUS_VERSION
        if request.method == "HEAD":
            h["Cache-Control"] = "no-store"
        self.cors.add_headers(request, h)

    # -- request checks ------------------------------------------------------------
    @staticmethod
    def _check_version(request: web.Request) -> None:
        version = single(request, "Tus-Resumable")
        if version != TUS_VERSION:
            sent = "none was sent" if version is None else f"got {version[:40]!r}"
            raise errors.UnsupportedVersion(f"Tus-Resumable must be {TUS_VERSION}; {sent}",
                                            supported=[TUS_VERSION])

    def _url(self, request: web.Request, upload_id: str) -> str:
        """An upload's URL: a path (the tus spec allows a relative ``Location``, and tus clients
        resolve it against the endpoint), so a forged ``Host`` goes nowhere; behind a trusted
        proxy, the absolute URL the client addressed."""
        path = f"{self.prefix}{upload_id}"
        if not self.settings.trust_forwarded_headers:
            return path
        fwd = request.forwarded[0] if request.forwarded else {}
        host = fwd.get("host") or _first(request.headers.get("X-Forwarded-Host")) or request.host
        scheme = fwd.get("proto") or _first(request.headers.get("X-Forwarded-Proto")) or request.scheme
        if scheme not in ("http", "https"):
            scheme = request.scheme
        return f"{scheme}://{host}{path}"

    def _upload_id(self, request: web.Request, url: str) -> str:
        """An upload id from an ``Upload-Concat`` URL (absolute or a path under the prefix)."""
        path = urlsplit(url).path
        if not path.startswith(self.prefix) or "/" in path[len(self.prefix):]:
            raise errors.BadRequest(f"Upload-Concat: {url[:100]!r} is not an upload URL of this server")
        return path[len(self.prefix):]

    # -- handlers --------------------------------------------------------------------
    async def options(self, request: web.Request) -> web.Response:
        return web.Response(status=204, headers={
            "Tus-Version": TUS_VERSION,
            "Tus-Extension": ",".join(EXTENSIONS),
            "Tus-Max-Size": str(self.engine.appends.max_append_size),
            "Tus-Checksum-Algorithm": ",".join(CHECKSUM_ALGORITHMS),
        })

    async def create(self, request: web.Request) -> web.Response:
        self._check_version(request)
        user = self.auth.user(request)
        filename, metadata, binary = parse_metadata(joined(request, "Upload-Metadata"))
        if (named := metadata_content_type(metadata)) is not None and media_type(named) is None:
            raise errors.Invalid("Upload-Metadata: filetype/contentType must be a media type: type/subtype, "
                                 "optional parameters, at most 255 characters", field="filetype")
        given: dict[str, Any] = {"filename_given": True} if filename is not None else {}
        if binary:
            given[METADATA_BYTES] = binary
        concat = single(request, "Upload-Concat")
        length = parse_int(request, "Upload-Length")
        defer = single(request, "Upload-Defer-Length")
        body_size = body_length(request)
        has_body = bool(body_size) or (body_size is None and request.body_exists)
        if concat is not None and concat.startswith("final;"):
            if length is not None or defer is not None or has_body:
                raise errors.BadRequest("a final upload takes no Upload-Length, Upload-Defer-Length or body")
            parts = [self._upload_id(request, u) for u in concat[len("final;"):].split()]
            upload = await self.engine.appends.concatenate(user, parts, filename or DEFAULT_FILENAME, metadata,
                                                           protocol_data=given)
            return web.Response(status=201, headers=self._state_headers(request, upload))
        if concat is not None and concat != "partial":
            raise errors.BadRequest('Upload-Concat must be "partial" or "final;<urls>"')
        if defer is not None and defer != "1":
            raise errors.BadRequest("Upload-Defer-Length must be 1")
        if (length is None) == (defer is None):
            raise errors.BadRequest("send exactly one of Upload-Length and Upload-Defer-Length: 1")
        if has_body and request.content_type != OFFSET_STREAM:
            raise errors.UnsupportedMediaType(f"a body must be {OFFSET_STREAM}")
        checksum = parse_checksum(single(request, "Upload-Checksum"))
        if length is not None and body_size is not None and body_size > length:
            raise errors.TooLarge(f"the body ({body_size} bytes) is longer than Upload-Length {length}")
        req = NewAppendUpload(filename=filename or DEFAULT_FILENAME, length=length, metadata=metadata,
                              partial=concat == "partial", protocol_data=given)
        upload = await self.engine.appends.create_append(user, req)
        if has_body:  # creation-with-upload: the body is the first segment; all or nothing
            try:
                receipt = await self.engine.appends.append(user, upload.id, 0,
                                                           RequestBody(request, until_disconnect=True),
                                                           declared_size=body_size, checksum=checksum)
            except BaseException:
                try:  # to its end, even if the request is cancelled meanwhile
                    await asyncio.shield(self.engine.delete(user, upload.id))
                except errors.UploadError:
                    pass
                raise
            upload = receipt.upload
        return web.Response(status=201, headers=self._state_headers(request, upload))

    def _state_headers(self, request: web.Request, upload: Upload) -> dict[str, str]:
        headers = {"Location": self._url(request, upload.id), "Upload-Offset": str(offset_of(upload))}
        headers.update(self._expires(upload))
        return headers

    @staticmethod
    def _expires(upload: Upload) -> dict[str, str]:
        if upload.status is UploadStatus.COMPLETED:
            return {}
        return {"Upload-Expires": http_date(upload.expires_at)}

    async def head(self, request: web.Request) -> web.Response:
        self._check_version(request)
        user = self.auth.user(request)
        upload = await self.engine.appends.append_state(user, request.match_info["upload_id"])
        spec = upload.spec
        headers = {"Upload-Offset": str(offset_of(upload))}
        if upload.length is not None:
            headers["Upload-Length"] = str(upload.length)
        else:
            headers["Upload-Defer-Length"] = "1"
        if metadata := encode_metadata(upload):
            headers["Upload-Metadata"] = metadata
        if is_partial(spec):
            headers["Upload-Concat"] = "partial"
        elif is_final(spec):
            parts = " ".join(self.prefix + pid for pid in spec.protocol_data.get("parts", []))
            headers["Upload-Concat"] = f"final;{parts}"
        headers.update(self._expires(upload))
        return web.Response(status=200, headers=headers)

    async def patch(self, request: web.Request) -> web.Response:
        self._check_version(request)
        user = self.auth.user(request)
        if request.content_type != OFFSET_STREAM:
            raise errors.UnsupportedMediaType(f"Content-Type must be {OFFSET_STREAM}")
        offset = parse_int(request, "Upload-Offset")
        if offset is None:
            raise errors.BadRequest("Upload-Offset is required")
        receipt: AppendReceipt = await self._outlive_client(self.engine.appends.append(
            user, request.match_info["upload_id"], offset, RequestBody(request, until_disconnect=True),
            declared_size=body_length(request), checksum=parse_checksum(single(request, "Upload-Checksum")),
            length=parse_int(request, "Upload-Length")))
        headers = {"Upload-Offset": str(receipt.offset), **self._expires(receipt.upload)}
        return web.Response(status=204, headers=headers)

    async def delete(self, request: web.Request) -> web.Response:
        self._check_version(request)
        user = self.auth.user(request)
        await self.engine.appends.terminate(user, request.match_info["upload_id"])
        return web.Response(status=204)

    async def override(self, request: web.Request) -> web.StreamResponse:
        """``POST`` + ``X-HTTP-Method-Override`` for clients and proxies that only speak GET/POST."""
        method = (single(request, "X-HTTP-Method-Override") or "").upper()
        handler = getattr(self, method.lower()) if method in OVERRIDES else None
        if handler is None:
            raise errors.MethodNotAllowed("POST to an upload needs X-HTTP-Method-Override: PATCH, DELETE or HEAD")
        return await handler(request)

    async def content(self, request: web.Request) -> web.StreamResponse:
        """``GET <prefix><id>``: the completed upload's bytes (not part of tus; any client may read)."""
        user = self.auth.user(request)
        upload_id = request.match_info["upload_id"]
        upload = await self.engine.appends.append_state(user, upload_id)
        content = await self.engine.content(user, upload_id)
        return await serve_content(request, content, upload.spec.filename, upload.spec.content_type)


def _first(value: str | None) -> str | None:
    """The client-side (first) entry of a comma-separated forwarding header."""
    return value.split(",")[0].strip() or None if value else None
