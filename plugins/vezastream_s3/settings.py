"""The ``[sinks.s3]`` table: parsed once, validated, frozen."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from vezastream import ConfigError, KeyTemplate, MiB, Size, parse_size

#: S3's limits on multipart uploads.
MIN_PART = 5 * MiB
MAX_PART = 5 * 1024 * MiB
MAX_PARTS = 10_000
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


@dataclass(frozen=True)
class S3Settings:
    bucket: str = ""
    #: Objects are stored as ``<prefix><upload id>``; the GC only looks under it.
    prefix: str = "uploads/"
    #: The key after ``prefix`` (``vezastream.KeyTemplate``): ``{upload_id}`` is today's layout.
    key_template: str = "{upload_id}"
    #: Empty: AWS's own endpoint for ``region``. Set it for MinIO, SeaweedFS, Ceph...
    endpoint_url: str = ""
    region: str = "us-east-1"
    #: "auto", "path" or "virtual".
    addressing_style: str = "auto"
    #: Streamed mode: bytes per part, and how many parts are sent at once
    #: (memory is bounded by part_size x parts_in_flight).
    part_size: Size = Size(10 * MiB)
    parts_in_flight: int = 3
    #: "redirect": /content answers 307 to a presigned GET URL; "proxy": the server streams the object.
    content: str = "redirect"
    #: Seconds a presigned GET URL stays valid.
    presign_expiry: int = 3600
    #: Direct mode: chunks of at least 5 MiB go straight to S3 as parts, as they arrive.
    direct: bool = True
    #: Transient S3 errors (500, 503 SlowDown, resets; not timeouts) are retried this many times in all,
    #: with exponential backoff from retry_base_delay up to retry_max_delay seconds (with jitter).
    retry_attempts: int = 5
    retry_base_delay: float = 0.2
    retry_max_delay: float = 5.0
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    #: Connections to S3 kept open at most (parts in flight of every upload share them).
    max_connections: int = 32


def _typed(name: str, value: Any, default: Any) -> Any:
    key = f"sinks.s3.{name}"
    if isinstance(default, Size):
        return parse_size(value, key)
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number of seconds, got {value!r}")
        return float(value)
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if not isinstance(value, str):
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    return value


def parse_settings(table: Mapping[str, Any]) -> S3Settings:
    defaults = S3Settings()
    known = {f.name for f in fields(S3Settings)}
    unknown = sorted(set(table) - known)
    if unknown:
        raise ConfigError(f"sinks.s3.{unknown[0]}: unknown setting")
    s = S3Settings(**{k: _typed(k, v, getattr(defaults, k)) for k, v in table.items()})
    checks = [
        (bool(_BUCKET.match(s.bucket)), "bucket", "must name a bucket (3-63 lowercase letters, digits, . and -)"),
        (not s.prefix.startswith("/"), "prefix", "must not start with /"),
        (s.endpoint_url == "" or s.endpoint_url.startswith(("http://", "https://")), "endpoint_url",
         "must start with http:// or https://"),
        (s.addressing_style in ("auto", "path", "virtual"), "addressing_style", 'must be "auto", "path" or "virtual"'),
        (MIN_PART <= s.part_size <= MAX_PART, "part_size", "must lie between 5MiB and 5GiB (S3's part limits)"),
        (1 <= s.parts_in_flight <= 64, "parts_in_flight", "must be 1..64"),
        (s.content in ("redirect", "proxy"), "content", 'must be "redirect" or "proxy"'),
        (1 <= s.presign_expiry <= 7 * 24 * 3600, "presign_expiry", "must be 1 second .. 7 days"),
        (1 <= s.retry_attempts <= 20, "retry_attempts", "must be 1..20"),
        (0 <= s.retry_base_delay <= s.retry_max_delay, "retry_base_delay", "must be >= 0 and <= retry_max_delay"),
        (s.connect_timeout > 0 and s.read_timeout > 0, "read_timeout", "timeouts must be > 0"),
        (s.max_connections >= 1, "max_connections", "must be >= 1"),
    ]
    for ok, name, problem in checks:
        if not ok:
            raise ConfigError(f"sinks.s3.{name}: {problem}")
    KeyTemplate.parse(s.key_template, "sinks.s3.key_template")
    return s
