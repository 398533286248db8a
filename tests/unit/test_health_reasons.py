"""Readiness's reason for a failed check (docs/api.md, ``GET /v1/health/deep``), from the error the
check raised: a short class, never the error's text. tests/api shows several from real failures (a
file in place of a folder, an immutable folder, Redis refusing or gone), and
tests/drills/test_drill_disk_stalls.py a disk's EIO (``io-error``, from the staging folder's write
probe); here the mapping is checked from the errors alone."""

from __future__ import annotations

import asyncio
import errno
import os

import pytest

from vezastream.http.health import reason_class


@pytest.mark.parametrize("exc, reason", [
    (OSError(errno.EIO, os.strerror(errno.EIO)), "io-error"),
    (OSError(errno.EROFS, os.strerror(errno.EROFS)), "read-only"),
    (NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR)), "not-a-folder"),
    (PermissionError(errno.EACCES, os.strerror(errno.EACCES)), "permission-denied"),
    (asyncio.TimeoutError(), "timeout"),
    (ConnectionRefusedError(errno.ECONNREFUSED, os.strerror(errno.ECONNREFUSED)), "unreachable"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_a_failed_checks_reason_is_its_class(exc, reason):
    assert reason_class(exc) == reason
