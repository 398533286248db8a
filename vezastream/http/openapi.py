"""The OpenAPI 3.1 document of the native API, served at ``GET /v1/openapi.json``.

Built here in Python from small pieces; tests/api/test_openapi.py keeps it and the routes in
sync, and runs schemathesis against a real ``vezastream serve`` with it.
"""

from __future__ import annotations

import copy
from typing import Any

from aiohttp import web

from .. import __version__
from ..errors import PROBLEM_BASE

PROBLEM = "application/problem+json"
_REF = "#/components/"
#: Every status an answer of the native API may have, with what it means (all but 2xx/3xx are problems).
_WHY = {
    400: "malformed request (body, header, chunk number)", 401: "missing or invalid bearer token",
    404: "no such upload, chunk or route", 405: "method not allowed",
    409: "conflict with the upload's state", 410: "the upload's state was lost in Redis; it is removed",
    413: "body or upload too large",
    415: "unsupported media type, charset or content coding", 416: "range not satisfiable",
    422: "invalid field, digest mismatch, short chunk, integrity error, rejected by a plugin",
    429: "a per-user limit is reached", 431: "request line or header too long", 501: "not supported by the sink",
    502: "the storage sink failed", 503: "state store or sink unavailable (with Retry-After)",
    507: "the server's disk is full (with Retry-After)",
}
_ALWAYS = (400, 401, 405, 415, 429, 431, 503)


def _ref(kind: str, name: str) -> dict[str, str]:
    return {"$ref": f"{_REF}{kind}/{name}"}


def _headers(**extra: dict[str, Any]) -> dict[str, Any]:
    return {"X-Request-ID": _ref("headers", "X-Request-ID"), **extra}


def _json(description: str, schema: dict[str, Any], **headers: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "headers": _headers(**headers),
            "content": {"application/json": {"schema": schema}}}


def _problems(*statuses: int) -> dict[str, Any]:
    return {str(s): _ref("responses", str(s)) for s in sorted({*statuses, *_ALWAYS})}


def _op(op_id: str, summary: str, responses: dict[str, Any], *, params: tuple[str, ...] = (),
        body: dict[str, Any] | None = None, public: bool = False) -> dict[str, Any]:
    op: dict[str, Any] = {"operationId": op_id, "summary": summary,
                          "parameters": [_ref("parameters", p) for p in (*params, "X-Request-ID")],
                          "responses": responses}
    if body is not None:
        op["requestBody"] = body
    if public:
        op["security"] = [{}]
    return op


_STR = {"type": "string"}
_INT = {"type": "integer", "minimum": 0}
_SHA = {"type": "string", "pattern": "^[0-9a-fA-F]{64}$"}
_META = {"type": "object", "maxProperties": 64, "additionalProperties": {"type": "string", "maxLength": 4096},
         "propertyNames": {"maxLength": 128}}
_RESULT = {"type": "object", "required": ["size", "sha256", "sink", "location"],
           "properties": {"size": _INT, "sha256": _STR, "sink": _STR, "location": {"type": ["string", "null"]}}}

