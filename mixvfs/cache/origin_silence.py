"""Servers that say nothing: a server that takes the connection and never answers costs every question the
stall timeout, so a listing that asks a size per track would wait it once per track, one after another.
:class:`OriginSilences` remembers, per origin (scheme, host, port), that a request went unanswered (no response
headers within the stall or connect timeout). While an origin is silent its requests are not sent: they fail at
once (:class:`~mixvfs.cache.errors.NotAnswering`), except one request now and then — the scout — that checks
whether it answers again; the pause between scouts doubles while it stays silent. Any answer (response headers,
whatever the status) or any failure that is not a silence (a refused or reset connection) ends it.

Only the wait for an answer counts: a body that stalls after its headers is one download's trouble, met by its
own retry. Requests already sent when the first silence is known are left to their own timeouts; each that ends
unanswered counts as a check that failed then. A request whose own earlier question met silence (a download's next
attempt) is never the check: its reader would wait a second stall timeout for a question asked after its first one
had already gone unanswered; it fails at once like the others (:meth:`OriginSilences.no_check`). No HTTP here; the
clock is injected.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from mixvfs.cache.defaults import SILENT_CHECK_FIRST, SILENT_CHECK_LONGEST
from mixvfs.cache.errors import NotAnswering
from mixvfs.cache.origin_wait import origin_key


@dataclass
class Silence:
    since: float  # monotonic: when the first unanswered request was given up
    reason: str  # the timeout the first one met: "stall timeout" or "connect timeout"
    pause: float  # seconds from the last scout's failure to the next scout
    next_check: float  # monotonic: when the next scout may go (while one is in flight: when it is given up on)
    scouting: bool = False  # a scout is in flight


class OriginSilences:
    def __init__(self, *, first: float = SILENT_CHECK_FIRST, longest: float = SILENT_CHECK_LONGEST,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.first = first
        self.longest = longest
        self.clock = clock
        self._lock = threading.Lock()
        self._silent: dict[str, Silence] = {}
        self._no_check = threading.local()  # set in a thread whose requests must not be the check

    @contextlib.contextmanager
    def no_check(self, when: bool = True) -> Iterator[None]:
        """While inside (and ``when``), this thread's requests to a silent origin are refused even when a check is
        due: for a request that retries one already unanswered, whose reader must not wait a second stall timeout."""
        before = getattr(self._no_check, "on", False)
        self._no_check.on = before or when
        try:
            yield
        finally:
            self._no_check.on = before

    def before(self, url: str) -> None:
        """Before a request to ``url``: raises :class:`NotAnswering` (nothing is sent) while its origin is
        silent, unless this request is let through as the one scout (then it must end in :meth:`answered` or
        :meth:`unanswered`)."""
        key = origin_key(url)
        now = self.clock()
        with self._lock:
            silence = self._silent.get(key)
            if silence is None:
                return
            if now >= silence.next_check and not getattr(self._no_check, "on", False):
                # A scout that never ended (its thread killed) holds the others back at most ``longest``.
                silence.scouting = True
                silence.next_check = now + self.longest
                return
            quiet = now - silence.since
        host = key.partition("://")[2]
        raise NotAnswering(f"not asked: {host} has not answered for {math.floor(quiet):.0f} s (a request got no "
                           f"answer within the {silence.reason}); it is asked again now and then")

    def answered(self, url: str) -> None:
        """``url``'s origin answered (headers arrived), or failed in a way that is not silence: it is heard."""
        key = origin_key(url)
        with self._lock:
            self._silent.pop(key, None)

    def unanswered(self, url: str, reason: str) -> None:
        """A request to ``url`` got no answer within its timeout: its origin is silent (again)."""
        key = origin_key(url)
        now = self.clock()
        with self._lock:
            silence = self._silent.get(key)
            if silence is None:
                self._silent[key] = Silence(now, reason, self.first, now + self.first)
                return
            if silence.scouting:  # the check failed: wait longer before the next one
                silence.pause = min(silence.pause * 2, self.longest)
                silence.scouting = False
                silence.next_check = now + silence.pause
            else:
                # A request sent before the silence was known, unanswered until now: as good as a check that
                # failed now (without lengthening the pause), so the next request is not the one to wait again.
                silence.next_check = max(silence.next_check, now + silence.pause)

    def silent(self) -> list[dict[str, object]]:
        """The origins silent now, for ``mixvfs status``: origin and whole seconds without an answer."""
        now = self.clock()
        with self._lock:
            return [{"origin": key, "seconds": math.floor(now - s.since)} for key, s in self._silent.items()]
