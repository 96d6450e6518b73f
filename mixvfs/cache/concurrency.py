"""How many downloads run at once: as many as keep the link full, measured, between a floor and ``--jobs``.

On a long, fat link one download at a time leaves most of it idle (each track's request costs a round trip, and a
new TCP connection's window starts small); a fixed number is too few for a long link and too many for a thin one or
a team cache. :class:`Concurrency` measures the goodput of each interval (a few round trips long) and climbs: twice
as many downloads while the goodput still grows by at least ``GROWTH`` (as TCP's slow start), back to the last
number that paid when it stops growing; then it holds for a while and probes, in turn, a quarter fewer (kept when
the goodput stays within ``GROWTH``: a doubling in TCP's own start-up may overshoot) and a quarter more (the link
may have changed; on a long path only while requests are answered without waiting in the bottleneck's queue,
``QUEUED``: a full link's goodput moves with TCP, not with the number; and there, while each step up pays, up
again). Half as many when the server pushes back (429/503). The start is for a short round trip; until the first
interval is measured, a longer one seen in a handshake or an answer starts it with proportionally more
(:func:`start_for`: the bandwidth-delay product of the same rate, up to ``SCALED_MOST``), rather than spend a
doubling interval of several long round trips on each step to there; from such a start it probes by quarters only.
A session of long tracks (:meth:`Concurrency.expect_tracks`) starts with ``LONG_TRACKS`` and probes by quarters,
never below that start unless the server pushes back. It only climbs while downloads wait for a slot: an
exporter that reads slower than the link needs no more. Downloads a team cache serves from its store (a hit, on the
studio's LAN) do not cross the link: their bytes are not the link's goodput, and of the downloads at once only the
share that is not such a hit counts against the number that fills the link (a later workstation's export is
200 authorization round trips at the origin, each answer nearly all wait: as many at once as ``--jobs`` allows).
Time is injected; the fetcher (:mod:`mixvfs.cache.fetcher`) asks :meth:`limit`.
"""

from __future__ import annotations

import logging
import math
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable

log = logging.getLogger(__name__)

START = 4  # downloads at once before anything is measured, and at a round trip of START_ROUND_TRIP or less
# Seconds: the round trip START is for; a longer one starts with proportionally more. At 20 ms, 8 at once rather
# than 4 (200 x 512 KiB on 100 Mbit/s, medians of 3 alternated: 1.12 x the floor against 1.165): each 512 KiB
# track's request costs a round trip that is half its transfer time there, and the fewer the flows, the less of
# that idle time the others' windows cover.
START_ROUND_TRIP = 0.010
LOWER = 2  # never fewer (one slow track must not stall the others), unless --jobs is lower
GROWTH = 1.05  # a step up must raise the goodput this much to count
MIN_INTERVAL = 0.5  # seconds; an interval is also at least ROUND_TRIPS round trips
ROUND_TRIPS = 4
HOLD = 8  # intervals at a number that paid before probing for more again
# The most a round trip scales the start to. More flows through one bottleneck each hold a smaller window, so a lost
# packet is more often waited out by a retransmission timeout than repaired at once, and the last tracks' timeouts
# hold the export's end (200 x 512 KiB at 150 ms, medians of 3: 16 at once 1.35 x the floor, 12 at once 1.29 x,
# 10 at once 1.29 x; at 80 ms 12 and 16 alike, 1.21 x).
SCALED_MOST = 12
# On a longer path each such timeout costs more (at least 200 ms plus a round trip), and fewer flows end sooner:
# 200 x 512 KiB at 150 ms, medians of 3 alternated, 12 at once 1.36 x the floor, 8 at once 1.24 x; at 80 ms the
# other way round, 12 at once 1.23 x, 8 at once 1.29 x.
LONG_PATH = 0.12  # seconds of round trip from which the start is at most LONG_PATH_MOST
LONG_PATH_MOST = 8
# On such a path a probe up is made only while the link has room: while the latest answers (the median of the last
# RECENT_ANSWERS, each the time to a request's response headers) come within QUEUED times the least round trip.
# Later, they waited in the bottleneck's queue: the link is full, and a download more is one more flow to overfill
# its buffer, not more bytes. Measured at 150 ms, 100 Mbit/s, origin on BBR: answers 152 ms while the link still
# had room, 170-240 ms once it was full; probing 8 <-> 10 there made 200 x 512 KiB 1.32 x the floor (1.27-1.48,
# 8 runs alternated) where holding 8 made 1.23 (1.22-1.28). A loss-bound link (CUBIC with random loss) has room and
# no queue (answers 152 ms at 0.5 % loss): there each step up that pays is followed by another, a quarter at a time
# (not by a probe down, as elsewhere): at 150 ms with 0.5 % loss, 200 x 512 KiB 7.58 x the floor -> 4.82 x (3 runs
# alternated), the number climbing from 8 to 22-32 at once.
QUEUED = 1.1
RECENT_ANSWERS = 8


