"""The S3 calls the sink makes, behind a narrow Protocol, and how they are retried.

:class:`S3API` names only the aiobotocore client methods the sink uses, so a
reader sees the whole S3 surface at a glance and tests can wrap the real
client (to inject faults) without a mock library.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import math
import random
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, Protocol, TypeVar

import aiohttp
from botocore.exceptions import (ClientError, ConnectionError as BotoConnectionError, ConnectTimeoutError,
                                 HTTPClientError, ReadTimeoutError)

from vezastream import errors

from .settings import S3Settings

log = logging.getLogger("vezastream.s3")

T = TypeVar("T")

#: Error codes S3 (and compatible servers) answer for conditions that pass.
TRANSIENT_CODES = frozenset({
    "SlowDown", "InternalError", "ServiceUnavailable", "RequestTimeout", "Throttling",
    "ThrottlingException", "RequestLimitExceeded", "BadGateway", "GatewayTimeout",
})


class S3API(Protocol):
    """The subset of aiobotocore's S3 client that vezastream calls."""

    async def create_multipart_upload(self, **kw: Any) -> dict[str, Any]: ...
    async def upload_part(self, **kw: Any) -> dict[str, Any]: ...
    async def list_parts(self, **kw: Any) -> dict[str, Any]: ...
    async def complete_multipart_upload(self, **kw: Any) -> dict[str, Any]: ...
    async def abort_multipart_upload(self, **kw: Any) -> dict[str, Any]: ...
    async def list_multipart_uploads(self, **kw: Any) -> dict[str, Any]: ...
    async def list_objects_v2(self, **kw: Any) -> dict[str, Any]: ...
    async def put_object(self, **kw: Any) -> dict[str, Any]: ...
    async def get_object(self, **kw: Any) -> dict[str, Any]: ...
    async def delete_object(self, **kw: Any) -> dict[str, Any]: ...
    async def head_object(self, **kw: Any) -> dict[str, Any]: ...
    async def head_bucket(self, **kw: Any) -> dict[str, Any]: ...
    async def generate_presigned_url(self, ClientMethod: str, Params: dict[str, Any] | None = None,
                                     ExpiresIn: int = 3600, HttpMethod: str | None = None) -> str: ...


def error_code(exc: BaseException) -> str:
    """S3's error code (``NoSuchUpload``...) or ``""``."""
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


def is_transient(exc: BaseException) -> bool:
    """Worth retrying: server-side 5xx, throttling, timeouts, dropped connections."""
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return error_code(exc) in TRANSIENT_CODES or status in (500, 502, 503, 504)
    return isinstance(exc, (HTTPClientError, BotoConnectionError, aiohttp.ClientConnectionError,
                            aiohttp.ClientPayloadError, asyncio.TimeoutError, ConnectionError))


class Refused(ClientError, errors.SinkFailed):
    """S3's refusal of a call (access denied, an unknown key id, no such bucket, a key it will not take).

    Still a ``ClientError``, for the sink's own checks of the code (:func:`error_code`); once it reaches
    the engine, a 502 ``sink-failed`` naming the call and S3's status and code: never the endpoint, an
    object's key or the library's message (``sink_error`` logs those).
    """

    def __init__(self, what: str, exc: ClientError) -> None:
        super().__init__(exc.response, exc.operation_name)
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        self.detail = f"S3 refused {what}: {' '.join(str(p) for p in (status, error_code(exc)) if p)}"


def got_no_answer(exc: BaseException) -> bool:
    """A timeout: S3 took no bytes, or sent none, for a whole ``connect_timeout`` + ``read_timeout``.
    Not retried: an S3 that does not answer that long is down for now (503 at once)."""
    return isinstance(exc, (asyncio.TimeoutError, ReadTimeoutError, ConnectTimeoutError))


class Progress:
    """When S3 last took bytes of a request's body (monotonic), or ``inf`` while nothing is S3's to take."""

    def __init__(self) -> None:
        self.at = time.monotonic()

    def moved(self) -> None:
        self.at = time.monotonic()

    def hold(self) -> None:
        self.at = math.inf


async def unless_stalled(seconds: float, progress: Progress, work: Awaitable[T]) -> T:
    """``work``, cancelled with ``asyncio.TimeoutError`` once ``progress`` stood still for ``seconds``.

    The HTTP client's read timeout runs only once a body is sent whole: a request body S3 stops
    taking (a hung server: its socket open, its buffers full), or the wait for ``100 Continue``
    before it, would otherwise last for ever.
    """
    task = asyncio.ensure_future(work)
    try:
        while True:
            left = progress.at + seconds - time.monotonic()
            if left <= 0:
                raise asyncio.TimeoutError()
            done, _ = await asyncio.wait({task}, timeout=min(left, seconds))
            if done:
                return task.result()
    finally:
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


