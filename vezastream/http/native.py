"""The native chunk API under ``/v1/`` (docs/api.md).

Handlers parse and answer HTTP; every rule lives in the engine.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import unicodedata
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

from aiohttp import ClientPayloadError, web
from aiohttp.http_exceptions import BadHttpMessage

from .. import errors
from .auth import Authenticator
from ..engine.engine import UploadEngine, UploadView
from ..engine.plan import NewUpload
from .health import readiness
from ..models import DEFAULT_CONTENT_TYPE, MAX_METADATA, ChunkReceipt, is_sha256_hex, iso, media_type
from .body import RequestBody, Silence, body_length, lazy_continue, send_continue
from . import openapi
from .content import serve_content
from .headers import joined, single
from .cors import CorsPolicy, preflight

#: Multipart bodies are read in pieces of up to this size.
READ_PIECE = 256 * 1024
#: A chunk number: ASCII digits only (``int()`` also takes "²" and other scripts' digits), bounded.
_CHUNK_NUMBER = re.compile(r"[0-9]{1,18}")
_LONG_NUMBER = re.compile(r"0*[1-9][0-9]{18,}")
_CREATE_KEYS = {"filename", "total_size", "chunk_size", "total_chunks", "sha256", "metadata", "content_type"}
PREFIX = "/v1/"
#: What a page on another origin may send and read (CORS, ``native.cors_origins``).
ALLOW_METHODS = "GET, HEAD, POST, PUT, DELETE, OPTIONS"
ALLOW_HEADERS = "Authorization, Content-Type, Content-Digest, X-Chunk-Sha256, X-Request-ID, Range"
EXPOSE_HEADERS = ("Location, Retry-After, X-Chunk-Sha256, X-Chunk-Size, X-Request-ID, Content-Range, "
                  "Content-Disposition, Accept-Ranges")


def upload_json(view: UploadView) -> dict[str, Any]:
    up, spec = view.upload, view.upload.spec
    return {
        "upload_id": spec.id,
        "filename": spec.filename,
        "content_type": spec.content_type,
        "total_size": spec.total_size,
        "chunk_size": spec.chunk_size,
        "total_chunks": spec.total_chunks,
        "chunks_received": view.chunks_received,
        "received_count": up.received_count,
        "bytes_received": up.bytes_received,
        "progress": up.progress,
        "status": str(up.status),
        "created_at": iso(spec.created_at),
        "updated_at": iso(up.updated_at),
        "expires_at": iso(up.expires_at),
        "metadata": spec.metadata,
        "result": up.result.public() if up.result else None,
        "mode": spec.mode,
        **({"reason": up.reason} if up.reason is not None else {}),
    }


def receipt_json(r: ChunkReceipt) -> dict[str, Any]:
    return {"chunk": r.record.number, "size": r.record.size, "sha256": r.record.sha256,
            "received_count": r.received_count, "total_chunks": r.total_chunks}


def _int(body: dict[str, Any], key: str, required: bool = False) -> int | None:
    value = body.get(key)
    if value is None:
        if required:
            raise errors.Invalid(f"{key} is required", field=key)
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise errors.Invalid(f"{key} must be an integer", field=key)
    if value < 0:
        raise errors.Invalid(f"{key} must be >= 0", field=key)
    return value


def _utf8(value: str) -> bool:
    """True when ``value`` can be stored and sent back (JSON lets a lone surrogate through)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys are all different: which of two values a repeated key means is a guess."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        repeated = next(key for key, _ in pairs if key in seen or seen.add(key))  # type: ignore[func-returns-value]
        raise errors.BadRequest(f"the JSON body repeats the key {repeated[:40]!r}")
    return obj


def _not_a_number(name: str) -> Any:
    raise errors.BadRequest(f"the body must be JSON: {name} is not a JSON number")


