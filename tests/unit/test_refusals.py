"""Redis's refusals as vezastream reads them (vezastream/state/refusals.py): each form Redis and redis-py
give them, the reason readiness shows, and the problem a client gets. The real servers' refusals run in
tests/integration/test_redis_refusals.py; these are the forms no test server is easily made to send."""

from __future__ import annotations

import pytest
from redis.exceptions import (AuthenticationError, BusyLoadingError, NoPermissionError, OutOfMemoryError,
                              ReadOnlyError, ResponseError)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from vezastream.state import refusals

OOM = "command not allowed when used memory > 'maxmemory'."
SCRIPT = "Error running script (call to f_1f8f): @user_script:1: @user_script: 1: -{} "


def raised_from(cause: Exception) -> RedisConnectionError:
    try:
        raise RedisConnectionError("while connecting") from cause
    except RedisConnectionError as exc:
        return exc


#: (the error as vezastream meets it) -> (readiness's reason, the problem's code, status, Retry-After)
CASES = [
    (OutOfMemoryError(OOM), "out-of-memory", "state-store-full", 503, 60),
    (ResponseError(SCRIPT.format("OOM") + OOM), "out-of-memory", "state-store-full", 503, 60),  # Redis 6, a script
    (ReadOnlyError("You can't write against a read only replica."), "read-only", "state-store-read-only", 503, 1),
    (ResponseError(SCRIPT.format("READONLY") + "You can't write"), "read-only", "state-store-read-only", 503, 1),
    (ResponseError("MISCONF Redis is configured to save RDB snapshots, but it's currently unable to persist to disk"),
     "cannot-persist", "state-store-read-only", 503, 1),
    (ResponseError("NOREPLICAS Not enough good replicas to write."), "too-few-replicas", "state-store-read-only",
     503, 1),
    (AuthenticationError("invalid username-password pair"), "auth-failed", "state-store-refused", 503, 60),
    (raised_from(AuthenticationError("WRONGPASS")), "auth-failed", "state-store-refused", 503, 60),
    (NoPermissionError("this user has no permissions to run the 'evalsha' command"), "no-permission",
     "state-store-refused", 503, 60),
    (BusyLoadingError("Redis is loading the dataset in memory"), "loading", "unavailable", 503, 1),
    (RedisConnectionError("Connection closed by server."), None, "unavailable", 503, 1),
    (RedisTimeoutError("no reply"), None, "unavailable", 503, 1),
    (ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"), None, "unavailable", 503, 1),
    (ResponseError("ERR the word OOM inside a message is no refusal"), None, "unavailable", 503, 1),
]


@pytest.mark.parametrize("exc, reason, code, status, retry_after", CASES, ids=[repr(c[0]) for c in CASES])
def test_each_refusal_has_its_reason_and_problem(exc, reason, code, status, retry_after):
    assert refusals.reason(exc) == reason
    problem = refusals.problem(exc)
    assert (problem.code, problem.status, problem.extra["retry_after"]) == (code, status, retry_after)
    assert (refusals.refusal(exc) is not None) == (reason is not None)
