"""vezastream-webhook: POST a signed JSON event to one URL when an upload completes.

What it does: for each event it is configured for (``upload.completed`` by
default; also ``upload.deleted`` and ``upload.expired``), it POSTs a JSON
body to ``url``, signed by the Standard Webhooks scheme (standardwebhooks.com,
spec 1.0): ``webhook-id`` (the event id, the same on every retry),
``webhook-timestamp`` (Unix seconds of the attempt) and ``webhook-signature``
(``v1,<base64>``: HMAC-SHA256 of ``"{id}.{timestamp}.{body}"``). The secret
is ``whsec_<base64>`` (the key is the decoded bytes), as the Standard Webhooks
libraries expect; any other string is used as its UTF-8 bytes. Receivers check
the signature and refuse a timestamp more than 5 minutes away (replay
protection): :func:`verify_webhook` does both. The older
``X-Vezastream-Signature: sha256=<hex HMAC of the body>`` header is still sent
(deprecated). A failed delivery (connection error, timeout, 408, 429 or 5xx)
is retried with exponential backoff, a bounded number of times; any other
answer ends it.

What it does not do: it is best-effort, like every vezastream notification.
Deliveries run in the background after the upload is final and are lost if
the server stops mid-retry; never block, fail or slow an upload; keep no
outbox. Receivers should treat the event id (``webhook-id``) as an
idempotency key: a retried delivery may arrive twice.

Needs: outbound HTTP to ``url``; the secret in an environment variable.

Config (``[plugins.webhook]``), inert while ``url`` is unset::

    url = "https://example.org/hooks/uploads"
    secret_env = "VEZASTREAM_WEBHOOK_SECRET"   # env var holding the secret, whsec_<base64>
    events = ["upload.completed"]              # also "upload.deleted", "upload.expired"
    timeout = 5.0                              # seconds per attempt
    max_attempts = 4
    backoff = 0.5                              # first retry delay; doubles each time
    max_backoff = 8.0                          # no retry waits longer than this
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import logging
import os
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from vezastream import NOTIFY_TIMEOUT, ConfigError, Upload, UploadResult, hookimpl, iso

__version__ = "0.1.0"
log = logging.getLogger("vezastream.webhook")

EVENTS = ("upload.completed", "upload.deleted", "upload.expired")
#: The older signature header (HMAC of the body alone, no replay protection); deprecated.
SIGNATURE_HEADER = "X-Vezastream-Signature"
SECRET_PREFIX = "whsec_"
#: How far a receiver lets ``webhook-timestamp`` be from its clock, in seconds (the spec's usual 5 minutes).
TOLERANCE = 300
#: Answers worth another attempt; any other non-2xx answer is final.
RETRY_STATUSES = frozenset({408, 429}) | frozenset(range(500, 600))
_KEYS = {"url", "secret_env", "events", "timeout", "max_attempts", "backoff", "max_backoff"}


def signing_key(secret: str) -> bytes:
    """The HMAC key of a secret: ``whsec_<base64>`` decoded; any other string as its UTF-8 bytes."""
    if not secret.startswith(SECRET_PREFIX):
        return secret.encode()
    encoded = secret[len(SECRET_PREFIX):]
    try:  # padding may be left out, as other Standard Webhooks implementations allow
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("a whsec_ secret must be whsec_ followed by base64") from None
    if not key:
        raise ValueError("a whsec_ secret must hold a key")
    return key


def sign_webhook(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value: ``v1,`` and the base64 HMAC-SHA256 of ``{id}.{timestamp}.{body}``."""
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


class InvalidWebhook(Exception):
    """A delivery that a receiver must refuse (answer 400 or 401, and do not process it)."""