async def read_json(request: web.Request) -> Any:
    """The request's JSON body; malformed input of any kind is a 4xx, never a 500. Read as a chunk's
    body is, so one that brings no byte for ``server.body_idle_timeout`` has its connection closed."""
    media = request.content_type  # (application/octet-stream when none is sent)
    if media != "application/json" and not (media.startswith("application/") and media.endswith("+json")):
        # also what a page on another site can send without a CORS preflight (a form, text/plain)
        raise errors.UnsupportedMediaType(f"the body must be application/json, not {media[:60]!r}")
    limit = request.client_max_size
    if (body_length(request) or 0) > limit:
        raise errors.TooLarge("the JSON body is too large")
    pieces, size = [], 0
    async for piece in RequestBody(request):
        size += len(piece)
        if size > limit:
            raise errors.TooLarge("the JSON body is too large")
        pieces.append(piece)
    raw = b"".join(pieces)
    charset = request.charset or "utf-8"
    try:
        text = raw.decode(charset)
    except LookupError:  # an unknown codec, or one that is not a text encoding
        raise errors.UnsupportedMediaType(f"unsupported charset {charset[:40]!r}; send UTF-8 JSON") from None
    except UnicodeError:  # (punycode and idna fail with a plain UnicodeError)
        raise errors.BadRequest(f"the body is not valid {charset[:40]}") from None
    try:
        return json.loads(text, object_pairs_hook=_object, parse_constant=_not_a_number)
    except RecursionError:
        raise errors.BadRequest("the JSON body is nested too deeply") from None
    except ValueError:  # malformed, or an integer longer than Python converts
        raise errors.BadRequest("the body must be JSON") from None


def parse_new_upload(body: Any) -> NewUpload:
    if not isinstance(body, dict):
        raise errors.Invalid("the body must be a JSON object")
    unknown = sorted(set(body) - _CREATE_KEYS)
    if unknown:
        raise errors.Invalid(f"unknown field {unknown[0]!r}", field=unknown[0])
    filename = body.get("filename")
    if not isinstance(filename, str) or not 1 <= len(filename) <= 255:
        raise errors.Invalid("filename must be a string of 1 to 255 characters", field="filename")
    if any(unicodedata.category(c) == "Cc" for c in filename) or not _utf8(filename):
        raise errors.Invalid("filename must be valid Unicode without control characters", field="filename")
    sha = body.get("sha256")
    if sha is not None and (not isinstance(sha, str) or not is_sha256_hex(sha)):
        raise errors.Invalid("sha256 must be 64 hex digits", field="sha256")
    metadata = body.get("metadata") or {}
    if (not isinstance(metadata, dict) or len(metadata) > MAX_METADATA
            or not all(isinstance(k, str) and isinstance(v, str) and len(k) <= 128 and len(v) <= 4096
                       and _utf8(k) and _utf8(v) for k, v in metadata.items())):
        raise errors.Invalid(f"metadata must map at most {MAX_METADATA} string keys to string values",
                             field="metadata")
    content_type = body.get("content_type")
    if content_type in (None, ""):  # none named (a browser's File.type is "" for a type it does not know)
        content_type = DEFAULT_CONTENT_TYPE
    if not isinstance(content_type, str) or media_type(content_type) is None:
        raise errors.Invalid("content_type must be a media type: type/subtype, optional parameters, "
                             "at most 255 characters", field="content_type")
    total_size = _int(body, "total_size", required=True)
    assert total_size is not None
    return NewUpload(filename=filename, total_size=total_size, chunk_size=_int(body, "chunk_size"),
                     total_chunks=_int(body, "total_chunks"), sha256=sha.lower() if sha else None,
                     metadata=metadata, content_type=content_type)


