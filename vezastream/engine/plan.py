"""Sizing a new native upload: chunk size and count, from the request and ``[limits]``."""

from __future__ import annotations

from dataclasses import dataclass, field

from .. import errors
from ..config import LimitsSettings
from ..models import DEFAULT_CONTENT_TYPE, chunk_count


@dataclass(frozen=True)
class NewUpload:
    """A validated-at-the-door request to start an upload."""

    filename: str
    total_size: int
    chunk_size: int | None = None
    total_chunks: int | None = None
    sha256: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    protocol: str = "native"
    content_type: str = DEFAULT_CONTENT_TYPE


def plan(lim: LimitsSettings, req: NewUpload) -> tuple[int, int]:
    """(chunk_size, total_chunks) for a request, or ``Invalid``/``TooLarge``."""
    size = req.total_size
    if size > lim.max_upload_size:
        raise errors.TooLarge(f"total_size {size} exceeds the maximum upload size {lim.max_upload_size}",
                              max_upload_size=int(lim.max_upload_size))
    cs, tc = req.chunk_size, req.total_chunks
    if cs is None and tc is None:
        cs = lim.default_chunk_size
    if cs is not None and cs < 1:
        raise errors.Invalid("chunk_size must be >= 1")
    if tc is not None and tc < 0:
        raise errors.Invalid("total_chunks must be >= 0")
    if cs is None:
        assert tc is not None
        if tc == 0 and size:
            raise errors.Invalid("total_chunks must be >= 1 for a non-empty file")
        cs = -(-size // tc) if tc else lim.default_chunk_size
    expected = chunk_count(size, cs)
    if tc is not None and tc != expected:
        raise errors.Invalid(f"total_chunks {tc} disagrees with ceil(total_size / chunk_size) = {expected}")
    tc = expected
    if cs > lim.max_chunk_size or (tc > 1 and cs < lim.min_chunk_size):
        raise errors.Invalid(f"chunk_size {cs} is outside {lim.min_chunk_size}..{lim.max_chunk_size}",
                             field="chunk_size", min_chunk_size=int(lim.min_chunk_size), max_chunk_size=int(lim.max_chunk_size))
    if tc > lim.max_chunks:
        raise errors.Invalid(f"total_chunks {tc} exceeds the maximum of {lim.max_chunks}",
                             field="total_chunks", max_chunks=lim.max_chunks)
    return cs, tc
