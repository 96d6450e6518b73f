"""A download that crawls while the link has room: asked again from where it is, on a new connection.

On a long path the export's end is often one download left alone on a link it shared a moment ago, crawling: its
connection's sender still paces at the share it had (BBR's bandwidth estimate grows by a quarter per eight round
trips, 1.2 s at 150 ms) or grows its window by one segment per round trip after a loss (CUBIC), while the rest of
the link is idle. Measured at 150 ms, 200 x 512 KiB (BENCHMARKS.md): the last 0.4-1 MB at 200-350 KB/s of a
12.5 MB/s link, 1.5-4 s of the export. A new connection starts with TCP's own start instead, doubling each round
trip, and the rest of the track comes in a few round trips. So a download far slower than the link has proved it
can go, while the link as a whole carries less than half of that (another download's fair share is not a crawl)
and it is among the export's last few (before that, downloads crawling together are the link's losses), with
enough left that a new connection's handshake and start pay, is asked again from the bytes it holds (Range,
If-Range on its ETag), once, while its request stays open: the new answer replaces it only if it is exactly the
rest (``Download._switch``).

:class:`TailWatch` is one request's watch: the download feeds it each chunk; time is injected.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

# A request is judged over its latest WINDOW_ROUND_TRIPS round trips (at least MIN_WINDOW seconds), never before
# it is that old: a new connection's own start is not a crawl.
WINDOW_ROUND_TRIPS = 4
MIN_WINDOW = 0.5
SLOW_SHARE = 0.25  # a crawl: under this share of the best goodput the link gave the mount
ROOM_SHARE = 0.5  # the link has room: all downloads together carry less than this share of that best
# What a new connection costs before the rest of the track comes at the link's rate: its handshake and request
# (two round trips) and TCP's start (a few more): the crawl must have more than this many round trips left.
COST_ROUND_TRIPS = 6
MIN_LEFT = 64 * 1024  # bytes: less is not worth a new connection
MOST_RECONNECTS = 1  # per download: a second crawl is the link's, not the connection's
# Only among the export's last downloads (nothing queued, at most 1/TAIL_SHARE of the number at once running):
# before that, downloads that crawl together are the link's losses, and a new connection's start meets them too
# (80 ms, 0.5 % loss: 1.177 -> 1.217 x the floor when any download could reconnect).
TAIL_SHARE = 4


class TailWatch:
    """Whether one request of a download should be given up for a new connection."""

    def __init__(self, *, best_goodput: Callable[[], float], round_trip: Callable[[], float | None],
                 link_goodput: Callable[[float], float], in_tail: Callable[[], bool] = lambda: True,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """``best_goodput``: the most the link carried (bytes/s); ``link_goodput(seconds)``: what it carried
        over about the last ``seconds``; ``round_trip``: the least seen; ``in_tail``: these are the export's last
        downloads."""
        self._best = best_goodput
        self._round_trip = round_trip
        self._link = link_goodput
        self._in_tail = in_tail
        self._clock = clock
        self._began = clock()
        self._seen: deque[tuple[float, int]] = deque()  # (time, bytes of this request so far)
        self._bytes = 0

    def crawling(self, count: int, left: int) -> bool:
        """``count`` more bytes came; ``left`` remain of the track. True: ask again on a new connection."""
        now = self._clock()
        self._bytes += count
        self._seen.append((now, self._bytes))
        rtt = self._round_trip()
        if rtt is None or left < MIN_LEFT:
            return False
        window = max(MIN_WINDOW, WINDOW_ROUND_TRIPS * rtt)
        while len(self._seen) > 1 and now - self._seen[1][0] >= window:
            self._seen.popleft()  # keep the latest sample at least a window old
        then, before = self._seen[0]
        if now - self._began < window or now - then < window:
            return False
        rate = (self._bytes - before) / (now - then)
        best = self._best()
        if best <= 0 or rate >= best * SLOW_SHARE:
            return False
        if rate > 0 and left / rate <= COST_ROUND_TRIPS * rtt:
            return False  # about to end anyway
        return self._link(window) < best * ROOM_SHARE and self._in_tail()
