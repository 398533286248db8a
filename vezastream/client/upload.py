"""Uploading a local file through the native chunk API, resumably.

The steps, for one file:

1. The file's SHA-256 is computed first (one sequential read in a worker
   thread) and declared when the upload is created, so the server checks the
   whole file before it completes it; a mismatch leaves nothing stored. A
   resume reads the file again too and compares with the resume state's hash:
   size and modification time can stay the same while bytes already sent
   change, and the server would then assemble the old bytes, matching the
   old hash. When the hashes differ, the earlier upload is deleted (unless it
   was completed) and the file is sent afresh. A file whose size or
   modification time changed while it was hashed is refused (``FileChanged``)
   before anything is sent: it is still being written.
2. ``POST /v1/uploads`` (the server picks the chunk size unless one is given);
   the resume state is written at once.
3. The chunks the server does not have are sent, ``parallel`` at a time (over
   all the files the client uploads at once), each with its own
   ``Content-Digest`` so a chunk damaged on the way is refused (and sent
   again) rather than stored. Only ``parallel`` chunks are in memory.
4. ``POST .../complete``, unless the file's size or modification time changed
   since it was hashed (appended bytes leave the hash of the bytes sent
   intact) or a chunk came up short: then ``FileChanged``, the upload deleted.
   The server's SHA-256 is compared with ours, and the resume state is
   removed. When the server's whole-file check refuses the file (``422``: it
   changed during the upload), the upload is deleted too.

Every request is retried on transient failures (see :mod:`.retry`), each
retry told to the ``on_retry`` callback before its wait; chunks
are idempotent (a chunk stored twice with the same bytes answers ``200``) and
so is completing.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from ..models import controls_replaced
from .resume import FileStamp, ResumeState, ResumeStore
from .retry import TRANSIENT_STATUSES, OnRetry, RetryEvent, RetryPolicy, retry_after

HASH_BLOCK = 4 * 1024 * 1024
#: A chunk's problems that pass: another connection still holds the chunk (S3 direct mode: an earlier
#: sending of it that went silent mid-body, until the server cuts it) or lost it mid-body.
CHUNK_TRANSIENT = frozenset({"conflict"})
#: No answer for this long on an open request counts as a failed attempt (completing a big file takes a while).
READ_TIMEOUT = 300.0


class ClientError(Exception):
    """The upload cannot go on: the server's final answer, or retries ran out.

    ``status`` is the HTTP status (None when the server could not be reached);
    ``problem`` the server's problem+json body, when there was one.
    """

    def __init__(self, message: str, status: int | None = None, problem: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.problem = problem or {}


class IntegrityMismatch(ClientError):
    """The server's SHA-256 of the stored file is not the local file's."""


class FileChanged(ClientError):
    """The local file changed while it was hashed (nothing was sent) or sent (its upload is deleted):
    still being written, most likely. Nothing is completed from it."""


class _ShortRead(Exception):
    """A chunk's bytes were not all there: the file got shorter."""


class _NotPending(Exception):
    """A chunk was refused as the upload is completing or completed: another run of the same file
    (which found this run's resume state) completed it. Nothing more is sent; the completion's
    answer, which waits for a completion under way, is this run's too."""


@dataclass(frozen=True)
class ProgressEvent:
    """Sent to the ``progress`` callback: ``phase`` is ``hashing`` or ``uploading``; byte counts of ``path``."""

    path: Path
    phase: str
    done: int
    total: int


Progress = Callable[[ProgressEvent], None]


@dataclass(frozen=True)
class UploadResult:
    """A completed, verified upload."""

    path: Path
    upload_id: str
    filename: str
    size: int
    sha256: str
    sink: str
    location: str
    resumed: bool  # an earlier attempt's upload was continued
    chunks_sent: int  # chunks this run sent (the others were already on the server)
    chunks_total: int
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {"path": str(self.path), "upload_id": self.upload_id, "filename": self.filename, "size": self.size,
                "sha256": self.sha256, "sink": self.sink, "location": self.location, "resumed": self.resumed,
                "chunks_sent": self.chunks_sent, "chunks_total": self.chunks_total,
                "seconds": round(self.seconds, 3)}