# Bytes per second: the link START fills at START_ROUND_TRIP (100 Mbit/s). The quarter probes never go below what
# holds the bandwidth-delay product measured (the best goodput, the least round trip) in flight, in START's
# proportion: a step down that cost less than GROWTH was kept, and the intervals' noise (a goodput that moves by
# a fifth from one half second to the next) let a run of such steps take a 100 Mbit/s link at 80 or 150 ms
# from 12 or 8 downloads down to 6, where each lost packet costs the link more (200 x 512 KiB, medians of 3
# alternated, origin sending with CUBIC: 1.223 -> 1.178 x the floor at 80 ms, 1.298 -> 1.269 at 150 ms).
REFERENCE_RATE = 12.5e6

START_TRACK_SIZE = 512 * 1024  # bytes: the track size START was found for (a request's round trip per track)
LONG_TRACK_SIZE = 4 * START_TRACK_SIZE  # bytes: tracks this long or longer are long (most real music files are)
LONG_TRACKS = 6  # downloads at once to begin with on long tracks, however long the round trip
# The link's recent goodput (recent_goodput): a sample of the bytes carried every CARRIED_STEP seconds, kept for
# CARRIED_KEPT seconds.
CARRIED_STEP = 0.05
CARRIED_KEPT = 4.0
# The latest answers whose share of team-cache hits scales the number of downloads at once: a few intervals' worth,
# so a session whose first tracks were hits and whose later ones are not comes back to the link's number soon.
NEARBY_ANSWERS = 16


def start_for(round_trip: float, track_size: int | None = None) -> int:
    """Downloads at once to begin with at ``round_trip``: START scaled to the longer round trip, as the
    bandwidth-delay product of the rate START fills grows with it (at 20 ms, 8), up to SCALED_MOST (from a
    LONG_PATH round trip on, LONG_PATH_MOST).

    On long tracks (``track_size``: the session's typical one) each request's round trip is paid once per many
    bytes, so fewer downloads fill the link, and fewer is better: many long flows through one bottleneck end
    unevenly (TCP shares it unfairly), and the last stragglers, each alone on a link it has to grow into again,
    hold the export's end (24 × 8 MiB at 80 and 150 ms: 6 at once 1.15-1.17 × the floor, 16 at once 1.20-1.26)."""
    most = SCALED_MOST if round_trip < LONG_PATH else LONG_PATH_MOST
    scaled = max(START, min(most, math.ceil(START * round_trip / START_ROUND_TRIP - 1e-9)))
    if track_size is not None and track_size >= LONG_TRACK_SIZE:
        return min(scaled, LONG_TRACKS)
    return scaled