class TakenBody(io.BytesIO):
    """A request body (bytes) that tells ``progress`` as the HTTP client takes it; read whole, it holds
    (the answer is then the read timeout's to wait for). Botocore reads it once for its checksums first."""

    def __init__(self, data: bytes, progress: Progress) -> None:
        super().__init__(data)
        self.progress = progress

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        if data:
            self.progress.moved()
        else:
            self.progress.hold()
        return data

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self.progress.moved()
        return super().seek(offset, whence)


_XML_CODE = re.compile(r"<Code>([^<]+)</Code>")
_ETAG_MD5 = re.compile(r'^"?([0-9a-f]{32})"?$')


def etag_md5(etag: str) -> str | None:
    """The MD5 (hex) an ETag names: a single PUT's or a part's, not a multipart object's."""
    match = _ETAG_MD5.match(etag)
    return match.group(1) if match else None


def unavailable(what: str, how: str) -> errors.UploadError:
    """The 503 for S3 call ``what`` that failed in a way that passes (``how``: "failed 3 times",
    "answered 503 SlowDown"). It names the sink and the call, never the endpoint, an object's key
    or the library's message: the caller logs those (``sink_error``)."""
    return errors.Unavailable(f"the storage sink (s3) is unavailable: {what} {how}; retry later", retry_after=5)


def _logged(what: str, kind: str, error: str) -> None:
    log.warning("S3 call failed", extra={"event": "sink_error", "call": what, "kind": kind, "error": error[:300]})


async def presigned_put(http: aiohttp.ClientSession, url: str, body: AsyncIterator[bytes],
                        headers: Mapping[str, str], what: str) -> Mapping[str, str]:
    """PUT ``body`` (its length in ``headers``) to a presigned URL, streamed; the answer's headers.

    S3's refusals become the catalog's errors: a digest S3 found wrong ``DigestMismatch``,
    ``NoSuchUpload`` ``NotFound`` (saying the parts are gone; the engine answers a rejected
    upload's as rejected), other 4xx ``SinkFailed``; 5xx, throttling and dropped connections
    ``Unavailable`` (503, :func:`unavailable`). What ``body`` raises goes through as it is (the
    HTTP client's error wrapping it is dropped): a client gone mid-body is not S3's failure.
    ``what`` names the call in answers: never a key (the log has the rest). A body S3 stops taking,
    or an answer that does not come, for the session's connect and read timeouts is ``Unavailable``
    too; the time spent waiting for ``body`` itself does not count.
    """
    broke: list[Exception] = []  # what reading the body raised (this call's only)
    progress = Progress()

    async def sent() -> AsyncIterator[bytes]:
        pieces = body.__aiter__()
        while True:
            progress.hold()  # waiting for our own client's bytes is not S3's time
            try:
                piece = await pieces.__anext__()
            except StopAsyncIteration:
                break
            except Exception as exc:
                broke.append(exc)
                raise
            progress.moved()
            yield piece
        progress.moved()

    async def put() -> tuple[int, Mapping[str, str], str]:
        async with http.put(url, data=sent(), headers=dict(headers)) as resp:
            return resp.status, resp.headers, "" if resp.status == 200 else await resp.text()

    try:
        status, answer, text = await unless_stalled(stall_limit(http), progress, put())
        if status == 200:
            return answer
    except Exception as exc:
        if broke:
            raise broke[0] from None
        if isinstance(exc, errors.UploadError):
            raise
        if is_transient(exc):
            _logged(what, exc.__class__.__name__, f"{exc.__class__.__name__}: {exc}")
            raise unavailable(what, "got no answer") from exc
        raise
    match = _XML_CODE.search(text)
    code = match.group(1) if match else str(status)
    if code in ("BadDigest", "InvalidDigest", "XAmzContentChecksumMismatch", "InvalidChecksum"):
        raise errors.DigestMismatch(f"S3 refused {what}: its bytes do not match the declared SHA-256")
    if code == "NoSuchUpload":  # the multipart upload (UploadPart is its only presigned call), not the upload
        raise errors.NotFound("S3 no longer holds this upload's parts (its multipart upload was aborted outside "
                              "the server: a lifecycle rule?); delete the upload and upload it again")
    _logged(what, code, f"{status} {text}")
    if status >= 500 or code in ("SlowDown", "RequestTimeout"):
        raise unavailable(what, f"answered {status} {code}")
    raise errors.SinkFailed(f"S3 refused {what}: {status} {code}")