@dataclass
class _Run:
    """One file's upload in progress (mutable, private to :meth:`UploadClient.upload`)."""

    path: Path
    stamp: FileStamp  # the file as it was hashed: sent only while it stays so
    upload_id: str
    chunk_size: int
    total_chunks: int
    done: int
    progress: Progress | None
    sent: int = 0
    started: float = 0.0

    @property
    def size(self) -> int:
        return self.stamp.size

    def advance(self, nbytes: int) -> None:
        self.done += nbytes
        if self.progress:
            self.progress(ProgressEvent(self.path, "uploading", self.done, self.size))


def server_url(url: str) -> str:
    """``url`` as the base of the server's paths (no trailing ``/``); ValueError unless it is an
    ``http://`` or ``https://`` URL with a host (and a port that can be one), saying what was meant."""
    try:
        parts = urllib.parse.urlsplit(url.strip())
        ok = parts.scheme in ("http", "https") and bool(parts.hostname) and not (parts.query or parts.fragment)
        parts.port  # noqa: B018  (raises for a port past 65535 or not a number)
    except ValueError:
        ok = False
    if not ok:
        hint = f" (did you mean http://{url}?)" if "://" not in url and url.strip() else ""
        raise ValueError(f"expected the server's http:// or https:// URL, as http://127.0.0.1:8080; "
                         f"got {url!r}{hint}")
    return url.strip().rstrip("/")


def bearer(token: str | None) -> str | None:
    """``token`` as sent after ``Bearer``: without the white space around it (a secret read from a file
    or a Kubernetes secret often ends in a newline), None when nothing is left. ValueError (which does
    not show the token) for a control character, which no header may carry."""
    token = (token or "").strip()
    if any(ord(c) < 32 or ord(c) == 127 for c in token):
        raise ValueError("the token holds a control character, which no HTTP header can carry")
    return token or None


def env_proxy(url: str) -> tuple[str | None, dict[str, str] | None]:
    """The proxy the environment names for ``url``, read as curl and requests read it: ``https_proxy``
    or ``http_proxy`` after the URL's scheme (upper case too), none for a host ``no_proxy`` lists. With
    the ``Proxy-Authorization`` header for credentials written in the proxy's URL. (None, None): direct."""
    target = urllib.parse.urlsplit(url)
    proxy = urllib.request.getproxies().get(target.scheme)
    if not proxy or target.hostname is None or urllib.request.proxy_bypass(target.hostname):
        return None, None
    parts = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    if parts.username is None:
        return parts.geturl(), None
    login = aiohttp.encode_basic_auth(urllib.parse.unquote(parts.username), urllib.parse.unquote(parts.password or ""))
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl(), {"Proxy-Authorization": login}