class Concurrency:
    def __init__(self, upper: int, *, start: int = START, clock: Callable[[], float] = time.monotonic) -> None:
        self._track_size: int | None = None  # the session's typical track (expect_tracks)
        self._long = False  # long tracks: the start is also the least number (expect_tracks)
        self.upper = max(1, upper)
        self.lower = min(LOWER, self.upper)
        self._limit = self._start = max(self.lower, min(start, self.upper))
        self.clock = clock
        self._lock = threading.Lock()
        self._began = clock()
        self._bytes = 0
        self._wanted = False  # in this interval, a download waited for a slot
        self._round_trip: float | None = None  # the least time to a response's headers seen
        self._paid: tuple[int, float] | None = None  # the last (limit, goodput) that was worth its number
        self._best = 0.0  # the best goodput measured: with the least round trip, the floor of the probes down
        self._pushed = False  # the server answered 429/503: no floor from the link's size any more
        self._holding = 0
        self._starting = True  # doubling, until a step up first buys nothing (as TCP's slow start)
        self._guessing = True  # nothing measured yet: the number is a guess from the round trip
        # The next probe is a step down (probes alternate once the start is over; on a long path with room, not
        # after a step up that paid).
        self._down_next = False
        self._nearby: deque[bool] = deque(maxlen=NEARBY_ANSWERS)  # the latest answers: a team cache's hit or not
        self._answers: deque[float] = deque(maxlen=RECENT_ANSWERS)  # seconds to the latest answers across the link
        self._carried = 0  # bytes across the link since the start
        self._carried_at: deque[tuple[float, int]] = deque()  # (time, _carried), one sample per CARRIED_STEP

    def expect_tracks(self, sizes: list[int]) -> None:
        """The sizes of the tracks about to be downloaded (those known): on long ones the start is fewer
        downloads, and there is no doubling start (a doubling would be paid for by the next several long
        downloads, and TCP's own ramp in the first intervals looks like a step that paid); the number moves by
        the quarter probes only."""
        if not sizes:
            return
        typical = sorted(sizes)[len(sizes) // 2]
        with self._lock:
            self._track_size = typical
            if typical >= LONG_TRACK_SIZE and self._guessing and self._start <= START:
                self._starting = False
                guess = start_for(self._round_trip or START_ROUND_TRIP, typical)
                self._limit = max(self._start, min(self.upper, guess))
                # Nor fewer than that: an interval's goodput barely drops with one long download less, so the
                # probes down would each be kept and add up, to where the last stragglers, each alone on the
                # link, hold the export's end (6 at once 1.17 x the floor at 150 ms, 4 at once 1.21).
                self._long = True
                self.lower = self._limit

    # -- what downloads report ---------------------------------------------------------------------------

    def received(self, count: int, *, nearby: bool = False) -> None:
        """``count`` bytes of a body came; ``nearby``: from a team cache's store, not across the link."""
        if nearby:
            return
        with self._lock:
            self._bytes += count
            self._carried += count
            now = self.clock()
            samples = self._carried_at
            if not samples or now - samples[-1][0] >= CARRIED_STEP:
                samples.append((now, self._carried))
                while len(samples) > 2 and now - samples[1][0] >= CARRIED_KEPT:
                    samples.popleft()

    def recent_goodput(self, seconds: float) -> float:
        """Bytes per second across the link over about the last ``seconds`` (up to CARRIED_KEPT)."""
        with self._lock:
            now = self.clock()
            then = next(((t, c) for t, c in reversed(self._carried_at) if now - t >= seconds), None)
            if then is None:
                return self._best  # not that long measured yet: say nothing against the link
            return (self._carried - then[1]) / max(now - then[0], 1e-9)

    def answered_after(self, seconds: float, *, nearby: bool = False) -> None:
        """A request's response headers came ``seconds`` after it was sent: about one round trip (the first on a
        new connection: two, with the handshake). ``nearby``: the answer is a team cache's hit (its wait was the
        origin's authorization, one round trip too; its bytes will not cross the link)."""
        with self._lock:
            self._nearby.append(nearby)
            if not nearby:
                self._answers.append(seconds)
        self._saw_round_trip(seconds)

    def handshake_took(self, seconds: float) -> None:
        """A new connection's TCP handshake took ``seconds``: one round trip, known before any answer (the first
        downloads' connections open at once, so the start is scaled one round trip sooner)."""
        self._saw_round_trip(seconds)

    def _saw_round_trip(self, seconds: float) -> None:
        with self._lock:
            if seconds > 0 and (self._round_trip is None or seconds < self._round_trip):
                self._round_trip = seconds
                if self._guessing:  # nothing measured yet: the start is still a guess
                    # From the least answer time: a new connection's first answer includes its handshake.
                    guess = start_for(seconds, self._track_size)
                    self._limit = max(self._start, min(self.upper, guess))
                    if self._long:
                        self.lower = self._limit
                    else:
                        # A number the round trip scaled is already the bandwidth-delay product's: no doubling from
                        # there (it would put back the flows SCALED_MOST leaves out), only the quarter probes.
                        self._starting = guess <= START

    def pushed_back(self) -> None:
        """The server said it is busy (429, 503): half as many downloads, and a fresh measurement."""
        with self._lock:
            # The server's word outranks the long tracks' least number: back to the floor for everything.
            self._long = False
            self.lower = min(LOWER, self.upper)
            self._limit = max(self.lower, self._limit // 2)
            self._paid = None
            self._pushed = True  # from now on the server's word, not the link's size, sets the least number
            self._holding = HOLD
            self._starting = self._guessing = False
            self._restart(self.clock())

    # -- what the fetcher asks ---------------------------------------------------------------------------

    def limit(self, *, waiting: bool = False) -> int:
        """How many downloads may run now. ``waiting``: a download is queued for want of a slot."""
        with self._lock:
            self._wanted = self._wanted or waiting
            now = self.clock()
            if now - self._began >= self._interval():
                before, goodput = self._limit, self._bytes / (now - self._began)
                self._decide(goodput)
                if self._limit != before:
                    log.info("downloads at once: %d -> %d (goodput %.2f MB/s, round trip %.0f ms)", before,
                             self._limit, goodput / 1e6, (self._round_trip or 0) * 1000)
                self._restart(now)
            return self._with_nearby(self._limit)

    @property
    def round_trip(self) -> float | None:
        return self._round_trip

    @property
    def best_goodput(self) -> float:
        """Bytes per second: the most an interval has carried across the link (0.0 before any)."""
        return self._best

    def _with_nearby(self, link: int) -> int:
        """``link`` downloads crossing the link, when a share of the latest answers were team-cache hits: as many
        more as keep about ``link`` of them off such hits, up to ``upper`` (all of them hits: ``upper``)."""
        hits = sum(self._nearby)
        if not hits:
            return link
        crossing = len(self._nearby) - hits
        if not crossing:
            return self.upper
        return min(self.upper, max(link, math.ceil(link * len(self._nearby) / crossing)))

    def _floor(self) -> int:
        """The fewest downloads the probes may leave, on short tracks (each request's round trip a large part of
        its track's time): those that hold the bandwidth-delay product measured in flight, in START's proportion
        (REFERENCE_RATE), up to what the round trip would start with. ``lower`` on long tracks (their start is
        their floor already: fewer long flows fill a link), on tracks of unknown size, on a thin or near link,
        and once the server has pushed back."""
        short = self._track_size is not None and self._track_size < LONG_TRACK_SIZE
        if not short or self._pushed or self._round_trip is None or self._best <= 0:
            return self.lower
        bdp = START * (self._best / REFERENCE_RATE) * (self._round_trip / START_ROUND_TRIP)
        most = min(self.upper, SCALED_MOST if self._round_trip < LONG_PATH else LONG_PATH_MOST)
        return max(self.lower, min(most, math.ceil(bdp - 1e-9)))

    def _long_path(self) -> bool:
        return self._round_trip is not None and self._round_trip >= LONG_PATH

    def _queue_full(self) -> bool:
        """On a long path: the latest answers waited in the bottleneck's queue (QUEUED). A new connection's first
        answer takes two round trips (its handshake) and counts as such: no probe in the first interval, while the
        start's flows still grow their windows."""
        if not self._long_path() or not self._answers:
            return False
        assert self._round_trip is not None
        return statistics.median(self._answers) > QUEUED * self._round_trip

    def _interval(self) -> float:
        return max(MIN_INTERVAL, ROUND_TRIPS * (self._round_trip or 0.0))

    def _restart(self, now: float) -> None:
        self._began, self._bytes, self._wanted = now, 0, False

    def _decide(self, goodput: float) -> None:
        if not self._wanted or self._bytes == 0:
            return  # the exporter, not the link, set the pace: nothing learned about the link
        self._guessing = False
        paid = self._paid
        if paid is not None and self._limit > paid[0] and goodput < paid[1] * GROWTH:
            self._limit = paid[0]  # the step up bought nothing: back to the number that paid, for a while
            self._holding = HOLD
            self._starting = False
            self._down_next = True
            return
        if paid is not None and self._limit < paid[0] and goodput * GROWTH < paid[1]:
            self._limit = paid[0]  # the step down cost goodput: back up, for a while
            self._holding = HOLD
            self._down_next = False
            return
        self._paid = (self._limit, goodput)  # the latest at this number: the link may have changed
        self._best = max(self._best, goodput)
        floor = self._floor()
        if self._holding > 0:
            self._holding -= 1
        elif self._down_next and self._limit > floor:
            # Fewer, if as many bytes come: every download more is a flow competing at the bottleneck's buffer
            # (drops, timeouts), a thread, and a track the exporter waits on.
            self._limit = max(floor, self._limit - max(1, self._limit // 4))
            self._down_next = False
        elif self._limit < self.upper and not self._queue_full():
            step = self._limit if self._starting else max(1, self._limit // 4)
            self._limit = min(self.upper, self._limit + step)
            # On a long path with room (no queue: the link is not full, as when random loss bounds each flow), the
            # next probe is up again while each step pays; elsewhere, probes alternate.
            self._down_next = not self._starting and not self._long_path()
        else:  # at --jobs, or a long path's link is full: the start is over, the next probe is a step down
            self._starting = False
            self._down_next = True
