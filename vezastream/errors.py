"""The error catalog: every failure a client can see, with its HTTP status.

The engine raises :class:`UploadError` subclasses; one middleware in
:mod:`vezastream.http.app` renders them as ``application/problem+json``
(RFC 9457). Handlers never build error responses by hand.
"""

from __future__ import annotations

import errno
import math
from typing import Any, ClassVar

PROBLEM_BASE = "https://vezastream.dev/problems/"


class UploadError(Exception):
    """A failure with a stable code, an HTTP status and a human title."""

    code: ClassVar[str] = "internal-error"
    status: ClassVar[int] = 500
    title: ClassVar[str] = "Internal server error"

    def __init__(self, detail: str | None = None, **extra: Any) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.extra = extra

    def problem(self, instance: str | None = None) -> dict[str, Any]:
        # Extra members never override the standard ones.
        body: dict[str, Any] = dict(self.extra)
        body.update({
            "type": PROBLEM_BASE + self.code,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        })
        if instance:
            body["instance"] = instance
        return body


def _error(code: str, status: int, title: str, base: type[UploadError] = UploadError) -> type[UploadError]:
    return type(
        "".join(part.title() for part in code.split("-")),
        (base,),
        {"code": code, "status": status, "title": title},
    )


BadRequest = _error("bad-request", 400, "Bad request")
Unauthorized = _error("unauthorized", 401, "Unauthorized")
NotFound = _error("not-found", 404, "Not found")
UploadLost = _error("upload-lost", 410, "The upload's state was lost")
MethodNotAllowed = _error("method-not-allowed", 405, "Method not allowed")
Conflict = _error("conflict", 409, "Conflict")
KeyExists = _error("key-exists", 409, "An object already exists at this upload's key")
ChunkConflict = _error("chunk-conflict", 409, "Chunk already stored with different bytes")
UploadNotPending = _error("upload-not-pending", 409, "Upload is no longer accepting data")
MissingChunks = _error("missing-chunks", 409, "Upload has missing chunks")
NotCompleted = _error("not-completed", 409, "Upload is not completed")
BodyIdle = _error("body-idle", 408, "The request body stopped arriving")
TooLarge = _error("too-large", 413, "Payload too large")
UnsupportedMediaType = _error("unsupported-media-type", 415, "Unsupported media type")
HeadersTooLarge = _error("headers-too-large", 431, "Request header fields too large")
RangeNotSatisfiable = _error("range-not-satisfiable", 416, "Range not satisfiable")
Invalid = _error("invalid", 422, "Invalid request")
ChunkTooShort = _error("chunk-too-short", 422, "Chunk is shorter than expected")
DigestMismatch = _error("digest-mismatch", 422, "Digest does not match the bytes received")
IntegrityError = _error("integrity-error", 422, "Assembled file does not match what was declared")
Rejected = _error("rejected", 422, "Rejected by a plugin")
LimitExceeded = _error("limit-exceeded", 429, "A per-user limit is reached")
SinkFailed = _error("sink-failed", 502, "Storage sink failed")
Unavailable = _error("unavailable", 503, "Service unavailable")
# Redis answers but refuses (state/refusals.py): each an ``Unavailable`` that names its cause.
StateStoreFull = _error("state-store-full", 503, "The state store is out of memory", Unavailable)
StateStoreReadOnly = _error("state-store-read-only", 503, "The state store takes no writes", Unavailable)
StateStoreRefused = _error("state-store-refused", 503, "The state store refuses this server", Unavailable)
# The server's own disk (staging, the local sink) remounted read-only: a 503, not a 507, as no
# space is missing and freeing some would not help; readiness fails meanwhile (``read-only``).
StorageReadOnly = _error("storage-read-only", 503, "The server's storage is read-only", Unavailable)
# The server's own disk answered an I/O error (EIO: a failing disk, a network filesystem's soft mount that
# timed out, a cloud volume that lost its backend): nothing was recorded, and the request may be sent again.
StorageFailed = _error("storage-failed", 503, "The server's storage failed", Unavailable)
InsufficientStorage = _error("insufficient-storage", 507, "The server's disk is full")
NotImplementedBySink = _error("not-implemented", 501, "Not supported by the configured sink")

# tus 1.0.0 (http/tus.py): tus clients act on these status codes.
OffsetMismatch = _error("offset-mismatch", 409, "Upload-Offset does not match the upload's offset")
AppendBusy = _error("append-busy", 409, "Another request is writing to this upload")
FinalUploadPatch = _error("final-upload-patch", 403, "A final (concatenated) upload cannot be modified")
UnsupportedVersion = _error("unsupported-tus-version", 412, "Unsupported tus protocol version")
ChecksumMismatch = _error("checksum-mismatch", 460, "Checksum mismatch")

