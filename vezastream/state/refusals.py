"""Why Redis refused a command it answered: a reason class for readiness, a problem for the client.

A Redis that cannot be reached, or hangs, gives no reason (batching.py: a ``503 unavailable``).
One that answers but refuses names why in its error reply's first word:

* ``OOM``: ``maxmemory`` is reached and its policy evicts nothing (``noeviction``);
* ``READONLY``: it is a replica, as after a failover this node has not followed;
* ``MISCONF``: it cannot persist (a failed RDB save), so it takes no writes;
* ``NOREPLICAS``: fewer replicas than its ``min-replicas-to-write``;
* ``NOAUTH``, ``WRONGPASS``, ``NOPERM``: the password changed under a running node, or its ACL;
* ``LOADING``: restarted, still reading its data.

Redis checks all of them before a command runs, and a Lua script's first write the same way, so
a refused command or script has written nothing. redis-py raises some of these words as classes
of their own and the rest as ``ResponseError``; Redis 6 wraps a script's refusal in its own error
(``Error running script ...: -OOM ...``), and redis-py raises a refusal met while connecting (a
password refused) inside a ``ConnectionError``. :func:`reason` reads all three forms.
"""

from __future__ import annotations

import re

from redis.exceptions import (AuthenticationError, AuthorizationError, BusyLoadingError, NoPermissionError,
                              OutOfMemoryError, ReadOnlyError, RedisError, ResponseError)
from redis.exceptions import ConnectionError as RedisConnectionError

from .. import errors

#: Seconds a client is told to wait when Redis is full or refuses this server: someone must act
#: (free memory, raise ``maxmemory``, give the node the new password), as for a full disk.
OPERATOR_RETRY_AFTER = errors.DISK_FULL_RETRY_AFTER

_REASONS = {"OOM": "out-of-memory", "READONLY": "read-only", "MISCONF": "cannot-persist",
            "NOREPLICAS": "too-few-replicas", "NOAUTH": "auth-failed", "WRONGPASS": "auth-failed",
            "NOPERM": "no-permission", "LOADING": "loading"}
_CLASSES = ((OutOfMemoryError, "out-of-memory"), (ReadOnlyError, "read-only"), (NoPermissionError, "no-permission"),
            (AuthenticationError, "auth-failed"), (AuthorizationError, "auth-failed"), (BusyLoadingError, "loading"))
#: An error reply's word: first in the reply, or after the "-" of one a Lua script met (Redis 6).
_WORD = re.compile(r"(?:^|-)(" + "|".join(_REASONS) + r") ")


def refusal(exc: BaseException) -> RedisError | None:
    """The error that carries Redis's refusal: ``exc``, or what it was raised from; None when Redis
    refused nothing (it could not be reached, it hung, or the error is not Redis's)."""
    if isinstance(exc, RedisConnectionError) and isinstance(exc.__cause__, RedisError):
        exc = exc.__cause__
    return exc if isinstance(exc, RedisError) and reason(exc) is not None else None


def reason(exc: BaseException) -> str | None:
    """The reason class of Redis's refusal (``out-of-memory``, ``read-only``, ``auth-failed``, ...), else None."""
    if isinstance(exc, RedisConnectionError) and isinstance(exc.__cause__, RedisError):
        exc = exc.__cause__
    for cls, name in _CLASSES:
        if isinstance(exc, cls):
            return name
    if isinstance(exc, ResponseError):
        word = _WORD.search(str(exc))
        if word:
            return _REASONS[word.group(1)]
    return None


def problem(exc: RedisError) -> errors.UploadError:
    """What a client is answered for a request Redis failed: a 503 naming the cause when Redis
    named one (nothing was recorded: Redis refuses before it writes), else ``unavailable``."""
    why = reason(exc)
    if why == "out-of-memory":
        return errors.StateStoreFull("the state store (Redis) is out of memory" + errors.NOTHING_RECORDED,
                                     retry_after=OPERATOR_RETRY_AFTER)
    if why in ("read-only", "cannot-persist", "too-few-replicas"):
        return errors.StateStoreReadOnly(f"the state store (Redis) takes no writes ({why})" + errors.NOTHING_RECORDED,
                                         retry_after=1)
    if why in ("auth-failed", "no-permission"):
        return errors.StateStoreRefused(f"the state store (Redis) refuses this server ({why}); retry later",
                                        retry_after=OPERATOR_RETRY_AFTER)
    return errors.Unavailable("the state store is unavailable; retry later", retry_after=1)
