"""Domain values of the upload engine: frozen dataclasses and status enums."""

from __future__ import annotations

import dataclasses
import math
import re
import secrets
import unicodedata
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import StrEnum
from typing import Any


_UPLOAD_ID = re.compile(r"[A-Za-z0-9_-]{22}")  # fullmatch: "$" also matches before a final "\n"


def new_upload_id() -> str:
    """128 random bits, URL-safe (22 characters)."""
    return secrets.token_urlsafe(16)


def is_upload_id(value: str) -> bool:
    """Ids are checked before they name a Redis key or a folder."""
    return _UPLOAD_ID.fullmatch(value) is not None


def controls_replaced(name: str) -> str:
    """``name`` with each control character (Unicode's Cc: a newline, which Linux allows in a file's
    name) as U+FFFD: a file's own name made one the server takes (the client's, the tus door's)."""
    return "".join("\ufffd" if unicodedata.category(c) == "Cc" else c for c in name)


class UploadStatus(StrEnum):
    PENDING = "pending"
    COMPLETING = "completing"
    COMPLETED = "completed"
    #: Refused after the sink consumed the chunks (S3 direct mode): only DELETE is left (see ``Upload.reason``).
    REJECTED = "rejected"


#: A SHA-256 as uploads keep it: 64 lowercase hex digits (the doors accept either case and lower it).
SHA256_HEX = re.compile(r"[0-9a-f]{64}")  # (use fullmatch)
#: Metadata keys one upload may carry (native JSON ``metadata``, tus ``Upload-Metadata``).
MAX_METADATA = 64


#: The Content-Type of an object whose upload named none.
DEFAULT_CONTENT_TYPE = "application/octet-stream"
#: ``type/subtype`` with optional ``; name=value`` parameters (RFC 9110 tokens, quoted values), bounded.
_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_MEDIA_TYPE = re.compile(rf'^{_TOKEN}/{_TOKEN}(?:[ \t]*;[ \t]*{_TOKEN}=(?:{_TOKEN}|"[^"\\\x00-\x1f\x7f]*"))*\Z')
#: tus metadata keys that name the content type, in the order they are tried (Uppy sends ``filetype``).
CONTENT_TYPE_METADATA = ("filetype", "contentType")


def media_type(value: str) -> str | None:
    """``value`` if it is a sane media type (``type/subtype[; k=v]...``, at most 255 characters), else None."""
    return value if len(value) <= 255 and _MEDIA_TYPE.match(value) else None


def metadata_content_type(metadata: dict[str, str]) -> str | None:
    """The content type tus metadata names (``filetype``, else ``contentType``), or None. An empty
    value names none: a browser's ``File.type`` is empty for a type it does not know, and
    tus-js-client's own example sends it as ``filetype``."""
    return next((metadata[k] for k in CONTENT_TYPE_METADATA if metadata.get(k)), None)


def is_sha256_hex(value: str) -> bool:
    """Whether ``value`` is 64 hex digits, in either case (as a client may send it)."""
    return SHA256_HEX.fullmatch(value.lower()) is not None


class Layout(StrEnum):
    """How an upload's bytes wait until completion (``UploadSpec.layout``).

    The engine hands each upload to its layout's module in ``engine/layouts/``; direct mode
    (``UploadSpec.direct``: chunks go straight to the sink, ``engine/layouts/direct.py``)
    keeps nothing locally.
    """
    #: Each chunk its own staged file, ``<n>.<sha256>`` (native chunks with ``storage.in_place`` off,
    #: ``engine/layouts/chunkfiles.py``).
    CHUNKS = "chunks"
    #: One data file per upload, chunk ``n`` at ``(n - 1) * chunk_size`` (``engine/layouts/inplace.py``).
    IN_PLACE = "inplace"
    #: Segments appended at the current offset, one per request (tus, ``engine/layouts/append.py``).
    APPEND = "append"
    #: Each native chunk a staging object in the sink, nothing on local disk (``storage.staging = "sink"``,
    #: ``engine/layouts/insink.py``; tus uploads stay ``APPEND``, their segments staging objects too).
    IN_SINK = "insink"