#: Seconds a client is told to wait when the disk is full (an operator frees space, or the GC does),
#: or read-only (an operator remounts it).
DISK_FULL_RETRY_AFTER = 60
#: Seconds a client waits before sending again a request that met an I/O error of the server's disk.
DISK_ERROR_RETRY_AFTER = 5


def cut_short(held: int, size: int) -> UploadError:
    """The answer when a staged file holds fewer bytes (``held``) than were registered for it
    (``size``): it was cut short since (``storage.durable`` off and a crash, a hand at work).
    Where the upload's digest was taken as its bytes arrived, only the sink's read notices."""
    return IntegrityError(f"a staged file holds {held} of its {size} bytes; delete the upload and upload it again")


#: How the answers below end: the request changed nothing, so the client sends it again later.
NOTHING_RECORDED = "; nothing was recorded, retry later"


def exhausted(exc: BaseException) -> UploadError | None:
    """The answer when the machine ran out of, or lost, what a retry may find again, else None:
    ``InsufficientStorage`` (507, Retry-After: 60) for disk space or inodes (ENOSPC, EDQUOT) and for
    a file that would pass the largest size the server may write (EFBIG: ``ulimit -f``, systemd's
    ``LimitFSIZE``, or the filesystem's own largest file), ``StorageReadOnly`` (503, Retry-After: 60)
    for a disk remounted read-only (EROFS), ``Unavailable`` (503, Retry-After: 1) for open files
    (EMFILE, ENFILE)."""
    if not isinstance(exc, OSError):
        return None
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return InsufficientStorage("no space left to store the bytes" + NOTHING_RECORDED,
                                   retry_after=DISK_FULL_RETRY_AFTER)
    if exc.errno == errno.EFBIG:
        return InsufficientStorage("the file would pass the largest size the server may write (a file size "
                                   "limit)" + NOTHING_RECORDED, retry_after=DISK_FULL_RETRY_AFTER)
    if exc.errno == errno.EROFS:
        return StorageReadOnly("the server's disk takes no writes (mounted read-only)" + NOTHING_RECORDED,
                               retry_after=DISK_FULL_RETRY_AFTER)
    if exc.errno in (errno.EMFILE, errno.ENFILE):
        return Unavailable("the server has too many files open" + NOTHING_RECORDED, retry_after=1)
    return None


def disk_failed(exc: BaseException) -> UploadError | None:
    """``StorageFailed`` (503, Retry-After: 5) when the server's own disk (the staging folder) answered
    an I/O error (EIO), else None. Not for a sink's calls: what a sink raises is the sink's failure
    (502 ``sink-failed``, naming it), the local sink's too."""
    if isinstance(exc, OSError) and exc.errno == errno.EIO:
        return StorageFailed("the server's disk failed a read or a write (an I/O error)" + NOTHING_RECORDED,
                             retry_after=DISK_ERROR_RETRY_AFTER)
    return None


def path_trouble(exc: OSError) -> str:
    """Why a path could not be used, in a few words for an operator: the system's, except for a
    folder's mkdir that finds something else in its place, whose "File exists" reads as all well."""
    return "not a folder" if isinstance(exc, FileExistsError) else exc.strerror or str(exc)


def unusable_folder(exc: BaseException) -> UploadError | None:
    """The answer when a folder the server writes into refuses it, else None: ``Unavailable``
    (503, Retry-After: 60) for permissions (EACCES; EPERM: an immutable folder), a file standing
    where a folder should be (ENOTDIR), a folder where an upload's file should be (EISDIR), or a
    symbolic link that loops (ELOOP). Someone must put the folder right; nothing was recorded."""
    if not isinstance(exc, OSError) or exc.errno not in (errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EISDIR,
                                                         errno.ELOOP):
        return None
    cause = {errno.ENOTDIR: "a file stands where a folder should be",
             errno.EISDIR: "a folder stands where an upload's file should be",
             errno.ELOOP: "a symbolic link that loops stands where a folder should be"}.get(
                 exc.errno, "it may not write there")
    return Unavailable(f"the server cannot write into its data folder ({cause})" + NOTHING_RECORDED,
                       retry_after=DISK_FULL_RETRY_AFTER)
# -- errors a plugin raises (docs/plugins.md, "Errors"): ---------------------------------------------


class ObjectNotFound(NotFound):
    """A sink's stored object is missing (removed behind the server's back): 404 problem+json."""

    code = "object-not-found"
    title = "Stored object not found"


class BackendUnavailable(Unavailable):
    """What a plugin depends on (a sink's storage, a scanner) is down for now: 503 problem+json.

    ``retry_after`` (seconds) is sent as a ``Retry-After`` header and a
    ``retry_after`` member, so clients know when to try again.
    """

    def __init__(self, detail: str | None = None, *, retry_after: float | None = None, **extra: Any) -> None:
        if retry_after is not None:
            extra["retry_after"] = max(0, math.ceil(retry_after))
        super().__init__(detail, **extra)
