"""Servers that say "wait": a 429 or 503 with ``Retry-After`` (RFC 9110 §10.2.3) names a time before which
the origin wants no new request. :class:`OriginWaits` remembers that time per origin (scheme, host, port) as
a deadline on the monotonic clock, so a wall-clock step (NTP, suspend, a user changing the time) can neither
shorten nor stretch it, and every request to that origin — any track's GET, HEAD, size probe, revalidation —
is held to it. No HTTP here; the clocks are injected.
"""

from __future__ import annotations

import contextlib
import email.utils
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from mixvfs.cache.defaults import SERVER_WAIT_MAX
from mixvfs.cache.errors import ServerAskedToWait, ServerWaitTooLong

WAIT_STATUSES = frozenset({429, 503})  # the statuses whose Retry-After asks the client to hold back


def _seconds(value: float) -> str:
    """Whole seconds, rounded up: a wait is never shown shorter than it is."""
    return f"{math.ceil(value - 1e-9):.0f} s"


def origin_key(url: str) -> str:
    """``scheme://host:port`` (no user info, path or query: they may hold secrets)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}".lower()


def retry_after_seconds(value: str | None, *, date: str | None, wall_now: float) -> float | None:
    """How long ``Retry-After: value`` asks to wait, in seconds (None when absent or unreadable).

    Delta-seconds as they are. An HTTP-date is measured from the response's own ``Date`` when it has one:
    both come from the server's clock, so a client whose clock is off (or stepped) still waits what the
    server meant; without ``Date``, from our wall clock ``wall_now``. A time already past is 0."""
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return float(int(text))
    try:
        at = email.utils.parsedate_to_datetime(text).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    reference = wall_now
    if date:
        with contextlib.suppress(TypeError, ValueError, IndexError, OverflowError):
            reference = email.utils.parsedate_to_datetime(date).timestamp()
    return max(0.0, at - reference)


@dataclass(frozen=True)
class Wait:
    until: float  # monotonic deadline
    seconds: float  # what the server asked, as received
    said: str  # the status and header, for messages: "HTTP 503, Retry-After: 30"


class OriginWaits:
    def __init__(self, *, max_wait: float = SERVER_WAIT_MAX, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.max_wait = max_wait
        self.clock = clock
        self.wall = wall
        self._lock = threading.Lock()
        self._waits: dict[str, Wait] = {}

    def heard(self, url: str, status: int, retry_after: str | None, date: str | None = None) -> float | None:
        """A response from ``url``'s origin: a 429/503 with a readable Retry-After starts (or extends) the
        origin's wait. Returns the seconds it asked, None when it asked nothing."""
        if status not in WAIT_STATUSES:
            return None
        seconds = retry_after_seconds(retry_after, date=date, wall_now=self.wall())
        if seconds is None:
            return None
        wait = Wait(self.clock() + seconds, seconds, f"HTTP {status}, Retry-After: {retry_after}")
        key = origin_key(url)
        with self._lock:
            current = self._waits.get(key)
            if current is None or wait.until > current.until:
                self._waits[key] = wait
        return seconds

    def left(self, url: str) -> tuple[float, Wait] | None:
        """Seconds until ``url``'s origin may be asked again, and its wait; None when it may be now."""
        key = origin_key(url)
        now = self.clock()
        with self._lock:
            wait = self._waits.get(key)
            if wait is None:
                return None
            if wait.until <= now:
                del self._waits[key]
                return None
        return wait.until - now, wait

    def check(self, url: str) -> None:
        """Before any request to ``url``: refused (not sent) while its origin's wait runs."""
        pending = self.left(url)
        if pending is not None:
            left, wait = pending
            raise ServerAskedToWait(f"not asked: the server asked to wait {_seconds(wait.seconds)} "
                                    f"({wait.said}); {_seconds(left)} left", 503, wait_url=url)

    def too_long(self, url: str) -> ServerWaitTooLong | None:
        """The error for ``url`` when its origin's wait is longer than this mount waits (``max_wait``)."""
        pending = self.left(url)
        if pending is None or pending[0] <= self.max_wait:
            return None
        return ServerWaitTooLong(f"the server asked to wait {_seconds(pending[1].seconds)} "
                                 f"({pending[1].said}), longer than server_wait_max "
                                 f"({_seconds(self.max_wait)})", 503)

    def active(self) -> list[dict[str, object]]:
        """The waits running now, for ``mixvfs status``: origin and whole seconds left."""
        now = self.clock()
        with self._lock:
            items = [(key, wait) for key, wait in self._waits.items() if wait.until > now]
        return [{"origin": key, "seconds": math.ceil(wait.until - now), "asked": wait.seconds}
                for key, wait in items]