class UploadClient:
    """Uploads files to one vezastream server; use it as an async context manager.

    ``url`` is the server's base URL (``http://127.0.0.1:8080``); ``token`` a
    bearer token; ``parallel`` the chunks in flight, over every upload the client runs at once
    (:meth:`upload` may be awaited for several files together); ``chunk_size``
    None lets the server choose; ``state_dir`` where resume states are kept;
    ``progress`` receives :class:`ProgressEvent`s, ``on_retry`` a
    :class:`~.retry.RetryEvent` before each retry's wait.
    """

    def __init__(self, url: str, *, token: str | None = None, parallel: int = 4, chunk_size: int | None = None,
                 state_dir: Path | None = None, progress: Progress | None = None,
                 retry: RetryPolicy = RetryPolicy(), on_retry: OnRetry | None = None) -> None:
        if parallel < 1:
            raise ValueError("parallel must be >= 1")
        if chunk_size is not None and chunk_size < 1:
            raise ValueError("chunk_size must be >= 1")
        self.url = server_url(url)
        self.token = bearer(token)
        self.parallel = parallel
        self.chunk_size = chunk_size
        self.store = ResumeStore(state_dir)
        self.progress = progress
        self.retry = retry
        self.on_retry = on_retry
        self._session: aiohttp.ClientSession | None = None
        self._proxy, self._proxy_headers = env_proxy(self.url)
        #: A chunk in flight holds one (its bytes in memory, its request and retries), whatever its file.
        self._slots = asyncio.Semaphore(parallel)

    async def __aenter__(self) -> UploadClient:
        headers = {"User-Agent": "vezastream-client"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=READ_TIMEOUT)
        self._session = aiohttp.ClientSession(headers=headers, timeout=timeout)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session:
            await self._session.close()
            self._session = None

    # -- HTTP, with retries ----------------------------------------------------------------
    async def _request(self, method: str, path: str, *, also_transient: frozenset[str] = frozenset(),
                       **kwargs: Any) -> tuple[int, Any]:
        """The final answer's status and JSON body (None when it has none) after transient failures:
        those of TRANSIENT_STATUSES, and problems whose code is in ``also_transient``."""
        assert self._session is not None, "use UploadClient as an async context manager"
        for attempt in range(1, self.retry.attempts + 1):
            last = attempt == self.retry.attempts
            try:
                async with self._session.request(method, self.url + path, allow_redirects=False, proxy=self._proxy,
                                                 proxy_headers=self._proxy_headers, **kwargs) as resp:
                    answer = _json(await resp.read())
                    if last or (resp.status not in TRANSIENT_STATUSES and _problem_code(answer) not in also_transient):
                        return resp.status, answer
                    wait = self.retry.delay(attempt, retry_after(resp.headers.get("Retry-After")))
                    reason = f"HTTP {resp.status}"
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, asyncio.TimeoutError) as exc:
                reason = f"{exc.__class__.__name__}: {exc}"
                if last:
                    raise ClientError(f"{method} {path}: {reason} (after {attempt} attempts)") from None
                wait = self.retry.delay(attempt)
            if self.on_retry:
                self.on_retry(RetryEvent(method, path, attempt + 1, self.retry.attempts, wait, reason))
            await asyncio.sleep(wait)
        raise AssertionError("unreachable")

    # -- one file ----------------------------------------------------------------------------
    async def upload(self, path: str | Path) -> UploadResult:
        """Upload ``path`` (or resume its earlier upload), complete it and verify the server's SHA-256."""
        path = Path(path)
        started = time.monotonic()
        stamp = FileStamp.of(path)
        digest, hashed = await self._hash(path, stamp.size)
        now = _stamp_now(path)
        if hashed != stamp.size or now not in (stamp, None):  # still being written, most likely
            raise FileChanged(f"{path}: changed while it was read ({stamp.size} bytes when it was opened, "
                              f"{hashed if now in (stamp, None) else now.size} now): is it still being "
                              "written? Nothing was sent")
        saved = self.store.load(self.url, stamp)
        server = await self._server_state(path, saved) if saved else None
        if saved and server and saved.sha256 != digest:  # changed in place, size and mtime kept: no good
            if server.get("status") != "completed":  # an earlier run's stored file is not ours to remove
                await self._discard(saved.upload_id)
            self.store.remove(self.url, stamp)
            server = None
        resumed = server is not None
        if saved is None or server is None:
            server = await self._create(path, stamp, digest)
            saved = ResumeState(self.url, server["upload_id"], stamp, int(server["chunk_size"]), digest)
            self.store.save(saved)
        run = _Run(path, stamp, saved.upload_id, int(server["chunk_size"]), int(server["total_chunks"]),
                   int(server["bytes_received"]), self.progress, started=started)
        if server.get("status") == "completed" and server.get("result"):  # an earlier run got this far
            answer = {**server["result"], "filename": server.get("filename")}
        else:
            answer = await self._finish(run, server.get("chunks_received", []))
        self.store.remove(self.url, stamp)
        if answer.get("sha256") != saved.sha256 or answer.get("size") != stamp.size:
            raise IntegrityMismatch(f"{path}: the server stored sha256 {answer.get('sha256')} "
                                    f"({answer.get('size')} bytes), the local file is {saved.sha256}")
        return UploadResult(path, run.upload_id, str(answer.get("filename") or path.name), stamp.size, saved.sha256,
                            str(answer.get("sink", "")), str(answer.get("location", "")), resumed, run.sent,
                            run.total_chunks, time.monotonic() - run.started)

    async def _hash(self, path: Path, size: int) -> tuple[str, int]:
        """The file's SHA-256, and how many bytes it was taken over (all there were: ``size`` unless it
        changed meanwhile)."""
        h = hashlib.sha256()
        done = 0
        with path.open("rb") as f:
            while True:
                n = await asyncio.to_thread(_read_into, f, h)
                if not n:
                    return h.hexdigest(), done
                done += n
                if self.progress:
                    self.progress(ProgressEvent(path, "hashing", done, size))

    async def _create(self, path: Path, stamp: FileStamp, digest: str) -> dict[str, Any]:
        body: dict[str, Any] = {"filename": _unicode_name(path), "total_size": stamp.size, "sha256": digest}
        if self.chunk_size is not None:
            body["chunk_size"] = self.chunk_size
        status, answer = await self._request("POST", "/v1/uploads", json=body)
        if status != 201:
            raise _refused(f"{path}: creating the upload", status, answer)
        return dict(answer)

    async def _discard(self, upload_id: str) -> None:
        """Delete an upload that can no longer complete, so that it does not hold the pending quota
        until its TTL; best effort (the server's GC removes it at the TTL anyway)."""
        try:
            await self._request("DELETE", f"/v1/uploads/{upload_id}")
        except ClientError:
            pass

    async def _server_state(self, path: Path, saved: ResumeState) -> dict[str, Any] | None:
        """The server's state of an earlier attempt's upload; None when it is gone (start afresh)."""
        status, answer = await self._request("GET", f"/v1/uploads/{saved.upload_id}")
        if status in (404, 410):  # expired, deleted, or the server lost it
            self.store.remove(self.url, saved.stamp)
            return None
        if status != 200:
            raise _refused(f"{path}: resuming upload {saved.upload_id}", status, answer)
        return dict(answer)

    async def _finish(self, run: _Run, received: list[int]) -> dict[str, Any]:
        """Send what the server lacks, then complete; chunks it still reports missing are sent again."""
        if self.progress:
            self.progress(ProgressEvent(run.path, "uploading", run.done, run.size))
        missing: list[int] | None = sorted(set(range(1, run.total_chunks + 1)) - set(received))
        for _ in range(3):
            try:
                await self._send(run, missing or [])
            except _NotPending:
                pass
            except _ShortRead:
                raise await self._changed(run) from None
            # Appended to or rewritten: its first bytes may still match the hash. (A file deleted meanwhile
            # is read to its end all the same, through the descriptor held: its bytes are the ones hashed.)
            if _stamp_now(run.path) not in (run.stamp, None):
                raise await self._changed(run)
            status, answer = await self._request("POST", f"/v1/uploads/{run.upload_id}/complete")
            if status == 200:
                return dict(answer)
            missing = answer.get("missing_chunks") if status == 409 and isinstance(answer, dict) else None
            if not missing:
                break
        if status == 422:  # refused: the upload stays pending, and this run cannot complete it
            if _problem_code(answer) == "integrity-error":
                await self._discard(run.upload_id)  # the server's whole-file check failed: its bytes are no good
            self.store.remove(self.url, run.stamp)
        raise _refused(f"{run.path}: completing upload {run.upload_id}", status, answer)

    async def _changed(self, run: _Run) -> FileChanged:
        """The file changed while its chunks went: its upload deleted (what the server holds is of no
        file that exists), its resume state removed, the error to raise."""
        await self._discard(run.upload_id)
        self.store.remove(self.url, run.stamp)
        return FileChanged(f"{run.path}: changed during the upload ({run.size} bytes when it started, "
                           f"{_size(_stamp_now(run.path))} now): its upload was deleted on the server; "
                           "run again once the file is complete")

    async def _send(self, run: _Run, numbers: list[int]) -> None:
        """Send chunks ``numbers``, ``parallel`` at a time (with the other files' chunks); the first failure
        stops the others."""
        queue = iter(numbers)
        with run.path.open("rb") as f:
            async def worker() -> None:
                for n in queue:
                    offset = (n - 1) * run.chunk_size
                    async with self._slots:
                        data, digest = await asyncio.to_thread(_read_chunk, f, offset, min(run.chunk_size,
                                                                                           run.size - offset))
                        status, answer = await self._request(
                            "PUT", f"/v1/uploads/{run.upload_id}/chunks/{n}", data=data,
                            headers={"Content-Type": "application/octet-stream",
                                     "Content-Digest": f"sha-256=:{digest}:"}, also_transient=CHUNK_TRANSIENT)
                    if status == 409 and _problem_code(answer) == "upload-not-pending":
                        raise _NotPending
                    if status not in (200, 201):
                        raise _refused(f"{run.path}: chunk {n} of upload {run.upload_id}", status, answer)
                    run.sent += 1
                    run.advance(len(data))

            try:
                async with asyncio.TaskGroup() as tg:
                    for _ in range(min(self.parallel, len(numbers))):
                        tg.create_task(worker())
            except BaseExceptionGroup as group:
                raise group.exceptions[0] from None


