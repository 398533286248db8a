"""When the client tries a request again, and how long it waits first.

Transient: a connection that fails or drops, a timeout, ``429``, ``507`` and
any ``5xx`` but ``501``. Everything else is the server's final word. Waits
grow exponentially with jitter up to a cap; a ``Retry-After`` the server sends
(seconds or an HTTP date) replaces the computed wait, capped the same way.
Before each wait the client tells its ``on_retry`` callback (a
:class:`RetryEvent`), so that a long wait is not a silent one.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

#: Statuses worth another attempt: the server is busy, restarting or briefly out of space.
TRANSIENT_STATUSES = frozenset({408, 429, 507}) | (frozenset(range(500, 600)) - {501})


@dataclass(frozen=True)
class RetryPolicy:
    """``attempts`` tries in all per request; waits ``base * 2**i`` (with jitter), at most ``cap`` seconds.

    The defaults ride out a server restart or a load balancer's failover
    (61 to 122 s of waiting in all, nine waits) without hanging forever on a
    server that is gone.
    """

    attempts: int = 10
    base: float = 0.5
    cap: float = 30.0

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.base < 0 or self.cap < 0:
            raise ValueError("RetryPolicy: attempts >= 1, base >= 0 and cap >= 0")

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        if retry_after is not None:
            return min(retry_after, self.cap)
        # "Equal jitter": half the exponential step is kept, the other half is random.
        step = min(self.base * 2 ** (attempt - 1), self.cap)
        return step / 2 + random.uniform(0, step / 2)


@dataclass(frozen=True)
class RetryEvent:
    """Sent to the ``on_retry`` callback when a request failed and is tried again after ``wait`` seconds.

    ``method`` and ``path`` name the request (``POST``, ``/v1/uploads``); ``attempt`` is the attempt
    about to be made (2 for the first retry) of ``attempts``; ``reason`` what went wrong
    (``HTTP 503``, ``ClientConnectorError: ...``). ``str()`` of it is a one-line notice.
    """

    method: str
    path: str
    attempt: int
    attempts: int
    wait: float
    reason: str

    def __str__(self) -> str:
        return (f"retrying {self.method} {self.path} in {self.wait:.1f} s "
                f"(attempt {self.attempt} of {self.attempts}): {self.reason}")


OnRetry = Callable[[RetryEvent], None]


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` in seconds (RFC 9110: delay-seconds or an HTTP date), None when absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
    return max(0.0, when - (time.time() if now is None else now))