def verify_webhook(secret: str | bytes, headers: Mapping[str, str], body: bytes, *, tolerance: float = TOLERANCE,
                   now: float | None = None) -> str:
    """What a receiver does: check the Standard Webhooks headers of ``body``; the webhook id when it passes.

    ``secret`` is the configured string (``whsec_...``) or the key's bytes;
    ``headers`` any mapping of the request's headers (names in any case).
    Refuses (:class:`InvalidWebhook`) a missing header, a timestamp more than
    ``tolerance`` seconds from ``now`` (a replay or a wrong clock), and a
    signature list without one matching ``v1`` entry (several are allowed while
    a secret is rotated; the comparison takes constant time). Remember the ids
    of the last ``tolerance`` seconds to refuse a replay inside the window too.
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    try:
        msg_id, stamp, signatures = (lowered[h] for h in ("webhook-id", "webhook-timestamp", "webhook-signature"))
    except KeyError as exc:
        raise InvalidWebhook(f"missing header {exc.args[0]}") from None
    if not stamp.isdigit():
        raise InvalidWebhook("webhook-timestamp is not a Unix time in seconds")
    if abs((time.time() if now is None else now) - int(stamp)) > tolerance:
        raise InvalidWebhook("webhook-timestamp is too far from now (a replay, or a clock that is off)")
    key = signing_key(secret) if isinstance(secret, str) else secret
    expected = sign_webhook(key, msg_id, int(stamp), body)
    if not any(hmac.compare_digest(expected.encode(), entry.encode()) for entry in signatures.split()):
        raise InvalidWebhook("no valid signature")
    return msg_id


def sign(secret: bytes, body: bytes) -> str:
    """The deprecated ``X-Vezastream-Signature`` value: ``sha256=`` and the hex HMAC-SHA256 of ``body``."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def verify(secret: bytes, body: bytes, header: str) -> bool:
    """Checks the deprecated ``X-Vezastream-Signature`` (no replay protection: prefer :func:`verify_webhook`)."""
    return hmac.compare_digest(sign(secret, body), header)


def retry_delays(max_attempts: int, backoff: float, max_backoff: float) -> list[float]:
    """Seconds to wait before attempts 2..max_attempts: backoff, 2*backoff, ... capped."""
    return [min(backoff * 2 ** i, max_backoff) for i in range(max_attempts - 1)]


@dataclass(frozen=True)
class WebhookConfig:
    url: str
    secret: bytes  # the HMAC key (see signing_key)
    events: frozenset[str]
    timeout: float = 5.0
    max_attempts: int = 4
    backoff: float = 0.5
    max_backoff: float = 8.0

    @property
    def worst_case(self) -> float:
        """Longest a delivery can take: every attempt times out, every delay is waited."""
        return self.max_attempts * self.timeout + sum(retry_delays(self.max_attempts, self.backoff,
                                                                   self.max_backoff))


def _number(config: Mapping[str, Any], key: str, default: float, minimum: float) -> float:
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum:
        raise ConfigError(f"plugins.webhook.{key}: expected a number >= {minimum}, got {value!r}")
    return float(value)


def parse_config(config: Mapping[str, Any], environ: Mapping[str, str]) -> WebhookConfig | None:
    """Validate ``[plugins.webhook]``; None while ``url`` is unset (the plugin stays inert)."""
    unknown = sorted(set(config) - _KEYS)
    if unknown:
        raise ConfigError(f"plugins.webhook.{unknown[0]}: unknown setting")
    url = config.get("url")
    if url is None:
        return None
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"plugins.webhook.url: expected an http(s) URL, got {url!r}")
    secret_env = config.get("secret_env", "VEZASTREAM_WEBHOOK_SECRET")
    if not isinstance(secret_env, str) or not secret_env:
        raise ConfigError("plugins.webhook.secret_env: expected the name of an environment variable")
    secret = environ.get(secret_env, "")
    if not secret:
        raise ConfigError(f"plugins.webhook.secret_env: environment variable {secret_env} is empty or unset")
    events = config.get("events", ["upload.completed"])
    if not isinstance(events, list) or not events or not set(events) <= set(EVENTS):
        raise ConfigError(f"plugins.webhook.events: expected a non-empty list drawn from {list(EVENTS)}")
    attempts = config.get("max_attempts", 4)
    if isinstance(attempts, bool) or not isinstance(attempts, int) or not 1 <= attempts <= 20:
        raise ConfigError(f"plugins.webhook.max_attempts: expected an integer 1..20, got {attempts!r}")
    try:
        key = signing_key(secret)
    except ValueError as exc:
        raise ConfigError(f"plugins.webhook.secret_env: {exc} (in {secret_env})") from None
    parsed = WebhookConfig(url, key, frozenset(events), _number(config, "timeout", 5.0, 0.1),
                           attempts, _number(config, "backoff", 0.5, 0.0), _number(config, "max_backoff", 8.0, 0.0))
    if parsed.worst_case > NOTIFY_TIMEOUT:
        raise ConfigError(f"plugins.webhook: a delivery could take {parsed.worst_case:g} s (attempts x timeout "
                          f"+ backoff), more than the {NOTIFY_TIMEOUT:g} s vezastream allows a notification")
    return parsed