async def upload_file(url: str, path: str | Path, *, parallel: int = 4, chunk_size: int | None = None,
                      token: str | None = None, state_dir: Path | None = None, progress: Progress | None = None,
                      retry: RetryPolicy = RetryPolicy(), on_retry: OnRetry | None = None) -> UploadResult:
    """Upload one file to the vezastream server at ``url`` (see :class:`UploadClient`)."""
    async with UploadClient(url, token=token, parallel=parallel, chunk_size=chunk_size, state_dir=state_dir,
                            progress=progress, retry=retry, on_retry=on_retry) as client:
        return await client.upload(path)


def _unicode_name(path: Path) -> str:
    """``path``'s name for the server, which takes valid Unicode without control characters only: a
    byte that is not UTF-8 (a name written in another encoding; Python holds it as a lone surrogate)
    and a control character (a newline, which Linux allows in a name) become U+FFFD."""
    return controls_replaced(os.fsencode(path.name).decode("utf-8", "replace"))


def _stamp_now(path: Path) -> FileStamp | None:
    """``path``'s stamp now; None when it is gone (deleted, or renamed away with nothing in its place)."""
    try:
        return FileStamp.of(path)
    except FileNotFoundError:
        return None


def _size(stamp: FileStamp | None) -> str:
    return "gone" if stamp is None else str(stamp.size)