def iso(ts: float | None) -> str | None:
    """Epoch seconds -> ``2026-11-25T20:00:00Z``."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class UploadSpec:
    """What never changes about an upload once it is created."""

    id: str
    owner: str
    filename: str
    total_size: int
    chunk_size: int
    total_chunks: int
    created_at: float
    sha256: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    protocol: str = "native"
    #: "chunks": numbered chunks of ``chunk_size`` (native API); "append": segments
    #: appended at the current offset, one per request (tus). ``total_size`` is -1
    #: while an append upload's length is deferred.
    layout: str = Layout.CHUNKS
    #: Protocol-specific facts the engine keeps but does not interpret (tus concatenation...).
    protocol_data: dict[str, Any] = field(default_factory=dict)
    #: The sink's handle when chunks go straight to the sink (``ReceivesChunks``), else None.
    direct: str | None = None
    #: The object's Content-Type (native ``content_type``, tus ``filetype``/``contentType`` metadata).
    content_type: str = DEFAULT_CONTENT_TYPE
    #: The object key a ``vezastream_object_key`` plugin chose (already made safe), else None: the sink's template.
    key: str | None = None
    #: Where the bytes wait until completion: "local" (under ``storage.data_dir``) or "sink" (staging
    #: objects in the sink, ``storage.staging = "sink"``: engine/layouts/sinkstaging.py). Direct uploads stage nothing.
    staging: str = "local"

    @property
    def mode(self) -> str:
        """"direct" (chunks go straight to the sink) or "staged" (local disk until completion)."""
        return "direct" if self.direct else "staged"

    def expected_chunk_size(self, n: int) -> int:
        """Bytes chunk ``n`` (1-based) must hold: ``chunk_size`` but for the last."""
        if n < self.total_chunks:
            return self.chunk_size
        return self.total_size - (self.total_chunks - 1) * self.chunk_size

    def to_json(self) -> dict[str, Any]:
        """Its fields as a dict for ``json.dumps`` (shallow: the dicts in it are the spec's own)."""
        return {name: getattr(self, name) for name in _SPEC_FIELDS}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "UploadSpec":
        return cls(**{k: v for k, v in data.items() if k in _SPEC_NAMES})


#: UploadSpec's field names, in order (what its JSON holds).
_SPEC_FIELDS = tuple(f.name for f in dataclasses.fields(UploadSpec))
_SPEC_NAMES = frozenset(_SPEC_FIELDS)


def chunk_count(total_size: int, chunk_size: int) -> int:
    return math.ceil(total_size / chunk_size) if chunk_size else 0


@dataclass(frozen=True)
class ChunkRecord:
    number: int
    size: int
    sha256: str

    def encode(self) -> str:
        return f"{self.size}:{self.sha256}"

    @classmethod
    def decode(cls, number: int, raw: str) -> "ChunkRecord":
        size, _, sha = raw.partition(":")
        return cls(number, int(size), sha)


@dataclass(frozen=True)
class UploadResult:
    size: int
    sha256: str
    sink: str
    location: str
    completed_at: float

    def public(self) -> dict[str, Any]:
        return {"size": self.size, "sha256": self.sha256, "sink": self.sink, "location": self.location}


@dataclass(frozen=True)
class Upload:
    """An upload as the state store last saw it."""

    spec: UploadSpec
    status: UploadStatus
    updated_at: float
    expires_at: float
    received_count: int
    bytes_received: int
    result: UploadResult | None = None
    #: An append upload's length declared after creation (deferred length).
    declared_length: int | None = None
    #: Why a ``rejected`` upload was refused.
    reason: str | None = None

    @property
    def id(self) -> str:
        return self.spec.id

    @property
    def length(self) -> int | None:
        """The upload's total size, or None while it is deferred."""
        return self.spec.total_size if self.spec.total_size >= 0 else self.declared_length

    @property
    def progress(self) -> float:
        length = self.length
        if length is None:
            return 0.0
        if length == 0:
            return 100.0
        return round(100.0 * self.bytes_received / length, 2)


@dataclass(frozen=True)
class ChunkReceipt:
    """What the engine answers for one stored (or re-sent) chunk."""

    record: ChunkRecord
    created: bool
    received_count: int
    total_chunks: int