class Webhook:
    """The configured plugin: one per app, registered by ``vezastream_configure_plugin``."""

    def __init__(self, config: WebhookConfig, sleep=asyncio.sleep) -> None:
        self.config = config
        self.sleep = sleep
        #: (event id, attempts made, final HTTP status or None), newest last; for tests and debugging.
        self.deliveries: list[tuple[str, int, int | None]] = []

    def event(self, kind: str, upload: dict[str, Any]) -> dict[str, Any]:
        return {"id": uuid.uuid4().hex, "type": kind, "created_at": iso(time.time()), "upload": upload}

    async def deliver(self, event: dict[str, Any]) -> int | None:
        """POST ``event`` until it is accepted, refused, or attempts run out; the last status."""
        cfg = self.config
        body = json.dumps(event, separators=(",", ":"), sort_keys=True).encode()
        headers = {"Content-Type": "application/json", "webhook-id": event["id"],
                   SIGNATURE_HEADER: sign(cfg.secret, body), "X-Vezastream-Event": event["type"],
                   "X-Vezastream-Delivery": event["id"], "User-Agent": f"vezastream-webhook/{__version__}"}
        delays = retry_delays(cfg.max_attempts, cfg.backoff, cfg.max_backoff)
        status: int | None = None
        attempt = 0
        timeout = aiohttp.ClientTimeout(total=cfg.timeout)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            for attempt in range(1, cfg.max_attempts + 1):
                stamp = int(time.time())  # each attempt is signed with its own time (the receiver's replay window)
                headers.update({"webhook-timestamp": str(stamp),
                                "webhook-signature": sign_webhook(cfg.secret, event["id"], stamp, body)})
                try:
                    async with session.post(cfg.url, data=body, headers=headers, allow_redirects=False) as resp:
                        status = resp.status
                    if 200 <= status < 300 or status not in RETRY_STATUSES:
                        break
                except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                    status = None
                    log.warning("webhook attempt failed", extra={"event_id": event["id"], "attempt": attempt,
                                                                 "error": f"{exc.__class__.__name__}: {exc}"})
                if attempt < cfg.max_attempts:
                    await self.sleep(delays[attempt - 1])
        self.deliveries.append((event["id"], attempt, status))
        if status is None or not 200 <= status < 300:
            log.error("webhook not delivered", extra={"event_id": event["id"], "type": event["type"],
                                                      "attempts": attempt, "status": status})
        return status

    @hookimpl
    async def vezastream_observe_completion(self, upload: Upload, result: UploadResult) -> None:
        if "upload.completed" in self.config.events:
            await self.deliver(self.event("upload.completed", {**_upload_json(upload), **result.public()}))

    @hookimpl
    async def vezastream_observe_abort(self, upload: Upload, reason: str) -> None:
        if "upload.deleted" in self.config.events:
            await self.deliver(self.event("upload.deleted", {**_upload_json(upload), "reason": reason}))

    @hookimpl
    async def vezastream_observe_expiry(self, upload_id: str) -> None:
        if "upload.expired" in self.config.events:
            await self.deliver(self.event("upload.expired", {"upload_id": upload_id}))


def _upload_json(upload: Upload) -> dict[str, Any]:
    spec = upload.spec
    return {"upload_id": spec.id, "owner": spec.owner, "filename": spec.filename,
            "total_size": spec.total_size, "metadata": spec.metadata, "status": str(upload.status)}


@hookimpl
def vezastream_configure_plugin(config: Mapping[str, Any]) -> Webhook | None:
    """Validate ``[plugins.webhook]``; the returned :class:`Webhook` carries the observers."""
    parsed = parse_config(config, os.environ)
    return Webhook(parsed) if parsed else None