def parse_digest(request: web.Request) -> str | None:
    """The chunk's declared SHA-256 (hex) from ``Content-Digest`` or ``X-Chunk-Sha256``."""
    declared = []
    raw = joined(request, "Content-Digest")
    if raw:
        for item in raw.split(","):
            algo, sep, value = item.strip().partition("=")
            if algo.strip().lower() != "sha-256":
                continue
            value = value.strip()
            try:
                if not (sep and value.startswith(":") and value.endswith(":")):
                    raise ValueError
                digest = base64.b64decode(value[1:-1], validate=True)
            except (ValueError, binascii.Error):
                raise errors.BadRequest("Content-Digest: expected sha-256=:<base64>:") from None
            if len(digest) != 32:
                raise errors.BadRequest("Content-Digest: a sha-256 digest is 32 bytes")
            declared.append(digest.hex())
    hexed = single(request, "X-Chunk-Sha256")
    if hexed is not None:
        if not is_sha256_hex(hexed.strip()):
            raise errors.BadRequest("X-Chunk-Sha256: expected 64 hex digits")
        declared.append(hexed.strip().lower())
    if len(set(declared)) > 1:
        raise errors.BadRequest("Content-Digest and X-Chunk-Sha256 disagree")
    return declared[0] if declared else None


#: What aiohttp's multipart reader raises for a malformed body or Content-Type (no boundary).
_MULTIPART_ERRORS = (LookupError, ValueError, BadHttpMessage)


#: A file part's codings that leave its bytes as they are (aiohttp's part reader decodes none).
_PLAIN_PART = {"Content-Transfer-Encoding": ("binary", "8bit", "7bit"), "Content-Encoding": ("identity",)}


def _check_part_codings(part: Any) -> None:
    """A 415 for a file part whose bytes are coded (base64, gzip...): they would be stored coded."""
    for name, plain in _PLAIN_PART.items():
        for value in part.headers.getall(name, ()):
            if value.strip().lower() not in plain:
                raise errors.UnsupportedMediaType(f"the file part's {name} {value[:40]!r} is not decoded here; "
                                                  "send its bytes as they are")


async def _multipart_body(request: web.Request) -> AsyncIterator[bytes]:
    """The bytes of the file field named ``chunk`` (or ``file``). A body that brings no byte for
    ``server.body_idle_timeout`` has its connection closed and raises ``BodyIdle``, as a raw one does."""
    silence = Silence.of(request)

    async def read(waiting: Awaitable[Any]) -> Any:
        silence.waiting()
        try:
            return await waiting
        except _MULTIPART_ERRORS:
            raise silence.idle_error() or errors.BadRequest("malformed multipart/form-data body") from None
        except (ConnectionError, ClientPayloadError):
            idle = silence.idle_error()
            if idle is None:
                raise
            raise idle from None
        finally:
            silence.done()

    send_continue(request)
    try:
        reader = await request.multipart()
    except _MULTIPART_ERRORS:  # a Content-Type without a boundary
        raise errors.BadRequest("malformed multipart/form-data body") from None
    try:
        while (part := await read(reader.next())) is not None and getattr(part, "name", None) not in ("chunk", "file"):
            await read(part.release())
        if part is None:
            raise errors.BadRequest("multipart body has no file field named 'chunk' or 'file'")
        _check_part_codings(part)
        while piece := await read(part.read_chunk(READ_PIECE)):  # type: ignore[union-attr]
            yield piece
    finally:
        silence.stop()