def stall_limit(http: aiohttp.ClientSession) -> float:
    """Seconds a request body may wait for S3 to take it: the session's connect and read timeouts."""
    return (http.timeout.sock_connect or 0) + (http.timeout.sock_read or 0)


async def unbroken(what: str, stream: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """``stream`` (an object's bytes), with a transient failure while it flows (S3 stopped sending:
    killed, hung past ``read_timeout``) raised as :func:`unavailable`, for readers outside a
    :class:`Retrying` (staging objects at completion, ``content = "proxy"``)."""
    try:
        async for data in stream:
            yield data
    except Exception as exc:
        if isinstance(exc, errors.UploadError) or not is_transient(exc):
            raise
        _logged(what, exc.__class__.__name__, f"{exc.__class__.__name__}: {exc}")
        raise unavailable(what, "stopped sending") from exc


async def objects_under(call: Callable[..., Awaitable[dict[str, Any]]], prefix: str
                        ) -> AsyncIterator[dict[str, Any]]:
    """Every object under ``prefix``, as ListObjectsV2 lists them (``Key``, ``LastModified``...), page by page.

    ``call(what, method, **kw)`` makes one (retried) S3 call. Bounded: 100,000 pages of 1,000 keys.
    """
    token: dict[str, str] = {}
    for _ in range(100_000):
        page = await call("ListObjectsV2", "list_objects_v2", Prefix=prefix, **token)
        for item in page.get("Contents", []):
            yield item
        if not page.get("IsTruncated"):
            return
        token = {"ContinuationToken": page["NextContinuationToken"]}


class Retrying:
    """Runs an S3 call, retrying transient failures with capped exponential backoff and jitter.

    A transient failure that outlasts every attempt, or gets no answer at all, becomes
    ``errors.Unavailable`` (503); S3's refusal (access denied, no such bucket...) is raised at once,
    as :class:`Refused` (502).
    """

    def __init__(self, settings: S3Settings, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.attempts = settings.retry_attempts
        self.base = settings.retry_base_delay
        self.cap = settings.retry_max_delay
        self.sleep = sleep

    async def __call__(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        for attempt in range(1, self.attempts + 1):
            try:
                return await call()
            except Exception as exc:
                kind = error_code(exc) or exc.__class__.__name__
                # Counted by the metrics, by kind (an absent key or upload is an answer, not an error).
                if attempt == self.attempts or got_no_answer(exc) \
                        or not (is_transient(exc) or kind in ("NoSuchUpload", "NoSuchKey", "404")):
                    _logged(what, kind, f"{exc.__class__.__name__}: {exc}")
                if isinstance(exc, ClientError) and not isinstance(exc, Refused) and not is_transient(exc):
                    raise Refused(what, exc) from exc
                if not is_transient(exc):
                    raise
                if got_no_answer(exc):
                    raise unavailable(what, "got no answer") from exc
                if attempt == self.attempts:
                    raise unavailable(what, f"failed {attempt} times") from exc
                delay = min(self.cap, self.base * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
                log.warning("S3 call failed, retrying", extra={"event": "s3_retry", "call": what, "kind": kind,
                                                               "attempt": attempt, "error": repr(exc)[:200]})
                await self.sleep(delay)
        raise AssertionError("unreachable")


async def open_client(settings: S3Settings, stack: contextlib.AsyncExitStack) -> S3API:
    """An aiobotocore S3 client whose lifetime is ``stack``'s.

    Credentials come from the standard AWS chain (environment, shared config
    and credentials files, container or instance roles): never from config.toml.
    Botocore's own retries are off: :class:`Retrying` is the one retry layer.
    """
    from aiobotocore.config import AioConfig
    from aiobotocore.session import get_session

    config = AioConfig(
        region_name=settings.region,
        s3={"addressing_style": settings.addressing_style},
        retries={"total_max_attempts": 1, "mode": "standard"},
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.read_timeout,
        max_pool_connections=settings.max_connections,
        signature_version="s3v4",
    )
    client = get_session().create_client("s3", endpoint_url=settings.endpoint_url or None, config=config)
    return await stack.enter_async_context(client)
