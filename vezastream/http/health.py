"""Readiness (``/v1/health/deep``): each component's check, bounded in time, reported without detail.

Liveness (``/v1/health``) answers from memory and asks nothing of Redis or the
sink: it says the process serves HTTP. Readiness asks each component and
answers 503 while one fails, so a load balancer routes around the node (and a
supervisor does not kill it for what a restart of Redis will mend). It is
unauthenticated, so a failure shows only a reason class ("unreachable",
"timeout", ...); the exception itself, paths and all, goes to the log.
"""

from __future__ import annotations

import asyncio
import errno
import inspect
import logging
from collections.abc import Awaitable, Mapping
from typing import Any

from ..errors import UploadError
from ..state.batching import failure_reason
from ..state.topology import TooFewReplicas

#: Seconds one check may take; a slower one counts as failed ("timeout").
CHECK_TIMEOUT = 5

log = logging.getLogger("vezastream.health")


def reason_class(exc: BaseException) -> str:
    """A short, path-free name for why a check failed."""
    redis_failed = failure_reason(exc)  # Redis refused (out of memory, a password...), hung or is unreachable
    if redis_failed is not None:
        return redis_failed
    if isinstance(exc, asyncio.TimeoutError):
        return "timeout"
    if isinstance(exc, ConnectionError):
        return "unreachable"
    if isinstance(exc, OSError) and exc.errno == errno.EROFS:  # a disk remounted read-only
        return "read-only"
    if isinstance(exc, NotADirectoryError):  # a file where a folder should be
        return "not-a-folder"
    if isinstance(exc, PermissionError):
        return "permission-denied"
    if isinstance(exc, OSError):
        return "io-error"
    if isinstance(exc, TooFewReplicas):  # redis.min_replica_acks: every chunk would answer 503
        return "too-few-replicas"
    if isinstance(exc, UploadError):
        return exc.code
    return "error"


async def _checked(name: str, check: Awaitable[Any]) -> dict[str, Any]:
    """One check's report: ``ok``, with what it found, or why it failed (a health check never raises)."""
    try:
        found = await asyncio.wait_for(check, timeout=CHECK_TIMEOUT)
    except Exception as exc:
        reason = reason_class(exc)
        log.warning("health check failed", extra={"check": name, "reason": reason, "error": repr(exc)})
        return {"ok": False, "reason": reason}
    # A check may tell what is wrong without failing (the state store's "warnings").
    return {**(found if isinstance(found, Mapping) else {}), "ok": True}


async def readiness(checks: Mapping[str, Awaitable[Any]], **state: Any) -> tuple[int, dict[str, Any]]:
    """Run the checks; (status, body): 200 when every one passed, else 503. ``state`` (topology, as
    ``redis={"mode": "bundled", ...}``) is shown as it is, or awaited when it is awaitable."""
    # At once, so that the answer comes within CHECK_TIMEOUT however many checks hang (a stalled disk holds
    # the staging folder's check and the local sink's).
    results = dict(zip(checks, await asyncio.gather(*(_checked(name, check) for name, check in checks.items()))))
    ok = all(r["ok"] for r in results.values())
    for name, value in state.items():
        if inspect.isawaitable(value):  # asked of the component (a Redis topology), bounded like a check
            try:
                state[name] = await asyncio.wait_for(value, timeout=CHECK_TIMEOUT)
            except Exception as exc:
                state[name] = {"error": reason_class(exc)}
    return (200 if ok else 503), {"status": "ok" if ok else "fail", "checks": results, **state}