class NativeAPI:
    def __init__(self, engine: Callable[[], UploadEngine], auth: Authenticator,
                 redis_topology: Callable[[], dict[str, Any]] = dict, cors_origins: Iterable[str] = ()) -> None:
        self._engine = engine
        self.auth = auth
        self.redis_topology = redis_topology
        self.cors = CorsPolicy(frozenset(cors_origins), ALLOW_METHODS, ALLOW_HEADERS, EXPOSE_HEADERS)

    @property
    def engine(self) -> UploadEngine:
        return self._engine()

    def routes(self) -> list[web.RouteDef]:
        routes = [
            web.post("/v1/uploads", self.create),
            web.get("/v1/uploads/{upload_id}", self.state),
            web.delete("/v1/uploads/{upload_id}", self.delete),
            web.post("/v1/uploads/{upload_id}/complete", self.complete),
            web.put("/v1/uploads/{upload_id}/chunks/{n}", self.put_chunk, expect_handler=lazy_continue),
            web.head("/v1/uploads/{upload_id}/chunks/{n}", self.head_chunk),
            web.get("/v1/uploads/{upload_id}/content", self.content),
            web.get("/v1/health", self.health),
            web.get("/v1/health/deep", self.health_deep),
            web.get("/v1/openapi.json", openapi.serve),
        ]
        paths = dict.fromkeys(r.path for r in routes)
        return routes + [web.options(path, preflight) for path in paths]  # CORS preflights

    def add_headers(self, request: web.Request, response: web.StreamResponse) -> None:
        """CORS headers on every answer under ``/v1/``, errors included (as it is prepared)."""
        if request.path.startswith(PREFIX):
            self.cors.add_headers(request, response.headers)

    @staticmethod
    def _chunk_number(request: web.Request) -> int:
        raw = request.match_info["n"]
        if _LONG_NUMBER.fullmatch(raw):  # past any upload's last chunk (limits.max_chunks)
            raise errors.NotFound(f"chunk {raw[:20]}... is past the upload's last chunk")
        if not _CHUNK_NUMBER.fullmatch(raw) or int(raw) < 1:
            raise errors.BadRequest(f"chunk number must be a positive integer, got {raw[:20]!r}")
        return int(raw)

    async def create(self, request: web.Request) -> web.Response:
        user = self.auth.user(request)
        upload = await self.engine.create(user, parse_new_upload(await read_json(request)))
        view = UploadView(upload, [])
        location = f"/v1/uploads/{upload.id}"
        return web.json_response(upload_json(view), status=201, headers={"Location": location})

    async def state(self, request: web.Request) -> web.Response:
        user = self.auth.user(request)
        view = await self.engine.view(user, request.match_info["upload_id"])
        return web.json_response(upload_json(view))

    async def put_chunk(self, request: web.Request) -> web.Response:
        user = self.auth.user(request)
        n = self._chunk_number(request)
        digest = parse_digest(request)
        if request.content_type == "multipart/form-data":
            body, declared = _multipart_body(request), None
        else:
            body, declared = RequestBody(request), body_length(request)
        receipt = await self.engine.put_chunk(user, request.match_info["upload_id"], n, body,
                                              declared_size=declared, expected_sha256=digest)
        return web.json_response(receipt_json(receipt), status=201 if receipt.created else 200)

    async def head_chunk(self, request: web.Request) -> web.Response:
        user = self.auth.user(request)
        record = await self.engine.chunk(user, request.match_info["upload_id"], self._chunk_number(request))
        return web.Response(status=200, headers={"X-Chunk-Sha256": record.sha256,
                                                 "X-Chunk-Size": str(record.size)})

    async def complete(self, request: web.Request) -> web.Response:
        user = self.auth.user(request)
        upload, result = await self.engine.complete(user, request.match_info["upload_id"])
        spec = upload.spec
        return web.json_response({"upload_id": spec.id, "filename": spec.filename,
                                  "content_type": spec.content_type, "size": result.size,
                                  "sha256": result.sha256, "sink": result.sink, "location": result.location,
                                  "metadata": spec.metadata})

    async def delete(self, request: web.Request) -> web.Response:
        user = self.auth.user(request)
        await self.engine.delete(user, request.match_info["upload_id"])
        return web.Response(status=204)

    async def content(self, request: web.Request) -> web.StreamResponse:
        user = self.auth.user(request)
        upload_id = request.match_info["upload_id"]
        spec = await self.engine.spec(user, upload_id)
        content = await self.engine.content(user, upload_id)
        return await serve_content(request, content, spec.filename, spec.content_type)

    async def health(self, request: web.Request) -> web.Response:
        """Liveness: from memory, no Redis, no sink."""
        return web.json_response({"status": "ok"})

    async def health_deep(self, request: web.Request) -> web.Response:
        """Readiness: Redis, the staging folder and the sink asked, each reported ok or failed with a reason class."""
        status, body = await readiness(self.engine.readiness_checks(), redis=self.redis_topology())
        return web.json_response(body, status=status)