SCHEMAS: dict[str, Any] = {
    "Problem": {
        "type": "object", "description": "RFC 9457 problem details; extra members (field, missing_chunks, ...) "
                                         "depend on the type.",
        "required": ["type", "title", "status", "detail"],
        "properties": {"type": {"type": "string", "format": "uri", "examples": [PROBLEM_BASE + "not-found"]},
                       "title": _STR, "status": {"type": "integer", "minimum": 400, "maximum": 599},
                       "detail": _STR, "instance": {"type": "string", "description": "the request's path"},
                       "request_id": {"type": "string", "description": "the answer's X-Request-ID"},
                       "retry_after": _INT},
    },
    "NewUpload": {
        "type": "object", "additionalProperties": False, "required": ["filename", "total_size"],
        "properties": {"filename": {"type": "string", "minLength": 1, "maxLength": 255},
                       "total_size": _INT, "chunk_size": _INT, "total_chunks": _INT, "sha256": _SHA,
                       "metadata": _META,
                       "content_type": {"type": "string", "maxLength": 255, "default": "application/octet-stream",
                                        "description": "the object's media type, type/subtype[; k=v]"}},
    },
    "Upload": {
        "type": "object",
        "required": ["upload_id", "filename", "content_type", "total_size", "chunk_size", "total_chunks",
                     "chunks_received", "received_count", "bytes_received", "progress", "status", "created_at",
                     "updated_at", "expires_at", "metadata", "result", "mode"],
        "properties": {"upload_id": _STR, "filename": _STR, "content_type": _STR, "total_size": _INT, "chunk_size": _INT,
                       "total_chunks": _INT, "chunks_received": {"type": "array", "items": _INT},
                       "received_count": _INT, "bytes_received": _INT,
                       "progress": {"type": "number", "minimum": 0, "maximum": 100},
                       "status": {"enum": ["pending", "completing", "completed", "rejected"]},
                       "created_at": _STR, "updated_at": _STR, "expires_at": {"type": ["string", "null"]},
                       "metadata": _META, "result": {"oneOf": [{"type": "null"}, _RESULT]},
                       "mode": {"enum": ["staged", "direct"]}, "reason": _STR},
    },
    "ChunkReceipt": {
        "type": "object", "required": ["chunk", "size", "sha256", "received_count", "total_chunks"],
        "properties": {"chunk": _INT, "size": _INT, "sha256": _STR, "received_count": _INT, "total_chunks": _INT},
    },
    "Completed": {
        "type": "object",
        "required": ["upload_id", "filename", "content_type", "size", "sha256", "sink", "location", "metadata"],
        "properties": {"upload_id": _STR, "filename": _STR, "content_type": _STR, **_RESULT["properties"],
                       "metadata": _META},
    },
    "Health": {"type": "object", "required": ["status"], "properties": {"status": {"enum": ["ok", "fail"]}}},
    "Readiness": {
        "type": "object", "required": ["status", "checks"],
        "properties": {"status": {"enum": ["ok", "fail"]},
                       "checks": {"type": "object", "additionalProperties": {
                           "type": "object", "required": ["ok"],
                           "properties": {"ok": {"type": "boolean"}, "reason": _STR}}},
                       "redis": {"type": "object"}},
    },
}

_PARAMETERS = {
    "upload_id": {"name": "upload_id", "in": "path", "required": True, "schema": _STR},
    "n": {"name": "n", "in": "path", "required": True, "description": "the chunk's number, 1..total_chunks",
          "schema": {"type": "integer", "minimum": 1}},
    "X-Request-ID": {"name": "X-Request-ID", "in": "header", "required": False,
                     "description": "kept when 1-128 printable ASCII characters, else replaced by a new id",
                     "schema": {"type": "string"}},
    "X-Chunk-Sha256": {"name": "X-Chunk-Sha256", "in": "header", "required": False,
                       "description": "the chunk's SHA-256 (hex); a mismatch answers 422", "schema": _SHA},
    "Content-Digest": {"name": "Content-Digest", "in": "header", "required": False,
                       "description": "RFC 9530, sha-256=:<base64>:; a mismatch answers 422", "schema": _STR},
    "Range": {"name": "Range", "in": "header", "required": False, "description": "one byte range, bytes=a-b",
              "schema": _STR},
}

_BINARY = {"type": "string", "contentMediaType": "application/octet-stream"}
_NO_BODY = {"description": "no body", "headers": _headers()}