def _read_into(f: Any, h: Any) -> int:
    with _naming(f):
        block = f.read(HASH_BLOCK)
    h.update(block)
    return len(block)


def _read_chunk(f: Any, offset: int, length: int) -> tuple[bytes, str]:
    with _naming(f):
        data = _pread(f.fileno(), offset, length)
    return data, base64.b64encode(hashlib.sha256(data).digest()).decode()


@contextlib.contextmanager
def _naming(f: Any) -> Iterator[None]:
    """A read error (EIO...) carries no file name: give it the file's, so that it is reported as that file's."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None:
            exc.filename = f.name
        raise


def _pread(fd: int, offset: int, length: int) -> bytes:
    parts = []
    while length > 0:
        part = os.pread(fd, length, offset)
        if not part:
            raise _ShortRead
        parts.append(part)
        offset += len(part)
        length -= len(part)
    return b"".join(parts)


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None


def _problem_code(answer: Any) -> str:
    """The code of a problem answer's ``type`` (``.../problems/<code>``); "" for another answer."""
    return str(answer.get("type", "")).rpartition("/")[2] if isinstance(answer, dict) else ""


def _refused(what: str, status: int, answer: Any) -> ClientError:
    problem = answer if isinstance(answer, dict) else {}
    detail = problem.get("detail") or problem.get("title") or _not_the_servers(status)
    return ClientError(f"{what}: HTTP {status}: {detail}", status, problem)


def _not_the_servers(status: int) -> str:
    """What to say of a refusal without a problem+json body: vezastream sends one with each, so a proxy or
    a balancer in front of it gave this one (a 413 most often: nginx takes bodies up to 1 MB by default)."""
    if status == 413:
        return ("refused by something in front of the server (no problem+json: a proxy, a balancer), which "
                "takes smaller bodies than a chunk: raise its limit (nginx: client_max_body_size) or send "
                "smaller chunks (--chunk-size)")
    return "refused by something in front of the server (no problem+json: a proxy, a balancer)"