def _paths() -> dict[str, Any]:
    upload, chunk = "/v1/uploads/{upload_id}", "/v1/uploads/{upload_id}/chunks/{n}"
    sha_headers = {"X-Chunk-Sha256": {"schema": _SHA}, "X-Chunk-Size": {"schema": {"type": "string"}}}
    content = {"description": "the bytes (206: the range asked for)",
               "headers": _headers(**{name: {"schema": _STR} for name in (
                   "Content-Disposition", "X-Content-Type-Options", "Content-Security-Policy")}),
               "content": {"application/octet-stream": {"schema": _BINARY}}}
    return {
        "/v1/uploads": {"post": _op("createUpload", "Create an upload", {
            "201": {**_json("created", _ref("schemas", "Upload"), Location={"schema": _STR}), "links": {
                op: {"operationId": op, "parameters": {"upload_id": "$response.body#/upload_id"}}
                for op in ("getUpload", "deleteUpload", "completeUpload", "putChunk", "headChunk", "getContent")}},
            **_problems(413, 415, 422, 507)},
            body={"required": True, "content": {"application/json": {"schema": _ref("schemas", "NewUpload")}}})},
        upload: {
            "get": _op("getUpload", "An upload's state (to resume)", {
                "200": _json("the state", _ref("schemas", "Upload")), **_problems(404)}, params=("upload_id",)),
            "delete": _op("deleteUpload", "Delete an upload, its chunks and its stored object", {
                "204": _NO_BODY, **_problems(404, 409, 502)}, params=("upload_id",)),
        },
        upload + "/complete": {"post": _op("completeUpload", "Assemble the chunks into the sink", {
            "200": _json("completed (the same answer on every call)", _ref("schemas", "Completed")),
            **_problems(404, 409, 410, 422, 502, 507)}, params=("upload_id",))},
        chunk: {
            "put": _op("putChunk", "Send one chunk (raw body, or multipart field chunk or file)", {
                "201": _json("stored", _ref("schemas", "ChunkReceipt")),
                "200": _json("the same bytes were already stored", _ref("schemas", "ChunkReceipt")),
                **_problems(404, 409, 413, 415, 422, 507)},
                params=("upload_id", "n", "X-Chunk-Sha256", "Content-Digest"),
                body={"required": True, "content": {
                    "application/octet-stream": {"schema": _BINARY},
                    "multipart/form-data": {"schema": {"type": "object", "properties": {
                        "chunk": _BINARY, "file": _BINARY}}}}}),
            "head": _op("headChunk", "Whether a chunk is stored, with its digest and size", {
                "200": {"description": "stored", "headers": _headers(**sha_headers)}, **_problems(404)},
                params=("upload_id", "n")),
        },
        upload + "/content": {"get": _op("getContent", "The completed file's bytes", {
            "200": content, "206": content,
            "307": {"description": "a presigned URL of the sink", "headers": _headers(Location={"schema": _STR})},
            **_problems(404, 409, 416, 501, 502)}, params=("upload_id", "Range"))},
        "/v1/health": {"get": _op("health", "Liveness, from memory", {
            "200": _json("the process serves", _ref("schemas", "Health")), **_problems()}, public=True)},
        "/v1/health/deep": {"get": _op("healthDeep", "Readiness: Redis and the sink asked", {
            "200": _json("ready", _ref("schemas", "Readiness")),
            "503": _json("not ready", _ref("schemas", "Readiness")),
            **{k: v for k, v in _problems().items() if k != "503"}}, public=True)},
        "/v1/openapi.json": {"get": _op("openapi", "This document", {
            "200": _json("OpenAPI 3.1", {"type": "object"}), **_problems()}, public=True)},
    }


def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document (a new dict per call)."""
    return copy.deepcopy({
        "openapi": "3.1.0",
        "info": {"title": "vezastream native chunk API", "version": __version__,
                 "description": "Resumable uploads in numbered chunks, sent in any order and in parallel. "
                                "Every error is application/problem+json (RFC 9457)."},
        "security": [{"bearer": []}, {}],
        "paths": _paths(),
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "needed when auth.mode is token"}},
            "schemas": SCHEMAS,
            "parameters": _PARAMETERS,
            "headers": {"X-Request-ID": {"required": True, "schema": _STR,
                                         "description": "the request's id (the client's when sane)"}},
            "responses": {str(status): {"description": why, "headers": _headers(),
                                        "content": {PROBLEM: {"schema": _ref("schemas", "Problem")}}}
                          for status, why in _WHY.items()},
        },
    })


async def serve(request: web.Request) -> web.Response:
    """``GET /v1/openapi.json``."""
    return web.json_response(document())
